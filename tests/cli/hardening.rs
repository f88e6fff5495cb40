//! The process protects itself before touching a secret; one process owns a home at a time.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::TestHome;

/// Reads a field of /proc/PID/status, e.g. `Umask`.
fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn a_running_command_has_no_core_dumps_and_a_private_umask() {
    let home = TestHome::new();
    home.init();
    // `token add` blocks reading the token from stdin: a live process to inspect.
    let mut child = home
        .command(&["token", "add", "anthropic"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Wait for the exec'd binary to have run its first lines (bounded).
    while proc_status_field(pid, "Umask").as_deref() != Some("0077") {
        assert!(
            Instant::now() < deadline,
            "umask never became 0077: {:?}",
            proc_status_field(pid, "Umask")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_second_owner_of_the_home_is_refused_with_busy() {
    let home = TestHome::new();
    home.init();
    let lock = handoff::home::Home::at(home.path())
        .lock(Duration::ZERO)
        .unwrap();
    let line = home.run(&["token", "list"]).fails_with(9).to_string();
    assert!(line.contains("owned by another handoff process"), "{line}");
    drop(lock);
    home.ok(&["token", "list"]);
}

#[test]
fn init_that_cannot_show_its_recovery_code_leaves_no_vault() {
    let home = TestHome::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let child = home.command(&["init"]).stdout(full).spawn().unwrap();
    let out = crate::support::finish(child, Duration::from_secs(60));
    let line = out.fails_with(1).to_string();
    assert!(line.contains("recovery code"), "{line}");
    assert!(
        !home.db().exists(),
        "a vault whose code was never shown was left behind"
    );
    home.init(); // and the home is usable
}

#[test]
fn export_never_writes_through_an_existing_temporary_file() {
    let home = TestHome::new();
    home.init();
    let victim = home.scratch("elsewhere");
    std::fs::write(&victim, b"untouched").unwrap();
    let out_path = home.scratch("vault.automerge");
    std::os::unix::fs::symlink(&victim, home.scratch("vault.automerge.tmp")).unwrap();
    home.run(&["export", "--out", out_path.to_str().unwrap()])
        .fails_with(1);
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    assert!(!out_path.exists());
}

/// `handoff token list | head` and its kind: a reader that goes away ends the output quietly,
/// with the status of a program stopped by SIGPIPE, never a panic. In both modes.
fn a_reader_that_goes_away_ends_output_quietly(home: TestHome) {
    home.init();
    home.add("anthropic", "work", "sk-ant-PIPE", &[]);
    for args in [
        &["token", "list"][..],
        &["--json", "status"],
        &["session", "list"],
    ] {
        // The reader is gone before the command starts: a pipe whose read end is closed.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = home.command(args).stdout(writer).spawn().unwrap();
        let out = crate::support::finish(child, Duration::from_secs(60));
        assert_eq!(out.code, Some(141), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {out:?}");
    }
}
crate::both_modes!(a_reader_that_goes_away_ends_output_quietly);

#[test]
fn an_empty_passphrase_file_variable_counts_as_unset() {
    let home = TestHome::new();
    home.init();
    home.add("anthropic", "work", "sk-ant-EMPTY-VAR", &[]);
    let run = |args: &[&str]| {
        let mut cmd = home.command(args);
        cmd.env("HANDOFF_PASSPHRASE_FILE", "");
        crate::support::finish(cmd.spawn().unwrap(), Duration::from_secs(60))
    };
    let listed = run(&["token", "list"]);
    assert_eq!(listed.code, Some(0), "{listed:?}");
    // No passphrase source at all: locked (3), not a usage error.
    run(&["token", "show", "anthropic/work", "--reveal"]).fails_with(3);
}
