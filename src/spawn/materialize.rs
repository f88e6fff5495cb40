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

/// Best effort: zero every regular file below `dir` before it is unlinked.
fn overwrite_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => overwrite_files(&path),
            Ok(t) if t.is_file() => {
                if let Ok(len) = entry.metadata().map(|m| m.len())
                    && let Ok(mut f) = fs::OpenOptions::new().write(true).open(&path)
                {
                    let zeros = vec![0u8; usize::try_from(len).unwrap_or(0).min(1 << 20)];
                    let _ = f.write_all(&zeros).and_then(|()| f.sync_all());
                }
            }
            _ => {}
        }
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
            dir.write("auth.json", secret)?;
            let home = Zeroizing::new(dir.path().to_string_lossy().into_owned());
            Ok(Materialized {
                env: vec![("CODEX_HOME".into(), home)],
                dir: Some(dir),
            })
        }
        Delivery::GeminiHome => {
            let dir = PrivateDir::create()?;
            dir.write(".gemini/oauth_creds.json", secret)?;
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
}
