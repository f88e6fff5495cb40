//! Helpers to run the real binary against a temporary home.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any one command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub const PASSPHRASE: &str = "correct horse battery staple";

/// The mesh settings of every test home: loopback only, no mDNS.
pub const LOOPBACK_NET: &str = "[net]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\n";

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts a failure with `code` and exactly one line on stderr; returns that line.
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "expected exit {code}; got {self:?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with("warning:"))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line; got {:?}",
            self.stderr
        );
        assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
        lines[0]
    }
}

/// A temporary home plus a passphrase file kept outside it; optionally served by a daemon
/// (started by `init`, stopped on drop), so the same checks run through the control socket.
pub struct TestHome {
    dir: tempfile::TempDir,
    pub passphrase_file: PathBuf,
    daemon: bool,
}

/// A program on PATH (`man`, `systemd-analyze`, `script`), if this machine has it.
pub fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_handoff")
}

impl TestHome {
    pub fn new() -> Self {
        Self::with_passphrase(PASSPHRASE)
    }

    pub fn with_passphrase(passphrase: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let passphrase_file = dir.path().join("passphrase");
        write_private(&passphrase_file, passphrase.as_bytes());
        Self {
            dir,
            passphrase_file,
            daemon: false,
        }
    }

    /// A home whose `init` also starts a daemon for it.
    pub fn with_daemon() -> Self {
        let mut home = Self::new();
        home.daemon = true;
        home
    }

    /// The handoff home (inside the temp dir, created by the binary).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The user's home directory the commands run with (made on first use).
    pub fn user_home(&self) -> PathBuf {
        let path = self.scratch("user");
        let _ = std::fs::create_dir(&path);
        path
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("handoff.db")
    }

    /// A command with this home and passphrase file, and nothing inherited that could point
    /// it elsewhere.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_in(None, args)
    }

    /// A command run inside the network namespace `netns` (one the test created).
    pub fn command_in(&self, netns: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = match netns {
            None => Command::new(binary()),
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, binary()]);
                cmd
            }
        };
        // The user's own home is the test's: agent directories handoff mirrors (~/.codex,
        // ~/.claude, ~/.gemini) are never the real user's.
        let user_home = self.user_home();
        cmd.arg("--home")
            .arg(self.path())
            .args(args)
            .env("HOME", &user_home)
            .env_remove("HANDOFF_HOME")
            .env_remove("CODEX_HOME")
            .env_remove("CLAUDE_CONFIG_DIR")
            .env_remove("GEMINI_CLI_HOME")
            .env("HANDOFF_PASSPHRASE_FILE", &self.passphrase_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            // A command may refuse before it reads its input (an unknown service, a label
            // taken), and exit before this write ends: its output says what happened.
            if let Err(e) = pipe.write_all(bytes) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
            }
        }
        finish(child, COMMAND_TIMEOUT)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, Some(0), "handoff {args:?} failed: {out:?}");
        out.stdout
    }

    /// `init --json`; returns the recovery code.
    pub fn init(&self) -> String {
        let code = self.init_without_daemon();
        self.start_daemon_if_wanted();
        code
    }

    /// `init` only, even on a daemon-mode home (for tests that change the store first).
    pub fn init_without_daemon(&self) -> String {
        let out = self.ok(&["--json", "init", "--name", "test-device"]);
        self.configure_loopback();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["recovery_code"].as_str().unwrap().to_string()
    }

    /// Keeps this home's mesh on loopback and off the LAN: tests talk to nothing else.
    pub fn configure_loopback(&self) {
        let config = self.path().join("config.toml");
        if !config.exists() {
            write_private(&config, LOOPBACK_NET.as_bytes());
        }
    }

    /// Starts this home's daemon if it is a daemon-mode home.
    pub fn start_daemon_if_wanted(&self) {
        if self.daemon {
            self.ok(&["daemon", "start"]);
        }
    }

    pub fn wants_daemon(&self) -> bool {
        self.daemon
    }

    /// `token add` with the secret on stdin; returns the token id.
    pub fn add(&self, service: &str, label: &str, secret: &str, extra: &[&str]) -> String {
        let mut args = vec!["--json", "token", "add", service, "--label", label];
        args.extend_from_slice(extra);
        let out = self.run_with_stdin(&args, Some(secret.as_bytes()));
        assert_eq!(out.code, Some(0), "token add failed: {out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    pub fn reveal(&self, query: &str) -> String {
        let out = self.ok(&["token", "show", query, "--reveal"]);
        out.strip_suffix('\n').unwrap_or(&out).to_string()
    }

    pub fn list_json(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.ok(&["--json", "token", "list"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// `export --out` into this test's scratch dir; returns the path.
    pub fn export(&self, name: &str) -> String {
        let path = self.scratch(name).to_str().unwrap().to_string();
        self.ok(&["export", "--out", &path]);
        path
    }

    /// A second device of this vault: a new home recovered from this one's export with `code`.
    pub fn second_device(&self, code: &str) -> TestHome {
        let export = self.export("for-second-device.automerge");
        let other = TestHome::new();
        let code_file = other.scratch("code");
        write_private(&code_file, code.as_bytes());
        other.ok(&[
            "recover",
            "--from",
            &export,
            "--code-file",
            code_file.to_str().unwrap(),
        ]);
        other.configure_loopback();
        other
    }

    /// Every regular file under the home with its contents, to prove a failed command changed
    /// nothing (the daemon's socket and log, and SQLite's read marks, are not vault state and
    /// are left out).
    pub fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        // SQLite's shared-memory index (`-shm`) changes when anyone merely reads (its read
        // marks): it is no vault state either.
        self.all_files()
            .into_iter()
            .filter(|(p, _)| {
                p.file_name()
                    .is_none_or(|n| n != "daemon.log" && !n.to_string_lossy().ends_with("-shm"))
            })
            .collect()
    }

    /// Every regular file under the home, the daemon's log included.
    pub fn all_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(self.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                out.insert(entry.path(), std::fs::read(entry.path()).unwrap());
            }
        }
        out
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        // A failing test shows what its daemon logged: the daemon is another process.
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.path().join("daemon.log"))
        {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- daemon.log (last lines)");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if self.daemon {
            let _ = self.run(&["daemon", "stop"]);
        }
    }
}

/// Waits for a child with a deadline; kills it and fails the test past the deadline.
pub fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    // Either stream may be redirected elsewhere by the test; read what is piped.
    fn drain(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut stream) = stream {
                stream.read_to_string(&mut s).ok();
            }
            s
        })
    }
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("command did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: status.code(),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

pub fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A directory for PATH holding links to just these system tools (so a test controls what a
/// stand-in agent, or handoff, finds: no tmux unless it is asked for).
pub fn tools_dir(dir: &Path, tools: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for tool in tools {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists());
        if let Some(path) = found {
            let _ = std::os::unix::fs::symlink(path, dir.join(tool));
        }
    }
    dir.to_path_buf()
}

/// A tmux server of the test's own (`TMUX_TMPDIR`), ended whatever happens.
pub struct TmuxServer(pub PathBuf);

impl TmuxServer {
    pub fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        TmuxServer(dir)
    }

    /// Runs `tmux ARGS` against this server.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(args)
            .env("TMUX_TMPDIR", &self.0)
            .output()
            .unwrap()
    }
}

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("kill-server")
            .env("TMUX_TMPDIR", &self.0)
            .output();
    }
}
