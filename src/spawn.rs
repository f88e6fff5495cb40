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
//! - [`tree`]: the agent's process tree under its supervisor.
//! - [`session`]: detached sessions.
//! - [`mirror`]: private agent homes that link the user's own; [`writeback`]: what an agent
//!   refreshed, sealed back to the vault.
//! - [`policy`]: which devices may ask this one to start an agent (`spawn-policy`).

pub mod agents;
pub mod materialize;
pub mod mirror;
pub mod policy;
pub mod session;
pub mod tmux;
pub mod tree;
pub mod writeback;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use signal_hook::iterator::exfiltrator::WithRawSiginfo;

use crate::device::DeviceError;
use crate::doc::{Service, Token, VaultState};

pub use agents::{Agent, Delivery};
pub use materialize::{Materialized, PrivateDir, UserDirs, allowed_env, materialize};

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
/// signal can end handoff between writing the credential and cleaning it up: every signal
/// whose default action ends a process and that a process may catch.
pub struct CaughtSignals(signal_hook::iterator::SignalsInfo<WithRawSiginfo>);

/// The signals [`CaughtSignals`] takes.
pub const CAUGHT: [i32; 8] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGQUIT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGUSR1,
    signal_hook::consts::SIGUSR2,
    signal_hook::consts::SIGALRM,
    signal_hook::consts::SIGPIPE,
];

impl std::fmt::Debug for CaughtSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaughtSignals")
    }
}

impl CaughtSignals {
    /// A caught signal that arrived since the last look, if any (without waiting).
    pub fn arrived(&mut self) -> Option<i32> {
        self.0.pending().next().map(|info| info.si_signo)
    }

    /// Starts catching [`CAUGHT`]. Call before materializing.
    pub fn catch() -> Result<Self, SpawnError> {
        signal_hook::iterator::SignalsInfo::<WithRawSiginfo>::new(CAUGHT)
            .map(Self)
            .map_err(|e| SpawnError::Io(format!("cannot set up signal handling: {e}")))
    }
}

/// How an agent's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The exit code to report: the agent's, or 128 + its signal.
    pub code: i32,
    /// Whether every process of its tree is gone ([`tree::end_tree`]).
    pub tree_empty: bool,
}

/// Runs `program` in `dir` with exactly `env` plus the credential, attached to this terminal,
/// and waits, as the supervisor of the agent's process tree ([`tree`]): this process becomes
/// its subreaper, and when the agent exits whatever it left running is ended. Signals never
/// stop handoff before cleanup: Ctrl-C and Ctrl-\ reach the agent from the terminal itself;
/// any caught signal another process sends is passed on to the agent while it runs.
pub fn run_foreground(
    signals: CaughtSignals,
    home: &Path,
    program: &Path,
    args: &[OsString],
    dir: &Path,
    env: Vec<(OsString, OsString)>,
    credential: Materialized,
) -> Result<Ended, SpawnError> {
    tree::become_supervisor(home)
        .map_err(|e| SpawnError::Io(format!("cannot supervise the agent's processes: {e}")))?;
    let Materialized {
        env: secret_env,
        dir: private,
        watch,
    } = credential;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env_clear().envs(env);
    for (name, value) in &secret_env {
        cmd.env(name, value.as_str());
    }
    let spawned = crate::home::with_user_umask(|| cmd.spawn());
    // The Command and the variables hold copies of the credential: gone as soon as the child
    // has its own.
    drop(cmd);
    drop(secret_env);
    let mut child =
        spawned.map_err(|e| SpawnError::Io(format!("cannot start {}: {e}", program.display())))?;
    let pid = rustix::process::Pid::from_child(&child);
    let forwarder = Forwarder::start(signals, move |sig| {
        let _ = rustix::process::kill_process(pid, sig);
    });
    let status = child.wait();
    // Once the agent is reaped its pid may be reused: nothing is passed on after that.
    forwarder.quiet();
    let tree_empty = tree::end_tree();
    forwarder.finish();
    Materialized::finish(watch, private); // writes back, then removes the private directory
    let status = status.map_err(|e| SpawnError::Io(format!("lost track of the agent: {e}")))?;
    Ok(Ended {
        code: exit_code(status),
        tree_empty,
    })
}

/// The code to report for a process that ended with `status`: its own, or 128 + its signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Passes the signals a supervisor catches on (`to`), from a thread, until told to stop.
/// Ctrl-C and Ctrl-\ from the terminal reached the agent already (it shares the terminal's
/// process group), so those are not passed on twice; what a process sent reached only
/// handoff.
struct Forwarder {
    handle: signal_hook::iterator::Handle,
    quiet: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Forwarder {
    fn start(
        signals: CaughtSignals,
        to: impl Fn(rustix::process::Signal) + Send + 'static,
    ) -> Self {
        let CaughtSignals(mut signals) = signals;
        let quiet = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = signals.handle();
        let stopped = quiet.clone();
        let thread = std::thread::spawn(move || {
            for info in signals.forever() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let from_terminal = info.si_code > 0;
                let interactive = [signal_hook::consts::SIGINT, signal_hook::consts::SIGQUIT]
                    .contains(&info.si_signo);
                if interactive && from_terminal {
                    continue;
                }
                if let Some(sig) = rustix::process::Signal::from_named_raw(info.si_signo) {
                    to(sig);
                }
            }
        });
        Self {
            handle,
            quiet,
            thread,
        }
    }

    /// Passes nothing on from now: what it passed to is gone.
    fn quiet(&self) {
        self.quiet.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn finish(self) {
        self.quiet();
        self.handle.close();
        let _ = self.thread.join();
    }
}
