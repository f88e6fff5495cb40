//! The command line: clap definitions, dispatch, and the mapping of every error to one line
//! and one exit code.
//!
//! Secrets never come from argv: passphrases come from `--passphrase-file` /
//! `HANDOFF_PASSPHRASE_FILE` or the terminal, tokens from `--from-file`, the terminal (hidden)
//! or stdin. See [`input`].
//!
//! # Layout
//! - [`input`]: reading passphrases, tokens and recovery codes; [`output`]: writing results.
//! - `vault_cmds`: `init`, `status`, `export`, `import`, `recover`.
//! - `token_cmds`: `token add|list|show|rm|default|check|rename`; `resolve_cmd`: `token
//!   resolve|history`.
//! - `peer_cmds`: `peer add|join|list|remove`.
//! - `relay_cmds`: `relay add|list|rm`.
//! - `audit_cmd`: `audit`.
//! - `reference_cmds`: `completions`, `man`.
//! - `demo`: the end-to-end demonstration on temporary homes.

/// `println!` for command output: a reader that went away ends output quietly (see
/// [`output`]).
macro_rules! say {
    () => { $crate::cli::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}

mod access;
mod audit_cmd;
mod daemon_cmds;
#[cfg(feature = "demo")]
mod demo;
pub mod input;
pub mod output;
mod peer_cmds;
mod policy_cmds;
mod reference_cmds;
mod relay_cmds;
mod resolve_cmd;
mod session_cmds;
mod spawn_cmd;
mod supervising;
mod token_cmds;
mod vault_cmds;

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};

use crate::device::DeviceError;
pub use crate::ops::Exit;
use crate::ops::OpError;
use crate::ops::error::{device_exit, net_exit, spawn_exit};
use crate::vault::VaultError;

