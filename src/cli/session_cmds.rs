//! `spawn --detach` and `session list|attach|stop` (and the hidden `session supervise` that
//! runs inside each detached session).

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{CliError, Context, print_json, when};
use crate::spawn::session::{self, Handover, SessionRecord, Supervise};
use crate::spawn::{Delivery, resolve_command};

/// How long the CLI waits for a detached supervisor to take the credential, or to stop.
const WAIT: Duration = Duration::from_secs(10);
/// How long `spawn --detach` waits for its supervisor to say the agent is starting (it
/// registers with the daemon and materializes the credential first).
const WAIT_STARTED: Duration = Duration::from_secs(30);

/// What a detached spawn needs, resolved by the caller.
pub(super) struct Detached<'a> {
    pub id: &'a str,
    pub agent: &'a str,
    pub program: &'a Path,
    pub dir: &'a Path,
    pub args: &'a [OsString],
    pub delivery: Option<Delivery>,
    pub secret: zeroize::Zeroizing<Vec<u8>>,
    pub ticket: Option<crate::spawn::writeback::Ticket>,
    pub env: Vec<(OsString, OsString)>,
}

pub(super) fn start_detached(ctx: &Context, d: Detached<'_>) -> Result<(), CliError> {
    let id = d.id.to_string();
    // The handover's socket: the other end becomes the supervisor's standard input.
    let (handing, supervisor_stdin) = session::Handing::pair()?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Internal(format!("cannot find this program: {e}")))?;
    // tmux when installed and its socket path fits (a very deep home's would not).
    let tmux = resolve_command("tmux", "tmux", std::env::var_os("PATH").as_deref()).ok();
    let fits = session::socket_path_fits(&session::tmux_socket(ctx.home.root(), &id));
    let mode = if tmux.is_some() && fits {
        "tmux"
    } else {
        "background"
    };
    let mut supervisor_args: Vec<OsString> = vec![
        "--home".into(),
        ctx.home.root().into(),
        "session".into(),
        "supervise".into(),
        "--id".into(),
        id.clone().into(),
        "--agent".into(),
        d.agent.into(),
        "--mode".into(),
        mode.into(),
        "--dir".into(),
        d.dir.into(),
        "--program".into(),
        d.program.into(),
        "--".into(),
    ];
    supervisor_args.extend(d.args.iter().cloned());
    // In both modes the supervisor starts on its own; in tmux mode it starts the session's
    // tmux server itself, so that server is inside its tree (`spawn::tmux`), and what goes
    // wrong reaches the session's record, not a log.
    session::sessions_dir(ctx.home.root())?;
    let log_path = session::log_path(ctx.home.root(), &id);
    let output = || -> Result<Stdio, CliError> {
        if mode == "tmux" {
            return Ok(Stdio::null());
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map(Stdio::from)
            .map_err(|source| CliError::File {
                what: "cannot open",
                path: log_path.clone(),
                source,
            })
    };
    let started = crate::home::with_user_umask(|| {
        Command::new(&exe)
            .args(&supervisor_args)
            .env_remove("HANDOFF_PASSPHRASE_FILE")
            .stdin(supervisor_stdin)
            .stdout(output()?)
            .stderr(output()?)
            .process_group(0)
            .spawn()
            .map(drop)
            .map_err(|e| CliError::Internal(format!("cannot start the session: {e}")))
    });
    started?;
    let handover = Handover {
        delivery: d.delivery,
        secret: d.secret,
        env: session::env_bytes(&d.env),
        user: crate::spawn::UserDirs::from_env(),
        ticket: d.ticket,
    };
    handing.hand_over(&handover, WAIT_STARTED)?;
    drop(handover);
    if ctx.json {
        print_json(&json!({"session": id, "mode": mode}));
    } else if mode == "tmux" {
        say!(
            "Session {id} started in tmux ({}): `handoff session attach {id}`.",
            SessionRecord::tmux_name(&id)
        );
    } else {
        say!(
            "Session {id} started in the background; output: {}",
            session::log_path(ctx.home.root(), &id).display()
        );
    }
    Ok(())
}

