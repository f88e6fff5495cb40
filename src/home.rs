//! The handoff home: where it is, its permissions, the one-owner lock, process hardening.
//!
//! Everything handoff writes lives under one directory (`--home`, `HANDOFF_HOME`, or the
//! platform data dir), mode 0700, files 0600. The umask is set before SQLite opens so its -wal
//! and -shm files are private too. Exactly one process owns a home at a time: it holds an
//! exclusive lock on `handoff.lock` (released by the kernel if the process dies, so a stale
//! lock never needs cleaning up).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors about the home directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    #[error("no home directory: set HANDOFF_HOME or pass --home")]
    NoHome,
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is owned by another handoff process (the daemon or another command); stop it or retry"
    )]
    Busy { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Sets the process up for handling secrets: no core dumps, not ptrace-able by other users'
/// processes, and every file it creates private. Call first thing in `main`.
pub fn harden_process() {
    use rustix::process::{Resource, Rlimit, setrlimit, umask};
    let user = umask(PRIVATE_UMASK);
    USER_UMASK.store(user.bits(), std::sync::atomic::Ordering::Relaxed);
    // Failure is not fatal (e.g. an unusual sandbox); the other defences still hold.
    let _ = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
}

const PRIVATE_UMASK: rustix::fs::Mode = rustix::fs::Mode::from_raw_mode(0o077);

/// The umask the user ran handoff with, before [`harden_process`] replaced it.
static USER_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

/// Runs `start` (which starts a child process) under the user's own umask, so an agent
/// creates files in a project the way the user would; handoff's own umask is back afterwards.
/// Call it only where no other thread of this process creates files meanwhile (the CLI's
/// spawn paths). The core-dump limit stays 0 in the child on purpose: the agent holds the
/// credential in its environment, and a core file would write it to disk.
pub fn with_user_umask<T>(start: impl FnOnce() -> T) -> T {
    let user =
        rustix::fs::Mode::from_raw_mode(USER_UMASK.load(std::sync::atomic::Ordering::Relaxed));
    rustix::process::umask(user);
    let started = start();
    rustix::process::umask(PRIVATE_UMASK);
    started
}

/// The environment variable `name` as a path, if it is set to something: an empty value
/// counts as unset, as shells and users mean it (`HANDOFF_PASSPHRASE_FILE= handoff ...`).
pub fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A handoff home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `--home`, else `HANDOFF_HOME`, else the platform data directory.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Self, HomeError> {
        if let Some(root) = explicit.or_else(|| env_path("HANDOFF_HOME")) {
            return Ok(Self { root });
        }
        let data = if cfg!(target_os = "macos") {
            env_path("HOME").map(|h| h.join("Library/Application Support"))
        } else {
            env_path("XDG_DATA_HOME").or_else(|| env_path("HOME").map(|h| h.join(".local/share")))
        };
        data.map(|d| Self {
            root: d.join("handoff"),
        })
        .ok_or(HomeError::NoHome)
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The daemon's control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.root.join("daemon.sock")
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("handoff.db")
    }

    /// Whether a vault database exists here.
    pub fn is_initialized(&self) -> bool {
        self.db_path().exists()
    }

    /// Creates the directory 0700 (tightening it if it exists with wider permissions).
    pub fn ensure_dir(&self) -> Result<(), HomeError> {
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let meta = fs::metadata(&self.root).map_err(io(&self.root))?;
        if meta.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
                .map_err(io(&self.root))?;
        }
        Ok(())
    }

    /// Takes the one-owner lock, waiting up to `wait` for another owner to finish.
    pub fn lock(&self, wait: Duration) -> Result<OwnerLock, HomeError> {
        self.ensure_dir()?;
        let path = self.root.join("handoff.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(HomeError::Busy {
                        path: self.root.clone(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
        Ok(OwnerLock { _file: file })
    }
}

/// Held while this process owns the home; dropping it releases the lock.
#[derive(Debug)]
pub struct OwnerLock {
    _file: File,
}

/// Writes `bytes` to `path` through a fresh temporary file and a rename, mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let suffix = hex::encode(crate::vault::random_array::<8>().map_err(std::io::Error::other)?);
    let tmp = path.with_extension(format!("tmp-{suffix}"));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
