//! Materialization: the environment and private files a spawned agent gets, and nothing else.
//!
//! The child starts from an empty environment plus an allowlist of the parent's (PATH, HOME,
//! USER, SHELL, TERM, LANG, LC_*, TMPDIR, TZ and what `config.toml` adds), then the credential:
//! in variables, or in files 0600 inside a fresh 0700 directory whose path the agent is given.
//! The directory is created with a random name (so nothing can be planted there first) in a
//! memory-backed place when there is one (`$XDG_RUNTIME_DIR`, else `/dev/shm`), else the temp
//! dir, and removed, its files overwritten first, when the [`PrivateDir`] is dropped. Its name
//! carries the pid of the handoff process that owns it (the agent's supervisor), so if that
//! process is killed outright the directory is swept away ([`sweep_stale`]: by the daemon at
//! start and every few seconds, and by every spawn): credential files never outlive the
//! supervisor of the agent they were made for.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::SpawnError;
use super::agents::Delivery;
use crate::vault::random_array;

/// Parent variables every agent may inherit.
const BASE_ALLOW: &[&str] = &[
    "PATH", "HOME", "USER", "SHELL", "TERM", "LANG", "LC_*", "TMPDIR", "TZ",
];

/// The parent environment filtered through the allowlist (`NAME` or `PREFIX*` patterns).
pub fn allowed_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[String],
) -> Vec<(OsString, OsString)> {
    let allowed = |name: &str| {
        BASE_ALLOW
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    };
    parent
        .into_iter()
        .filter(|(k, _)| k.to_str().is_some_and(allowed))
        .collect()
}

/// A private directory for credential files, removed on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates `handoff-session-<pid>-<random>` (0700) under the runtime or temp dir.
    pub fn create() -> Result<Self, SpawnError> {
        let base = private_base();
        let name: String = random_array::<12>()
            .map_err(|e| SpawnError::Io(e.to_string()))?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = base.join(format!("{PREFIX}{}-{name}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| SpawnError::Io(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to `relative` (creating 0700 parents), mode 0600, refusing to follow
    /// or reuse anything already there.
    pub fn write(&self, relative: &str, bytes: &[u8]) -> Result<PathBuf, SpawnError> {
        let path = self.path.join(relative);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| SpawnError::Io(format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SpawnError::Io(format!("cannot create {}: {e}", path.display())))?;
        file.write_all(bytes)
            .map_err(|e| SpawnError::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        overwrite_files(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

const PREFIX: &str = "handoff-session-";
/// Hex digits of a private directory's random part.
const RANDOM_HEX: usize = 24;

fn pid_alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Where private directories go: the first memory-backed place there is (the per-user
/// runtime dir, else the shared memory file system), else the temp dir.
fn private_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| writable_dir(p)))
        .unwrap_or_else(std::env::temp_dir)
}

fn writable_dir(path: &Path) -> bool {
    path.is_dir() && rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}

/// The pid in a private directory's name, if `name` is one (`handoff-session-PID-HEX`).
fn owner_in_name(name: &str) -> Option<i32> {
    let (pid, random) = name.strip_prefix(PREFIX)?.split_once('-')?;
    let hex = random.len() == RANDOM_HEX && random.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether `path` is provably a private directory handoff made for this user: its name has
/// the private form, it is a directory itself (not a link to one), this user owns it, and
/// nobody else may enter it (mode 0700). Only such a directory is ever removed by a process
/// that was told its path (`session supervise --fifo`).
pub fn is_private_dir(path: &Path) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(owner_in_name)
        .is_some();
    named
        && fs::symlink_metadata(path).is_ok_and(|m| {
            m.file_type().is_dir()
                && m.uid() == rustix::process::getuid().as_raw()
                && m.permissions().mode() & 0o7777 == 0o700
        })
}

/// Removes private directories whose owner (the supervisor that made them) no longer runs:
/// killed before it could clean up. An agent it left running loses its files with it; it was
/// never meant to outlive its supervisor. Only this user's directories are touched. Returns
/// how many.
pub fn sweep_stale() -> usize {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::getuid().as_raw();
    let Ok(entries) = fs::read_dir(private_base()) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_in_name) else {
            continue;
        };
        let ours = fs::symlink_metadata(entry.path())
            .is_ok_and(|m| m.file_type().is_dir() && m.uid() == me);
        // A pid reused since only delays the sweep; it never removes files in use.
        if ours && !pid_alive(pid) {
            overwrite_files(&entry.path());
            if fs::remove_dir_all(entry.path()).is_ok() {
                swept += 1;
            }
        }
    }
    swept
}

/// The files a private directory's credential can be in (relative paths), the only ones ever
/// overwritten before removal: everything else there is the agent's own, perhaps a hard link
/// to a file of the user's.
const CREDENTIAL_FILES: [&str; 2] = [CODEX_AUTH, GEMINI_CREDS];
const CODEX_AUTH: &str = "auth.json";
const GEMINI_CREDS: &str = ".gemini/oauth_creds.json";

/// Best effort: zero the credential files handoff writes in `dir` before the directory is
/// removed. Every step of each path is opened without following a link (a directory the agent
/// swapped for a link to the user's own is not entered), and a file is written only if it is
/// still a regular file with one name (one hard-linked elsewhere is left as it is, and only
/// unlinked).
fn overwrite_files(dir: &Path) {
    use rustix::fs::{Mode, OFlags};
    let Ok(root) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    for relative in CREDENTIAL_FILES {
        let parts: Vec<&str> = relative.split('/').collect();
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        let mut at = match rustix::io::dup(&root) {
            Ok(fd) => fd,
            Err(_) => continue,
        };
        let mut reached = true;
        for part in dirs {
            match rustix::fs::openat(
                &at,
                *part,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => at = fd,
                Err(_) => {
                    reached = false;
                    break;
                }
            }
        }
        if !reached {
            continue;
        }
        let Ok(fd) = rustix::fs::openat(
            &at,
            *name,
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let mut file = fs::File::from(fd);
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() || std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
            continue;
        }
        let zeros = vec![0u8; usize::try_from(meta.len()).unwrap_or(0).min(1 << 20)];
        let _ = file.write_all(&zeros).and_then(|()| file.sync_all());
    }
}

/// What the child gets for its credential: variables to set, and the directory (if any) that
/// must live as long as the child. `Debug` names the variables, never their values.
pub struct Materialized {
    pub env: Vec<(String, Zeroizing<String>)>,
    pub dir: Option<PrivateDir>,
}

impl std::fmt::Debug for Materialized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Materialized")
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("dir", &self.dir)
            .finish()
    }
}

