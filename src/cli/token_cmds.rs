//! `token add|list|show|rm|default|check|rename` (`resolve` and `history` are in `resolve_cmd`).

use serde_json::json;

use super::access::run_op;
use super::{
    CliError, Context, TokenCommand, input, print_json, secret_json, when, write_stdout_line,
};
use crate::doc::Service;
use crate::doc::UnknownName;
use crate::ops::views::TokenView;
use crate::ops::{Op, Outcome};

pub(super) fn run(ctx: &Context, cmd: TokenCommand) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Add {
            service,
            label,
            default,
            from_file,
            replace,
        } => {
            let service: Service = service
                .parse()
                .map_err(|e: UnknownName| CliError::Usage(e.to_string()))?;
            crate::device::check_label(&label)?;
            // Read the token before taking the home, so a slow typist holds no lock.
            let secret = input::token(from_file.as_deref(), service.as_str())?;
            let add = Op::AddToken {
                service,
                label,
                secret,
                default,
                replace,
            };
            let token = run_op!(ctx, add, Outcome::Token(token) => token);
            if ctx.json {
                print_json(
                    &json!({"id": token.id, "service": token.service, "label": token.label}),
                );
            } else {
                let verb = if replace { "Saved" } else { "Added" };
                say!(
                    "{verb} {}/{} ({}).",
                    token.service,
                    token.label,
                    &token.id[..8]
                );
            }
        }
        TokenCommand::List => list(
            ctx,
            &run_op!(ctx, Op::ListTokens, Outcome::Tokens(tokens) => tokens),
        ),
        TokenCommand::Show { id, reveal: false } => show(
            ctx,
            &run_op!(ctx, Op::ShowToken { query: id }, Outcome::Token(token) => token),
        ),
        TokenCommand::Show { id, reveal: true } => {
            let (token, secret) = run_op!(
                ctx,
                Op::Reveal { query: id },
                Outcome::Secret { token, secret } => (token, secret)
            );
            let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&secret).into_owned());
            let line = if ctx.json {
                let revealed = Revealed {
                    id: &token.id,
                    service: &token.service,
                    label: &token.label,
                    secret: text.as_str(),
                };
                secret_json(&revealed, text.len())?
            } else {
                zeroize::Zeroizing::new(text.as_bytes().to_vec())
            };
            write_stdout_line(&line)
                .map_err(|e| CliError::Internal(format!("cannot write to stdout: {e}")))?;
        }
        TokenCommand::Rm { id } => {
            let token = run_op!(ctx, Op::RemoveToken { query: id }, Outcome::Token(t) => t);
            if ctx.json {
                print_json(&json!({"removed": token.id}));
            } else {
                say!(
                    "Removed {}/{} ({}).",
                    token.service,
                    token.label,
                    &token.id[..8]
                );
                say!("Devices that had it may still know it: rotate it at the vendor if in doubt.");
            }
        }
        TokenCommand::Default { id } => {
            let token = run_op!(ctx, Op::SetDefault { query: id }, Outcome::Token(t) => t);
            if ctx.json {
                print_json(&json!({"default": token.id, "service": token.service}));
            } else {
                say!(
                    "{}/{} is now the default for {}.",
                    token.service,
                    token.label,
                    token.service
                );
            }
        }
        TokenCommand::Check { id, within } => check(ctx, id, *within)?,
        TokenCommand::Resolve { id, keep, reveal } => {
            super::resolve_cmd::run(ctx, id, keep, reveal, false)?;
        }
        TokenCommand::History { id, reveal } => {
            super::resolve_cmd::run(ctx, id, None, reveal, true)?
        }
        TokenCommand::Rename { id, label } => {
            let was = id.clone();
            let rename = Op::RenameToken { query: id, label };
            let token = run_op!(ctx, rename, Outcome::Token(t) => t);
            if ctx.json {
                print_json(
                    &json!({"id": token.id, "service": token.service, "label": token.label}),
                );
            } else {
                say!(
                    "Renamed {was} to {}/{} ({}).",
                    token.service,
                    token.label,
                    &token.id[..8]
                );
            }
        }
    }
    Ok(())
}

/// `token show --reveal --json` output.
#[derive(serde::Serialize)]
struct Revealed<'a> {
    id: &'a str,
    service: &'a str,
    label: &'a str,
    secret: &'a str,
}

fn token_json(t: &TokenView) -> serde_json::Value {
    json!({
        "id": t.id,
        "service": t.service,
        "label": t.label,
        "kind": t.kind,
        "default": t.default,
        "conflict": t.conflict,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "updated_by": {
            "device": t.updated_by,
            "name": t.updated_by_name,
            "verified": t.verified,
        },
        "expires_at": t.expires_at,
        "refreshed_at": t.refreshed_at,
        "lease": t.lease.as_ref().map(|l| json!({
            "device": l.holder,
            "name": l.holder_name,
            "session": l.session,
            "until": l.until,
        })),
    })
}

/// How long from now until `at` (or since), in the largest whole unit: `3d`, `5h`, `12m`.
fn span(at: i64, now: i64) -> String {
    let secs = at.abs_diff(now);
    let (n, unit) = match secs {
        s if s >= 86_400 => (s / 86_400, "d"),
        s if s >= 3_600 => (s / 3_600, "h"),
        s if s >= 60 => (s / 60, "m"),
        s => (s, "s"),
    };
    format!("{n}{unit}")
}

/// An OAuth login's access-token expiry, for people: `in 5h`, `expired 2d ago`; empty for a
/// token that has none.
fn expiry(t: &TokenView, now: i64) -> String {
    match t.expires_at {
        Some(at) if at <= now => format!("expired {} ago", span(at, now)),
        Some(at) => format!("in {}", span(at, now)),
        None => String::new(),
    }
}

