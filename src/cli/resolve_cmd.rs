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
        let (token, kept) = run_op!(
            ctx,
            resolve,
            Outcome::Versions { token, versions } => (token, versions)
        );
        let kept = kept.first();
        if ctx.json {
            print_json(&json!({
                "id": token.id, "service": token.service, "label": token.label,
                "conflict": token.conflict, "kept": kept.map(|v| &v.code),
            }));
        } else {
            say!(
                "Kept version {} ({}/{}, written by {}): every device that syncs this change shows it alone.",
                kept.map_or("?", |v| v.code.as_str()),
                token.service,
                one_line(&token.label),
                kept.map_or_else(|| "?".into(), writer)
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
    show(&token, &versions, history)
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
    #[serde(skip_serializing_if = "Option::is_none")]
    unopened: Option<&'a str>,
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
            unopened: v.unopened.as_deref(),
        }
    }
}

/// Another member's words, on one line (labels and names are short; errors a little longer).
fn one_line(text: &str) -> String {
    crate::spawn::policy::one_line(text, 200)
}

/// Who wrote a version: its device's name or id.
fn writer(v: &VersionView) -> String {
    v.written_by_name
        .as_deref()
        .map_or_else(|| v.written_by.chars().take(8).collect(), one_line)
}

fn show(token: &TokenView, versions: &[VersionView], history: bool) -> Result<(), CliError> {
    let short = &token.id[..8];
    let label = one_line(&token.label);
    let n = versions.len();
    if history {
        say!(
            "{}/{label} ({short}): {n} versions, oldest first.",
            token.service
        );
    } else if token.conflict {
        say!(
            "{}/{label} ({short}) has {n} versions from concurrent edits; newest first (the first is shown now):",
            token.service
        );
    } else {
        say!(
            "{}/{label} ({short}) has no conflict: one version.",
            token.service
        );
    }
    say!(
        "{:<3} {:<13} {:<8} {:<21} {:<16} {:<12} LABEL",
        "#",
        "CODE",
        "VERSION",
        "WRITTEN",
        "BY",
        "KIND"
    );
    for v in versions {
        let label = if v.deleted {
            format!("{} (deleted)", one_line(&v.label))
        } else {
            one_line(&v.label)
        };
        say!(
            "{:<3} {:<13} {:<8} {:<21} {:<16} {:<12} {label}",
            v.number,
            v.code,
            v.version,
            when(v.written_at),
            writer(v),
            v.kind
        );
        if let Some(secret) = &v.secret {
            // Into zeroizing memory, as it is: the bytes the agent would get.
            let mut line = zeroize::Zeroizing::new(Vec::with_capacity(secret.len() + 11));
            line.extend_from_slice(b"    secret ");
            line.extend_from_slice(secret);
            write_stdout_line(&line)
                .map_err(|e| CliError::Internal(format!("cannot write to stdout: {e}")))?;
        }
        if let Some(why) = &v.unopened {
            say!("    secret cannot be opened here: {}", one_line(why));
        }
    }
    if token.conflict && !history {
        say!(
            "Keep one with `handoff token resolve {short} --keep CODE` (or the name of the device that wrote it)."
        );
    }
    Ok(())
}