/// Turns a credential into what `delivery` says the agent expects.
pub fn materialize(delivery: &Delivery, secret: &[u8]) -> Result<Materialized, SpawnError> {
    match delivery {
        Delivery::Env(names) => {
            let value = std::str::from_utf8(secret).map_err(|_| {
                SpawnError::Io("the stored token is not text; it cannot go in a variable".into())
            })?;
            let env = names
                .iter()
                .map(|n| (n.clone(), Zeroizing::new(value.to_string())))
                .collect();
            Ok(Materialized { env, dir: None })
        }
        Delivery::CodexHome => {
            let dir = PrivateDir::create()?;
            dir.write(CODEX_AUTH, secret)?;
            let home = Zeroizing::new(dir.path().to_string_lossy().into_owned());
            Ok(Materialized {
                env: vec![("CODEX_HOME".into(), home)],
                dir: Some(dir),
            })
        }
        Delivery::GeminiHome => {
            let dir = PrivateDir::create()?;
            dir.write(GEMINI_CREDS, secret)?;
            let home = Zeroizing::new(dir.path().to_string_lossy().into_owned());
            Ok(Materialized {
                env: vec![("HOME".into(), home)],
                dir: Some(dir),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn allowlist_keeps_only_named_and_prefixed_variables() {
        let parent = [
            ("PATH", "/bin"),
            ("LC_ALL", "C"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("EDITOR", "vi"),
            ("GIT_DIR", "g"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let kept: Vec<String> = allowed_env(parent.clone(), &[])
            .into_iter()
            .map(|(k, _)| k.into_string().unwrap())
            .collect();
        assert_eq!(kept, ["PATH", "LC_ALL"]);
        let kept = allowed_env(parent, &["EDITOR".into(), "GIT_*".into()]);
        assert_eq!(kept.len(), 4);
    }

    #[test]
    fn private_files_are_0600_in_0700_and_removed_on_drop() {
        let m = materialize(&Delivery::GeminiHome, b"{\"refresh_token\":\"r\"}").unwrap();
        let dir = m.dir.as_ref().unwrap().path().to_path_buf();
        let file = dir.join(".gemini/oauth_creds.json");
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(dir.join(".gemini"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(m.env[0].0, "HOME");
        drop(m);
        assert!(!dir.exists());
    }

    #[test]
    fn only_the_credential_files_are_zeroed_and_never_through_a_link() {
        // Beside the private directories, so a hard link can reach it.
        let outside = tempfile::tempdir_in(private_base()).unwrap();
        let users = outside.path().join("users-file");
        fs::write(&users, b"the user's own bytes").unwrap();
        let users_gemini = outside.path().join(".gemini");
        fs::create_dir(&users_gemini).unwrap();
        fs::write(users_gemini.join("oauth_creds.json"), b"the user's login").unwrap();

        // The agent hard-links a file of the user's as its auth.json, and swaps .gemini for
        // a link to the user's own.
        let dir = PrivateDir::create().unwrap();
        fs::hard_link(&users, dir.path().join(CODEX_AUTH)).unwrap();
        std::os::unix::fs::symlink(&users_gemini, dir.path().join(".gemini")).unwrap();
        fs::write(dir.path().join("project-notes"), b"agent's own").unwrap();
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        assert_eq!(fs::read(&users).unwrap(), b"the user's own bytes");
        assert_eq!(
            fs::read(users_gemini.join("oauth_creds.json")).unwrap(),
            b"the user's login"
        );

        // What handoff wrote is zeroed before it goes.
        let dir = PrivateDir::create().unwrap();
        let file = dir.write(CODEX_AUTH, b"secret").unwrap();
        let keep = fs::File::open(&file).unwrap();
        drop(dir);
        let mut left = Vec::new();
        std::io::Read::read_to_end(&mut &keep, &mut left).unwrap();
        assert_eq!(left, vec![0u8; 6]);
    }
}
