//! Detached sessions: an agent that outlives the command that started it.
//!
//! `spawn --detach` starts `handoff session supervise` inside a tmux session when tmux is
//! installed (so `session attach` gives the terminal back), else as a background process whose
//! output goes to a log. The credential never goes through argv or tmux's environment: the CLI
//! creates a FIFO (0600, in a fresh 0700 directory), the supervisor opens it, and the CLI writes
//! the [`Handover`] (how to deliver the credential, the secret, the allowlisted environment)
//! into it. The supervisor then materializes and runs the agent exactly as a foreground spawn
//! does, and records the session in `$HANDOFF_HOME/sessions/ID.json` (0600): who supervises it,
//! and, once it ends, its exit code.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Delivery, Materialized, SpawnError, materialize, run_foreground};
use crate::entropy::unix_now;

/// Largest handover read from the FIFO.
const HANDOVER_MAX: usize = 1024 * 1024;
/// How long a supervisor waits for its handover before it gives up (the command that started
/// it was stopped or killed).
pub const HANDOVER_WAIT: Duration = Duration::from_secs(15);

/// What the CLI hands the supervisor through the FIFO. `Debug` leaves out the secret.
#[derive(Serialize, Deserialize)]
pub struct Handover {
    /// `None` for `--service-auth native`.
    pub delivery: Option<Delivery>,
    #[serde(with = "crate::ops::secret_bytes")]
    pub secret: Zeroizing<Vec<u8>>,
    /// The allowlisted environment, as raw bytes.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("delivery", &self.delivery)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("env", &self.env.len())
            .finish()
    }
}

/// One session's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub agent: String,
    pub dir: String,
    /// `tmux` or `background`.
    pub mode: String,
    pub supervisor_pid: u32,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub exit: Option<i32>,
    pub log: Option<String>,
    /// Why the session never started its agent (its handover did not arrive, or was refused).
    #[serde(default)]
    pub failure: Option<String>,
}

impl SessionRecord {
    /// Whether its supervisor is still running. A recorded pid may have been reused since, so
    /// (where /proc exists) only a process whose command line names this session counts: `session
    /// stop` must never signal an unrelated process.
    pub fn is_running(&self) -> bool {
        if self.exit.is_some() || self.failure.is_some() {
            return false;
        }
        match std::fs::read(format!("/proc/{}/cmdline", self.supervisor_pid)) {
            Ok(cmdline) => {
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                args.contains(&b"supervise".as_slice()) && args.contains(&self.id.as_bytes())
            }
            Err(_) if Path::new("/proc/self").exists() => false,
            Err(_) => i32::try_from(self.supervisor_pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|p| rustix::process::test_kill_process(p).is_ok()),
        }
    }

    /// The tmux session name of a tmux-mode session.
    pub fn tmux_name(id: &str) -> String {
        format!("handoff-{id}")
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SpawnError {
    move |e| SpawnError::Io(format!("{what}: {e}"))
}

/// `$HANDOFF_HOME/sessions`, created 0700.
pub fn sessions_dir(home: &Path) -> Result<PathBuf, SpawnError> {
    let dir = home.join("sessions");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("cannot create {}", dir.display())))?;
    Ok(dir)
}

/// Writes a record atomically (0600).
pub fn save(home: &Path, record: &SessionRecord) -> Result<(), SpawnError> {
    let dir = sessions_dir(home)?;
    let tmp = dir.join(format!(".{}.tmp", record.id));
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| SpawnError::Io(e.to_string()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes))
        .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{}.json", record.id))))
        .map_err(io(format!("cannot record session {}", record.id)))
}

/// Every recorded session, newest first.
pub fn list(home: &Path) -> Vec<SessionRecord> {
    let Ok(entries) = std::fs::read_dir(home.join("sessions")) else {
        return Vec::new();
    };
    let mut records: Vec<SessionRecord> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect();
    records.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    records
}

