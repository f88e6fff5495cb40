//! `token resolve ID [--keep VERSION] [--reveal]` and `token history ID [--reveal]`: the
//! versions of one token, and settling a conflict by keeping one.

use serde_json::json;

use super::access::run_op;
use super::{CliError, Context, print_json, secret_json, when, write_stdout_line};
use crate::ops::views::{TokenView, VersionView};
use crate::ops::{Op, Outcome};

/// Lists the versions (all of history with `history`); with `keep`, keeps that one.
pub(super) fn run(
    ctx: &Context,
    id: String,
    keep: Option<String>,
    reveal: bool,
    history: bool,
) -> Result<(), CliError> {
    if let Some(keep) = keep {
        let resolve = Op::ResolveToken { query: id, keep };
        let token = run_op!(ctx, resolve, Outcome::Token(t) => t);
        if ctx.json {
            print_json(&json!({
                "id": token.id, "service": token.service, "label": token.label,
                "conflict": token.conflict,
            }));
        } else {
            say!(
                "Kept {}/{} ({}): every device that syncs this change shows it alone.",
                token.service,
                token.label,
                &token.id[..8]
            );
            say!(
                "The other versions stay in its history: `handoff token history {}`.",
                &token.id[..8]
            );
        }
        return Ok(());
    }
    let list = Op::TokenVersions {
        query: id,
        history,
        reveal,
    };
    let (token, versions) = run_op!(
        ctx,
        list,
        Outcome::Versions { token, versions } => (token, versions)
    );
    if ctx.json {
        let out = Listing {
            id: &token.id,
            service: &token.service,
            label: &token.label,
            conflict: token.conflict,
            versions: versions.iter().map(Version::of).collect(),
        };
        // Secrets, when revealed, go straight into zeroizing memory.
        let secrets: usize = versions
            .iter()
            .filter_map(|v| v.secret.as_ref().map(|s| s.len()))
            .sum();
        let line = secret_json(&out, secrets + versions.len() * 512)?;
        write_stdout_line(&line)
            .map_err(|e| CliError::Internal(format!("cannot write to stdout: {e}")))?;
        return Ok(());
    }
    show(&token, &versions, history);
    Ok(())
}

/// `--json` output: borrowed, so a revealed secret is copied only into the zeroizing buffer.
#[derive(serde::Serialize)]
struct Listing<'a> {
    id: &'a str,
    service: &'a str,
    label: &'a str,
    conflict: bool,
    versions: Vec<Version<'a>>,
}

#[derive(serde::Serialize)]
struct Version<'a> {
    number: usize,
    code: &'a str,
    version: u64,
    service: &'a str,
    label: &'a str,
    kind: &'a str,
    deleted: bool,
    written_at: i64,
    written_by: Writer<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Writer<'a> {
    device: &'a str,
    name: Option<&'a str>,
}

impl<'a> Version<'a> {
    fn of(v: &'a VersionView) -> Self {
        Self {
            number: v.number,
            code: &v.code,
            version: v.version,
            service: &v.service,
            label: &v.label,
            kind: &v.kind,
            deleted: v.deleted,
            written_at: v.written_at,
            written_by: Writer {
                device: &v.written_by,
                name: v.written_by_name.as_deref(),
            },
            secret: v
                .secret
                .as_ref()
                .map(|s| std::str::from_utf8(s).unwrap_or("(not UTF-8)")),
        }
    }
}

fn show(token: &TokenView, versions: &[VersionView], history: bool) {
    let short = &token.id[..8];
    if history {
        say!(
            "{}/{} ({short}): {} versions, oldest first.",
            token.service,
            token.label,
            versions.len()
        );
    } else if token.conflict {
        say!(
            "{}/{} ({short}) has {} versions from concurrent edits; newest first (1 is shown now):",
            token.service,
            token.label,
            versions.len()
        );
    } else {
        say!(
            "{}/{} ({short}) has no conflict: one version.",
            token.service,
            token.label
        );
    }
    say!(
        "{:<3} {:<9} {:<8} {:<21} {:<16} {:<12} LABEL",
        "#",
        "CODE",
        "VERSION",
        "WRITTEN",
        "BY",
        "KIND"
    );
    for v in versions {
        let by = v
            .written_by_name
            .clone()
            .unwrap_or_else(|| v.written_by.chars().take(8).collect());
        let label = if v.deleted {
            format!("{} (deleted)", v.label)
        } else {
            v.label.clone()
        };
        say!(
            "{:<3} {:<9} {:<8} {:<21} {:<16} {:<12} {}",
            v.number,
            v.code,
            v.version,
            when(v.written_at),
            by,
            v.kind,
            label
        );
        if let Some(secret) = &v.secret {
            say!("    secret {}", String::from_utf8_lossy(secret));
        }
    }
    if token.conflict && !history {
        say!(
            "Keep one with `handoff token resolve {short} --keep CODE` (or its number, or the device that wrote it)."
        );
    }
}