/// Runs inside a detached session.
pub(super) fn supervise(ctx: &Context, s: SuperviseArgs) -> Result<i32, CliError> {
    let starter = session::Starter::from_stdin()?;
    let supervise = Supervise {
        home: ctx.home.root(),
        id: &s.id,
        agent: &s.agent,
        mode: &s.mode,
        program: &s.program,
        dir: &s.dir,
        args: &s.args,
    };
    // Before the credential arrives: the daemon refuses what this tree asks for from the start.
    let tree = match super::supervising::Supervising::start(ctx) {
        Ok(tree) => tree,
        Err(e) => {
            session::record_failed(&supervise, &e.to_string());
            starter.failed(&e.to_string());
            return Err(e);
        }
    };
    let ended = session::supervise(&supervise, starter, &|ticket| tree.renewing(ticket));
    Ok(tree.ended_with(ended)?)
}

/// Runs inside a tmux-mode session's first pane.
pub(super) fn pane(p: &PaneArgs) -> Result<i32, CliError> {
    let Some((program, args)) = p.program.split_first() else {
        return Err(CliError::Usage("no program to run".into()));
    };
    Ok(crate::spawn::tmux::pane(
        &p.exit_file,
        std::path::Path::new(program),
        args,
    )?)
}

// The hidden pane's arguments.
#[derive(Debug, clap::Args)]
pub struct PaneArgs {
    #[arg(long)]
    exit_file: PathBuf,
    #[arg(last = true, required = true)]
    program: Vec<OsString>,
}

// The hidden supervisor's arguments.
#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    agent: String,
    #[arg(long)]
    mode: String,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    program: PathBuf,
    #[arg(last = true)]
    args: Vec<OsString>,
}

fn state(r: &SessionRecord) -> String {
    if r.failure.is_some() {
        return "failed".into();
    }
    match (r.is_running(), r.exit) {
        (true, _) => "running".into(),
        (false, Some(code)) => format!("exited {code}"),
        (false, None) => "lost".into(),
    }
}

/// Sends `request` (for `what`, asking member `device`) through this device's daemon, with a
/// progress line on a terminal while the answer is awaited.
pub(super) fn ask_through_daemon(
    ctx: &Context,
    what: &str,
    device: &str,
    request: &crate::control::Request,
) -> Result<crate::control::Response, CliError> {
    let mut client = crate::control::Client::connect(&ctx.home.socket_path()).ok_or_else(|| {
        CliError::NotRunning(format!(
            "{what} asks through this device's daemon, and none runs: `handoff daemon start`"
        ))
    })?;
    let _waiting = super::output::Waiting::start(ctx.json, format!("Waiting for {device}"));
    super::access::call(&mut client, request)
}

