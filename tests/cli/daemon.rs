//! The daemon: lifecycle, the control socket's refusals, unlock and auto-lock.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use handoff::control::{self, Envelope, Request, Response};

use crate::support::{TestHome, finish};

fn daemon_status(home: &TestHome) -> Option<serde_json::Value> {
    let out = home.run(&["--json", "daemon", "status"]);
    (out.code == Some(0)).then(|| serde_json::from_str(&out.stdout).unwrap())
}

#[test]
fn lifecycle_one_daemon_per_home_private_socket() {
    let home = TestHome::new();
    home.init();
    home.run(&["daemon", "status"]).fails_with(5);
    home.ok(&["daemon", "start"]);
    let status = daemon_status(&home).expect("running");
    assert_eq!(status["locked"], true);
    let socket = home.path().join("daemon.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second daemon is refused with "busy".
    let line = home.run(&["daemon", "start"]).fails_with(9).to_string();
    assert!(line.contains("already runs"), "{line}");
    // Commands go through it (its pid shows in status).
    let s: serde_json::Value = serde_json::from_str(&home.ok(&["--json", "status"])).unwrap();
    assert_eq!(s["daemon_pid"], status["pid"]);
    home.ok(&["daemon", "stop"]);
    assert!(daemon_status(&home).is_none());
    assert!(!socket.exists());
    assert!(home.ok(&["daemon", "stop"]).contains("No daemon"));
    // Direct mode works again, and a daemon started later finds a stale socket harmless.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    home.ok(&["status"]);
    home.ok(&["daemon", "start"]);
    home.ok(&["daemon", "stop"]);
}

/// Sends one raw frame and reads one response (or None if the daemon closed the connection).
fn raw_exchange(socket: &std::path::Path, frame: &[u8]) -> Option<Response> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(frame).ok()?;
    // Nothing more is coming: a frame that promised more bytes ends here.
    stream.shutdown(std::net::Shutdown::Write).ok()?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut payload =
        vec![0u8; handoff_protocol::frame::decode_len(len, control::MAX_RESPONSE).unwrap()];
    stream.read_exact(&mut payload).unwrap();
    control::decode(&payload).ok()
}

