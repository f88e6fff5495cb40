//! `relay add|list|rm`: the blind relays every member of the vault uses.
//!
//! A relay is listed in the document (signed by an admin), so every member learns it: each
//! leaves envelopes there for members that are offline and drains its own mailbox there. The
//! access token comes from a file, never the command line.

use serde_json::json;

use super::access::Access;
use super::{CliError, Context, input, print_json, when};

pub(super) fn add(
    ctx: &Context,
    addrs: &[String],
    token_file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    for addr in addrs {
        crate::net::parse_addr(addr)?;
    }
    let token = token_file.map(input::relay_token).transpose()?;
    let relay =
        Access::open(ctx).add_relay(ctx, &addrs.join(" "), token.as_deref().map(Vec::as_slice))?;
    if ctx.json {
        print_json(&serde_json::to_value(&relay).unwrap_or_default());
    } else {
        say!(
            "Added relay {} ({}){}; every member will use it.",
            relay.id,
            relay.addrs.join(" "),
            if relay.access_token {
                ", with its access token"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub(super) fn list(ctx: &Context) -> Result<(), CliError> {
    let relays = Access::open(ctx).relays(ctx)?;
    if ctx.json {
        print_json(&serde_json::to_value(&relays).unwrap_or_default());
        return Ok(());
    }
    if relays.is_empty() {
        say!("No relays. Add one with `handoff relay add ADDR --token-file F`.");
    }
    for r in &relays {
        say!(
            "{}  {}  token: {}  added {}",
            r.id,
            r.addrs.join(" "),
            if r.access_token { "yes" } else { "no" },
            when(r.added_at)
        );
    }
    Ok(())
}

pub(super) fn remove(ctx: &Context, query: &str) -> Result<(), CliError> {
    let relay = Access::open(ctx).remove_relay(ctx, query)?;
    if ctx.json {
        print_json(&json!({"removed": relay.id}));
    } else {
        say!("Removed relay {} ({}).", relay.id, relay.addrs.join(" "));
    }
    Ok(())
}
