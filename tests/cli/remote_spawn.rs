//! `spawn AGENT --on DEVICE`, `session list|stop --on DEVICE`: a `remote` device (a phone,
//! which holds no key) asks the laptop for a session, over `/handoff/spawn/1` or through the
//! relay; the laptop's own policy decides, the token never leaves it, and every member's audit
//! shows what was asked and how the laptop answered, signed by the laptop.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::peers::pair_as;
use crate::relay_proc::{RELAY_TOKEN, RelayProc};
use crate::support::{LOOPBACK_NET, Output, TestHome, contains, tools_dir, write_private};

/// Records its environment and directory beside itself, then waits to be stopped.
const AGENT: &str = r#"#!/bin/sh
{ env | sort | sed 's/^/ENV:/'; echo "PWD:$(pwd)"; } > "$(dirname "$0")/record"
trap 'exit 143' TERM
sleep 60 & wait $!
"#;

const SECRET: &str = "sk-ant-api03-REMOTE-WORK-5f1e9c";

/// The phone's `spawn --on`, retried while the two are still connecting (exit 7).
fn ask(phone: &TestHome, extra: &[&str]) -> Output {
    let mut args = vec!["--json", "spawn", "claude", "--on", "test-device"];
    args.extend_from_slice(extra);
    retrying(phone, &args)
}

