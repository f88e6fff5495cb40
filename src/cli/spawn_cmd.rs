//! `spawn AGENT`: start an agent here, in the foreground, with its credential materialized in
//! the child only.

use std::ffi::OsString;
use std::path::PathBuf;

use super::access::run_op;
use super::{CliError, Context};
use crate::config::Config;

use crate::doc::Service;
use crate::ops::{Op, Outcome, Secret};
use crate::spawn::writeback::Ticket;
use crate::spawn::{
    Agent, Delivery, Materialized, UserDirs, allowed_env, materialize, resolve_command,
    run_foreground,
};

/// The agent table `spawn --help` ends with.
pub(super) const AGENTS_HELP: &str = "\
Agents and how each credential reaches them:
  claude    anthropic key: ANTHROPIC_API_KEY
            claude-subscription setup-token: CLAUDE_CODE_OAUTH_TOKEN
            claude-subscription login (.credentials.json): private CLAUDE_CONFIG_DIR
  codex     openai key: OPENAI_API_KEY
            openai-codex login (auth.json): private CODEX_HOME
  gemini    gemini key: GEMINI_API_KEY and GOOGLE_API_KEY
            gemini login (oauth_creds.json): private GEMINI_CLI_HOME
  opencode  anthropic, openai, openai-codex, as above
A private directory mirrors your own (~/.codex, ~/.claude and ~/.claude.json, ~/.gemini):
only the credential file is the session's. A login with a refresh token is leased to one
session at a time (--take takes it over) and what the agent refreshes is written back.";

// What `spawn` was asked for (the variant's doc comment is its help).
#[derive(Debug, clap::Args)]
pub struct SpawnArgs {
    /// claude, codex, gemini, opencode, or a custom agent from config.toml.
    agent: String,
    /// The directory to start it in (default: the current one).
    #[arg(long, value_name = "D")]
    dir: Option<PathBuf>,
    /// Use the token with this label.
    #[arg(long, value_name = "LABEL")]
    profile: Option<String>,
    /// Use a token of this service (one the agent accepts).
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// Run it in the background: in tmux when installed, else with its output in a log.
    #[arg(long)]
    detach: bool,
    /// Start it on another device of this vault instead (its name), in the background there;
    /// that device's own spawn policy decides, and its credential never leaves it.
    #[arg(long, value_name = "DEVICE", conflicts_with_all = ["take", "service_auth"])]
    on: Option<String>,
    /// Take a rotating OAuth login over from the session (on any device) that holds it; that
    /// session's later refreshes are then dropped.
    #[arg(long)]
    take: bool,
    /// `native`: pass no credential; the agent uses its own login.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = ServiceAuth::Handoff)]
    service_auth: ServiceAuth,
    /// Arguments for the agent, after `--`.
    #[arg(last = true)]
    args: Vec<OsString>,
}

/// Where the agent's credential comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServiceAuth {
    // From the vault, materialized for this agent only.
    Handoff,
    // Nowhere: the agent uses its own login.
    Native,
}