/// Finds a session by id or unique id prefix.
pub fn find(home: &Path, query: &str) -> Option<SessionRecord> {
    let matches: Vec<SessionRecord> = list(home)
        .into_iter()
        .filter(|r| r.id.starts_with(query))
        .collect();
    match matches.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// Creates the FIFO the handover goes through, in its own private directory.
pub fn handover_fifo() -> Result<(super::PrivateDir, PathBuf), SpawnError> {
    let dir = super::PrivateDir::create()?;
    let fifo = dir.path().join("handover");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(|e| SpawnError::Io(format!("cannot create {}: {e}", fifo.display())))?;
    Ok((dir, fifo))
}

/// Writes the handover once the supervisor has opened the FIFO, waiting at most `wait`; a
/// signal meanwhile ends the wait (the caller then removes the FIFO, and the supervisor gives
/// up).
pub fn send_handover(
    fifo: &Path,
    handover: &Handover,
    wait: Duration,
    signals: &mut super::CaughtSignals,
) -> Result<(), SpawnError> {
    let mut payload = Zeroizing::new(Vec::new());
    ciborium::into_writer(handover, &mut *payload).map_err(|e| SpawnError::Io(e.to_string()))?;
    let deadline = Instant::now() + wait;
    let mut file = loop {
        // Non-blocking open fails until a reader has the FIFO open: poll for it, bounded.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(fifo)
        {
            Ok(f) => break f,
            Err(_) if Instant::now() < deadline => {
                if let Some(signal) = signals.arrived() {
                    return Err(SpawnError::Io(format!(
                        "stopped by signal {signal} before the session got its credential"
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(SpawnError::Io(format!(
                    "the session supervisor did not start: {e}"
                )));
            }
        }
    };
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
        .map_err(|e| SpawnError::Io(e.to_string()))?;
    file.write_all(&payload)
        .map_err(io("cannot hand the credential over".into()))
}

/// Reads the handover from `fifo`, waiting at most `wait` for it, then removes the FIFO and
/// its directory. Only a FIFO of this user (0600) inside a private directory handoff made
/// ([`super::materialize::is_private_dir`]) is read or removed: pointed at anything else,
/// this touches nothing.
pub fn receive_handover(fifo: &Path, wait: Duration) -> Result<Handover, SpawnError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let dir = fifo
        .parent()
        .filter(|d| super::materialize::is_private_dir(d));
    let is_fifo = std::fs::symlink_metadata(fifo).is_ok_and(|m| {
        m.file_type().is_fifo()
            && m.uid() == rustix::process::getuid().as_raw()
            && m.permissions().mode() & 0o7777 == 0o600
    });
    let (Some(dir), true) = (dir, is_fifo) else {
        return Err(SpawnError::Io(format!(
            "{} is not a handover FIFO of this user; nothing was read or removed",
            fifo.display()
        )));
    };
    // Opening a FIFO blocks until a writer comes: in a thread, so a writer that never comes
    // costs a bounded wait, not a supervisor blocked for ever.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.to_path_buf();
    std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::new());
        let read = std::fs::File::open(&path)
            .and_then(|f| f.take(HANDOVER_MAX as u64 + 1).read_to_end(&mut buf))
            .map(|_| buf);
        let _ = tx.send(read);
    });
    let received = rx.recv_timeout(wait);
    let _ = std::fs::remove_file(fifo);
    let _ = std::fs::remove_dir(dir); // only if empty: nothing but the FIFO was there
    let buf = match received {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => return Err(SpawnError::Io(format!("cannot read the handover: {e}"))),
        Err(_) => {
            return Err(SpawnError::Io(format!(
                "the credential did not arrive within {} s (the command that started this session went away)",
                wait.as_secs()
            )));
        }
    };
    if buf.len() > HANDOVER_MAX {
        return Err(SpawnError::Io("the handover is too large".into()));
    }
    ciborium::from_reader(buf.as_slice())
        .map_err(|e| SpawnError::Io(format!("the handover did not decode: {e}")))
}

/// What the supervisor is told on its command line (nothing secret).
#[derive(Debug)]
pub struct Supervise<'a> {
    pub home: &'a Path,
    pub id: &'a str,
    pub agent: &'a str,
    pub mode: &'a str,
    pub fifo: &'a Path,
    pub program: &'a Path,
    pub dir: &'a Path,
    pub args: &'a [OsString],
}

/// The supervisor: receive the credential, record the session, run the agent, record its end.
/// Returns the agent's exit code.
pub fn supervise(s: &Supervise<'_>) -> Result<super::Ended, SpawnError> {
    // Caught from the start: a signal while waiting for the handover still records the end.
    let signals = super::CaughtSignals::catch()?;
    let log = (s.mode == "background").then(|| log_path(s.home, s.id).display().to_string());
    let mut record = SessionRecord {
        id: s.id.to_string(),
        agent: s.agent.to_string(),
        dir: s.dir.display().to_string(),
        mode: s.mode.to_string(),
        supervisor_pid: std::process::id(),
        started_at: unix_now(),
        ended_at: None,
        exit: None,
        log,
        failure: None,
    };
    save(s.home, &record)?;
    let handover = match receive_handover(s.fifo, HANDOVER_WAIT) {
        Ok(handover) => handover,
        Err(e) => {
            record.ended_at = Some(unix_now());
            record.failure = Some(e.to_string());
            save(s.home, &record)?;
            return Err(e);
        }
    };
    let secret = handover.secret;
    super::materialize::sweep_stale();
    let credential = match &handover.delivery {
        Some(delivery) => materialize(delivery, &secret)?,
        None => Materialized {
            env: Vec::new(),
            dir: None,
        },
    };
    drop(secret);
    let env: Vec<(OsString, OsString)> = handover
        .env
        .into_iter()
        .map(|(k, v)| (OsString::from_vec(k), OsString::from_vec(v)))
        .collect();
    let ended = run_foreground(signals, s.program, s.args, s.dir, env, credential);
    record.ended_at = Some(unix_now());
    record.exit = Some(ended.as_ref().map_or(1, |e| e.code));
    save(s.home, &record)?;
    ended
}

/// Where a background session's output goes.
pub fn log_path(home: &Path, id: &str) -> PathBuf {
    home.join("sessions").join(format!("{id}.log"))
}

/// The allowlisted environment as raw bytes for the handover.
pub fn env_bytes(env: &[(OsString, OsString)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    env.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}
