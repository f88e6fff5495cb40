//! `handoff audit`: the document's signed audit (membership, token, relay and spawn events),
//! newest first, as any member holds it.

use super::access::run_op;
use super::{CliError, Context, print_json, when};
use crate::ops::{Op, Outcome};

/// `--since`: Unix seconds, a time (RFC 3339, `2026-12-01T10:00:00Z` or `2026-12-01 10:00`), or a
/// duration back from now (`2h`, `3d`).
fn since(text: &str) -> Result<i64, CliError> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let seconds = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return Ok(i64::try_from(seconds).unwrap_or(i64::MAX));
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = i64::try_from(ago.as_secs()).unwrap_or(i64::MAX);
        return Ok(crate::entropy::unix_now().saturating_sub(ago));
    }
    Err(CliError::Usage(format!(
        "--since takes a time (2026-12-01T10:00:00Z), Unix seconds, or how long ago (2h, 3d); not '{text}'"
    )))
}

pub(super) fn run(
    ctx: &Context,
    device: Option<String>,
    since_text: Option<&str>,
) -> Result<(), CliError> {
    let since = since_text.map(since).transpose()?;
    let entries = run_op!(ctx, Op::Audit { device, since }, Outcome::Audit(entries) => entries);
    if ctx.json {
        print_json(&serde_json::to_value(&entries).unwrap_or_default());
        return Ok(());
    }
    if entries.is_empty() {
        say!("No audit entries match.");
        return Ok(());
    }
    for e in &entries {
        let who = e
            .device
            .clone()
            .unwrap_or_else(|| e.device_id.chars().take(12).collect());
        let about = e
            .about
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        say!(
            "{}  {:<16} {:<28} {}{about}{}",
            when(e.at),
            who,
            e.action,
            e.subject,
            if e.verified { "" } else { "  (unsigned)" }
        );
    }
    Ok(())
}