/// Runs the agent; returns the exit code to leave with (the agent's own).
pub(super) fn spawn(ctx: &Context, req: SpawnArgs) -> Result<i32, CliError> {
    if let Some(device) = req.on.clone() {
        return spawn_on(ctx, device, req).map(|()| 0);
    }
    // Everything that can fail without the vault fails before the passphrase is asked for.
    let config = Config::load(ctx.home.root()).map_err(|e| CliError::Usage(e.to_string()))?;
    let agent = Agent::find(&req.agent, &config)?;
    let program = resolve_command(
        &agent.name,
        &agent.command,
        std::env::var_os("PATH").as_deref(),
    )?;
    let dir = match req.dir {
        Some(d) => d,
        None => std::env::current_dir()
            .map_err(|e| CliError::Usage(format!("no working directory: {e}")))?,
    };
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let service = req
        .service
        .map(|s| s.parse::<Service>())
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;

    let session = crate::spawn::session::new_id()?;
    let wanted = Wanted {
        agent: &agent.name,
        service,
        profile: req.profile.clone(),
        session: &session,
        take: req.take,
    };
    if req.detach {
        let (delivery, secret, ticket) = if req.service_auth == ServiceAuth::Native {
            (None, zeroize::Zeroizing::new(Vec::new()), None)
        } else {
            let given = credential(ctx, &wanted)?;
            (Some(given.delivery), given.secret, given.ticket)
        };
        return super::session_cmds::start_detached(
            ctx,
            super::session_cmds::Detached {
                id: &session,
                agent: &agent.name,
                program: &program,
                dir: &dir,
                args: &req.args,
                delivery,
                secret,
                ticket,
                env: allowed_env(std::env::vars_os(), &config.env.allow),
            },
        )
        .map(|()| 0);
    }
    let signals = crate::spawn::CaughtSignals::catch()?;
    let (credential, ticket) = if req.service_auth == ServiceAuth::Native {
        (Materialized::default(), None)
    } else {
        let given = credential(ctx, &wanted)?;
        crate::spawn::materialize::sweep_stale();
        let made = materialize(
            &given.delivery,
            &given.secret,
            &UserDirs::from_env(),
            given.ticket.as_ref(),
        )?;
        (made, given.ticket)
    };
    let env = allowed_env(std::env::vars_os(), &config.env.allow);
    // This process supervises the agent's tree: the daemon refuses what it asks for.
    let tree = super::supervising::Supervising::start(ctx)?;
    if let Some(ticket) = &ticket {
        tree.renewing(ticket);
    }
    let ended = run_foreground(
        signals,
        ctx.home.root(),
        &program,
        &req.args,
        &dir,
        env,
        credential,
    );
    Ok(tree.ended_with(ended)?)
}

/// What a spawn asks the vault for.
struct Wanted<'a> {
    agent: &'a str,
    service: Option<Service>,
    profile: Option<String>,
    session: &'a str,
    take: bool,
}

/// What the vault gives a spawn.
struct Given {
    delivery: Delivery,
    secret: Secret,
    ticket: Option<Ticket>,
}

/// The credential `agent` gets from this vault, how it is delivered, and (a rotating OAuth
/// login) its lease's ticket; says what the person should know before the agent starts.
fn credential(ctx: &Context, w: &Wanted<'_>) -> Result<Given, CliError> {
    let op = Op::Credential {
        agent: w.agent.to_string(),
        service: w.service,
        profile: w.profile.clone(),
        session: w.session.to_string(),
        take: w.take,
    };
    let (delivery, secret, ticket, warnings) = run_op!(
        ctx,
        op,
        Outcome::Credential { delivery, secret, ticket, warnings } => (delivery, secret, ticket, warnings)
    );
    for warning in warnings {
        eprintln!("handoff: warning: {warning}");
    }
    Ok(Given {
        delivery,
        secret,
        ticket,
    })
}

/// `spawn AGENT --on DEVICE`: asks that device, through this one's daemon, for a session. The
/// request holds the agent, the directory there, the profile and the arguments: no secret.
fn spawn_on(ctx: &Context, device: String, req: SpawnArgs) -> Result<(), CliError> {
    let text = |what: &str, s: &std::ffi::OsStr| {
        s.to_str()
            .map(str::to_string)
            .ok_or_else(|| CliError::Usage(format!("{what} must be UTF-8 to be sent to {device}")))
    };
    let dir = match &req.dir {
        Some(d) => text("--dir", d.as_os_str())?,
        None => text(
            "the current directory",
            std::env::current_dir()
                .map_err(|e| CliError::Usage(format!("no working directory: {e}")))?
                .as_os_str(),
        )?,
    };
    let args = req
        .args
        .iter()
        .map(|a| text("an argument", a))
        .collect::<Result<Vec<_>, _>>()?;
    let request = crate::control::Request::SpawnOn {
        device: device.clone(),
        agent: req.agent.clone(),
        dir,
        profile: req.profile.clone(),
        service: req.service.clone(),
        args,
    };
    match super::session_cmds::ask_through_daemon(ctx, "spawn --on", &device, &request)? {
        crate::control::Response::Spawned { session, relayed } => {
            if ctx.json {
                super::print_json(
                    &serde_json::json!({"session": session, "on": device, "relayed": relayed}),
                );
            } else {
                let via = if relayed { ", through the relay" } else { "" };
                say!(
                    "Started session {session} on {device} ({}{via}): `handoff session stop --on {device} {session}`.",
                    req.agent
                );
            }
            Ok(())
        }
        other => Err(super::access::unexpected_response(&other)),
    }
}
