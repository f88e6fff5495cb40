//! `spawn AGENT`: start an agent here, in the foreground, with its credential materialized in
//! the child only.

use std::ffi::OsString;
use std::path::PathBuf;

use super::access::run_op;
use super::{CliError, Context};
use crate::config::Config;

use crate::doc::Service;
use crate::ops::{Op, Outcome, Secret};
use crate::spawn::{
    Agent, Delivery, Materialized, allowed_env, materialize, resolve_command, run_foreground,
};

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

    if req.detach {
        let (delivery, secret) = if req.service_auth == ServiceAuth::Native {
            (None, zeroize::Zeroizing::new(Vec::new()))
        } else {
            let (delivery, secret) = credential(ctx, &agent.name, service, req.profile.clone())?;
            (Some(delivery), secret)
        };
        return super::session_cmds::start_detached(
            ctx,
            super::session_cmds::Detached {
                agent: &agent.name,
                program: &program,
                dir: &dir,
                args: &req.args,
                delivery,
                secret,
                env: allowed_env(std::env::vars_os(), &config.env.allow),
            },
        )
        .map(|()| 0);
    }
    let signals = crate::spawn::CaughtSignals::catch()?;
    let credential = if req.service_auth == ServiceAuth::Native {
        Materialized {
            env: Vec::new(),
            dir: None,
        }
    } else {
        let (delivery, secret) = credential(ctx, &agent.name, service, req.profile.clone())?;
        crate::spawn::materialize::sweep_stale();
        materialize(&delivery, &secret)?
    };
    let env = allowed_env(std::env::vars_os(), &config.env.allow);
    // This process supervises the agent's tree: the daemon refuses what it asks for.
    let tree = super::supervising::Supervising::start(ctx)?;
    let ended = run_foreground(signals, &program, &req.args, &dir, env, credential);
    Ok(tree.ended_with(ended)?)
}

/// The credential `agent` gets from this vault, and how it is delivered.
fn credential(
    ctx: &Context,
    agent: &str,
    service: Option<Service>,
    profile: Option<String>,
) -> Result<(Delivery, Secret), CliError> {
    let op = Op::Credential {
        agent: agent.to_string(),
        service,
        profile,
    };
    Ok(run_op!(ctx, op, Outcome::Credential { delivery, secret } => (delivery, secret)))
}
