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
use super::mirror::Mirror;
use super::writeback::{Ticket, Watcher};
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

/// A private directory for credential files, removed on drop (after what the agent saved in
/// its mirrors of the user's directories went back to them).
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    /// The credential file in it, once written.
    credential: Option<PathBuf>,
    mirrors: Vec<Mirror>,
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
        Ok(Self {
            path,
            credential: None,
            mirrors: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credential file the agent was given (what a write-back reads).
    pub fn credential_file(&self) -> Option<&Path> {
        self.credential.as_deref()
    }

    /// Writes the credential file at `relative`.
    fn write_credential(&mut self, relative: &str, bytes: &[u8]) -> Result<(), SpawnError> {
        self.credential = Some(self.write(relative, bytes)?);
        Ok(())
    }

    /// Mirrors the user's `source` at `relative` (empty: the directory itself), keeping
    /// `private` (the credential file's name) out of it.
    fn mirror(
        &mut self,
        relative: &str,
        source: &Path,
        private: &'static str,
        make: &[&str],
    ) -> Result<&mut Mirror, SpawnError> {
        let target = self.path.join(relative);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&target)
            .map_err(|e| SpawnError::Io(format!("cannot create {}: {e}", target.display())))?;
        let mirror = Mirror::link(source, &target, vec![private, TICKET], make)?;
        self.mirrors.push(mirror);
        let last = self.mirrors.len() - 1;
        Ok(&mut self.mirrors[last])
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
        for mirror in &self.mirrors {
            mirror.give_back();
        }
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
            super::writeback::sweep_write_back(&entry.path());
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
const CREDENTIAL_FILES: [&str; 3] = [CODEX_AUTH, GEMINI_CREDS, CLAUDE_CREDS];
const CODEX_AUTH: &str = "auth.json";
const GEMINI_CREDS: &str = ".gemini/oauth_creds.json";
const CLAUDE_CREDS: &str = ".credentials.json";
/// What a write-back needs to know of the session, beside the credential (not secret).
pub const TICKET: &str = ".handoff-writeback";

/// Where a private directory holds the credential file of a `service` bundle.
pub fn credential_path(dir: &Path, service: crate::doc::Service) -> Option<PathBuf> {
    use crate::doc::Service;
    match service {
        Service::OpenaiCodex => Some(dir.join(CODEX_AUTH)),
        Service::ClaudeSubscription => Some(dir.join(CLAUDE_CREDS)),
        Service::Gemini => Some(dir.join(GEMINI_CREDS)),
        Service::Anthropic | Service::Openai => None,
    }
}

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
/// must live as long as the child, with the watch that writes its refreshed bundle back.
/// `Debug` names the variables, never their values.
#[derive(Default)]
pub struct Materialized {
    pub env: Vec<(String, Zeroizing<String>)>,
    pub dir: Option<PrivateDir>,
    pub watch: Option<Watcher>,
}

impl Materialized {
    /// The agent has ended: what it refreshed goes back (a last stash), then the private
    /// directory goes.
    pub fn finish(watch: Option<Watcher>, dir: Option<PrivateDir>) {
        if let Some(watch) = watch {
            watch.finish();
        }
        drop(dir);
    }
}

impl std::fmt::Debug for Materialized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Materialized")
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("dir", &self.dir)
            .field("watch", &self.watch.is_some())
            .finish()
    }
}

/// Where the user's own agent directories are, from the environment of the command that
/// spawns (sent to a detached session's supervisor with the handover).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserDirs {
    pub home: Option<PathBuf>,
    pub codex_home: Option<PathBuf>,
    pub claude_config_dir: Option<PathBuf>,
    pub gemini_cli_home: Option<PathBuf>,
}

impl UserDirs {
    /// From this process's environment (absolute paths only).
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        Self {
            home: var("HOME"),
            codex_home: var("CODEX_HOME"),
            claude_config_dir: var("CLAUDE_CONFIG_DIR"),
            gemini_cli_home: var("GEMINI_CLI_HOME"),
        }
    }
}

