//! `spawn AGENT --on DEVICE`: a `remote` device (a phone, which holds no key) asks the laptop
//! for a session over `/handoff/spawn/1`; the laptop's own policy decides, and the token
//! never leaves it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::peers::pair_as;
use crate::support::{TestHome, contains, tools_dir};

/// Records its environment and directory beside itself, then waits to be stopped.
const AGENT: &str = r#"#!/bin/sh
{ env | sort | sed 's/^/ENV:/'; echo "PWD:$(pwd)"; } > "$(dirname "$0")/record"
trap 'exit 143' TERM
sleep 60 & wait $!
"#;

const SECRET: &str = "sk-ant-api03-REMOTE-WORK-5f1e9c";

/// The phone's `spawn --on`, retried while the two are still connecting (exit 7).
fn ask(phone: &TestHome, extra: &[&str]) -> crate::support::Output {
    let mut args = vec!["--json", "spawn", "claude", "--on", "test-device"];
    args.extend_from_slice(extra);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = phone.run(&args);
        if out.code != Some(7) || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_remote_device_starts_an_agent_by_the_targets_policy_and_never_holds_the_token() {
    let laptop = TestHome::with_daemon();
    laptop.init_without_daemon();
    let bin = laptop.scratch("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("claude"), AGENT).unwrap();
    std::fs::set_permissions(bin.join("claude"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tools = tools_dir(
        &laptop.scratch("tools"),
        &["sh", "env", "sort", "sed", "sleep", "dirname"],
    );
    let run = laptop.scratch("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The laptop's daemon, and so the sessions it starts, find the stand-in on its own PATH.
    let mut start = laptop.command(&["daemon", "start"]);
    start
        .env("PATH", format!("{}:{}", bin.display(), tools.display()))
        .env("XDG_RUNTIME_DIR", &run)
        .env("TMPDIR", &run);
    let out = crate::support::finish(start.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    laptop.ok(&["unlock", "--for", "1h"]);
    laptop.add("anthropic", "work", SECRET, &[]);
    laptop.add("anthropic", "personal", "sk-ant-api03-PERSONAL-other", &[]);

    let phone = TestHome::with_daemon();
    pair_as(&laptop, &phone, "phone", "remote");
    let root = laptop.scratch("projects");
    std::fs::create_dir_all(root.join("app")).unwrap();
    let app = root.join("app");
    let app = app.to_str().unwrap();

    // Default deny.
    let out = ask(&phone, &["--dir", app, "--profile", "work"]);
    assert!(out.fails_with(10).contains("policy"), "{out:?}");

    laptop.ok(&[
        "spawn-policy",
        "allow",
        "phone",
        "--agent",
        "claude",
        "--root",
        root.to_str().unwrap(),
        "--profile",
        "work",
    ]);
    let out = ask(&phone, &["--dir", app, "--profile", "work"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let started: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let session = started["session"].as_str().unwrap().to_string();

    // The stand-in runs on the laptop, in that directory, with the work token only.
    let record = bin.join("record");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&record).is_ok_and(|t| t.contains("PWD:")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        text.contains(&format!("ENV:ANTHROPIC_API_KEY={SECRET}")),
        "{text}"
    );
    let real = std::fs::canonicalize(root.join("app")).unwrap();
    assert!(text.contains(&format!("PWD:{}", real.display())), "{text}");
    assert!(!text.contains("PERSONAL"), "{text}");

    // Refusals: each with its class's exit code and no agent started.
    std::fs::remove_file(&record).unwrap();
    let elsewhere = laptop.scratch("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("link")).unwrap();
    let link = root.join("link");
    let escape = format!("{app}/../../elsewhere");
    for (extra, code) in [
        (
            vec!["--dir", elsewhere.to_str().unwrap(), "--profile", "work"],
            10,
        ),
        (vec!["--dir", escape.as_str(), "--profile", "work"], 10),
        (
            vec!["--dir", link.to_str().unwrap(), "--profile", "work"],
            10,
        ),
        (vec!["--dir", app, "--profile", "personal"], 10),
        (vec!["--dir", app], 10),
        (vec!["--dir", app, "--profile", "work", "--", "--yolo"], 10),
    ] {
        let out = ask(&phone, &extra);
        assert_eq!(out.code, Some(code), "{extra:?}: {out:?}");
        assert!(out.stderr.contains("refused"), "{extra:?}: {out:?}");
    }
    let out = phone.run(&[
        "--json",
        "spawn",
        "codex",
        "--on",
        "test-device",
        "--dir",
        app,
    ]);
    assert_eq!(out.code, Some(10), "{out:?}");
    laptop.ok(&["lock"]);
    let out = ask(&phone, &["--dir", app, "--profile", "work"]);
    assert!(out.fails_with(3).contains("locked"), "{out:?}");
    assert!(!record.exists(), "a refused request started an agent");

    // The phone holds no byte of the token.
    for (path, bytes) in phone.all_files() {
        assert!(!contains(&bytes, SECRET.as_bytes()), "{}", path.display());
    }
    laptop.ok(&["unlock", "--for", "1h"]);
    laptop.ok(&["session", "stop", &session]);

    // A removed device: its rule stays in the file, but it is no longer served.
    laptop.ok(&["peer", "remove", "phone"]);
    let out = phone.run(&[
        "spawn",
        "claude",
        "--on",
        "test-device",
        "--dir",
        app,
        "--profile",
        "work",
    ]);
    assert!(matches!(out.code, Some(7 | 10)), "{out:?}");
    assert!(!record.exists(), "a removed device started an agent");
}
