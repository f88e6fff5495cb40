//! Who may ask this device to start an agent (`spawn-policy`), and the judgement of one such
//! request. The policy is this device's own: it lives in the home (`spawn-policy.json`), is
//! never synced, and no other device can grant itself anything in it. Default deny.
//!
//! The file is authenticated with a key derived from the vault key (HMAC-SHA256 under
//! HKDF(vault secret, `handoff/v1/spawn-policy`)), so a process of this user that writes it
//! without the passphrase (an agent) makes it fail to verify, and a policy that does not verify
//! allows nothing. Writing it takes the passphrase every time (tier 3).

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use handoff_protocol::DeviceId;
use handoff_protocol::spawn::{Refusal, Start};
use serde::{Deserialize, Serialize};

use crate::device::Unlocked;

/// The policy's file in the home.
pub const FILE: &str = "spawn-policy.json";
/// Largest policy file read.
const FILE_MAX: u64 = 1024 * 1024;
/// Most entries of each list in one rule.
pub const LIST_MAX: usize = 64;
const DOMAIN: &[u8] = b"handoff/v1/spawn-policy";
/// The file's format version (covered by its MAC).
const VERSION: u8 = 1;
/// Longest refusal line sent back (the asker's own words are cut to fit).
const DETAIL_MAX: usize = 512;

/// What one device may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Agents it may start; empty: any agent this device knows.
    pub agents: Vec<String>,
    /// Directories (canonical) a session may start in or under; never empty.
    pub roots: Vec<PathBuf>,
    /// Profile labels it may name; empty: any, or none (the service's default).
    pub profiles: Vec<String>,
    /// Whether it may pass extra arguments (an agent's arguments can run code).
    pub args: bool,
}

/// The rules, by device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The rules, by device id (hex).
    pub rules: BTreeMap<String, Rule>,
}

/// Why the policy cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("cannot read or write {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} does not verify (it was written without the passphrase); it allows nothing until set again with `handoff spawn-policy`"
    )]
    Tampered(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// The file: the rules and their MAC.
#[derive(Serialize, Deserialize)]
struct Stored {
    v: u8,
    rules: BTreeMap<String, Rule>,
    mac: String,
}

/// What a stored policy is, read without the key (for a listing while locked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Its MAC verified under the vault key.
    Verified,
    /// Not checked: the vault is locked.
    Unchecked,
}

impl Policy {
    fn path(home: &Path) -> PathBuf {
        home.join(FILE)
    }