/// handoff: your AI-agent credentials on your own devices, synced peer to peer.
#[derive(Debug, Parser)]
#[command(name = "handoff", version, about, max_term_width = 100)]
pub struct Cli {
    /// The home directory (default: $HANDOFF_HOME, else the platform data dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the passphrase from this file's first line instead of the terminal [env:
    /// HANDOFF_PASSPHRASE_FILE; empty counts as unset].
    #[arg(long, global = true, value_name = "F")]
    pub passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a vault with this device as its first member; prints the recovery code once.
    Init {
        /// This device's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// The vault's name.
        #[arg(long, default_value = "personal")]
        vault_name: String,
    },
    /// Show the vault, this device, lock state and counts.
    Status,
    /// Add, list, reveal and remove vendor tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write the vault document (standard Automerge binary; holds no plaintext token).
    Export {
        /// Write to this file (default: stdout, when it is not a terminal).
        #[arg(long, value_name = "F")]
        out: Option<PathBuf>,
    },
    /// Merge a document export of this same vault.
    Import {
        /// The exported file.
        file: PathBuf,
    },
    /// Regain the vault on an empty home from an export and the recovery code.
    Recover {
        /// A document export (from `handoff export`, a surviving device or a backup).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Read the recovery code from this file instead of the terminal.
        #[arg(long, value_name = "F")]
        code_file: Option<PathBuf>,
        /// This device's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Start an agent here with its credential in its own environment or private files only.
    #[command(after_help = spawn_cmd::AGENTS_HELP)]
    Spawn(spawn_cmd::SpawnArgs),
    /// Detached agent sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Which devices may ask this one to start agents (this device's own; default deny).
    #[command(subcommand)]
    SpawnPolicy(policy_cmds::PolicyCommand),
    /// Pair, list and remove the devices of this vault.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// The blind relays that keep envelopes for members that are offline.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// The vault's signed audit, newest first: membership, token, relay and spawn events.
    Audit {
        /// Only entries written by this device (a name or device id).
        #[arg(long, value_name = "DEVICE")]
        device: Option<String>,
        /// Only entries at or after this time (2026-12-01T10:00:00Z, Unix seconds, or 2h ago).
        #[arg(long, value_name = "T")]
        since: Option<String>,
    },
    /// Keep the vault key in the daemon for a while, so commands need no passphrase.
    Unlock {
        /// How long (e.g. 30m, 8h; default 8h).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
    },
    /// Drop the vault key from the daemon now.
    Lock,
    /// Run, stop, inspect or install the daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Run the whole flow end to end on temporary homes, with built-in sample values.
    Demo,
    #[command(flatten)]
    Reference(handoff_relay::reference::ReferenceCommand),
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Sessions started with `spawn --detach`, running and ended.
    List {
        /// The sessions this device started on member DEVICE (`spawn --on`).
        #[arg(long, value_name = "DEVICE")]
        on: Option<String>,
    },
    /// Attach to a tmux session (or print a background session's output).
    Attach { id: String },
    /// Stop a session: its agent gets SIGTERM, its credential files are removed.
    Stop {
        id: String,
        /// A session this device started on member DEVICE (`spawn --on`).
        #[arg(long, value_name = "DEVICE")]
        on: Option<String>,
    },
    /// Runs inside a detached session (started by `spawn --detach`).
    #[command(hide = true)]
    Supervise(session_cmds::SuperviseArgs),
    /// Runs the agent in a tmux-mode session's first pane.
    #[command(hide = true)]
    Pane(session_cmds::PaneArgs),
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Offer to pair a new device (on an admin device); prints a code and waits for it.
    Add(peer_cmds::AddArgs),
    /// Join a vault from this new device with the code `peer add` printed.
    Join(peer_cmds::JoinArgs),
    /// The devices of this vault: role, online or last seen, address.
    List,
    /// Remove a device: rotate the vault key, disconnect it, refuse it from now on.
    Remove {
        /// Its name or device id.
        name: String,
    },
    /// Give this device another name, the one the other members list it by.
    Rename {
        /// The new name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// List a relay for every member (admins): the address `handoff-relay serve` prints.
    Add {
        /// Its multiaddr(s), best with /p2p/<relay PeerId> (repeatable).
        #[arg(required = true, value_parser = crate::addr::parse)]
        addrs: Vec<crate::addr::Multiaddr>,
        /// The relay's access token, from this file's first line.
        #[arg(long, value_name = "F")]
        token_file: Option<PathBuf>,
    },
    /// The relays this vault uses.
    List,
    /// Stop using a relay.
    Rm {
        /// Its id (or a unique prefix).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start the daemon in the background (logs to $HANDOFF_HOME/daemon.log).
    Start(daemon_cmds::StartArgs),
    /// Stop the running daemon.
    Stop,
    /// Whether a daemon runs, and whether it holds the key.
    Status,
    /// Print the end of the daemon's log.
    Logs,
    /// Install a systemd user unit (launchd agent on macOS) that runs the daemon at login.
    Install {
        /// Print the unit instead of writing it.
        #[arg(long)]
        print: bool,
    },
    /// Remove the installed unit.
    Uninstall,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Store a token for SERVICE (anthropic, claude-subscription, openai, openai-codex, gemini).
    Add {
        service: String,
        /// A name for this credential, to keep several per service.
        #[arg(long, default_value = "default")]
        label: String,
        /// Make it the service's default.
        #[arg(long)]
        default: bool,
        /// Read the token from this file (default: hidden prompt, or stdin when piped).
        #[arg(long, value_name = "F")]
        from_file: Option<PathBuf>,
        /// Change the secret of an existing SERVICE/LABEL.
        #[arg(long)]
        replace: bool,
    },
    /// List tokens: services, labels, defaults; never a secret.
    List,
    /// Show a token's details; with --reveal, print its secret.
    Show {
        /// Token id, id prefix, or SERVICE/LABEL.
        id: String,
        /// Decrypt and print the secret (asks for the passphrase).
        #[arg(long)]
        reveal: bool,
    },
    /// Delete a token.
    Rm {
        /// Token id, id prefix, or SERVICE/LABEL.
        id: String,
    },
    /// Make a token its service's default.
    Default {
        /// Token id, id prefix, or SERVICE/LABEL.
        id: String,
    },
    /// Check OAuth logins' access-token expiry: exits 12 when one has expired, or expires
    /// within --within (a login with a refresh token renews it when its agent starts).
    Check {
        /// Token id, id prefix, or SERVICE/LABEL (default: every OAuth login).
        id: Option<String>,
        /// Also count a login that expires within this long (e.g. 1h, 2d).
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        within: humantime::Duration,
    },
    /// A conflicted token's versions (writer, time, label, kind); with --keep, keep one.
    Resolve {
        /// Token id, id prefix, or SERVICE/LABEL.
        id: String,
        /// The version to keep: its code, its number in the list, or the device that wrote it.
        #[arg(long, value_name = "VERSION")]
        keep: Option<String>,
        /// Also print each version's secret (asks for the passphrase).
        #[arg(long, conflicts_with = "keep")]
        reveal: bool,
    },
    /// Every version a token ever had, oldest first, including those a resolve replaced.
    History {
        /// Token id, id prefix, or SERVICE/LABEL.
        id: String,
        /// Also print each version's secret (asks for the passphrase).
        #[arg(long)]
        reveal: bool,
    },
    /// Give a token another label (its secret stays as it is).
    Rename {
        /// Token id, id prefix, or SERVICE/LABEL.
        id: String,
        /// The new label, unique within the token's service.
        label: String,
    },
}

/// A command's failure: one line for the user and an exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Spawn(#[from] crate::spawn::SpawnError),
    #[error("{0}")]
    Usage(String),
    #[error("the vault is locked: {0}")]
    Locked(String),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotRunning(String),
    /// `token check` found logins that expired or soon will.
    #[error("{0}")]
    Expiring(String),
    /// A failure the daemon reported, with the exit code it chose.
    #[error("{message}")]
    Remote {
        exit: u8,
        message: String,
        /// The same request with the passphrase may succeed.
        passphrase: bool,
    },
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("refused: {0}")]
    Contained(String),
}

/// An operation's failure, as the command reports it (the same line and exit code).
impl From<OpError> for CliError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Device(e) => CliError::Device(e),
            OpError::Spawn(e) => CliError::Spawn(e),
            OpError::Usage(m) => CliError::Usage(m),
            OpError::Locked(m) => CliError::Locked(m),
            OpError::Internal(m) => CliError::Internal(m),
            OpError::Busy(m) => CliError::Busy(m),
            OpError::Net(e) => CliError::Net(e),
            OpError::Contained(m) => CliError::Contained(m),
            e @ (OpError::Policy(_) | OpError::Refused(..)) => CliError::Remote {
                exit: e.exit() as u8,
                message: e.to_string(),
                passphrase: false,
            },
        }
    }
}

