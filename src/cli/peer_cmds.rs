//! `peer add|join|list|remove`: the devices of this vault.
//!
//! `peer add` opens a pairing offer on this (admin) device — through the daemon when one runs,
//! else on a mesh node this command runs until the pairing ends — prints the code and follows
//! the offer: the words to compare, then the new member. `peer join` runs on the new device
//! (an empty home): it makes the device's keys, finds the adder (`--addr`, a pairing link, or
//! the LAN), pairs and writes the device from the vault it receives.

use std::io::IsTerminal;
use std::sync::Arc;

use serde_json::json;

use super::access::{self, run_op};
use super::{CliError, Context, input, print_json, when};
use crate::control::{Client, Request, Response};
use crate::device::{Device, NewDevice, PendingJoin};
use crate::doc::Role;
use crate::net::{JoinRequest, Mesh, Multiaddr, OfferRequest, Owned, PairCode, PairTicket};
use crate::ops::views::{OfferView, PairStep};
use crate::ops::{Op, Outcome};
use crate::vault::KdfParams;

// `peer add`'s options (the variant's doc comment is its help).
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The name to give the new device (default: the name it proposes).
    #[arg(long)]
    name: Option<String>,
    /// admin, member, or remote (a phone that may ask for sessions but reads no token).
    #[arg(long, value_enum, default_value_t = Role::Member)]
    role: Role,
    /// Also show a QR code (with a 128-bit code) for a phone.
    #[arg(long)]
    qr: bool,
    /// Do not ask to compare the words shown on both devices.
    #[arg(long)]
    yes: bool,
    /// Listen here while pairing without a daemon (repeatable).
    #[arg(long, value_name = "MULTIADDR", value_parser = crate::addr::parse)]
    listen: Vec<Multiaddr>,
    /// Do not advertise the offer on the LAN.
    #[arg(long)]
    no_mdns: bool,
}

/// Where the offer lives: in the daemon, or in a mesh node this command runs.
enum Offerer {
    Daemon(Client),
    Direct {
        runtime: tokio::runtime::Runtime,
        mesh: Mesh,
        ticket: PairTicket,
        _host: Arc<Owned>,
    },
}

impl Offerer {
    fn open(ctx: &Context, args: &AddArgs) -> Result<(Self, OfferView), CliError> {
        let role = args.role;
        match Client::connect(&ctx.home.socket_path()) {
            Some(mut client) => {
                let response =
                    access::call_unlocking(ctx, &mut client, |passphrase| Request::PairOffer {
                        name: args.name.clone(),
                        role,
                        qr: args.qr,
                        auto_confirm: args.yes,
                        passphrase,
                    })?;
                match response {
                    Response::Offered(view) => Ok((Offerer::Daemon(client), view)),
                    other => Err(access::unexpected_response(&other)),
                }
            }
            None => Self::open_direct(ctx, args, role),
        }
    }

    fn open_direct(
        ctx: &Context,
        args: &AddArgs,
        role: Role,
    ) -> Result<(Self, OfferView), CliError> {
        let config = crate::config::Config::load(ctx.home.root())
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let mesh_config = config.net.mesh(&args.listen, args.no_mdns)?;
        let device = Device::open(ctx.home.clone())?;
        crate::ops::require_adder(&device)?;
        let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
        let deriving = super::output::Waiting::deriving(ctx.json);
        let key = device.unlock(&passphrase)?;
        drop(deriving);
        let offer_key = key.duplicate();
        let host = Owned::new(device, Some(key));
        let runtime = runtime()?;
        let (mesh, ticket) = runtime.block_on(async {
            let mesh = Mesh::start(host.clone(), mesh_config).await?;
            let ticket = mesh
                .offer(OfferRequest {
                    role,
                    name: args.name.clone(),
                    long_code: args.qr,
                    auto_confirm: args.yes,
                    lifetime: crate::net::OFFER_LIFETIME,
                    key: offer_key,
                })
                .await?;
            Ok::<_, crate::net::NetError>((mesh, ticket))
        })?;
        let offered = OfferView::of(&ticket, &mesh, args.qr);
        Ok((
            Offerer::Direct {
                runtime,
                mesh,
                ticket,
                _host: host,
            },
            offered,
        ))
    }

    fn next(&mut self) -> Result<PairStep, CliError> {
        match self {
            Offerer::Daemon(client) => match access::call(client, &Request::PairNext)? {
                Response::PairStep(step) => Ok(step),
                other => Err(access::unexpected_response(&other)),
            },
            Offerer::Direct {
                runtime, ticket, ..
            } => Ok(runtime.block_on(ticket.events.recv()).map_or_else(
                || PairStep::Failed {
                    exit: super::Exit::Network as u8,
                    message: "the pairing offer ended".into(),
                },
                PairStep::from,
            )),
        }
    }