    /// The policy, verified with `key` when given. No file: no rule. A file that does not
    /// verify is an error (callers judging a request treat it as deny-all).
    pub fn load(home: &Path, key: Option<&Unlocked>) -> Result<(Policy, Checked), PolicyError> {
        let path = Self::path(home);
        let file_err = |source| PolicyError::File {
            path: path.clone(),
            source,
        };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&path);
        let bytes = match opened {
            Ok(f) if !f.metadata().map_err(file_err)?.is_file() => {
                return Err(PolicyError::Tampered(path));
            }
            Ok(f) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(f, FILE_MAX), &mut bytes)
                    .map_err(file_err)?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let checked = key.map_or(Checked::Unchecked, |_| Checked::Verified);
                return Ok((Policy::default(), checked));
            }
            // A link in its place: not a file this device wrote.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(PolicyError::Tampered(path));
            }
            Err(e) => return Err(file_err(e)),
        };
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|_| PolicyError::Tampered(path.clone()))?;
        let policy = Policy {
            rules: stored.rules,
        };
        let Some(key) = key else {
            return Ok((policy, Checked::Unchecked));
        };
        let good = hex::decode(&stored.mac)
            .ok()
            .is_some_and(|mac| policy.verify(key, &mac));
        if stored.v != VERSION || !good {
            return Err(PolicyError::Tampered(path));
        }
        Ok((policy, Checked::Verified))
    }

    /// Writes the policy with its MAC, atomically, mode 0600.
    pub fn save(&self, home: &Path, key: &Unlocked) -> Result<(), PolicyError> {
        let stored = Stored {
            v: VERSION,
            rules: self.rules.clone(),
            mac: hex::encode(self.mac(key)?),
        };
        let bytes =
            serde_json::to_vec_pretty(&stored).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let path = Self::path(home);
        crate::home::write_private(&path, &bytes)
            .map_err(|source| PolicyError::File { path, source })
    }

    /// HMAC-SHA256 under the policy key of the format version and the rules' JSON (one
    /// serialization of one value: the map is ordered, the lists were sorted when set).
    /// HKDF-Extract is HMAC(salt, ikm).
    fn mac(&self, key: &Unlocked) -> Result<[u8; 32], PolicyError> {
        let mut input = vec![VERSION];
        serde_json::to_writer(&mut input, &self.rules)
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let (prk, _) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(&key.derive(DOMAIN)[..]), &input);
        Ok(prk.into())
    }

    fn verify(&self, key: &Unlocked, mac: &[u8]) -> bool {
        // Constant time: every byte is compared whatever the first difference.
        let Ok(ours) = self.mac(key) else {
            return false;
        };
        mac.len() == ours.len() && ours.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Sets `device`'s rule, checking and canonicalizing it first.
    pub fn allow(&mut self, device: DeviceId, mut rule: Rule) -> Result<(), PolicyError> {
        if rule.roots.is_empty() {
            return Err(PolicyError::Invalid(
                "name at least one --root DIR the device may start sessions under".into(),
            ));
        }
        if [rule.agents.len(), rule.roots.len(), rule.profiles.len()]
            .iter()
            .any(|n| *n > LIST_MAX)
        {
            return Err(PolicyError::Invalid(format!(
                "a rule holds at most {LIST_MAX} agents, roots and profiles each"
            )));
        }
        for root in &mut rule.roots {
            *root = std::fs::canonicalize(&*root)
                .map_err(|e| PolicyError::Invalid(format!("--root {}: {e}", root.display())))?;
            if !root.is_dir() {
                return Err(PolicyError::Invalid(format!(
                    "--root {} is not a directory",
                    root.display()
                )));
            }
        }
        rule.agents.sort();
        rule.agents.dedup();
        rule.roots.sort();
        rule.roots.dedup();
        rule.profiles.sort();
        rule.profiles.dedup();
        self.rules.insert(device.to_hex(), rule);
        Ok(())
    }

    /// Drops `device`'s rule; whether it had one.
    pub fn deny(&mut self, device: &DeviceId) -> bool {
        self.rules.remove(&device.to_hex()).is_some()
    }

    /// Judges `start` from `device`: the directory to start in (canonical), or the refusal
    /// and its one line. The caller must start the agent in that directory without
    /// resolving the path again (or check it again where the agent starts).
    pub fn judge(&self, device: &DeviceId, start: &Start) -> Result<PathBuf, (Refusal, String)> {
        let Some(rule) = self.rules.get(&device.to_hex()) else {
            return Err((
                Refusal::Policy,
                "this device's spawn policy does not allow yours to start sessions".into(),
            ));
        };
        if !rule.agents.is_empty() && !rule.agents.contains(&start.agent) {
            return Err((
                Refusal::Policy,
                detail(&format!(
                    "the spawn policy does not allow your device to start {}",
                    start.agent
                )),
            ));
        }
        if !start.args.is_empty() && !rule.args {
            return Err((
                Refusal::ArgsNotAllowed,
                "the spawn policy does not allow your device to pass arguments".into(),
            ));
        }
        // A rule that names profiles allows only those: a request that names none (the
        // service's default) is refused rather than handed whatever the default is.
        if !rule.profiles.is_empty()
            && !start
                .profile
                .as_ref()
                .is_some_and(|p| rule.profiles.contains(p))
        {
            return Err((
                Refusal::Policy,
                detail(&format!(
                    "the spawn policy allows your device only the profiles {}",
                    rule.profiles.join(", ")
                )),
            ));
        }
        // One line for a directory that is missing and one outside the roots: an asker
        // learns nothing of what exists outside them.
        let refused = || {
            (
                Refusal::DirNotAllowed,
                detail(&format!(
                    "{} is not a directory under one the policy allows",
                    start.dir
                )),
            )
        };
        let dir = Path::new(&start.dir);
        if !dir.is_absolute() {
            return Err(refused());
        }
        // Symlinks and `..` resolved: what the agent would really start in.
        let real = std::fs::canonicalize(dir).map_err(|_| refused())?;
        if !real.is_dir() {
            return Err(refused());
        }
        // Component-wise (/src/app2 is not under /src/app), against each root as it was
        // when the rule was set: a root that no longer resolves to itself (replaced by a
        // link since) allows nothing.
        let under = rule.roots.iter().any(|root| {
            std::fs::canonicalize(root).is_ok_and(|now| now == *root) && real.starts_with(root)
        });
        if !under {
            return Err(refused());
        }
        Ok(real)
    }
}

/// A refusal line of at most [`DETAIL_MAX`] bytes (it echoes the asker's own words).
fn detail(line: &str) -> String {
    one_line(line, DETAIL_MAX)
}

