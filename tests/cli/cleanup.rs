//! Credential files never outlive their agent's supervisor, and a detached session that never
//! gets its credential gives up cleanly: every catchable terminating signal to a foreground
//! spawn, a SIGKILL of it (then the daemon's sweep), a supervisor whose handover never comes
//! (in the background and in tmux), and a supervisor pointed at files that are not its own.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::peers::eventually;
use crate::support::{TestHome, TmuxServer, finish, tools_dir};

/// Writes where its credential lives and its own pid, then sleeps (in a child, as agents run
/// tools) until a signal ends it.
const SLEEPER: &str = r#"#!/bin/sh
here="$(dirname "$0")"
echo "$$ $CODEX_HOME" > "$here/started.tmp"; mv "$here/started.tmp" "$here/started"
sleep 60 &
wait $!
"#;

struct Sleeper {
    home: TestHome,
    bin: PathBuf,
    tools: PathBuf,
}

impl Sleeper {
    fn new(home: TestHome) -> Sleeper {
        home.init();
        home.add(
            "openai-codex",
            "default",
            r#"{"tokens":{"refresh_token":"MUST-NOT-OUTLIVE"}}"#,
            &[],
        );
        let bin = home.scratch("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("codex"), SLEEPER).unwrap();
        std::fs::set_permissions(bin.join("codex"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let tools = tools_dir(&home.scratch("tools"), &["sh", "sleep", "mv", "dirname"]);
        Sleeper { home, bin, tools }
    }

    /// Starts a foreground spawn; returns it, the agent's pid and its credential directory.
    fn start(&self) -> (std::process::Child, i32, PathBuf) {
        let _ = std::fs::remove_file(self.bin.join("started"));
        let mut cmd = self
            .home
            .command(&["spawn", "codex", "--service", "openai-codex"]);
        cmd.env(
            "PATH",
            format!("{}:{}", self.bin.display(), self.tools.display()),
        )
        .stdin(Stdio::null());
        let child = cmd.spawn().unwrap();
        let started = self.bin.join("started");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the agent never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&started).unwrap();
        let (pid, dir) = text.trim().split_once(' ').unwrap();
        let dir = PathBuf::from(dir);
        assert!(dir.join("auth.json").exists(), "{text}");
        (child, pid.parse().unwrap(), dir)
    }
}

fn signal(pid: u32, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn every_catchable_terminating_signal_to_a_foreground_spawn_leaves_no_credential_file() {
    let s = Sleeper::new(TestHome::new());
    for sig in [
        Signal::INT,
        Signal::TERM,
        Signal::HUP,
        Signal::QUIT,
        Signal::USR1,
        Signal::USR2,
        Signal::ALARM,
        Signal::PIPE,
    ] {
        let (child, agent, dir) = s.start();
        signal(child.id(), sig);
        let out = finish(child, Duration::from_secs(60));
        assert_eq!(
            out.code,
            Some(128 + sig.as_raw()),
            "{sig:?}: the agent's end by the passed-on signal: {out:?}"
        );
        assert!(!dir.exists(), "{sig:?} left {}", dir.display());
        let agent = Pid::from_raw(agent).unwrap();
        assert!(
            rustix::process::test_kill_process(agent).is_err(),
            "{sig:?}: the agent outlived its spawn"
        );
    }
}

#[test]
fn a_killed_spawn_loses_its_credential_files_to_the_daemons_sweep_and_the_daemon_locks() {
    let s = Sleeper::new(TestHome::with_daemon());
    s.home.ok(&["unlock", "--for", "1h"]);
    let (mut child, agent, dir) = s.start();
    child.kill().unwrap(); // SIGKILL: nothing in the spawn can clean up
    child.wait().unwrap();
    eventually("the daemon's sweep", || !dir.exists());
    // The supervisor died with its tree alive (the agent was re-parented out of it): whatever
    // escaped finds the vault locked.
    eventually("the daemon locked", || {
        let status: serde_json::Value =
            serde_json::from_str(&s.home.ok(&["--json", "status"])).unwrap();
        status["locked"] == true
    });
    // A later unlock must not serve what escaped: the daemon refuses above the open tier
    // until the person restarts it.
    let line = s
        .home
        .run(&["unlock", "--for", "1h"])
        .fails_with(3)
        .to_string();
    assert!(line.contains("restart the daemon"), "{line}");
    s.home
        .run(&["token", "show", "openai-codex/default", "--reveal"])
        .fails_with(3);
    let _ = rustix::process::kill_process(Pid::from_raw(agent).unwrap(), Signal::KILL);
    s.home.ok(&["daemon", "stop"]);
    s.home.ok(&["daemon", "start"]);
    s.home.ok(&["unlock", "--for", "1h"]);
    assert!(
        s.home
            .reveal("openai-codex/default")
            .contains("MUST-NOT-OUTLIVE")
    );
}

/// A private directory with a FIFO, as `spawn --detach` makes one, but no one ever writes.
fn unwritten_fifo(home: &TestHome) -> PathBuf {
    let runtime = home.scratch("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let dir = runtime.join(format!(
        "handoff-session-{}-0123456789abcdef0123abcd",
        std::process::id()
    ));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let fifo = dir.join("handover");
    let made = std::process::Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    fifo
}

fn supervise_args<'a>(id: &'a str, mode: &'a str, fifo: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "session",
        "supervise",
        "--id",
        id,
        "--agent",
        "codex",
        "--mode",
        mode,
        "--fifo",
        fifo,
        "--dir",
        dir,
        "--program",
        "/bin/true",
    ]
}