    fn confirm(&mut self, accept: bool) -> Result<(), CliError> {
        match self {
            Offerer::Daemon(client) => {
                access::call(client, &Request::PairConfirm { accept })?;
                Ok(())
            }
            Offerer::Direct { ticket, .. } => {
                let _ = ticket.confirm.send(accept);
                Ok(())
            }
        }
    }

    fn finish(self) {
        if let Offerer::Direct { runtime, mesh, .. } = self {
            runtime.block_on(mesh.stop());
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the runtime: {e}")))
}

fn needs_terminal(yes: bool) -> Result<(), CliError> {
    if !yes && !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "comparing the pairing words needs a terminal; run this on one, or pass --yes".into(),
        ));
    }
    Ok(())
}

pub(super) fn add(ctx: &Context, args: &AddArgs) -> Result<(), CliError> {
    needs_terminal(args.yes)?;
    let (mut offerer, offer) = Offerer::open(ctx, args)?;
    if ctx.json {
        print_json(&json!({
            "code": offer.code,
            "link": offer.link,
            "peer_id": offer.peer_id,
            "addrs": offer.addrs,
            "expires_at": offer.expires_at,
        }));
    } else {
        say!(
            "Pairing code: {}   (valid until {}, one attempt)",
            offer.code,
            when(offer.expires_at)
        );
        say!("On the new device run `handoff peer join` and type the code at its prompt.");
        if let Some(link) = &offer.link
            && let Some(qr) = crate::net::code::qr(link)
        {
            say!("or scan this with the phone:\n{qr}");
        }
        say!("This device listens on: {}", offer.addrs.join(" "));
        say!("(from another network, add --addr with one of these)");
        say!("Waiting for the new device...");
    }
    let result = follow(ctx, &mut offerer, args.yes, offer.expires_at);
    offerer.finish();
    result
}

fn follow(ctx: &Context, offerer: &mut Offerer, yes: bool, expires: i64) -> Result<(), CliError> {
    loop {
        let waiting = super::output::Waiting::until(ctx.json, "Waiting".into(), expires);
        let step = offerer.next();
        drop(waiting);
        match step? {
            PairStep::Sas { sas } => {
                if ctx.json {
                    print_json(&json!({ "sas": sas }));
                } else {
                    say!("Both screens should show:  {sas}");
                }
                if !yes {
                    let accept = input::confirm("Do the words match? [y/N] ")?;
                    offerer.confirm(accept)?;
                }
            }
            PairStep::Renewed {
                code,
                link,
                message,
            } => {
                if ctx.json {
                    print_json(&json!({
                        "renewed": {"code": code, "link": link, "reason": message}
                    }));
                } else {
                    say!("{message}.");
                    say!("New pairing code: {code}   (same deadline, one attempt)");
                    if let Some(link) = &link
                        && let Some(qr) = crate::net::code::qr(link)
                    {
                        say!("or scan this with the phone:\n{qr}");
                    }
                    say!("Waiting for the new device...");
                }
            }
            PairStep::Paired {
                device_id,
                name,
                role,
            } => {
                if ctx.json {
                    print_json(&json!({
                        "paired": {"device_id": device_id, "name": name, "role": role}
                    }));
                } else {
                    say!("Paired '{name}' ({device_id}) as {role}.");
                }
                return Ok(());
            }
            PairStep::Failed { exit, message } => {
                return Err(CliError::Remote {
                    exit,
                    message,
                    passphrase: false,
                });
            }
        }
    }
}

// `peer join`'s options.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The code (NN-word-word-word) or a handoff://pair link; asked for if left out.
    code: Option<String>,
    /// This device's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where the adding device listens (default: look for it on the LAN).
    #[arg(long = "addr", value_name = "MULTIADDR", value_parser = crate::addr::parse)]
    addrs: Vec<Multiaddr>,
    /// Do not ask to compare the words shown on both devices.
    #[arg(long)]
    yes: bool,
    /// Do not look for the adding device on the LAN.
    #[arg(long)]
    no_mdns: bool,
}