#[test]
fn control_socket_refuses_other_versions_garbage_and_other_users() {
    let home = TestHome::with_daemon();
    home.init();
    let socket = home.path().join("daemon.sock");

    // Another protocol version: a clear error naming both.
    let mut payload = Vec::new();
    ciborium::into_writer(
        &Envelope {
            v: 99u32,
            body: Request::Ping,
        },
        &mut payload,
    )
    .unwrap();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    match raw_exchange(&socket, &frame) {
        Some(Response::Error { message, .. }) => assert!(
            message.contains("version 99")
                && message.contains(&format!("speaks {}", control::VERSION)),
            "{message}"
        ),
        other => panic!("expected a version error, got {other:?}"),
    }
    // Garbage, a lying length, and an oversized length: that connection closes...
    assert!(raw_exchange(&socket, b"\x00\x00\x00\x05junk!").is_none());
    assert!(raw_exchange(&socket, b"\x00\x00\x10\x00short").is_none());
    assert!(raw_exchange(&socket, &u32::MAX.to_be_bytes()).is_none());
    // ...and the daemon keeps serving.
    assert!(matches!(
        raw_exchange(
            &socket,
            &control::encode(&Request::Ping, control::MAX_IMPORT).unwrap()
        ),
        Some(Response::Pong { .. })
    ));
    home.ok(&["token", "list"]);

    // A client of another uid reaching the socket (modes opened up on purpose) is refused by
    // the daemon's own SO_PEERCRED check; and the CLI run by another uid does not talk to a
    // daemon that is not its own (it would hand it passphrases).
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |program: &Path, args: &[&str]| {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env_remove("HANDOFF_PASSPHRASE_FILE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .uid(65534)
            .gid(65534);
        cmd.spawn()
    };
    // Connects and reads what the daemon says first, before the client has sent anything.
    const RAW_CLIENT: &str = "import socket,sys\n\
        s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n\
        print(b''.join(iter(lambda: s.recv(4096), b'')).hex())";
    match as_nobody(
        Path::new(crate::support::binary()),
        &["--home", home.path().to_str().unwrap(), "token", "list"],
    ) {
        Ok(child) => {
            let out = finish(child, Duration::from_secs(60));
            assert_ne!(out.code, Some(0), "{out:?}");
            assert!(
                !out.stderr.contains("refusing uid"),
                "the CLI talked to another user's daemon: {out:?}"
            );
            let python = Path::new("python3");
            let raw = finish(
                as_nobody(python, &["-c", RAW_CLIENT, socket.to_str().unwrap()]).unwrap(),
                Duration::from_secs(60),
            );
            let reply = hex::decode(raw.stdout.trim()).unwrap_or_default();
            assert!(reply.len() > 4, "{raw:?}");
            match control::decode::<Response>(&reply[4..]).unwrap() {
                Response::Error { message, .. } => {
                    assert!(message.contains("refusing uid 65534"), "{message}");
                }
                other => panic!("another uid was answered: {other:?}"),
            }
        }
        Err(e) => eprintln!(
            "SKIPPED the other-uid client: cannot run as uid 65534 here ({e}); the uid check is unit-tested in handoff::daemon"
        ),
    }
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn unlock_then_auto_lock_at_the_deadline() {
    let home = TestHome::with_daemon();
    home.init();
    home.add("anthropic", "work", "sk-ant-UNLOCKED", &[]);
    let without_passphrase = |args: &[&str]| {
        let mut cmd = home.command(args);
        cmd.env_remove("HANDOFF_PASSPHRASE_FILE");
        finish(cmd.spawn().unwrap(), Duration::from_secs(60))
    };
    // Locked: no passphrase source, so exit 3.
    without_passphrase(&["token", "show", "anthropic/work", "--reveal"]).fails_with(3);
    home.ok(&["unlock", "--for", "2s"]);
    let out = without_passphrase(&["token", "show", "anthropic/work", "--reveal"]);
    assert_eq!(out.stdout.trim(), "sk-ant-UNLOCKED", "{out:?}");
    // Wait (bounded) for the daemon to lock itself at the deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon_status(&home).is_some_and(|s| s["locked"] == false) {
        assert!(Instant::now() < deadline, "the daemon never locked again");
        std::thread::sleep(Duration::from_millis(50));
    }
    without_passphrase(&["token", "show", "anthropic/work", "--reveal"]).fails_with(3);
    // `lock` drops the key at once.
    home.ok(&["unlock", "--for", "1h"]);
    home.ok(&["lock"]);
    without_passphrase(&["token", "show", "anthropic/work", "--reveal"]).fails_with(3);
    // Unlock without a daemon is refused with a pointer to `daemon start`.
    home.ok(&["daemon", "stop"]);
    let line = home.run(&["unlock"]).fails_with(2).to_string();
    assert!(line.contains("daemon start"), "{line}");
    home.ok(&["daemon", "start"]);
}

#[test]
fn the_daemon_log_holds_no_secret() {
    let home = TestHome::with_daemon();
    home.init();
    home.add("openai", "default", "sk-proj-NEVER-IN-THE-LOG", &[]);
    home.ok(&["unlock", "--for", "1m"]);
    home.reveal("openai/default");
    let log = std::fs::read_to_string(home.path().join("daemon.log")).unwrap();
    assert!(log.contains("vault unlocked"), "{log}");
    assert!(!log.contains("NEVER-IN-THE-LOG"));
    assert!(!log.contains(crate::support::PASSPHRASE));
    assert_eq!(
        std::fs::metadata(home.path().join("daemon.log"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn install_prints_a_unit_that_runs_this_binary_for_this_home() {
    let home = TestHome::new();
    home.init();
    let unit = home.ok(&["daemon", "install", "--print"]);
    assert!(unit.contains("daemon start --foreground"), "{unit}");
    assert!(unit.contains(home.path().to_str().unwrap()), "{unit}");
    // Install and uninstall into a private config dir.
    let config = home.scratch("xdg");
    let mut cmd = home.command(&["daemon", "install"]);
    cmd.env("XDG_CONFIG_HOME", &config);
    assert_eq!(
        finish(cmd.spawn().unwrap(), Duration::from_secs(30)).code,
        Some(0)
    );
    let path = config.join("systemd/user/handoff.service");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), unit);
    let mut cmd = home.command(&["daemon", "uninstall"]);
    cmd.env("XDG_CONFIG_HOME", &config);
    assert_eq!(
        finish(cmd.spawn().unwrap(), Duration::from_secs(30)).code,
        Some(0)
    );
    assert!(!path.exists());
}

#[test]
fn a_daemon_killed_outright_leaves_nothing_that_blocks_the_next() {
    let home = TestHome::with_daemon();
    home.init();
    home.add("anthropic", "work", "sk-ant-AFTER-KILL", &[]);
    let pid = daemon_status(&home).unwrap()["pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // Bounded wait for the process to be gone (its lock goes with it; the socket file stays).
    // A zombie leader is not enough: its other threads may still be exiting, holding the
    // files they share (the listening socket among them), until the last one is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let exiting = || {
        let zombie =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
        !zombie || threads > 1
    };
    while rustix::process::test_kill_process(rustix::process::Pid::from_raw(pid).unwrap()).is_ok()
        && exiting()
    {
        assert!(Instant::now() < deadline, "the daemon did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        home.path().join("daemon.sock").exists(),
        "a killed daemon leaves its socket file"
    );
    // Direct commands work at once, and a new daemon takes the home over.
    assert_eq!(home.list_json().len(), 1);
    home.ok(&["daemon", "start"]);
    assert_eq!(home.reveal("anthropic/work"), "sk-ant-AFTER-KILL");
}
