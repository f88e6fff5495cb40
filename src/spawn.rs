//! Starting an agent session with the credential materialized only in the child process.
//!
//! Flow: resolve the agent and its executable (before asking for anything), pick the token
//! (`--service`, `--profile`, else the first accepted service with a default), decrypt it,
//! release the vault, materialize it ([`materialize`]) into the child's environment or
//! private files, run the child with the terminal, and clean up when it ends however it ends.
//! The credential never appears in argv, in handoff's own environment, or in a log.
//!
//! # Layout
//! - [`agents`]: the agent/service table and custom agents from `config.toml`.
//! - [`materialize`]: the child's environment, and private credential files.

pub mod agents;
pub mod materialize;
pub mod session;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::device::DeviceError;
use crate::doc::{Service, Token, VaultState};

pub use agents::{Agent, Delivery};
pub use materialize::{Materialized, PrivateDir, allowed_env, materialize};

/// Errors of starting an agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error("unknown agent '{name}' (known: {known}; add others under [agents] in config.toml)")]
    UnknownAgent { name: String, known: String },
    #[error("{agent} is not installed: '{command}' was not found on PATH")]
    NotInstalled { agent: String, command: String },
    #[error("{agent} cannot use {service} credentials; it accepts: {accepted}")]
    ServiceNotAccepted {
        agent: String,
        service: Service,
        accepted: String,
    },
    #[error(
        "no credential for {agent}: add one with `handoff token add SERVICE` ({agent} accepts: {accepted})"
    )]
    NoCredential { agent: String, accepted: String },
    #[error(
        "no token labelled '{label}' for {agent} (it accepts: {accepted}); see `handoff token list`"
    )]
    NoProfile {
        label: String,
        agent: String,
        accepted: String,
    },
    #[error("config.toml: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Picks the token for `agent`: of `service` if given (which the agent must accept), labelled
/// `profile` if given, else the default of the first accepted service that has one.
pub fn choose_token<'s>(
    state: &'s VaultState,
    agent: &Agent,
    service: Option<Service>,
    profile: Option<&str>,
) -> Result<&'s Token, SpawnError> {
    let services: Vec<Service> = match service {
        Some(s) if !agent.accepts.contains(&s) => {
            return Err(SpawnError::ServiceNotAccepted {
                agent: agent.name.clone(),
                service: s,
                accepted: agent.accepted_names(),
            });
        }
        Some(s) => vec![s],
        None => agent.accepts.clone(),
    };
    let found = match profile {
        Some(label) => {
            let mut first = None;
            for s in &services {
                let holders: Vec<&Token> = state
                    .live_tokens()
                    .filter(|t| t.service == *s && t.label == label)
                    .collect();
                // Two devices added (or renamed to) one label at once: never guess which.
                if let [_, _, ..] = holders.as_slice() {
                    return Err(SpawnError::Device(DeviceError::AmbiguousToken {
                        query: format!("{s}/{label}"),
                        matches: holders
                            .iter()
                            .map(|t| t.id.to_hex()[..12].to_string())
                            .collect(),
                    }));
                }
                if first.is_none() {
                    first = holders.first().copied();
                }
            }
            first
        }
        None => services
            .iter()
            .find_map(|s| state.defaults.get(s).and_then(|id| state.tokens.get(id))),
    };
    found.ok_or_else(|| match profile {
        Some(label) => SpawnError::NoProfile {
            label: label.to_string(),
            agent: agent.name.clone(),
            accepted: agent.accepted_names(),
        },
        None => SpawnError::NoCredential {
            agent: agent.name.clone(),
            accepted: agent.accepted_names(),
        },
    })
}

/// How `token` reaches `agent` (the agent accepts its service: [`choose_token`] saw to that).
pub fn delivery_for(agent: &Agent, token: &Token) -> Result<Delivery, SpawnError> {
    agent
        .delivery(token.service, token.kind)
        .ok_or_else(|| SpawnError::ServiceNotAccepted {
            agent: agent.name.clone(),
            service: token.service,
            accepted: agent.accepted_names(),
        })
}

/// Finds `command` on `path` (or takes it as given when it names a path), executable only.
pub fn resolve_command(
    agent: &str,
    command: &str,
    path: Option<&OsStr>,
) -> Result<PathBuf, SpawnError> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if command.contains('/') {
        Some(PathBuf::from(command)).filter(|p| executable(p))
    } else {
        path.into_iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(command))
            .find(|p| executable(p))
    };
    found.ok_or_else(|| SpawnError::NotInstalled {
        agent: agent.to_string(),
        command: command.to_string(),
    })
}

/// Signals a spawn catches from before its credential exists until the agent is gone, so no
/// signal can end handoff between writing the credential and cleaning it up.
#[derive(Debug)]
pub struct CaughtSignals(signal_hook::iterator::Signals);

impl CaughtSignals {
    /// Starts catching SIGINT, SIGQUIT, SIGTERM and SIGHUP. Call before materializing.
    pub fn catch() -> Result<Self, SpawnError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        signal_hook::iterator::Signals::new([SIGINT, SIGQUIT, SIGTERM, SIGHUP])
            .map(Self)
            .map_err(|e| SpawnError::Io(format!("cannot set up signal handling: {e}")))
    }
}

/// Runs `program` in `dir` with exactly `env` plus the credential, attached to this terminal,
/// and waits. Ctrl-C and Ctrl-\ reach the child from the terminal and do not stop handoff,
/// so cleanup always runs; SIGTERM and SIGHUP sent to handoff are passed on to the child.
/// Returns the exit code to report: the child's, or 128 + its signal.
pub fn run_foreground(
    signals: CaughtSignals,
    program: &Path,
    args: &[OsString],
    dir: &Path,
    env: Vec<(OsString, OsString)>,
    credential: Materialized,
) -> Result<i32, SpawnError> {
    use signal_hook::consts::{SIGHUP, SIGTERM};
    let CaughtSignals(mut signals) = signals;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env_clear().envs(env);
    for (name, value) in &credential.env {
        cmd.env(name, value.as_str());
    }
    let spawned = crate::home::with_user_umask(|| cmd.spawn());
    drop(cmd); // the Command holds a copy of the credential: gone as soon as the child has it
    let mut child =
        spawned.map_err(|e| SpawnError::Io(format!("cannot start {}: {e}", program.display())))?;
    if let Some(dir) = &credential.dir {
        dir.note_agent(child.id());
    }
    let pid = rustix::process::Pid::from_child(&child);
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for signal in signals.forever() {
            let forward = match signal {
                SIGTERM => Some(rustix::process::Signal::TERM),
                SIGHUP => Some(rustix::process::Signal::HUP),
                _ => None, // SIGINT/SIGQUIT: the terminal already sent them to the child
            };
            if let Some(sig) = forward {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });
    let status = child.wait();
    handle.close();
    let _ = forwarder.join();
    drop(credential); // removes the private directory
    let status = status.map_err(|e| SpawnError::Io(format!("lost track of the agent: {e}")))?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}
