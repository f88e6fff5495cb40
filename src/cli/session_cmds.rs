//! `spawn --detach` and `session list|attach|stop` (and the hidden `session supervise` that
//! runs inside each detached session).

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{CliError, Context, print_json, when};
use crate::spawn::session::{self, Handover, SessionRecord, Supervise};
use crate::spawn::{Delivery, resolve_command};

/// How long the CLI waits for a detached supervisor to take the credential, or to stop.
const WAIT: Duration = Duration::from_secs(10);

/// What a detached spawn needs, resolved by the caller.
pub(super) struct Detached<'a> {
    pub agent: &'a str,
    pub program: &'a Path,
    pub dir: &'a Path,
    pub args: &'a [OsString],
    pub delivery: Option<Delivery>,
    pub secret: zeroize::Zeroizing<Vec<u8>>,
    pub env: Vec<(OsString, OsString)>,
}

pub(super) fn start_detached(ctx: &Context, d: Detached<'_>) -> Result<(), CliError> {
    // From before the FIFO exists until the handover is done: a signal ends the wait and the
    // FIFO's directory is removed, never left behind.
    let mut signals = crate::spawn::CaughtSignals::catch()?;
    let id: String = crate::vault::random_array::<4>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (fifo_dir, fifo) = session::handover_fifo()?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Internal(format!("cannot find this program: {e}")))?;
    let tmux = resolve_command("tmux", "tmux", std::env::var_os("PATH").as_deref()).ok();
    let mode = if tmux.is_some() { "tmux" } else { "background" };
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
        "--fifo".into(),
        fifo.clone().into(),
        "--dir".into(),
        d.dir.into(),
        "--program".into(),
        d.program.into(),
        "--".into(),
    ];
    supervisor_args.extend(d.args.iter().cloned());
    let started = crate::home::with_user_umask(|| match &tmux {
        Some(tmux) => Command::new(tmux)
            .args([
                "new-session",
                "-d",
                "-s",
                &SessionRecord::tmux_name(&id),
                "-c",
            ])
            .arg(d.dir)
            .arg(&exe)
            .args(&supervisor_args)
            .env_remove("HANDOFF_PASSPHRASE_FILE")
            .stdin(Stdio::null())
            .status()
            .map_err(|e| CliError::Internal(format!("cannot start tmux: {e}")))
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    Err(CliError::Internal(format!(
                        "tmux could not start the session ({s})"
                    )))
                }
            }),
        None => {
            session::sessions_dir(ctx.home.root())?;
            let log_path = session::log_path(ctx.home.root(), &id);
            let open_log = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&log_path)
                    .map_err(|source| CliError::File {
                        what: "cannot open",
                        path: log_path.clone(),
                        source,
                    })
            };
            Command::new(&exe)
                .args(&supervisor_args)
                .env_remove("HANDOFF_PASSPHRASE_FILE")
                .stdin(Stdio::null())
                .stdout(open_log()?)
                .stderr(open_log()?)
                .process_group(0)
                .spawn()
                .map(drop)
                .map_err(|e| CliError::Internal(format!("cannot start the session: {e}")))
        }
    });
    started?;
    let handover = Handover {
        delivery: d.delivery,
        secret: d.secret,
        env: session::env_bytes(&d.env),
    };
    session::send_handover(&fifo, &handover, WAIT, &mut signals)?;
    drop(handover);
    drop(fifo_dir);
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
    // Before the credential arrives: the daemon refuses what this tree asks for from the start.
    let tree = super::supervising::Supervising::start(ctx)?;
    let ended = session::supervise(&Supervise {
        home: ctx.home.root(),
        id: &s.id,
        agent: &s.agent,
        mode: &s.mode,
        fifo: &s.fifo,
        program: &s.program,
        dir: &s.dir,
        args: &s.args,
    });
    Ok(tree.ended_with(ended)?)
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
    fifo: PathBuf,
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
    if !record.is_running() {
        say!(
            "Session {} has already ended ({}).",
            record.id,
            state(&record)
        );
        return Ok(());
    }
    let pid = i32::try_from(record.supervisor_pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| CliError::Internal("the session record has a bad pid".into()))?;
    // The supervisor passes SIGTERM to the agent, waits for it, removes its files, records it.
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .map_err(|e| CliError::Internal(format!("cannot signal the session: {e}")))?;
    let deadline = Instant::now() + WAIT;
    while find(ctx, &record.id).is_ok_and(|r| r.is_running()) {
        if Instant::now() > deadline {
            return Err(CliError::Internal(format!(
                "session {} did not stop within {WAIT:?}",
                record.id
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    say!("Stopped session {}.", record.id);
    Ok(())
}

pub(super) fn attach(ctx: &Context, id: &str) -> Result<i32, CliError> {
    let record = find(ctx, id)?;
    if record.mode == "tmux" && record.is_running() {
        let tmux = resolve_command("tmux", "tmux", std::env::var_os("PATH").as_deref())?;
        let status = Command::new(tmux)
            .args([
                "attach-session",
                "-t",
                &SessionRecord::tmux_name(&record.id),
            ])
            .status()
            .map_err(|e| CliError::Internal(format!("cannot run tmux: {e}")))?;
        return Ok(status.code().unwrap_or(1));
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
            "session {} has ended ({})",
            record.id,
            state(&record)
        ))),
    }
}