/// Turns a credential into what `delivery` says the agent expects. File credentials go in a
/// private directory that mirrors the user's own agent directory (from `user`), so the agent
/// keeps its configuration and history ([`super::mirror`]); `HOME` is never replaced.
pub fn materialize(
    delivery: &Delivery,
    secret: &[u8],
    user: &UserDirs,
    ticket: Option<&Ticket>,
) -> Result<Materialized, SpawnError> {
    let mut made = place(delivery, secret, user)?;
    if let (Some(ticket), Some(dir)) = (ticket, &made.dir)
        && let Some(file) = dir.credential_file()
    {
        super::writeback::write_ticket(dir, ticket)?;
        made.watch = Some(Watcher::start(file.to_path_buf(), ticket.clone(), secret));
    }
    Ok(made)
}

fn place(delivery: &Delivery, secret: &[u8], user: &UserDirs) -> Result<Materialized, SpawnError> {
    let text = |path: &Path| Zeroizing::new(path.to_string_lossy().into_owned());
    match delivery {
        Delivery::Env(names) => {
            let value = std::str::from_utf8(secret).map_err(|_| {
                SpawnError::Io("the stored token is not text; it cannot go in a variable".into())
            })?;
            let env = names
                .iter()
                .map(|n| (n.clone(), Zeroizing::new(value.to_string())))
                .collect();
            Ok(Materialized {
                env,
                ..Materialized::default()
            })
        }
        Delivery::CodexHome => {
            let mut dir = PrivateDir::create()?;
            let source = user
                .codex_home
                .clone()
                .or_else(|| user.home.as_ref().map(|h| h.join(".codex")));
            if let Some(source) = source {
                dir.mirror("", &source, CODEX_AUTH, &["sessions"])?;
            }
            dir.write_credential(CODEX_AUTH, secret)?;
            let home = text(dir.path());
            Ok(Materialized {
                env: vec![("CODEX_HOME".into(), home)],
                dir: Some(dir),
                watch: None,
            })
        }
        Delivery::ClaudeConfigDir => {
            let mut dir = PrivateDir::create()?;
            let source = match (&user.claude_config_dir, &user.home) {
                (Some(own), _) => Some((own.clone(), None)),
                (None, Some(home)) => Some((home.join(".claude"), Some(home.join(".claude.json")))),
                (None, None) => None,
            };
            if let Some((source, global)) = source {
                let mirror = dir.mirror("", &source, CLAUDE_CREDS, &[])?;
                // With CLAUDE_CONFIG_DIR set, Claude Code keeps its global settings inside
                // it; without, beside it in the home.
                if let Some(global) = global {
                    mirror.link_one(".claude.json", &global);
                }
            }
            dir.write_credential(CLAUDE_CREDS, secret)?;
            let path = text(dir.path());
            Ok(Materialized {
                env: vec![("CLAUDE_CONFIG_DIR".into(), path)],
                dir: Some(dir),
                watch: None,
            })
        }
        Delivery::GeminiHome => {
            let mut dir = PrivateDir::create()?;
            let source = user
                .gemini_cli_home
                .as_ref()
                .or(user.home.as_ref())
                .map(|h| h.join(".gemini"));
            if let Some(source) = source {
                dir.mirror(".gemini", &source, "oauth_creds.json", &[])?;
            }
            dir.write_credential(GEMINI_CREDS, secret)?;
            let home = text(dir.path());
            Ok(Materialized {
                env: vec![("GEMINI_CLI_HOME".into(), home)],
                dir: Some(dir),
                watch: None,
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
        let m = materialize(
            &Delivery::GeminiHome,
            b"{\"refresh_token\":\"r\"}",
            &UserDirs::default(),
            None,
        )
        .unwrap();
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
        assert_eq!(m.env[0].0, "GEMINI_CLI_HOME");
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