/// `token check`: every OAuth login (or the one named) whose access token has expired, or
/// expires within `within`, is named on stderr; exits 12 when there is one.
fn check(ctx: &Context, id: Option<String>, within: std::time::Duration) -> Result<(), CliError> {
    let tokens = match id {
        Some(query) => vec![run_op!(ctx, Op::ShowToken { query }, Outcome::Token(t) => t)],
        None => run_op!(ctx, Op::ListTokens, Outcome::Tokens(tokens) => tokens),
    };
    let now = crate::entropy::unix_now();
    let horizon = now.saturating_add(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
    let mut due = Vec::new();
    let mut checked = Vec::new();
    for t in &tokens {
        let Some(at) = t.expires_at else { continue };
        let late = at <= horizon;
        checked.push(json!({
            "id": t.id, "service": t.service, "label": t.label, "expires_at": at,
            "refreshed_at": t.refreshed_at, "due": late,
        }));
        if late {
            let renew = if t.refreshed_at.is_some() {
                "; it has a refresh token, which its agent uses when it starts"
            } else {
                "; it has no refresh token: add a fresh login with `token add --replace`"
            };
            due.push(format!(
                "{}/{}: access token {}{renew}",
                t.service,
                t.label,
                expiry(t, now)
            ));
        }
    }
    if ctx.json {
        print_json(&serde_json::Value::Array(checked));
    } else if checked.is_empty() {
        say!("No OAuth login with a known expiry.");
    } else if due.is_empty() {
        say!("Every OAuth login checked is valid beyond the window.");
    } else {
        for line in &due {
            say!("{line}");
        }
    }
    match due.len() {
        0 => Ok(()),
        1 => Err(CliError::Expiring(
            "1 OAuth login has expired or expires within the window".into(),
        )),
        n => Err(CliError::Expiring(format!(
            "{n} OAuth logins have expired or expire within the window"
        ))),
    }
}

/// Who wrote the version shown: the device's name (or id), and whether its signature stands.
fn writer(t: &TokenView) -> String {
    let who = t
        .updated_by_name
        .clone()
        .unwrap_or_else(|| t.updated_by.chars().take(8).collect());
    if t.verified {
        who
    } else {
        format!("{who} (unverified)")
    }
}

fn list(ctx: &Context, tokens: &[TokenView]) {
    if ctx.json {
        print_json(&serde_json::Value::Array(
            tokens.iter().map(token_json).collect(),
        ));
        return;
    }
    if tokens.is_empty() {
        say!("No tokens yet. Add one with `handoff token add SERVICE`.");
        return;
    }
    use std::fmt::Write as _;
    let now = crate::entropy::unix_now();
    // The table is written in one go: a write per row costs more than the rest at thousands.
    let mut table = String::with_capacity(160 * (tokens.len() + 1));
    let _ = writeln!(
        table,
        "{:<10} {:<20} {:<20} {:<12} {:<8} {:<21} {:<16} {:<10} BY",
        "ID", "SERVICE", "LABEL", "KIND", "DEFAULT", "UPDATED", "EXPIRES", "REFRESHED"
    );
    for t in tokens {
        let label = if t.conflict {
            format!("{} (conflict)", t.label)
        } else {
            t.label.clone()
        };
        let refreshed = t
            .refreshed_at
            .map(|at| format!("{} ago", span(at, now)))
            .unwrap_or_default();
        let _ = writeln!(
            table,
            "{:<10} {:<20} {:<20} {:<12} {:<8} {:<21} {:<16} {:<10} {}",
            &t.id[..8],
            t.service,
            label,
            t.kind,
            if t.default { "*" } else { "" },
            when(t.updated_at),
            expiry(t, now),
            refreshed,
            writer(t)
        );
    }
    crate::cli::output::text(format_args!("{table}"));
    if let Some(t) = tokens.iter().find(|t| t.conflict) {
        say!(
            "A token marked (conflict) was edited on two devices at once: `handoff token resolve {}` shows its versions.",
            &t.id[..8]
        );
    }
}

fn show(ctx: &Context, t: &TokenView) {
    if ctx.json {
        print_json(&token_json(t));
        return;
    }
    say!("id       {}", t.id);
    say!("service  {}", t.service);
    say!("label    {}", t.label);
    say!("kind     {}", t.kind);
    say!("default  {}", if t.default { "yes" } else { "no" });
    if t.conflict {
        say!(
            "conflict concurrent edits left several versions; the newest is shown (see them all: `handoff token resolve {}`)",
            &t.id[..8]
        );
    }
    say!("created  {} by {}", when(t.created_at), t.created_by);
    say!(
        "updated  {} by {} ({})",
        when(t.updated_at),
        writer(t),
        t.updated_by
    );
    if !t.verified {
        say!("verified no: written before signatures; an unlocked admin re-signs it");
    }
    let now = crate::entropy::unix_now();
    if t.expires_at.is_some() {
        say!(
            "expires  {} ({})",
            expiry(t, now),
            when(t.expires_at.unwrap_or_default())
        );
    }
    if let Some(at) = t.refreshed_at {
        say!(
            "refresh  token obtained {} ago ({})",
            span(at, now),
            when(at)
        );
    }
    if let Some(l) = &t.lease {
        say!(
            "in use   by {} (session {}) until {}",
            l.holder_name.as_deref().unwrap_or(&l.holder),
            l.session,
            when(l.until)
        );
    }
    say!("secret   (hidden; --reveal prints it)");
}