impl From<VaultError> for CliError {
    fn from(e: VaultError) -> Self {
        CliError::Device(e.into())
    }
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Device(e) => device_exit(e),
            CliError::Spawn(e) => spawn_exit(e),
            CliError::Usage(_) => Exit::Usage,
            CliError::Locked(_) | CliError::Contained(_) => Exit::Locked,
            CliError::File { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Exit::NotFound
            }
            CliError::File { .. } | CliError::Internal(_) => Exit::Internal,
            CliError::Remote { exit, .. } => Exit::from_code(*exit),
            CliError::Busy(_) => Exit::Busy,
            CliError::NotRunning(_) => Exit::NotFound,
            CliError::Expiring(_) => Exit::Expiring,
            CliError::Net(e) => net_exit(e),
        }
    }
}

/// Runs one parsed command; returns the exit code on success (0, or a spawned agent's own).
pub fn run(cli: Cli) -> Result<i32, CliError> {
    // The reference needs no home.
    let command = match cli.command {
        Command::Reference(what) => return reference_cmds::run(what).map(|()| 0),
        command => command,
    };
    let ctx = Context {
        home: crate::home::Home::locate(cli.home).map_err(DeviceError::from)?,
        json: cli.json,
        passphrase_file: cli
            .passphrase_file
            .or_else(|| crate::home::env_path("HANDOFF_PASSPHRASE_FILE")),
    };
    match command {
        Command::Init { name, vault_name } => vault_cmds::init(&ctx, name, &vault_name),
        Command::Status => vault_cmds::status(&ctx),
        Command::Token(cmd) => token_cmds::run(&ctx, cmd),
        Command::Export { out } => vault_cmds::export(&ctx, out),
        Command::Import { file } => vault_cmds::import(&ctx, &file),
        Command::Recover {
            from,
            code_file,
            name,
        } => vault_cmds::recover(&ctx, &from, code_file, name),
        Command::Spawn(args) => return spawn_cmd::spawn(&ctx, args),
        Command::Session(cmd) => match cmd {
            SessionCommand::List { on: None } => session_cmds::list(&ctx),
            SessionCommand::List { on: Some(device) } => session_cmds::list_on(&ctx, &device),
            SessionCommand::Attach { id } => return session_cmds::attach(&ctx, &id),
            SessionCommand::Stop { id, on: None } => session_cmds::stop(&ctx, &id),
            SessionCommand::Stop {
                id,
                on: Some(device),
            } => session_cmds::stop_on(&ctx, &device, &id),
            SessionCommand::Supervise(args) => return session_cmds::supervise(&ctx, args),
            SessionCommand::Pane(args) => return session_cmds::pane(&args),
        },
        Command::SpawnPolicy(cmd) => policy_cmds::run(&ctx, cmd),
        Command::Peer(cmd) => match cmd {
            PeerCommand::Add(args) => peer_cmds::add(&ctx, &args),
            PeerCommand::Join(args) => peer_cmds::join(&ctx, args),
            PeerCommand::List => peer_cmds::list(&ctx),
            PeerCommand::Remove { name } => peer_cmds::remove(&ctx, &name),
            PeerCommand::Rename { name } => peer_cmds::rename(&ctx, &name),
        },
        Command::Relay(cmd) => match cmd {
            RelayCommand::Add { addrs, token_file } => {
                relay_cmds::add(&ctx, addrs, token_file.as_deref())
            }
            RelayCommand::List => relay_cmds::list(&ctx),
            RelayCommand::Rm { id } => relay_cmds::remove(&ctx, &id),
        },
        Command::Audit { device, since } => audit_cmd::run(&ctx, device, since.as_deref()),
        Command::Unlock { duration } => daemon_cmds::unlock(&ctx, duration),
        Command::Lock => daemon_cmds::lock(&ctx),
        Command::Daemon(cmd) => match cmd {
            DaemonCommand::Start(args) => daemon_cmds::start(&ctx, args),
            DaemonCommand::Stop => daemon_cmds::stop(&ctx),
            DaemonCommand::Status => daemon_cmds::status(&ctx),
            DaemonCommand::Logs => daemon_cmds::logs(&ctx),
            DaemonCommand::Install { print } => daemon_cmds::install(&ctx, print),
            DaemonCommand::Uninstall => daemon_cmds::uninstall(&ctx),
        },
        Command::Reference(_) => unreachable!("run above"),
        #[cfg(feature = "demo")]
        Command::Demo => demo::run(ctx.json),
        #[cfg(not(feature = "demo"))]
        Command::Demo => Err(CliError::Usage(
            "this handoff was built without the demo (cargo feature `demo`)".into(),
        )),
    }
    .map(|()| 0)
}

/// `--role` takes a role by its name.
impl ValueEnum for crate::doc::Role {
    fn value_variants<'a>() -> &'a [Self] {
        &crate::doc::Role::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

/// What every command needs besides its own arguments.
#[derive(Debug)]
pub(crate) struct Context {
    pub home: crate::home::Home,
    pub json: bool,
    pub passphrase_file: Option<PathBuf>,
}

/// Formats Unix seconds for people.
pub(crate) use crate::entropy::when;

/// Serializes output that holds a secret straight into a zeroizing buffer, sized so it does not
/// reallocate (and leave copies) for a secret of `secret_len` bytes, escapes included.
pub(crate) fn secret_json<T: serde::Serialize>(
    value: &T,
    secret_len: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, CliError> {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(secret_len * 6 + 512));
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| CliError::Internal(format!("cannot encode JSON: {e}")))?;
    Ok(buf)
}

/// Writes bytes and a newline to stdout and flushes, reporting failure instead of panicking.
pub(crate) fn write_stdout_line(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Prints one JSON value on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    say!("{value}");
}
