//! Write-back, the spawn's side (DESIGN §9): a rotating OAuth bundle the agent refreshed in its
//! file must come back to the vault, or the next spawn hands out a dead refresh token.
//!
//! The supervisor (a foreground spawn, a detached session's `session supervise`) holds no key.
//! It reads the credential file when it changes (polled every [`POLL`]) and when the agent has
//! ended, and leaves what it read as a *stash*: sealed to this device's vault key (Noise X from
//! a fresh key, the relay envelope's construction), in `$HANDOFF_HOME/writeback/` (0600 in
//! 0700), then tells a running daemon (`Request::WriteBackReady`). Whoever holds the unlocked
//! key next (the daemon at once, or the next unlock) opens each stash and judges it
//! (`Device::take_write_backs`): only a bundle of the same kind with a refresh token, for the
//! lease this session still holds, becomes a new version of the token.
//!
//! What the supervisor needs to know of the session (the [`Ticket`]: token, session, lease
//! fence, the key to seal to, the home) is also written beside the credential in its private
//! directory, so that the daemon's sweep can write back for a supervisor that was killed before
//! it removes the directory ([`sweep_write_back`]). A ticket is no authority: a stash for a
//! lease this device does not hold for that session is dropped.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::doc::Service;

/// How often a running session's credential file is looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// The largest credential file read back (the largest token the vault seals).
const FILE_MAX: u64 = handoff_protocol::sealed_token::MAX_PLAINTEXT as u64;
/// The most stashes waiting in a home; beyond it the oldest are dropped (a running agent could
/// otherwise fill the disk).
pub const STASHES_MAX: usize = 64;
/// The directory of a home's stashes.
pub const DIR: &str = "writeback";

/// What a session's write-back is for. Nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The token, hex.
    pub token: String,
    pub service: Service,
    pub session: String,
    /// The lease fence the session was given.
    pub fence: u64,
    /// This device's vault public key: stashes are sealed to it.
    #[serde(with = "serde_bytes")]
    pub seal_to: Vec<u8>,
    /// The home whose daemon or next unlock applies the stash.
    pub home: PathBuf,
}

/// What a stash holds: the file as the supervisor found it (`None`: gone or unreadable).
#[derive(Serialize, Deserialize)]
pub struct Stash {
    pub token: String,
    pub session: String,
    pub fence: u64,
    #[serde(with = "crate::ops::secret_bytes::optional")]
    pub content: Option<Zeroizing<Vec<u8>>>,
    /// The session has ended: its lease goes with this stash.
    pub last: bool,
}

impl std::fmt::Debug for Stash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stash")
            .field("token", &self.token)
            .field("session", &self.session)
            .field("fence", &self.fence)
            .field("content", &self.content.as_ref().map(|c| c.len()))
            .field("last", &self.last)
            .finish()
    }
}

/// The largest stash opened: the largest file, sealed, with its fields and framing.
const STASH_MAX: u64 = FILE_MAX + 64 * 1024;

/// A waiting stash's sealed bytes (a regular file, not a link, at most its largest size), or
/// `None`: a stash too large is never read into memory.
pub fn read_stash(path: &Path) -> Option<Zeroizing<Vec<u8>>> {
    read_bounded(path, STASH_MAX)
}

/// Reads `path` (a regular file, not a link, at most [`FILE_MAX`]), or `None`.
fn read_file(path: &Path) -> Option<Zeroizing<Vec<u8>>> {
    read_bounded(path, FILE_MAX)
}

fn read_bounded(path: &Path, max: u64) -> Option<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > max {
        return None;
    }
    // Room for what the file holds and the byte that shows it grew: never reallocated, so no
    // copy of a secret is left behind unzeroed.
    let mut buf = Zeroizing::new(Vec::with_capacity(usize::try_from(max).ok()? + 1));
    file.take(max + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= max).then_some(buf)
}

/// Seals `stash` to `ticket.seal_to` and leaves it in the ticket's home, then tells its
/// daemon, if one runs. Best effort: a stash that cannot be written is logged and lost (the
/// vault keeps the version it had).
pub fn leave(ticket: &Ticket, stash: &Stash) {
    if let Err(e) = write_stash(ticket, stash) {
        tracing::warn!(error = %e, "could not keep a refreshed credential for write-back");
        eprintln!("handoff: could not keep the refreshed credential for write-back: {e}");
        return;
    }
    let socket = ticket.home.join("daemon.sock");
    if let Some(mut client) = crate::control::Client::connect(&socket) {
        let _ = client.call(&crate::control::Request::WriteBackReady);
    }
}

