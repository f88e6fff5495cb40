//! Credential files never outlive their agent's supervisor, and a detached session that never
//! gets its credential gives up cleanly: every catchable terminating signal to a foreground
//! spawn, a SIGKILL of it (then the daemon's sweep), a supervisor whose handover never comes
//! or is cut short (in the background and in tmux), and a supervisor pointed at files that are
//! not its own.

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

fn supervise_args<'a>(id: &'a str, mode: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "session",
        "supervise",
        "--id",
        id,
        "--agent",
        "codex",
        "--mode",
        mode,
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

/// The handover's socket pair, as `spawn --detach` makes it: the test's end, and the
/// supervisor's standard input.
fn socket_pair() -> (std::os::unix::net::UnixStream, Stdio) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    (ours, std::os::fd::OwnedFd::from(theirs).into())
}

/// A supervisor whose handover socket stays open and empty (its starter stopped, say) gives up
/// after a bounded wait and shows as failed.
#[test]
fn a_background_supervisor_whose_handover_never_comes_gives_up_and_shows_as_failed() {
    let home = TestHome::new();
    home.init();
    let d = home.path().to_str().unwrap().to_string();
    let (ours, theirs) = socket_pair();
    let mut cmd = home.command(&supervise_args("0000aaaa", "background", &d));
    cmd.stdin(theirs);
    let child = cmd.spawn().unwrap();
    drop(cmd);
    let out = finish(child, Duration::from_secs(120));
    drop(ours);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("did not arrive"), "{out:?}");
    assert_eq!(session_state(&home, "0000aaaa").as_deref(), Some("failed"));
}

/// The command that started a session killed half way through the handover (or before it
/// wrote anything): the supervisor sees the pipe close, fails at once (no wait) and shows as
/// failed; in tmux mode no server, socket or session is left, on its own socket or the
/// user's.
#[test]
fn a_supervisor_whose_starter_dies_mid_handover_fails_at_once() {
    let tmux = std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    let home = TestHome::new();
    home.init();
    let server = TmuxServer::new(home.scratch("tmux"));
    let d = home.path().to_str().unwrap().to_string();
    let mut modes = vec![
        ("0000bbb1", "background", &b""[..]),
        ("0000bbb2", "background", b"\xa3\x68"),
    ];
    if tmux {
        modes.push(("0000bbb3", "tmux", b"\xa3"));
    } else {
        eprintln!("SKIPPED (tmux part): tmux is not installed");
    }
    for (id, mode, written) in modes {
        let (mut ours, theirs) = socket_pair();
        let mut cmd = home.command(&supervise_args(id, mode, &d));
        cmd.stdin(theirs).env("TMUX_TMPDIR", &server.0);
        let child = cmd.spawn().unwrap();
        drop(cmd);
        std::io::Write::write_all(&mut ours, written).unwrap();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        let out = finish(child, Duration::from_secs(60));
        // The supervisor says why it will not start the agent, as `spawn --detach` shows it.
        let mut said = String::new();
        std::io::Read::read_to_string(&mut ours, &mut said).unwrap();
        assert!(said.starts_with("err "), "{mode}: {said:?}");
        assert_ne!(out.code, Some(0), "{mode}: {out:?}");
        assert!(
            !out.stderr.contains("did not arrive"),
            "{mode} waited: {out:?}"
        );
        assert_eq!(
            session_state(&home, id).as_deref(),
            Some("failed"),
            "{mode}"
        );
        assert!(!home.path().join(format!("sessions/{id}.tmux")).exists());
        let name = format!("handoff-{id}");
        assert!(!server.run(&["has-session", "-t", &name]).status.success());
    }
}

/// The handover comes only through the supervisor's standard input, a socket: there is no path
/// to point it at (`--fifo` is refused as an unknown option), and an ordinary file given as
/// its input is refused and left as it was, with everything beside it.
#[test]
fn a_supervisor_pointed_at_files_that_are_not_its_own_deletes_nothing() {
    let home = TestHome::new();
    home.init();
    let d = home.path().to_str().unwrap().to_string();
    let plain = home.scratch("project");
    std::fs::create_dir(&plain).unwrap();
    let notes = plain.join("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    let n = notes.to_str().unwrap();
    let mut args = supervise_args("0000cccc", "background", &d);
    args.extend_from_slice(&["--fifo", n]);
    home.run(&args).fails_with(2);
    let mut cmd = home.command(&supervise_args("0000cccd", "background", &d));
    cmd.stdin(std::fs::File::open(&notes).unwrap());
    let out = finish(cmd.spawn().unwrap(), Duration::from_secs(60));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("handover"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");
    assert_eq!(std::fs::read_dir(&plain).unwrap().count(), 1);
}