/// Runs `args` on `home`, again while the answer is "unreachable" (exit 7), for up to 30 s.
fn retrying(home: &TestHome, args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = home.run(args);
        if out.code != Some(7) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The laptop: an admin whose daemon finds a stand-in `claude` on its own PATH.
struct Laptop {
    home: TestHome,
    bin: PathBuf,
    tools: PathBuf,
    run: PathBuf,
}

impl Laptop {
    fn new(config: &str) -> Laptop {
        let home = TestHome::with_daemon();
        home.init_without_daemon();
        write_private(&home.path().join("config.toml"), config.as_bytes());
        let bin = home.scratch("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("claude"), AGENT).unwrap();
        std::fs::set_permissions(bin.join("claude"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let tools = tools_dir(
            &home.scratch("tools"),
            &["sh", "env", "sort", "sed", "sleep", "dirname"],
        );
        let run = home.scratch("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        let laptop = Laptop {
            home,
            bin,
            tools,
            run,
        };
        laptop.start_daemon();
        laptop
    }

    /// The daemon, and so the sessions it starts, find the stand-in on its own PATH.
    fn start_daemon(&self) {
        let mut start = self.home.command(&["daemon", "start"]);
        start
            .env(
                "PATH",
                format!("{}:{}", self.bin.display(), self.tools.display()),
            )
            .env("XDG_RUNTIME_DIR", &self.run)
            .env("TMPDIR", &self.run);
        let out = crate::support::finish(start.spawn().unwrap(), Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "{out:?}");
    }

    fn record(&self) -> PathBuf {
        self.bin.join("record")
    }

    /// What the stand-in recorded, once it started.
    fn started_agent(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.record())
                && text.contains("PWD:")
            {
                return text;
            }
            assert!(Instant::now() < deadline, "the agent never started");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `spawn-policy allow phone` for claude under `root` with profile `work`.
    fn allow_phone(&self, root: &std::path::Path) {
        self.home.ok(&[
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
    }

    fn device_id(&self) -> String {
        let status: Value = serde_json::from_str(&self.home.ok(&["--json", "status"])).unwrap();
        status["device"]["id"].as_str().unwrap().to_string()
    }
}

/// `home`'s audit, as `audit --json` shows it.
fn audit(home: &TestHome) -> Vec<Value> {
    let out: Value = serde_json::from_str(&home.ok(&["--json", "audit"])).unwrap();
    out.as_array().unwrap().clone()
}

/// Waits until `home`'s audit holds an entry with `action`, signed by `writer`, whose subject
/// contains `subject`.
fn audited(home: &TestHome, writer: &str, action: &str, subject: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let found = audit(home).iter().any(|e| {
            e["action"] == action
                && e["device_id"] == writer
                && e["verified"] == true
                && e["subject"].as_str().unwrap().contains(subject)
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {action} by {writer} about {subject}: {:#?}",
            audit(home)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sessions the phone started on the laptop, as `session list --on` shows them.
fn sessions_on(phone: &TestHome) -> Vec<Value> {
    let out = retrying(phone, &["--json", "session", "list", "--on", "test-device"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_remote_device_starts_an_agent_by_the_targets_policy_and_never_holds_the_token() {
    let laptop = Laptop::new(LOOPBACK_NET);
    let lap = &laptop.home;
    lap.ok(&["unlock", "--for", "1h"]);
    lap.add("anthropic", "work", SECRET, &[]);
    lap.add("anthropic", "personal", "sk-ant-api03-PERSONAL-other", &[]);
    let desktop = TestHome::with_daemon();
    pair_as(lap, &desktop, "desktop", "member");
    let phone = TestHome::with_daemon();
    pair_as(lap, &phone, "phone", "remote");
    let root = lap.scratch("projects");
    std::fs::create_dir_all(root.join("app")).unwrap();
    let app = root.join("app");
    let app = app.to_str().unwrap();

    // The phone holds no key, but sees what it may ask for.
    let listed = phone.ok(&["token", "list"]);
    assert!(
        listed.contains("work") && listed.contains("anthropic"),
        "{listed}"
    );
    let out = phone.run(&["token", "show", "anthropic/work", "--reveal"]);
    assert!(out.fails_with(10).contains("remote device"), "{out:?}");
    let out = phone.run_with_stdin(
        &["token", "add", "anthropic", "--label", "mine"],
        Some(b"sk-ant-from-the-phone"),
    );
    assert!(out.fails_with(10).contains("remote device"), "{out:?}");

    // Default deny.
    let out = ask(&phone, &["--dir", app, "--profile", "work"]);
    assert!(out.fails_with(10).contains("policy"), "{out:?}");

    laptop.allow_phone(&root);
    // The stand-in runs on the laptop, in that directory, with the work token only.
    let (session, text) = start_work(&laptop, &phone, app, false);
    let real = std::fs::canonicalize(root.join("app")).unwrap();
    assert!(text.contains(&format!("PWD:{}", real.display())), "{text}");
    assert!(!text.contains("PERSONAL"), "{text}");

    // The phone sees the session it started, and only its own.
    let rows = sessions_on(&phone);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["session"], session.as_str());
    assert_eq!(rows[0]["agent"], "claude");
    assert_eq!(rows[0]["state"], "running");
    assert!(sessions_on(&desktop).is_empty());
    let out = desktop.run(&["session", "stop", "--on", "test-device", &session]);
    assert!(out.fails_with(5).contains("no session"), "{out:?}");

    // Refusals: each with its class's exit code and no agent started.
    std::fs::remove_file(laptop.record()).unwrap();
    let elsewhere = lap.scratch("elsewhere");
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
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
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
    lap.ok(&["lock"]);
    let out = ask(&phone, &["--dir", app, "--profile", "work"]);
    assert!(out.fails_with(3).contains("locked"), "{out:?}");
    assert!(
        !laptop.record().exists(),
        "a refused request started an agent"
    );

    // The phone stops it; the laptop's record says it ended.
    let out = retrying(
        &phone,
        &["session", "stop", "--on", "test-device", &session],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let rows = sessions_on(&phone);
    assert_eq!(rows[0]["state"], "exited", "{rows:?}");

    // Every member's audit shows the start, the stop and the refusals, signed by the laptop.
    let me = laptop.device_id();
    for home in [lap, &desktop, &phone] {
        audited(
            home,
            &me,
            "spawn.remote.started",
            &format!("claude work in {}", real.display()),
        );
        audited(home, &me, "spawn.remote.stopped", &session);
        audited(home, &me, "spawn.remote.refused.policy", "claude");
        audited(home, &me, "spawn.remote.refused.dir", "elsewhere");
        audited(home, &me, "spawn.remote.refused.locked", "claude");
    }
    let out = phone.ok(&["audit", "--device", "test-device", "--since", "1h"]);
    assert!(out.contains("spawn.remote.started"), "{out}");

    // No byte of the token on the phone, in either daemon's log, or in the laptop's.
    for home in [&phone, &desktop] {
        for (path, bytes) in home.all_files() {
            assert!(!contains(&bytes, SECRET.as_bytes()), "{}", path.display());
        }
    }
    let log = std::fs::read(lap.path().join("daemon.log")).unwrap_or_default();
    assert!(!contains(&log, SECRET.as_bytes()), "the laptop's log");

    // A removed device: its rule stays in the file, but it is no longer served.
    lap.ok(&["unlock", "--for", "1h"]);
    lap.ok(&["peer", "remove", "phone"]);
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
    assert!(
        !laptop.record().exists(),
        "a removed device started an agent"
    );
}

/// The mesh settings of homes that never dial each other: they meet only through the relay.
const NO_DIAL: &str =
    "[net]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\ndial_known = false\n";

/// The envelopes at the relay: (id, mailbox, body), oldest first.
fn waiting_at(db: &std::path::Path) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, mailbox, body FROM envelopes ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits for an envelope newer than any at the relay when `before` was read.
fn next_envelope(db: &std::path::Path, before: i64) -> (i64, Vec<u8>, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(row) = waiting_at(db).into_iter().find(|r| r.0 > before) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the relay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The newest envelope id the relay holds (0 for none).
fn newest(db: &std::path::Path) -> i64 {
    waiting_at(db).last().map_or(0, |r| r.0)
}

/// The phone asks for claude with the work profile in `app` and it starts (`relayed`: through
/// the relay); the session id, and what the stand-in recorded (the work token in its
/// environment).
fn start_work(laptop: &Laptop, phone: &TestHome, app: &str, relayed: bool) -> (String, String) {
    let out = ask(phone, &["--dir", app, "--profile", "work"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let started: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(started["relayed"], relayed, "{out:?}");
    let text = laptop.started_agent();
    assert!(
        text.contains(&format!("ENV:ANTHROPIC_API_KEY={SECRET}")),
        "{text}"
    );
    (started["session"].as_str().unwrap().to_string(), text)
}

/// Puts a copy of `envelope` (id, mailbox, body) back at the relay, as a relay that delivers
/// twice would, and restarts it so the laptop's subscription takes it again.
fn redeliver(relay: RelayProc, envelope: &(i64, Vec<u8>, Vec<u8>)) -> RelayProc {
    relay.restart_with(|db| {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute(
            "INSERT INTO envelopes (mailbox, stored_at, body) VALUES (?1, strftime('%s','now'), ?2)",
            rusqlite::params![envelope.1, envelope.2],
        )
        .unwrap();
    })
}

/// Starts the phone's `spawn --on` in the background (it waits for the relay's answer).
fn ask_in_background(phone: &TestHome, app: &str) -> std::process::Child {
    phone
        .command(&[
            "--json",
            "spawn",
            "claude",
            "--on",
            "test-device",
            "--dir",
            app,
            "--profile",
            "work",
        ])
        .spawn()
        .unwrap()
}

#[test]
fn through_the_relay_only_a_request_starts_a_session_and_stale_or_replayed_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(dir.path());
    let laptop = Laptop::new(NO_DIAL);
    let lap = &laptop.home;
    lap.ok(&["unlock", "--for", "1h"]);
    let token = lap.scratch("relay-token");
    write_private(&token, RELAY_TOKEN.as_bytes());
    lap.ok(&[
        "relay",
        "add",
        &relay.addr,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    lap.add("anthropic", "work", SECRET, &[]);
    let phone = TestHome::with_daemon();
    pair_as(lap, &phone, "phone", "remote");
    // From now on the two never connect: the phone's daemon restarts never dialling, and the
    // laptop's never dials either.
    phone.ok(&["daemon", "stop"]);
    write_private(&phone.path().join("config.toml"), NO_DIAL.as_bytes());
    lap.ok(&["daemon", "stop"]);
    laptop.start_daemon();
    lap.ok(&["unlock", "--for", "1h"]);
    phone.ok(&["daemon", "start"]);
    let root = lap.scratch("projects");
    std::fs::create_dir_all(root.join("app")).unwrap();
    let app = root.join("app");
    let app = app.to_str().unwrap();
    laptop.allow_phone(&root);

    // Started through the relay, the token in the agent's environment.
    let (session, _) = start_work(&laptop, &phone, app, true);
    let status: Value = serde_json::from_str(&phone.ok(&["--json", "status"])).unwrap();
    assert_eq!(
        status["online"], 0,
        "the phone met the laptop directly: {status}"
    );
    let rows = sessions_on(&phone);
    assert_eq!(rows[0]["state"], "running", "{rows:?}");
    let out = retrying(
        &phone,
        &["session", "stop", "--on", "test-device", &session],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    std::fs::remove_file(laptop.record()).unwrap();

    // A request that waits at the relay while the laptop is away, and finds it locked; then
    // the same envelope delivered again: refused as a replay.
    lap.ok(&["daemon", "stop"]);
    let db = relay.dir.join("relay.db");
    let before = newest(&db);
    let asking = ask_in_background(&phone, app);
    let captured = next_envelope(&db, before);
    laptop.start_daemon();
    let out = crate::support::finish(asking, Duration::from_secs(120));
    assert!(out.fails_with(3).contains("locked"), "{out:?}");
    relay = redeliver(relay, &captured);
    let me = laptop.device_id();
    audited(lap, &me, "spawn.remote.refused.replayed", "claude");
    // Again after the laptop's daemon restarted, unlocked: the ids it saw are kept on disk.
    lap.ok(&["daemon", "stop"]);
    laptop.start_daemon();
    lap.ok(&["unlock", "--for", "1h"]);
    relay = redeliver(relay, &captured);
    let deadline = Instant::now() + Duration::from_secs(40);
    while audit(lap)
        .iter()
        .filter(|e| e["action"] == "spawn.remote.refused.replayed")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the second replay was not refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !laptop.record().exists(),
        "a replayed request started an agent"
    );

    // A request older than the laptop's window when the relay delivers it.
    lap.ok(&["daemon", "stop"]);
    write_private(
        &lap.path().join("config.toml"),
        format!("{NO_DIAL}[spawn]\nrequest_window = 2\n").as_bytes(),
    );
    let before = newest(&db);
    let asking = ask_in_background(&phone, app);
    next_envelope(&db, before);
    std::thread::sleep(Duration::from_secs(3));
    laptop.start_daemon();
    lap.ok(&["unlock", "--for", "1h"]);
    let out = crate::support::finish(asking, Duration::from_secs(120));
    assert!(out.fails_with(6).contains("older"), "{out:?}");
    assert!(
        !laptop.record().exists(),
        "a refused request started an agent"
    );

    // The phone's audit (the laptop's entries reach it through the relay too).
    for action in [
        "spawn.remote.started",
        "spawn.remote.stopped",
        "spawn.remote.refused.locked",
        "spawn.remote.refused.replayed",
        "spawn.remote.refused.stale",
    ] {
        audited(&phone, &me, action, "from ");
    }

    // The relay keeps sealed bytes only: no directory, agent name or token.
    for (path, bytes) in relay.stored() {
        for needle in [
            app.as_bytes(),
            b"claude".as_slice(),
            SECRET.as_bytes(),
            b"projects",
        ] {
            assert!(
                !contains(&bytes, needle),
                "{} holds {}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}
