//! `relay add|list|rm`: the blind relays every member of the vault uses.
//!
//! A relay is listed in the document (signed by an admin), so every member learns it: each
//! leaves envelopes there for members that are offline and drains its own mailbox there. The
//! access token comes from a file, never the command line.

use serde_json::json;

use super::access::run_op;
use super::{CliError, Context, input, print_json, when};
use crate::ops::{Op, Outcome};

pub(super) fn add(
    ctx: &Context,
    addrs: Vec<crate::addr::Multiaddr>,
    token_file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let token = token_file.map(input::relay_token).transpose()?;
    let add = Op::AddRelay { addrs, token };
    let relay = run_op!(ctx, add, Outcome::Relay(relay) => relay);
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
    let relays = run_op!(ctx, Op::ListRelays, Outcome::Relays(relays) => relays);
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
    let remove = Op::RemoveRelay {
        query: query.to_string(),
    };
    let relay = run_op!(ctx, remove, Outcome::Relay(relay) => relay);
    if ctx.json {
        print_json(&json!({"removed": relay.id}));
    } else {
        say!("Removed relay {} ({}).", relay.id, relay.addrs.join(" "));
    }
    Ok(())
}
