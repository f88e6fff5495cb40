//! Detached sessions: an agent that outlives the command that started it.
//!
//! `spawn --detach` starts `handoff session supervise` on its own, in a process group of its
//! own. The credential never goes through argv or a file: the CLI writes the [`Handover`] (how
//! to deliver the credential, the secret, the allowlisted environment) into a socket that is
//! the supervisor's standard input ([`Handing`], [`Starter`]), and waits for one line back:
//! the agent is starting, or why it is not. The supervisor materializes the credential and
//! runs the agent: with its output in a log (background mode), or, when tmux is installed, in
//! the first pane of a tmux server of the session's own that the supervisor starts, so that
//! `session attach` gives the terminal back and the server is inside the agent's tree
//! ([`super::tmux`]). It records the session in `$HANDOFF_HOME/sessions/ID.json` (0600): who
//! supervises it, and, once it ends, its exit code or why it failed.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Delivery, Materialized, SpawnError, materialize, run_foreground};
use crate::entropy::unix_now;

/// Largest handover read from the socket.
const HANDOVER_MAX: usize = 1024 * 1024;
/// How long a supervisor waits for its handover before it gives up (the command that started
/// it was stopped or killed).
pub const HANDOVER_WAIT: Duration = Duration::from_secs(15);

/// What the CLI hands the supervisor through the socket. `Debug` leaves out the secret.
#[derive(Serialize, Deserialize)]
pub struct Handover {
    /// `None` for `--service-auth native`.
    pub delivery: Option<Delivery>,
    #[serde(with = "crate::ops::secret_bytes")]
    pub secret: Zeroizing<Vec<u8>>,
    /// The allowlisted environment, as raw bytes.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The spawning command's own agent directories (the private ones mirror them).
    pub user: super::UserDirs,
    /// A rotating OAuth token's write-back (its lease is this session's).
    pub ticket: Option<super::writeback::Ticket>,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("delivery", &self.delivery)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("env", &self.env.len())
            .field("user", &self.user)
            .field("ticket", &self.ticket)
            .finish()
    }
}

