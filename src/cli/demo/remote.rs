//! The demo's remote spawn: a phone paired as `remote` (it holds no key) asks the laptop for an
//! agent session, through the real binaries and daemons, as a person would run them. The laptop
//! starts a stand-in `claude` with the token in its environment only, by its own policy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{WAIT, failed, hex};
use crate::cli::CliError;

/// What the remote step showed.
pub(super) struct Shown {
    /// The stand-in agent on the laptop held exactly the token.
    pub started: bool,
    /// `session list --on laptop` on the phone listed the session.
    pub listed: bool,
    /// The phone's audit holds the laptop's signed entry for the start.
    pub audited: bool,
    /// No byte of the token in any file of the phone's home.
    pub phone_clean: bool,
}

/// This very binary with `home`, the passphrase file and the stand-ins' PATH.
struct Handoff {
    exe: PathBuf,
    passphrase: PathBuf,
    path: std::ffi::OsString,
}

impl Handoff {
    fn command(&self, home: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--home")
            .arg(home)
            .arg("--passphrase-file")
            .arg(&self.passphrase)
            .args(args)
            .env("PATH", &self.path)
            .env_remove("HANDOFF_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs to the end; its standard output, or its error line.
    fn run(&self, home: &Path, args: &[&str]) -> Result<String, (Option<i32>, String)> {
        let out = self
            .command(home, args)
            .output()
            .map_err(|e| (None, e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err((
                out.status.code(),
                err.lines().last().unwrap_or("").to_string(),
            ))
        }
    }

    fn ok(&self, home: &Path, args: &[&str]) -> Result<String, CliError> {
        self.run(home, args)
            .map_err(|(_, line)| failed(&format!("`{}`: {line}", args.join(" "))))
    }
}

/// Writes a file only the user can read (`mode` 0600, or 0700 for a script).
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
        .map_err(|source| CliError::File {
            what: "cannot write",
            path: path.to_path_buf(),
            source,
        })
}

/// Runs the step on the laptop's home (no process may hold it open) with its passphrase, for
/// the token whose value is `token`; `step` reports progress.
pub(super) fn remote_spawn(
    root: &Path,
    laptop: &Path,
    passphrase: &str,
    token: &str,
    step: &dyn Fn(&str),
) -> Result<Shown, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Internal(format!("cannot find this program: {e}")))?;
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| CliError::Internal(e.to_string()))?;
    let report = root.join("remote-agent-report");
    // The stand-in claude: reports the hash of the key it was given, and where it runs.
    write_private(
        &bin.join("claude"),
        format!(
            "#!/bin/sh\nprintf '%s %s' \"$(printf '%s' \"$ANTHROPIC_API_KEY\" | sha256sum | cut -d' ' -f1)\" \"$(pwd)\" > '{}'\n",
            report.display()
        )
        .as_bytes(),
        0o700,
    )?;
    let mut path = bin.clone().into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()));
    let pass_file = root.join("passphrase");
    write_private(&pass_file, passphrase.as_bytes(), 0o600)?;
    let h = Handoff {
        exe,
        passphrase: pass_file,
        path,
    };
    let loopback = b"[net]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\n";
    write_private(&laptop.join("config.toml"), loopback, 0o600)?;
    let phone = root.join("phone");
    // Whatever happens below, both daemons are stopped on the way out.
    let _stop = Stopping {
        h: &h,
        homes: [laptop.to_path_buf(), phone.clone()],
    };
    (|| {
        h.ok(laptop, &["daemon", "start"])?;
        h.ok(laptop, &["unlock", "--for", "10m"])?;
        // The phone pairs as `remote`: the laptop admits it without a key.
        let mut offer = Reaped(
            h.command(
                laptop,
                &["--json", "peer", "add", "--role", "remote", "--yes"],
            )
            .spawn()
            .map_err(|e| CliError::Internal(e.to_string()))?,
        );
        let mut first = String::new();
        if let Some(out) = offer.0.stdout.as_mut() {
            use std::io::BufRead;
            std::io::BufReader::new(out)
                .read_line(&mut first)
                .map_err(|e| CliError::Internal(e.to_string()))?;
        }
        let offered: serde_json::Value =
            serde_json::from_str(&first).map_err(|_| failed("the pairing offer said nothing"))?;
        let code = offered["code"].as_str().unwrap_or_default();
        let addr = offered["addrs"][0].as_str().unwrap_or_default();
        h.ok(
            &phone,
            &[
                "peer",
                "join",
                code,
                "--addr",
                addr,
                "--yes",
                "--no-mdns",
                "--name",
                "phone",
            ],
        )?;
        let _ = offer.0.wait();
        write_private(&phone.join("config.toml"), loopback, 0o600)?;
        h.ok(&phone, &["daemon", "start"])?;
        step("phone: paired as a remote device (it holds no key to any token)");
        let projects = root.join("projects");
        std::fs::create_dir_all(projects.join("app"))
            .map_err(|e| CliError::Internal(e.to_string()))?;
        let projects_text = projects.to_string_lossy().into_owned();
        h.ok(
            laptop,
            &[
                "spawn-policy",
                "allow",
                "phone",
                "--agent",
                "claude",
                "--root",
                &projects_text,
                "--profile",
                "work",
            ],
        )?;
        step("laptop: spawn-policy allows the phone claude under projects/ with profile work");
        let app = projects.join("app").to_string_lossy().into_owned();
        let ask = [
            "--json",
            "spawn",
            "claude",
            "--on",
            "laptop",
            "--dir",
            &app,
            "--profile",
            "work",
        ];
        let deadline = Instant::now() + WAIT;
        let asked = loop {
            match h.run(&phone, &ask) {
                Err((Some(7), _)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => break other,
            }
        };
        let asked = asked.map_err(|(_, line)| failed(&format!("spawn --on: {line}")))?;
        let session: serde_json::Value = serde_json::from_str(&asked).unwrap_or_default();
        let session = session["session"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + WAIT;
        let reported = loop {
            match std::fs::read_to_string(&report) {
                Ok(text) if !text.is_empty() => break text,
                _ if Instant::now() > deadline => break String::new(),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let real = std::fs::canonicalize(projects.join("app")).unwrap_or_default();
        let started = reported
            == format!(
                "{} {}",
                hex(&Sha256::digest(token.as_bytes())),
                real.display()
            );
        step(&format!(
            "phone: `spawn claude --on laptop --dir projects/app --profile work` started session {session} there; the agent holds exactly the work token, in its environment only: {started}"
        ));
        let listed = h
            .ok(&phone, &["--json", "session", "list", "--on", "laptop"])?
            .contains(&session);
        let deadline = Instant::now() + WAIT;
        let audited = loop {
            let audit = h.ok(&phone, &["--json", "audit", "--device", "laptop"])?;
            if audit.contains("spawn.remote.started") {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        step(&format!(
            "phone: `session list --on laptop` shows it: {listed}; its audit shows the laptop's signed entry: {audited}"
        ));
        let phone_clean = !files_under(&phone)
            .iter()
            .filter_map(|path| std::fs::read(path).ok())
            .any(|bytes| bytes.windows(token.len()).any(|w| w == token.as_bytes()));
        Ok(Shown {
            started,
            listed,
            audited,
            phone_clean,
        })
    })()
}

/// Stops the daemons of `homes` when dropped.
struct Stopping<'a> {
    h: &'a Handoff,
    homes: [PathBuf; 2],
}

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        for home in &self.homes {
            let _ = self.h.run(home, &["daemon", "stop"]);
        }
    }
}

/// A child killed and reaped when dropped (it has ended by then when all went well).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every regular file under `dir`, however deep.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(t) if t.is_file() => found.push(entry.path()),
                _ => {}
            }
        }
    }
    found
}