pub(super) fn join(ctx: &Context, args: JoinArgs) -> Result<(), CliError> {
    super::vault_cmds::refuse_initialized(ctx)?;
    needs_terminal(args.yes)?;
    let typed = match args.code {
        Some(code) => zeroize::Zeroizing::new(code),
        None => input::line("Pairing code: ")?,
    };
    let (code, mut hints) = PairCode::parse(&typed).map_err(|e| CliError::Usage(e.to_string()))?;
    hints.addrs.extend(args.addrs);
    let (passphrase, name) = super::vault_cmds::new_device_inputs(ctx, args.name)?;
    let new = NewDevice {
        name: &name,
        passphrase: &passphrase,
        kdf: KdfParams::DEFAULT,
    };
    let pending = PendingJoin::prepare(ctx.home.clone(), &new)?;
    let quiet = ctx.json;
    let yes = args.yes;
    // While a step goes on, a line on a terminal counts the seconds; cleared before anything
    // else is written or asked.
    let waiting = Arc::new(std::sync::Mutex::new(None::<super::output::Waiting>));
    let stop_waiting = {
        let waiting = waiting.clone();
        move || drop(waiting.lock().map(|mut w| w.take()))
    };
    let on_step = waiting.clone();
    let before_confirm = stop_waiting.clone();
    let request = JoinRequest {
        code,
        hints,
        mdns: !args.no_mdns,
        confirm: Box::new(move |sas| {
            before_confirm();
            if quiet {
                print_json(&json!({ "sas": sas }));
            } else {
                say!("Both screens should show:  {sas}");
            }
            yes || input::confirm("Do the words match? [y/N] ").unwrap_or(false)
        }),
        progress: Box::new(move |line| {
            let Ok(mut shown) = on_step.lock() else {
                return;
            };
            drop(shown.take());
            if !quiet {
                say!("{line}");
                *shown = Some(super::output::Waiting::start(quiet, "waiting".into()));
            }
        }),
    };
    let joined = runtime()?.block_on(crate::net::join(pending, request));
    stop_waiting();
    let device = joined?;
    let state = device.state()?;
    let role = state
        .members
        .get(&device.device_id())
        .map_or("member", |m| m.role.as_str());
    if ctx.json {
        print_json(&json!({
            "device_id": device.device_id().to_hex(),
            "vault_id": state.info.id.to_hex(),
            "vault_name": state.info.name,
            "name": name,
            "role": role,
        }));
    } else {
        say!(
            "Joined vault '{}' as '{}' ({}), {role}.",
            state.info.name,
            name,
            device.device_id()
        );
        say!("Start the daemon to stay in sync:  handoff daemon start");
    }
    Ok(())
}

pub(super) fn list(ctx: &Context) -> Result<(), CliError> {
    let peers = run_op!(ctx, Op::ListPeers, Outcome::Peers(peers) => peers);
    if ctx.json {
        print_json(&serde_json::to_value(&peers).unwrap_or_default());
        return Ok(());
    }
    say!(
        "{:<20} {:<7} {:<12} {:<22} ADDRESS",
        "NAME",
        "ROLE",
        "STATUS",
        "LAST SEEN"
    );
    for p in &peers {
        let status = if p.this_device {
            "this device"
        } else if !p.active {
            "removed"
        } else {
            match p.online {
                Some(true) => "online",
                Some(false) => "offline",
                None => "no daemon",
            }
        };
        let seen = p.last_seen.map_or_else(|| "-".into(), when);
        say!(
            "{:<20} {:<7} {:<12} {:<22} {}",
            p.name,
            p.role,
            status,
            seen,
            p.address.as_deref().unwrap_or("-")
        );
    }
    for out in peers.iter().filter_map(|p| p.out_of_sync.as_ref()) {
        say!("{}", out.line(when));
    }
    Ok(())
}

pub(super) fn remove(ctx: &Context, query: &str) -> Result<(), CliError> {
    let remove = Op::RemovePeer {
        query: query.to_string(),
    };
    let removed = run_op!(ctx, remove, Outcome::Removed(removed) => removed);
    if ctx.json {
        print_json(&serde_json::to_value(&removed).unwrap_or_default());
        return Ok(());
    }
    say!(
        "Removed '{}' ({}). The vault key was rotated (generation {}): it opens nothing \
         added or changed from now on, and members refuse its connections and changes.",
        removed.name,
        removed.device_id,
        removed.epoch_generation
    );
    if removed.exposed.is_empty() {
        say!("It could read no token.");
    } else {
        say!(
            "It could read these {} tokens and may still know them; rotate them at the vendor:",
            removed.exposed.len()
        );
        for t in &removed.exposed {
            say!("  {}/{} ({})", t.service, t.label, &t.id[..8]);
        }
    }
    Ok(())
}

pub(super) fn rename(ctx: &Context, name: &str) -> Result<(), CliError> {
    let rename = Op::RenameDevice {
        name: name.to_string(),
    };
    let peers = run_op!(ctx, rename, Outcome::Peers(peers) => peers);
    let me = peers.iter().find(|p| p.this_device);
    if ctx.json {
        print_json(&serde_json::to_value(me).unwrap_or_default());
        return Ok(());
    }
    if let Some(me) = me {
        say!("This device is now '{}' in the vault.", me.name);
    }
    Ok(())
}
