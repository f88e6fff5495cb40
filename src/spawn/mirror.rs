//! Agent homes that keep the user's configuration: a private directory that stands in for the
//! user's own agent directory (`~/.codex`, `~/.claude`, `~/.gemini`), with every entry of the
//! user's linked into it and only the credential file private to the session.
//!
//! What the agent writes through a link lands in the user's own directory (session history,
//! settings, logs), where the user's own agent would have written it. Directories an agent
//! always writes into (Codex's `sessions/`) are made in the user's directory first so they are
//! linked too. A file the agent replaced by renaming over its link (how most agents save
//! settings) is copied back over the user's when the session ends ([`Mirror::give_back`]);
//! anything else the agent left at the top (never the credential file) is copied back when the
//! user has no entry of that name.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest file copied back at the end of a session.
const GIVE_BACK_MAX: u64 = 16 * 1024 * 1024;
/// The most entries of a user's agent directory linked into a mirror.
const ENTRIES_MAX: usize = 4096;

/// A private directory (or one of its subdirectories) mirroring a user's directory.
#[derive(Debug)]
pub struct Mirror {
    /// The user's own directory.
    source: PathBuf,
    /// Where its entries are linked.
    target: PathBuf,
    /// Names that stay private (the credential file, handoff's own).
    private: Vec<&'static str>,
    /// Entries linked from elsewhere than `source` ([`Mirror::link_one`]), by name.
    elsewhere: Vec<(String, PathBuf)>,
}

impl Mirror {
    /// Links every entry of `source` (made, 0700, if missing, with `make` inside it) into
    /// `target` (which exists and is private), except `private`.
    pub fn link(
        source: &Path,
        target: &Path,
        private: Vec<&'static str>,
        make: &[&str],
    ) -> Result<Self, super::SpawnError> {
        let io = |what: &str, e: std::io::Error| {
            super::SpawnError::Io(format!("cannot mirror {}: {what}: {e}", source.display()))
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(source)
            .map_err(|e| io("cannot create it", e))?;
        for dir in make {
            let path = source.join(dir);
            if fs::symlink_metadata(&path).is_err() {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| io(dir, e))?;
            }
        }
        let entries = fs::read_dir(source).map_err(|e| io("cannot read it", e))?;
        for entry in entries.flatten().take(ENTRIES_MAX) {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| private.contains(&n)) {
                continue;
            }
            let at = target.join(&name);
            if fs::symlink_metadata(&at).is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(entry.path(), &at)
                .map_err(|e| io(&name.to_string_lossy(), e))?;
        }
        Ok(Self {
            source: source.to_path_buf(),
            target: target.to_path_buf(),
            private,
            elsewhere: Vec::new(),
        })
    }

    /// Links one more entry: `name` in the mirror stands for `source` (Claude's `.claude.json`,
    /// which lives beside `~/.claude`), when it exists.
    pub fn link_one(&mut self, name: &str, source: &Path) {
        if fs::symlink_metadata(source).is_ok()
            && fs::symlink_metadata(self.target.join(name)).is_err()
        {
            let _ = std::os::unix::fs::symlink(source, self.target.join(name));
        }
        self.elsewhere
            .push((name.to_string(), source.to_path_buf()));
    }

    /// Copies back what the agent left at the top of the mirror that is not a link: a regular
    /// file over the user's file of that name (or where the user has none). Best effort:
    /// whatever cannot be copied stays, and goes with the private directory.
    pub fn give_back(&self) {
        let Ok(entries) = fs::read_dir(&self.target) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // The credential, and anything named after it (an agent's temporary or backup
            // copy of it): the session's, never the user's.
            let is_private = |n: &str| {
                let bare = n.trim_start_matches('.');
                self.private
                    .iter()
                    .any(|p| bare.starts_with(p.trim_start_matches('.')))
            };
            if name.to_str().is_none_or(is_private) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if !meta.is_file() || meta.len() > GIVE_BACK_MAX {
                continue;
            }
            let dest = self
                .elsewhere
                .iter()
                .find(|(n, _)| name.to_str() == Some(n.as_str()))
                .map_or_else(|| self.source.join(&name), |(_, p)| p.clone());
            // The user's entry is a file (or there is none): never over a directory or a link
            // of the user's own.
            match fs::symlink_metadata(&dest) {
                Ok(m) if !m.is_file() => continue,
                _ => {}
            }
            if let Err(e) = copy_over(&entry.path(), &dest) {
                tracing::warn!(file = %dest.display(), error = %e, "could not give a file back");
            }
        }
    }
}

/// Copies `from` to `to` by a temporary file beside `to` and a rename, so the user's file is
/// never seen half written; the copy keeps `from`'s permission bits (at most 0700's).
fn copy_over(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    // Never through a link the agent put in place since the entry was listed.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(from)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > GIVE_BACK_MAX {
        return Err(std::io::Error::other(
            "not a regular file of a size to give back",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(GIVE_BACK_MAX).read_to_end(&mut bytes)?;
    let mode = meta.permissions().mode() & 0o700;
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = to.with_file_name(format!(".{name}.handoff-{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode | 0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, to));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_linked_the_credential_stays_private_and_replaced_files_come_back() {
        let user = tempfile::tempdir().unwrap();
        let source = user.path().join(".codex");
        fs::create_dir(&source).unwrap();
        fs::write(source.join("config.toml"), "model = \"o3\"\n").unwrap();
        fs::write(source.join("auth.json"), "the user's own login").unwrap();
        fs::write(source.join("settings.json"), "old").unwrap();
        let target = tempfile::tempdir().unwrap();
        let mirror =
            Mirror::link(&source, target.path(), vec!["auth.json"], &["sessions"]).unwrap();
        assert_eq!(
            fs::read_to_string(target.path().join("config.toml")).unwrap(),
            "model = \"o3\"\n"
        );
        assert!(fs::symlink_metadata(target.path().join("auth.json")).is_err());
        // Written through the link: in the user's directory at once.
        fs::write(target.path().join("sessions/rollout.jsonl"), "turn").unwrap();
        assert!(source.join("sessions/rollout.jsonl").exists());
        // Saved by a rename over the link, and a new file, and the credential: the first two
        // come back, the credential never does.
        fs::write(target.path().join(".settings.tmp"), "new").unwrap();
        fs::rename(
            target.path().join(".settings.tmp"),
            target.path().join("settings.json"),
        )
        .unwrap();
        fs::write(target.path().join("auth.json"), "session secret").unwrap();
        fs::write(target.path().join("notes.md"), "left by the agent").unwrap();
        mirror.give_back();
        assert_eq!(
            fs::read_to_string(source.join("settings.json")).unwrap(),
            "new"
        );
        assert_eq!(
            fs::read_to_string(source.join("auth.json")).unwrap(),
            "the user's own login"
        );
        assert_eq!(
            fs::read_to_string(source.join("notes.md")).unwrap(),
            "left by the agent"
        );
    }
}