fn session_state(home: &TestHome, id: &str) -> Option<String> {
    let list: serde_json::Value =
        serde_json::from_str(&home.ok(&["--json", "session", "list"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["state"].as_str().unwrap().to_string())
}

#[test]
fn a_background_supervisor_whose_handover_never_comes_gives_up_and_shows_as_failed() {
    let home = TestHome::new();
    home.init();
    let fifo = unwritten_fifo(&home);
    let (f, d) = (fifo.to_str().unwrap(), home.path());
    let d = d.to_str().unwrap();
    let out = finish(
        home.command(&supervise_args("0000aaaa", "background", f, d))
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("did not arrive"), "{out:?}");
    assert_eq!(session_state(&home, "0000aaaa").as_deref(), Some("failed"));
    assert!(
        !fifo.parent().unwrap().exists(),
        "the FIFO's directory was left"
    );
}

#[test]
fn a_tmux_supervisor_whose_handover_never_comes_leaves_no_tmux_session() {
    let Ok(tmux) = std::process::Command::new("tmux").arg("-V").output() else {
        eprintln!("SKIPPED: tmux is not installed");
        return;
    };
    assert!(tmux.status.success());
    let home = TestHome::new();
    home.init();
    let fifo = unwritten_fifo(&home);
    let server = TmuxServer::new(home.scratch("tmux"));
    let tmux = |args: &[&str]| server.run(args);
    let (f, d) = (fifo.to_str().unwrap(), home.path());
    let d = d.to_str().unwrap().to_string();
    let mut args = vec![
        "new-session",
        "-d",
        "-s",
        "handoff-0000bbbb",
        crate::support::binary(),
        "--home",
        &d,
    ];
    let supervise = supervise_args("0000bbbb", "tmux", f, &d);
    args.extend_from_slice(&supervise);
    assert!(tmux(&args).status.success());
    eventually("the supervisor gave up", || {
        session_state(&home, "0000bbbb").as_deref() == Some("failed")
    });
    eventually("the tmux session ended", || {
        !tmux(&["has-session", "-t", "handoff-0000bbbb"])
            .status
            .success()
    });
}

#[test]
fn a_supervisor_pointed_at_files_that_are_not_its_own_deletes_nothing() {
    let home = TestHome::new();
    home.init();
    let d = home.path().to_str().unwrap().to_string();
    // An ordinary file in an ordinary directory.
    let plain = home.scratch("project");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), "keep me").unwrap();
    // A FIFO in a directory named like a private one, but open to others (0755).
    let open = home.scratch("handoff-session-1-0123456789abcdef0123abcd");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(open.join("handover"))
            .status()
            .unwrap()
            .success()
    );
    // A regular file in a real private directory.
    let private = unwritten_fifo(&home).parent().unwrap().to_path_buf();
    std::fs::remove_file(private.join("handover")).unwrap();
    std::fs::write(private.join("handover"), "not a fifo").unwrap();
    std::fs::set_permissions(
        private.join("handover"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for fifo in [
        plain.join("notes.txt"),
        open.join("handover"),
        private.join("handover"),
    ] {
        let before = std::fs::read_dir(fifo.parent().unwrap()).unwrap().count();
        let f = fifo.to_str().unwrap();
        let out = home.run(&supervise_args("0000cccc", "background", f, &d));
        assert_ne!(out.code, Some(0), "{out:?}");
        assert!(fifo.exists(), "{} was deleted", fifo.display());
        let after = std::fs::read_dir(fifo.parent().unwrap()).unwrap().count();
        assert_eq!(
            before,
            after,
            "something next to {} was deleted",
            fifo.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(plain.join("notes.txt")).unwrap(),
        "keep me"
    );
}