/// `session list --on DEVICE`: the sessions this device started there.
pub(super) fn list_on(ctx: &Context, device: &str) -> Result<(), CliError> {
    let request = crate::control::Request::SessionsOn {
        device: device.to_string(),
    };
    let rows = match ask_through_daemon(ctx, "session list --on", device, &request)? {
        crate::control::Response::RemoteSessions { rows } => rows,
        other => return Err(super::access::unexpected_response(&other)),
    };
    if ctx.json {
        print_json(&serde_json::to_value(&rows).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        say!("No sessions of this device's on {device}.");
        return Ok(());
    }
    say!(
        "{:<10} {:<10} {:<11} {:<21} DIR",
        "ID",
        "AGENT",
        "STATE",
        "STARTED"
    );
    for r in &rows {
        say!(
            "{:<10} {:<10} {:<11} {:<21} {}",
            r.session,
            r.agent,
            r.state,
            when(r.started_at),
            r.dir
        );
    }
    Ok(())
}

/// `session stop --on DEVICE ID`: stops a session this device started there.
pub(super) fn stop_on(ctx: &Context, device: &str, id: &str) -> Result<(), CliError> {
    let request = crate::control::Request::StopOn {
        device: device.to_string(),
        session: id.to_string(),
    };
    match ask_through_daemon(ctx, "session stop --on", device, &request)? {
        crate::control::Response::Done => {
            if ctx.json {
                print_json(&json!({"stopped": id, "on": device}));
            } else {
                say!("Stopped session {id} on {device}.");
            }
            Ok(())
        }
        other => Err(super::access::unexpected_response(&other)),
    }
}

pub(super) fn list(ctx: &Context) -> Result<(), CliError> {
    let records = session::list(ctx.home.root());
    if ctx.json {
        let rows: Vec<_> = records
            .iter()
            .map(|r| json!({"id": r.id, "agent": r.agent, "mode": r.mode, "state": state(r), "exit": r.exit, "dir": r.dir, "started_at": r.started_at, "log": r.log, "failure": r.failure}))
            .collect();
        print_json(&serde_json::Value::Array(rows));
        return Ok(());
    }
    if records.is_empty() {
        say!("No sessions. Start one with `handoff spawn AGENT --detach`.");
        return Ok(());
    }
    say!(
        "{:<10} {:<10} {:<11} {:<11} {:<21} DIR",
        "ID",
        "AGENT",
        "MODE",
        "STATE",
        "STARTED"
    );
    for r in &records {
        say!(
            "{:<10} {:<10} {:<11} {:<11} {:<21} {}",
            r.id,
            r.agent,
            r.mode,
            state(r),
            when(r.started_at),
            r.dir
        );
    }
    Ok(())
}

fn find(ctx: &Context, id: &str) -> Result<SessionRecord, CliError> {
    session::find(ctx.home.root(), id).ok_or_else(|| {
        CliError::NotRunning(format!(
            "no session matches '{id}' (see `handoff session list`)"
        ))
    })
}

pub(super) fn stop(ctx: &Context, id: &str) -> Result<(), CliError> {
    let record = find(ctx, id)?;
    if session::stop(ctx.home.root(), &record, WAIT)? {
        say!("Stopped session {}.", record.id);
    } else {
        say!(
            "Session {} has already ended ({}).",
            record.id,
            state(&record)
        );
    }
    Ok(())
}

pub(super) fn attach(ctx: &Context, id: &str) -> Result<i32, CliError> {
    let record = find(ctx, id)?;
    if record.mode == "tmux" && record.is_running() {
        let tmux = resolve_command("tmux", "tmux", std::env::var_os("PATH").as_deref())?;
        let args: Vec<OsString> = vec![
            "-S".into(),
            session::tmux_socket(ctx.home.root(), &record.id).into(),
            "attach-session".into(),
            "-t".into(),
            SessionRecord::tmux_name(&record.id).into(),
        ];
        // The attached client runs what the session tells it to (`detach-client -E`,
        // `lock-command`), so the agent could start work through it: it is supervised as
        // the agent is, and nothing it starts is served.
        let signals = crate::spawn::CaughtSignals::catch()?;
        let here = std::env::current_dir().unwrap_or_else(|_| "/".into());
        let tree = super::supervising::Supervising::start(ctx)?;
        let ended = crate::spawn::run_foreground(
            signals,
            ctx.home.root(),
            &tmux,
            &args,
            &here,
            // What the client runs for the session gets no passphrase file of the user's.
            std::env::vars_os()
                .filter(|(k, _)| k != "HANDOFF_PASSPHRASE_FILE")
                .collect(),
            crate::spawn::Materialized::default(),
        );
        return Ok(tree.ended_with(ended)?);
    }
    match &record.log {
        Some(log) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            crate::cli::output::text(format_args!("{text}"));
            if record.is_running() {
                eprintln!(
                    "(a background session has no terminal to attach to; this is its output so far)"
                );
            }
            Ok(0)
        }
        None => Err(CliError::NotRunning(format!(
            "session {} has ended ({}{})",
            record.id,
            state(&record),
            record
                .failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        ))),
    }
}