fn write_stash(ticket: &Ticket, stash: &Stash) -> Result<(), String> {
    let seal_to: [u8; 32] = ticket
        .seal_to
        .as_slice()
        .try_into()
        .map_err(|_| "the ticket's key is not 32 bytes".to_string())?;
    let mut plain = Zeroizing::new(Vec::new());
    ciborium::into_writer(stash, &mut *plain).map_err(|e| e.to_string())?;
    let ephemeral = crate::vault::VaultSecret::generate().map_err(|e| e.to_string())?;
    let sealed = crate::vault::envelope::seal(&ephemeral.to_bytes(), &seal_to, &plain)
        .map_err(|e| e.to_string())?;
    let dir = ticket.home.join(DIR);
    if !ticket.home.join("handoff.db").is_file() {
        return Err(format!("{} is not a handoff home", ticket.home.display()));
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    trim(&dir);
    let random: String = crate::vault::random_array::<8>()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{nanos:024}-{random}");
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&sealed).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, dir.join(format!("{name}.sealed"))))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write a stash in {}: {e}", dir.display())
        })
}

/// Drops the oldest stashes beyond [`STASHES_MAX`] - 1, so one more fits.
fn trim(dir: &Path) {
    let mut names = waiting(dir);
    while names.len() >= STASHES_MAX {
        let _ = fs::remove_file(names.remove(0));
    }
}

/// The stashes waiting in `dir`, oldest first.
pub fn waiting(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sealed"))
        .collect();
    names.sort();
    names
}

/// Writes `ticket` beside the credential in the private directory (for the sweep).
pub fn write_ticket(private: &super::PrivateDir, ticket: &Ticket) -> Result<(), super::SpawnError> {
    let bytes = serde_json::to_vec(ticket).map_err(|e| super::SpawnError::Io(e.to_string()))?;
    private.write(super::materialize::TICKET, &bytes)?;
    Ok(())
}

/// Watches a running session's credential file, and leaves a stash each time it changes.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<Zeroizing<Vec<u8>>>>>,
    file: PathBuf,
    ticket: Ticket,
}

impl Watcher {
    /// Starts watching `file`, which holds `given` now.
    pub fn start(file: PathBuf, ticket: Ticket, given: &[u8]) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (path, t) = (file.clone(), ticket.clone());
        let mut last = Zeroizing::new(given.to_vec());
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
                if let Some(now) = read_file(&path)
                    && !now.is_empty()
                    && *now != *last
                {
                    leave(
                        &t,
                        &Stash {
                            token: t.token.clone(),
                            session: t.session.clone(),
                            fence: t.fence,
                            content: Some(now.clone()),
                            last: false,
                        },
                    );
                    last = now;
                }
            }
            Some(last)
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
            file,
            ticket,
        }
    }

    /// The agent has ended: reads the file a last time and leaves the session's last stash
    /// (which also gives its lease back), unless the file holds what the last stash held.
    pub fn finish(mut self) {
        drop(self.stop.take());
        let last = self.thread.take().and_then(|t| t.join().ok()).flatten();
        let now = read_file(&self.file);
        let content = match (&now, &last) {
            (Some(now), Some(last)) if **now == **last => None,
            _ => now,
        };
        leave(
            &self.ticket,
            &Stash {
                token: self.ticket.token.clone(),
                session: self.ticket.session.clone(),
                fence: self.ticket.fence,
                content,
                last: true,
            },
        );
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// For the sweep: before a killed supervisor's private directory `dir` is removed, leaves its
/// credential file as the session's last stash, when the directory holds a ticket.
pub fn sweep_write_back(dir: &Path) {
    let Some(bytes) = read_file(&dir.join(super::materialize::TICKET)) else {
        return;
    };
    let Ok(ticket) = serde_json::from_slice::<Ticket>(&bytes) else {
        return;
    };
    let Some(file) = super::materialize::credential_path(dir, ticket.service) else {
        return;
    };
    leave(
        &ticket,
        &Stash {
            token: ticket.token.clone(),
            session: ticket.session.clone(),
            fence: ticket.fence,
            content: read_file(&file),
            last: true,
        },
    );
}
