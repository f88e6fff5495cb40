//! The real `handoff-relay` binary on loopback, for the end-to-end tests that need one. It is
//! the relay crate's binary, built beside `handoff` by `cargo test --workspace`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::write_private;

/// A relay's access token for tests.
pub const RELAY_TOKEN: &str = "relay-access-token-for-remote-spawn";

/// The relay binary running in the background, with its database and log in `dir`.
pub struct RelayProc {
    child: Child,
    pub dir: PathBuf,
    /// Its address, `/p2p/` included.
    pub addr: String,
    port: u16,
}

/// The `handoff-relay` binary beside `handoff`.
pub fn binary() -> PathBuf {
    let handoff = Path::new(crate::support::binary());
    let relay = handoff.with_file_name("handoff-relay");
    assert!(
        relay.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the relay too)",
        relay.display()
    );
    relay
}

impl RelayProc {
    pub fn start(dir: &Path) -> RelayProc {
        Self::start_on(dir, 0)
    }

    fn start_on(dir: &Path, port: u16) -> RelayProc {
        std::fs::create_dir_all(dir).unwrap();
        let token = dir.join("token");
        write_private(&token, format!("{RELAY_TOKEN}\n").as_bytes());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))
            .unwrap();
        let mut child = Command::new(binary())
            .args(["serve", "--listen"])
            .arg(format!("/ip4/127.0.0.1/tcp/{port}"))
            .arg("--db")
            .arg(dir.join("relay.db"))
            .args(["--access", "token", "--token-file"])
            .arg(&token)
            .env_remove("HANDOFF_RELAY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("the relay prints its address").unwrap();
            if let Some(a) = line.strip_prefix("listening on ") {
                break a.trim().to_string();
            }
        };
        let port = addr
            .split('/')
            .skip_while(|p| *p != "tcp")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap();
        RelayProc {
            child,
            dir: dir.to_path_buf(),
            addr,
            port,
        }
    }

    /// Stops it (SIGTERM, a clean exit), runs `meanwhile` on its database, and starts it again
    /// on the same port and database.
    pub fn restart_with(mut self, meanwhile: impl FnOnce(&Path)) -> RelayProc {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        assert!(self.child.wait().unwrap().success());
        meanwhile(&self.dir.join("relay.db"));
        Self::start_on(&self.dir.clone(), self.port)
    }

    /// Every byte the relay keeps: its database files and its log.
    pub fn stored(&self) -> Vec<(PathBuf, Vec<u8>)> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "token")
            .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
            .collect()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