/// A new session id (8 hex digits).
pub fn new_id() -> Result<String, SpawnError> {
    Ok(crate::vault::random_array::<4>()
        .map_err(|e| SpawnError::Io(e.to_string()))?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
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

/// Largest session record read.
const RECORD_MAX: usize = 64 * 1024;

/// Every recorded session, newest first.
pub fn list(home: &Path) -> Vec<SessionRecord> {
    let Ok(entries) = std::fs::read_dir(home.join("sessions")) else {
        return Vec::new();
    };
    let mut records: Vec<SessionRecord> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        // Small regular files only: a FIFO or a symlink an agent left never stalls a listing.
        .filter_map(|e| read_small(&e.path(), RECORD_MAX).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
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

/// Records which member asked for session `id` (a remote spawn), beside its record: that
/// member may list and stop it, no other.
pub fn note_asker(home: &Path, id: &str, asker: &str) -> Result<(), SpawnError> {
    if !is_id(id) {
        return Err(SpawnError::Io("not a session id".into()));
    }
    let dir = sessions_dir(home)?;
    crate::home::write_private(&dir.join(format!("{id}.asker")), asker.as_bytes())
        .map_err(io(format!("cannot record who asked for session {id}")))
}

/// The member that asked for session `id`, if one did.
pub fn asker(home: &Path, id: &str) -> Option<String> {
    if !is_id(id) {
        return None;
    }
    let text = read_small(&home.join("sessions").join(format!("{id}.asker")), 64).ok()?;
    Some(text.trim().to_string())
}

/// Reads a small text file of this home's: a regular file (never a FIFO or a symlink an
/// agent put there), at most `max` bytes.
pub fn read_small(path: &Path, max: usize) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max as u64).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `O_NOFOLLOW | O_NONBLOCK`: opening a FIFO returns at once, a symlink fails.
fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// Whether `id` has a session id's shape (so it names a file under `sessions/` and nothing else,
/// and is safe to print in a command line to paste).
pub fn is_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Stops a running session: its supervisor gets SIGTERM, passes it to the agent, waits for it,
/// removes its files and records the end. Returns once the record says it ended, or fails
/// after `wait`. `false` when it had ended already.
pub fn stop(home: &Path, record: &SessionRecord, wait: Duration) -> Result<bool, SpawnError> {
    if !record.is_running() {
        return Ok(false);
    }
    let pid = i32::try_from(record.supervisor_pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| SpawnError::Io("the session record has a bad pid".into()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .map_err(|e| SpawnError::Io(format!("cannot signal the session: {e}")))?;
    let deadline = std::time::Instant::now() + wait;
    while find(home, &record.id).is_some_and(|r| r.is_running()) {
        if std::time::Instant::now() > deadline {
            return Err(SpawnError::Io(format!(
                "session {} did not stop within {wait:?}",
                record.id
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

/// The CLI's end of a detached spawn's handover: one end of a socket pair whose other end is
/// the supervisor's standard input. Only the two processes hold it, and unlike a pipe or a
/// FIFO a socket cannot be opened again through `/proc/PID/fd` by another process of the uid.
#[derive(Debug)]
pub struct Handing(UnixStream);

/// What a supervisor says once it holds the credential (or why it will not run the agent).
const STARTED: &[u8] = b"ok\n";

impl Handing {
    /// A socket pair: this end, and the one to give the supervisor as its standard input.
    pub fn pair() -> Result<(Self, std::process::Stdio), SpawnError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(io("cannot make the handover's socket".into()))?;
        Ok((Self(ours), std::os::fd::OwnedFd::from(theirs).into()))
    }

    /// Writes the handover and waits, at most `wait`, for the supervisor to say it holds the
    /// credential and runs the agent; its refusal, if it says one, is the error.
    pub fn hand_over(mut self, handover: &Handover, wait: Duration) -> Result<(), SpawnError> {
        let mut payload = Zeroizing::new(Vec::new());
        ciborium::into_writer(handover, &mut *payload)
            .map_err(|e| SpawnError::Io(e.to_string()))?;
        self.0
            .write_all(&payload)
            .and_then(|()| self.0.shutdown(std::net::Shutdown::Write))
            .map_err(io("cannot hand the credential over".into()))?;
        drop(payload);
        self.0
            .set_read_timeout(Some(wait))
            .map_err(io("cannot wait for the session".into()))?;
        // One line (the supervisor keeps its end open while the agent runs).
        let mut reply = Vec::new();
        let read = loop {
            let mut byte = [0u8; 1];
            match self.0.read(&mut byte) {
                Ok(0) => break Ok(()),
                Ok(_) => {
                    reply.push(byte[0]);
                    if byte[0] == b'\n' || reply.len() >= 1024 {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match read {
            Ok(_) if reply == STARTED => Ok(()),
            Ok(_) if reply.starts_with(b"err ") => Err(SpawnError::Io(
                String::from_utf8_lossy(&reply[4..]).trim_end().to_string(),
            )),
            Ok(_) => Err(SpawnError::Io(
                "the session's supervisor stopped before it started the agent".into(),
            )),
            Err(e) => Err(SpawnError::Io(format!(
                "the session's supervisor did not say it started: {e}"
            ))),
        }
    }
}

/// The supervisor's end of the handover (its standard input, a socket the CLI holds the other
/// end of), read directly: never through the process's buffered `stdin`, which would keep a
/// copy of the secret for the life of the process. Once the session is recorded it holds the
/// record too: a failure is saved before the CLI hears of it, so the spawn never returns
/// while `session list` still says running.
#[derive(Debug)]
pub struct Starter {
    pipe: UnixStream,
    record: Option<(PathBuf, SessionRecord)>,
}

impl Starter {
    /// Takes the socket off standard input, which becomes `/dev/null`: the agent never
    /// inherits the handover's socket.
    pub fn from_stdin() -> Result<Self, SpawnError> {
        use std::os::fd::AsFd;
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("cannot take the handover's socket".into()))?;
        let null = std::fs::File::open("/dev/null").map_err(io("cannot open /dev/null".into()))?;
        rustix::stdio::dup2_stdin(&null)
            .map_err(|e| SpawnError::Io(format!("cannot replace standard input: {e}")))?;
        Ok(Self {
            pipe: UnixStream::from(fd),
            record: None,
        })
    }

    /// The record a failure is saved into before the CLI hears of it.
    fn recording(&mut self, home: &Path, record: &SessionRecord) {
        self.record = Some((home.to_path_buf(), record.clone()));
    }

    /// Reads the whole handover, waiting at most `wait` for it. A starter that went away
    /// before writing it all leaves an end of file, and this fails at once; bytes after the
    /// handover are refused, not ignored.
    pub fn receive(&mut self, wait: Duration) -> Result<Handover, SpawnError> {
        let deadline = std::time::Instant::now() + wait;
        // Room for the largest handover and the byte that shows one is larger: never grown.
        let mut buf = Zeroizing::new(vec![0u8; HANDOVER_MAX + 1]);
        let mut len = 0;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(SpawnError::Io(format!(
                    "the credential did not arrive within {} s",
                    wait.as_secs()
                )));
            }
            self.pipe
                .set_read_timeout(Some(left))
                .map_err(io("cannot wait for the handover".into()))?;
            match self.pipe.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len > HANDOVER_MAX {
                        return Err(SpawnError::Io("the handover is too large".into()));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(SpawnError::Io(format!("cannot read the handover: {e}"))),
            }
        }
        if len == 0 {
            return Err(SpawnError::Io(
                "the command that started this session went away before handing the credential over"
                    .into(),
            ));
        }
        let mut rest = &buf[..len];
        let handover: Handover = ciborium::from_reader(&mut rest)
            .map_err(|e| SpawnError::Io(format!("the handover did not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(SpawnError::Io(
                "the handover has bytes after its end; refusing it".into(),
            ));
        }
        Ok(handover)
    }

    /// Tells the CLI the agent is starting.
    pub fn started(mut self) {
        let _ = self.pipe.write_all(STARTED);
    }

    /// Records the session as failed (when it is recorded), then tells the CLI why the agent
    /// will not start.
    pub fn failed(mut self, why: &str) {
        if let Some((home, mut record)) = self.record.take() {
            record.ended_at = Some(unix_now());
            record.failure = Some(why.to_string());
            if let Err(e) = save(&home, &record) {
                eprintln!("handoff: {e}");
            }
        }
        let line: String = why
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        let _ = self.pipe.write_all(format!("err {line}\n").as_bytes());
    }
}

/// What the supervisor is told on its command line (nothing secret).
#[derive(Debug)]
pub struct Supervise<'a> {
    pub home: &'a Path,
    pub id: &'a str,
    pub agent: &'a str,
    pub mode: &'a str,
    pub program: &'a Path,
    pub dir: &'a Path,
    pub args: &'a [OsString],
}

/// Records a session that ended before it began: `why`.
pub fn record_failed(s: &Supervise<'_>, why: &str) {
    let now = unix_now();
    let record = SessionRecord {
        id: s.id.to_string(),
        agent: s.agent.to_string(),
        dir: s.dir.display().to_string(),
        mode: s.mode.to_string(),
        supervisor_pid: std::process::id(),
        started_at: now,
        ended_at: Some(now),
        exit: None,
        log: None,
        failure: Some(why.to_string()),
    };
    if let Err(e) = save(s.home, &record) {
        eprintln!("handoff: {e}");
    }
}

/// The supervisor: receive the credential, record the session, run the agent, record its end.
/// Returns the agent's exit code.
/// `leased` hears of the session's lease (to renew it while the agent runs).
pub fn supervise(
    s: &Supervise<'_>,
    mut starter: Starter,
    leased: &dyn Fn(&super::writeback::Ticket),
) -> Result<super::Ended, SpawnError> {
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
    starter.recording(s.home, &record);
    let received = starter.receive(HANDOVER_WAIT).and_then(|handover| {
        super::materialize::sweep_stale();
        let credential = match &handover.delivery {
            Some(delivery) => materialize(
                delivery,
                &handover.secret,
                &handover.user,
                handover.ticket.as_ref(),
            )?,
            None => Materialized::default(),
        };
        Ok((handover.env, credential, handover.ticket))
    });
    let (env, credential, ticket) = match received {
        Ok(got) => got,
        Err(e) => {
            starter.failed(&e.to_string());
            return Err(e);
        }
    };
    if let Some(ticket) = &ticket {
        leased(ticket);
    }
    let env: Vec<(OsString, OsString)> = env
        .into_iter()
        .map(|(k, v)| (OsString::from_vec(k), OsString::from_vec(v)))
        .collect();
    // In tmux mode the CLI hears once the tmux session exists (or why it does not); in the
    // background, now.
    let ended = if s.mode == "tmux" {
        match super::resolve_command("tmux", "tmux", std::env::var_os("PATH").as_deref()) {
            Err(e) => {
                starter.failed(&e.to_string());
                Err(e)
            }
            Ok(tmux) => {
                let run = super::tmux::TmuxRun {
                    session: s,
                    tmux: &tmux,
                    socket: &tmux_socket(s.home, s.id),
                    name: &SessionRecord::tmux_name(s.id),
                    exit_file: &s.home.join("sessions").join(format!("{}.exit", s.id)),
                };
                super::tmux::run_in_tmux(signals, &run, env, credential, starter)
            }
        }
    } else {
        starter.started();
        run_foreground(signals, s.home, s.program, s.args, s.dir, env, credential)
    };
    record.ended_at = Some(unix_now());
    record.exit = Some(ended.as_ref().map_or(1, |e| e.code));
    if let Err(e) = &ended {
        record.failure = Some(e.to_string());
    }
    save(s.home, &record)?;
    ended
}

/// The socket of a tmux-mode session's own tmux server.
pub fn tmux_socket(home: &Path, id: &str) -> PathBuf {
    home.join("sessions").join(format!("{id}.tmux"))
}

/// Whether a socket at `path` fits in a Unix socket address (tmux cannot listen otherwise).
pub fn socket_path_fits(path: &Path) -> bool {
    // sun_path is 108 bytes on Linux, with the terminating NUL.
    path.as_os_str().len() < 108
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