/// `text` as one line of at most `max` bytes: no control characters, cut on a character
/// boundary (marked `...`) when longer. For words that come from another device.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    // Control characters, and the bidirectional overrides and isolates that reorder what a
    // terminal shows.
    let shown = |c: &char| {
        !c.is_control()
            && !matches!(
                *c,
                '\u{200b}'..='\u{200f}'
                    | '\u{2028}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{061c}'
                    | '\u{feff}'
            )
    };
    let mut out: String = text.chars().filter(shown).collect();
    if out.len() > max {
        let mut cut = max.saturating_sub(3);
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_from_another_device_lose_what_a_terminal_acts_on() {
        let hostile = "ok\r\x1b[1A\x1b[2Kfake\u{202e}txt.exe\u{2066}x\u{200f}\u{2028}\n";
        assert_eq!(one_line(hostile, 100), "ok[1A[2Kfaketxt.exex");
        assert_eq!(one_line("ééé", 5), "é...");
    }

    fn start(dir: &Path) -> Start {
        Start {
            agent: "claude".into(),
            dir: dir.display().to_string(),
            profile: Some("work".into()),
            service: None,
            args: Vec::new(),
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, Policy, DeviceId) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        let device = DeviceId::from_bytes([9; 16]);
        let mut policy = Policy::default();
        policy
            .allow(
                device,
                Rule {
                    agents: vec!["claude".into()],
                    roots: vec![root.clone()],
                    profiles: vec!["work".into()],
                    args: false,
                },
            )
            .unwrap();
        (tmp, root, policy, device)
    }

    #[test]
    fn a_request_is_judged_by_the_senders_rule() {
        let (tmp, root, policy, device) = setup();
        let real = std::fs::canonicalize(root.join("app")).unwrap();
        assert_eq!(policy.judge(&device, &start(&root.join("app"))), Ok(real));
        let refused = |s: &Start| policy.judge(&device, s).unwrap_err().0;
        // Another device: default deny.
        let other = DeviceId::from_bytes([1; 16]);
        assert_eq!(
            policy.judge(&other, &start(&root)).unwrap_err().0,
            Refusal::Policy
        );
        let mut s = start(&root);
        s.agent = "codex".into();
        assert_eq!(refused(&s), Refusal::Policy);
        let mut s = start(&root);
        s.profile = Some("personal".into());
        assert_eq!(refused(&s), Refusal::Policy);
        let mut s = start(&root);
        s.profile = None;
        assert_eq!(refused(&s), Refusal::Policy, "no profile: not the default");
        let mut s = start(&root);
        s.args = vec!["--yolo".into()];
        assert_eq!(refused(&s), Refusal::ArgsNotAllowed);
        let mut s = start(&root);
        s.agent = format!("claude\n{}", "x".repeat(5000));
        let (_, line) = policy.judge(&device, &s).unwrap_err();
        assert!(line.len() <= DETAIL_MAX && !line.contains('\n'), "{line}");
        // Outside, through `..`, through a symlink, a sibling with the root as prefix, missing,
        // relative: each refused as a directory not allowed.
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), root.join("link")).unwrap();
        std::fs::create_dir_all(tmp.path().join("root2")).unwrap();
        for dir in [
            tmp.path().join("elsewhere"),
            root.join("app/../../elsewhere"),
            root.join("link"),
            tmp.path().join("root2"),
            root.join("missing"),
            PathBuf::from("root/app"),
        ] {
            assert_eq!(refused(&start(&dir)), Refusal::DirNotAllowed, "{dir:?}");
        }
        // The root itself replaced by a link to somewhere wider: it allows nothing.
        std::fs::rename(&root, tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), &root).unwrap();
        assert_eq!(
            refused(&start(&tmp.path().join("elsewhere"))),
            Refusal::DirNotAllowed
        );
        assert_eq!(
            refused(&start(&root.join("elsewhere"))),
            Refusal::DirNotAllowed
        );
    }

    #[test]
    fn a_policy_written_without_the_key_allows_nothing() {
        let (tmp, _root, policy, device) = setup();
        let home = tmp.path();
        let key = Unlocked::for_tests([3; 32]);
        policy.save(home, &key).unwrap();
        let (read, checked) = Policy::load(home, Some(&key)).unwrap();
        assert_eq!((read, checked), (policy.clone(), Checked::Verified));
        let mode = std::fs::metadata(home.join(FILE)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Another key (another vault), or rules edited in place: refused.
        let other = Unlocked::for_tests([4; 32]);
        assert!(matches!(
            Policy::load(home, Some(&other)),
            Err(PolicyError::Tampered(_))
        ));
        let text = std::fs::read_to_string(home.join(FILE)).unwrap();
        let edited = text.replace("\"args\": false", "\"args\": true");
        assert_ne!(edited, text);
        std::fs::write(home.join(FILE), edited).unwrap();
        assert!(matches!(
            Policy::load(home, Some(&key)),
            Err(PolicyError::Tampered(_))
        ));
        // Without the key it can be listed, marked unchecked.
        let (read, checked) = Policy::load(home, None).unwrap();
        assert!(read.rules[&device.to_hex()].args);
        assert_eq!(checked, Checked::Unchecked);
        // A link in the file's place (to a FIFO that would block a reader, here) is refused.
        std::fs::remove_file(home.join(FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/null", home.join(FILE)).unwrap();
        assert!(matches!(
            Policy::load(home, Some(&key)),
            Err(PolicyError::Tampered(_))
        ));
    }

    #[test]
    fn a_rule_needs_a_root_that_exists() {
        let mut policy = Policy::default();
        let device = DeviceId::from_bytes([9; 16]);
        assert!(policy.allow(device, Rule::default()).is_err());
        let missing = Rule {
            roots: vec!["/nonexistent/handoff/root".into()],
            ..Rule::default()
        };
        assert!(policy.allow(device, missing).is_err());
        assert!(policy.rules.is_empty());
    }
}
