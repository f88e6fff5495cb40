//! `handoff spawn` with stand-in agents: scripts named like the real agents that record their
//! argv, environment, and the modes and contents of the credential files they are given.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{TestHome, contains, finish};

const STAND_IN: &str = r#"#!/bin/sh
# Records what this process was given, next to itself, then exits as asked.
out="$(dirname "$0")/record.$(basename "$0")"
{
  for a in "$@"; do echo "ARG:$a"; done
  env | sort | sed 's/^/ENV:/'
  for f in "$CODEX_HOME" "$CODEX_HOME/auth.json" "$GEMINI_CLI_HOME/.gemini" "$GEMINI_CLI_HOME/.gemini/oauth_creds.json" "$CLAUDE_CONFIG_DIR" "$CLAUDE_CONFIG_DIR/.credentials.json"; do
    [ -n "$f" ] && [ -e "$f" ] && echo "MODE:$(stat -c %a "$f"):$f"
  done
  [ -n "$GEMINI_CLI_HOME" ] && echo "MODE:$(stat -c %a "$GEMINI_CLI_HOME"):$GEMINI_CLI_HOME"
  [ -n "$CODEX_HOME" ] && [ -f "$CODEX_HOME/auth.json" ] && echo "FILE:$(cat "$CODEX_HOME/auth.json")"
  [ -n "$GEMINI_CLI_HOME" ] && [ -f "$GEMINI_CLI_HOME/.gemini/oauth_creds.json" ] && echo "FILE:$(cat "$GEMINI_CLI_HOME/.gemini/oauth_creds.json")"
  [ -n "$CLAUDE_CONFIG_DIR" ] && [ -f "$CLAUDE_CONFIG_DIR/.credentials.json" ] && echo "FILE:$(cat "$CLAUDE_CONFIG_DIR/.credentials.json")"
  echo "PWD:$(pwd)"
  echo "UMASK:$(umask)"
} > "$out"
case "$1" in
  --fail) exit 42 ;;
  --crash) kill -KILL $$ ;;
  --sleep) trap 'kill $! 2>/dev/null; exit 143' TERM; sleep 60 & wait $! ;;
esac
exit 0
"#;

/// A home with stand-in agents in its own bin directory.
struct Bench {
    home: TestHome,
    bin: PathBuf,
}

impl Bench {
    fn new() -> Self {
        Self::on(TestHome::new())
    }

    fn on(home: TestHome) -> Self {
        home.init();
        let bin = home.scratch("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(home.scratch("tmp")).unwrap();
        for name in ["claude", "codex", "gemini", "opencode", "aider"] {
            let path = bin.join(name);
            std::fs::write(&path, STAND_IN).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { home, bin }
    }

    /// Runs `handoff spawn ARGS` with the stand-ins first on PATH and some parent variables
    /// that must not reach the agent.
    fn spawn(&self, args: &[&str]) -> crate::support::Output {
        let mut full = vec!["spawn"];
        full.extend_from_slice(args);
        let mut cmd = self.home.command(&full);
        cmd.env("PATH", format!("{}:/usr/bin:/bin", self.bin.display()))
            .env("AWS_SECRET_ACCESS_KEY", "parent-secret-must-not-leak")
            .env("GITHUB_TOKEN", "parent-token-must-not-leak")
            .env("LC_TIME", "C");
        self.isolate_tmp(&mut cmd);
        finish(cmd.spawn().unwrap(), Duration::from_secs(60))
    }

    /// Private session directories go in this test's own runtime dir.
    fn isolate_tmp(&self, cmd: &mut std::process::Command) {
        cmd.env("TMPDIR", self.home.scratch("tmp"))
            .env("XDG_RUNTIME_DIR", self.home.scratch("tmp"));
    }

    fn record(&self, agent: &str) -> Record {
        let text = std::fs::read_to_string(self.bin.join(format!("record.{agent}"))).unwrap();
        Record::parse(&text)
    }
}

#[derive(Debug, Default)]
struct Record {
    args: Vec<String>,
    env: BTreeMap<String, String>,
    modes: Vec<(String, PathBuf)>,
    files: Vec<String>,
    pwd: String,
    umask: String,
}

impl Record {
    fn parse(text: &str) -> Self {
        let mut r = Record::default();
        for line in text.lines() {
            if let Some(a) = line.strip_prefix("ARG:") {
                r.args.push(a.to_string());
            } else if let Some(kv) = line.strip_prefix("ENV:") {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                r.env.insert(k.to_string(), v.to_string());
            } else if let Some(m) = line.strip_prefix("MODE:") {
                let (mode, path) = m.split_once(':').unwrap();
                r.modes.push((mode.to_string(), PathBuf::from(path)));
            } else if let Some(f) = line.strip_prefix("FILE:") {
                r.files.push(f.to_string());
            } else if let Some(p) = line.strip_prefix("PWD:") {
                r.pwd = p.to_string();
            } else if let Some(u) = line.strip_prefix("UMASK:") {
                r.umask = u.to_string();
            }
        }
        r
    }

    /// Variable names, minus those the shell sets for itself.
    fn names(&self) -> Vec<&str> {
        self.env
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "PWD" | "SHLVL" | "_" | "OLDPWD"))
            .collect()
    }
}

const ALLOWED: &[&str] = &[
    "PATH", "HOME", "USER", "SHELL", "TERM", "LANG", "TMPDIR", "TZ",
];

fn only_allowed_plus(record: &Record, credential_vars: &[&str]) {
    for name in record.names() {
        assert!(
            ALLOWED.contains(&name) || name.starts_with("LC_") || credential_vars.contains(&name),
            "unexpected variable {name} reached the agent: {record:?}"
        );
    }
    assert!(!record.env.contains_key("AWS_SECRET_ACCESS_KEY"));
    assert!(!record.env.contains_key("HANDOFF_PASSPHRASE_FILE"));
    assert_eq!(
        record.env.get("LC_TIME").map(String::as_str),
        Some("C"),
        "LC_* is allowed"
    );
}

/// The secret appears in exactly the expected variables and nowhere else in what the agent saw.
fn secret_only_in(record: &Record, secret: &str, vars: &[&str]) {
    for (k, v) in &record.env {
        assert_eq!(
            v.contains(secret),
            vars.contains(&k.as_str()),
            "variable {k}"
        );
    }
    assert!(
        record.args.iter().all(|a| !a.contains(secret)),
        "secret in argv"
    );
}

/// Walks every regular file under the home (sessions and logs included).
fn no_plaintext_under_home(home: &TestHome, secret: &str) {
    let mut pending = vec![home.path()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                seen += 1;
                let bytes = std::fs::read(entry.path()).unwrap();
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{} holds the plaintext",
                    entry.path().display()
                );
            }
        }
    }
    assert!(seen >= 2, "the scan found too few files to mean anything");
}

#[test]
fn claude_gets_its_api_key_in_exactly_one_variable() {
    let b = Bench::new();
    b.home
        .add("anthropic", "work", "sk-ant-api03-SPAWN-CLAUDE", &[]);
    let workdir = b.home.scratch("project");
    std::fs::create_dir(&workdir).unwrap();
    let out = b.spawn(&[
        "claude",
        "--dir",
        workdir.to_str().unwrap(),
        "--",
        "--model",
        "opus",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let r = b.record("claude");
    assert_eq!(r.args, ["--model", "opus"]);
    assert_eq!(r.pwd, workdir.to_str().unwrap());
    // handoff runs with umask 077; the agent gets the user's own, so the files it writes in
    // the project are the usual modes.
    let user_umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(user_umask);
    assert_eq!(r.umask, format!("{:04o}", user_umask.bits()));
    assert_ne!(
        r.umask, "0077",
        "the test runner's umask must differ from handoff's"
    );
    assert_eq!(r.env["ANTHROPIC_API_KEY"], "sk-ant-api03-SPAWN-CLAUDE");
    secret_only_in(&r, "sk-ant-api03-SPAWN-CLAUDE", &["ANTHROPIC_API_KEY"]);
    only_allowed_plus(&r, &["ANTHROPIC_API_KEY"]);
    assert!(!out.stdout.contains("SPAWN-CLAUDE") && !out.stderr.contains("SPAWN-CLAUDE"));
    no_plaintext_under_home(&b.home, "SPAWN-CLAUDE");
}

#[test]
fn profiles_and_services_select_the_token() {
    let b = Bench::new();
    b.home.add("anthropic", "work", "sk-ant-WORK", &[]);
    b.home.add("anthropic", "personal", "sk-ant-PERSONAL", &[]);
    b.home.add(
        "claude-subscription",
        "default",
        "sk-ant-oat01-SUBSCRIPTION",
        &[],
    );
    // Default of the first accepted service.
    b.spawn(&["claude"]);
    assert_eq!(b.record("claude").env["ANTHROPIC_API_KEY"], "sk-ant-WORK");
    b.spawn(&["claude", "--profile", "personal"]);
    assert_eq!(
        b.record("claude").env["ANTHROPIC_API_KEY"],
        "sk-ant-PERSONAL"
    );
    b.spawn(&["claude", "--service", "claude-subscription"]);
    let r = b.record("claude");
    assert_eq!(
        r.env["CLAUDE_CODE_OAUTH_TOKEN"],
        "sk-ant-oat01-SUBSCRIPTION"
    );
    assert!(!r.env.contains_key("ANTHROPIC_API_KEY"));
    // Unknown label, refused service, unknown agent, missing binary: one line each.
    let line = b
        .spawn(&["claude", "--profile", "nope"])
        .fails_with(5)
        .to_string();
    assert!(
        line.contains("nope") && line.contains("anthropic, claude-subscription"),
        "{line}"
    );
    let line = b
        .spawn(&["claude", "--service", "gemini"])
        .fails_with(2)
        .to_string();
    assert!(
        line.contains("accepts: anthropic, claude-subscription"),
        "{line}"
    );
    b.spawn(&["vim"]).fails_with(2);
    std::fs::remove_file(b.bin.join("claude")).unwrap();
    let line = b.spawn(&["claude"]).fails_with(5).to_string();
    assert!(line.contains("not installed"), "{line}");
}

/// Returns the private directory the agent was given (the outermost 0700 one), after checking
/// its, its subdirectories' and its files' modes.
fn private_dir(r: &Record, expect_files: usize) -> PathBuf {
    let mut dirs: Vec<&(String, PathBuf)> = r.modes.iter().filter(|(m, _)| m == "700").collect();
    dirs.sort_by_key(|(_, p)| p.as_os_str().len());
    let files: Vec<&(String, PathBuf)> = r.modes.iter().filter(|(m, _)| m == "600").collect();
    assert_eq!(files.len(), expect_files, "{r:?}");
    assert!(
        r.modes.len() == dirs.len() + files.len(),
        "a credential path is not 0700/0600: {r:?}"
    );
    dirs[0].1.clone()
}

#[test]
fn codex_oauth_goes_in_a_private_codex_home_that_is_removed() {
    let b = Bench::new();
    let bundle = r#"{"tokens":{"access_token":"CODEX-ACCESS","refresh_token":"CODEX-REFRESH"}}"#;
    b.home.add("openai-codex", "default", bundle, &[]);
    let out = b.spawn(&["codex", "--service", "openai-codex"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let r = b.record("codex");
    assert_eq!(r.files, [bundle]);
    let dir = private_dir(&r, 1);
    assert_eq!(r.env["CODEX_HOME"], dir.to_str().unwrap());
    secret_only_in(&r, "CODEX-ACCESS", &[]);
    only_allowed_plus(&r, &["CODEX_HOME"]);
    assert!(!dir.exists(), "CODEX_HOME survived the session");
    no_plaintext_under_home(&b.home, "CODEX-REFRESH");
}

#[test]
fn gemini_oauth_gets_a_private_home_and_api_keys_two_variables() {
    let b = Bench::new();
    let creds = r#"{"access_token":"ya29.GEMINI","refresh_token":"1//GEMINI-REFRESH"}"#;
    b.home.add("gemini", "oauth", creds, &[]);
    b.home.add("gemini", "key", "AIza-GEMINI-KEY", &[]);
    b.spawn(&["gemini", "--profile", "oauth"]);
    let r = b.record("gemini");
    assert_eq!(r.files, [creds]);
    let dir = private_dir(&r, 1);
    assert_eq!(r.env["GEMINI_CLI_HOME"], dir.to_str().unwrap());
    assert_eq!(
        r.env["HOME"],
        b.home.user_home().to_str().unwrap(),
        "HOME is the user's own"
    );
    assert!(!dir.exists());

    b.spawn(&["gemini", "--profile", "key"]);
    let r = b.record("gemini");
    assert_eq!(r.env["GEMINI_API_KEY"], "AIza-GEMINI-KEY");
    secret_only_in(&r, "AIza-GEMINI-KEY", &["GEMINI_API_KEY", "GOOGLE_API_KEY"]);
    only_allowed_plus(&r, &["GEMINI_API_KEY", "GOOGLE_API_KEY"]);
}

#[test]
fn private_files_are_removed_after_failure_and_after_a_kill() {
    let b = Bench::new();
    b.home.add(
        "openai-codex",
        "default",
        r#"{"tokens":{"access_token":"X"}}"#,
        &[],
    );
    let out = b.spawn(&["opencode", "--service", "openai-codex", "--", "--fail"]);
    assert_eq!(
        out.code,
        Some(42),
        "the agent's own exit code comes back: {out:?}"
    );
    let dir = private_dir(&b.record("opencode"), 1);
    assert!(!dir.exists());

    let out = b.spawn(&["opencode", "--service", "openai-codex", "--", "--crash"]);
    assert_eq!(out.code, Some(128 + 9), "killed by SIGKILL: {out:?}");
    let dir = private_dir(&b.record("opencode"), 1);
    assert!(!dir.exists());
}

#[test]
fn directories_left_by_a_killed_handoff_are_swept_by_the_next_spawn() {
    let b = Bench::new();
    b.home.add(
        "openai-codex",
        "default",
        r#"{"tokens":{"access_token":"SWEEP"}}"#,
        &[],
    );
    // A pid that has certainly exited: a child we waited for.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let tmp = b.home.scratch("tmp");
    let stale = tmp.join(format!(
        "handoff-session-{dead_pid}-0123456789abcdef01234567"
    ));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("auth.json"), "LEFT-BEHIND").unwrap();
    // A live owner's directory (this test process) must be left alone.
    let live = tmp.join(format!(
        "handoff-session-{}-fedcba9876543210fedcba98",
        std::process::id()
    ));
    std::fs::create_dir(&live).unwrap();
    // An agent orphaned by a killed handoff (here: this live test process) does not keep its
    // credential files: they never outlive the supervisor they were made under.
    let orphaned = tmp.join(format!(
        "handoff-session-{dead_pid}-00000000000000000000aaaa"
    ));
    std::fs::create_dir(&orphaned).unwrap();
    std::fs::write(orphaned.join(".agent-pid"), std::process::id().to_string()).unwrap();
    // Not a private directory's name: never touched.
    let other = tmp.join(format!("handoff-session-{dead_pid}-notours"));
    std::fs::create_dir(&other).unwrap();

    let out = b.spawn(&["codex", "--service", "openai-codex"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!stale.exists(), "the stale directory was not swept");
    assert!(live.exists(), "a live process's directory was removed");
    assert!(
        !orphaned.exists(),
        "a killed supervisor's directory was kept"
    );
    assert!(other.exists(), "a directory of another name was removed");
}

#[test]
fn native_auth_passes_nothing_and_needs_no_passphrase() {
    let b = Bench::new();
    b.home.add("anthropic", "work", "sk-ant-NATIVE-UNUSED", &[]);
    let mut cmd = b
        .home
        .command(&["spawn", "claude", "--service-auth", "native"]);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", b.bin.display()))
        .env_remove("HANDOFF_PASSPHRASE_FILE");
    b.isolate_tmp(&mut cmd);
    let out = finish(cmd.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    let r = b.record("claude");
    only_allowed_plus_without_lc(&r);
    assert!(r.env.values().all(|v| !v.contains("NATIVE-UNUSED")));
}

fn only_allowed_plus_without_lc(record: &Record) {
    for name in record.names() {
        assert!(
            ALLOWED.contains(&name) || name.starts_with("LC_"),
            "{name} reached the agent"
        );
    }
}

#[test]
fn custom_agents_from_config_get_the_variables_they_name() {
    let b = Bench::new();
    std::fs::write(
        b.home.path().join("config.toml"),
        format!(
            "{}[env]\nallow = [\"GITHUB_*\"]\n\n[agents.aider]\ncommand = \"aider\"\nservices = {{ openai = [\"OPENAI_API_KEY\", \"AIDER_OPENAI_KEY\"] }}\n",
            crate::support::LOOPBACK_NET
        ),
    )
    .unwrap();
    b.home.add("openai", "default", "sk-proj-CUSTOM", &[]);
    let out = b.spawn(&["aider"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let r = b.record("aider");
    secret_only_in(
        &r,
        "sk-proj-CUSTOM",
        &["OPENAI_API_KEY", "AIDER_OPENAI_KEY"],
    );
    assert_eq!(
        r.env["GITHUB_TOKEN"], "parent-token-must-not-leak",
        "config allowed GITHUB_*"
    );
    assert!(!r.env.contains_key("AWS_SECRET_ACCESS_KEY"));

    std::fs::write(b.home.path().join("config.toml"), "[agents.bad\n").unwrap();
    let line = b.spawn(&["aider"]).fails_with(2).to_string();
    assert!(line.contains("config.toml"), "{line}");
}

#[test]
fn a_missing_working_directory_is_refused_before_the_passphrase() {
    let b = Bench::new();
    b.home.add("anthropic", "work", "sk-ant-x", &[]);
    let missing = Path::new("/nonexistent/handoff-test");
    let line = b
        .spawn(&["claude", "--dir", missing.to_str().unwrap()])
        .fails_with(2)
        .to_string();
    assert!(line.contains("not a directory"), "{line}");
}

#[test]
fn through_the_daemon_a_spawn_after_the_unlock_deadline_asks_again() {
    let b = Bench::on(TestHome::with_daemon());
    b.home.add("anthropic", "work", "sk-ant-VIA-DAEMON", &[]);
    let spawn_without_passphrase = || {
        let mut cmd = b.home.command(&["spawn", "claude"]);
        cmd.env("PATH", format!("{}:/usr/bin:/bin", b.bin.display()))
            .env("LC_TIME", "C")
            .env_remove("HANDOFF_PASSPHRASE_FILE");
        b.isolate_tmp(&mut cmd);
        finish(cmd.spawn().unwrap(), Duration::from_secs(60))
    };
    b.home.ok(&["unlock", "--for", "2s"]);
    let out = spawn_without_passphrase();
    assert_eq!(out.code, Some(0), "{out:?}");
    let r = b.record("claude");
    secret_only_in(&r, "sk-ant-VIA-DAEMON", &["ANTHROPIC_API_KEY"]);
    only_allowed_plus(&r, &["ANTHROPIC_API_KEY"]);
    // After the deadline the daemon has locked: the spawn asks to unlock again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&b.home.ok(&["--json", "daemon", "status"])).unwrap();
        if status["locked"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never locked");
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = spawn_without_passphrase().fails_with(3).to_string();
    assert!(line.contains("handoff unlock"), "{line}");
}

/// A PATH directory with what the stand-ins need and no tmux, to force background sessions.
fn tools_without_tmux(b: &Bench) -> PathBuf {
    crate::support::tools_dir(
        &b.home.scratch("tools"),
        &[
            "sh", "env", "sort", "sed", "stat", "cat", "dirname", "basename", "sleep", "kill",
        ],
    )
}

/// Waits (bounded) until `session list --json` shows `id` in `state`.
fn wait_for_state(b: &Bench, id: &str, state: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&b.home.ok(&["--json", "session", "list"])).unwrap();
        if let Some(row) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id && r["state"] == state)
        {
            return row.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session {id} never reached {state}: {list}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits (bounded) for the stand-in's record to appear.
fn wait_for_record(b: &Bench, agent: &str) -> Record {
    let path = b.bin.join(format!("record.{agent}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains("PWD:")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    b.record(agent)
}

/// The variables tmux gives what runs in its panes.
const TMUX_SETS: &[&str] = &["TMUX", "TMUX_PANE", "TERM_PROGRAM", "TERM_PROGRAM_VERSION"];

fn detached_session_lifecycle(
    b: &Bench,
    path: &str,
    extra_env: &[(&str, &Path)],
    tmux: bool,
) -> (String, Record) {
    b.home.add(
        "openai-codex",
        "default",
        r#"{"tokens":{"access_token":"DETACHED-SECRET"}}"#,
        &[],
    );
    let mut cmd = b.home.command(&[
        "--json",
        "spawn",
        "codex",
        "--service",
        "openai-codex",
        "--detach",
        "--",
        "--sleep",
    ]);
    cmd.env("PATH", path).env("LC_TIME", "C");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    b.isolate_tmp(&mut cmd);
    let out = finish(cmd.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    let started: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = started["session"].as_str().unwrap().to_string();
    // The agent runs with its credential in a private CODEX_HOME, and nothing else.
    let r = wait_for_record(b, "codex");
    let dir = private_dir(&r, 1);
    assert_eq!(r.env["CODEX_HOME"], dir.to_str().unwrap());
    assert!(
        dir.exists(),
        "the credential directory lives as long as the session"
    );
    secret_only_in(&r, "DETACHED-SECRET", &[]);
    let mut expected = vec!["CODEX_HOME"];
    if tmux {
        expected.extend_from_slice(TMUX_SETS);
    }
    only_allowed_plus(&r, &expected);
    wait_for_state(b, &id, "running");
    // Stop: SIGTERM reaches the agent, the directory goes, the exit is recorded.
    b.home.ok(&["session", "stop", &id]);
    let row = wait_for_state(b, &id, "exited 143");
    assert_eq!(row["exit"], 143);
    assert!(
        !dir.exists(),
        "the credential directory survived `session stop`"
    );
    no_plaintext_under_home(&b.home, "DETACHED-SECRET");
    (id, r)
}

#[test]
fn detached_background_session_runs_and_stops_cleanly() {
    let b = Bench::new();
    let tools = tools_without_tmux(&b);
    let path = format!("{}:{}", b.bin.display(), tools.display());
    let (id, _) = detached_session_lifecycle(&b, &path, &[], false);
    let log = b.home.path().join("sessions").join(format!("{id}.log"));
    assert!(log.exists());
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    b.home.run(&["session", "stop", "ffffffff"]).fails_with(5);
}

#[test]
fn detached_tmux_session_runs_and_stops_cleanly() {
    let b = Bench::new();
    if resolve("tmux").is_none() {
        eprintln!("SKIPPED detached_tmux_session_runs_and_stops_cleanly: tmux is not installed");
        return;
    }
    let server = crate::support::TmuxServer::new(b.home.scratch("tmux"));
    let tmux_dir = server.0.clone();
    let path = format!("{}:/usr/bin:/bin", b.bin.display());
    let (id, r) = detached_session_lifecycle(&b, &path, &[("TMUX_TMPDIR", &tmux_dir)], true);
    let list: serde_json::Value =
        serde_json::from_str(&b.home.ok(&["--json", "session", "list"])).unwrap();
    assert_eq!(list[0]["mode"], "tmux", "{list}");
    // The agent ran on a tmux server of the session's own, never on the user's, and that
    // server went away with the agent.
    let socket = b.home.path().join("sessions").join(format!("{id}.tmux"));
    assert!(
        r.env["TMUX"].starts_with(&format!("{},", socket.display())),
        "{r:?}"
    );
    assert!(!socket.exists(), "the session's tmux server outlived it");
    let ls = std::process::Command::new("tmux")
        .arg("ls")
        .env("TMUX_TMPDIR", &tmux_dir)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ls.stdout).contains(&format!("handoff-{id}")));
}

/// An agent that exits at once, in tmux mode, takes its session's server with it perhaps
/// before the supervisor could ask tmux anything: its exit code is still the session's.
#[test]
fn a_tmux_session_whose_agent_exits_at_once_records_its_code() {
    let b = Bench::new();
    if resolve("tmux").is_none() {
        eprintln!("SKIPPED: tmux is not installed");
        return;
    }
    let server = crate::support::TmuxServer::new(b.home.scratch("tmux"));
    b.home.add("anthropic", "work", "sk-ant-api03-QUICK", &[]);
    let mut cmd = b
        .home
        .command(&["--json", "spawn", "claude", "--detach", "--", "--fail"]);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", b.bin.display()))
        .env("TMUX_TMPDIR", &server.0);
    b.isolate_tmp(&mut cmd);
    let out = finish(cmd.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    let started: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = started["session"].as_str().unwrap();
    assert_eq!(started["mode"], "tmux", "{started}");
    let row = wait_for_state(&b, id, "exited 42");
    assert!(row["failure"].is_null(), "{row}");
    let sessions = b.home.path().join("sessions");
    for left in [format!("{id}.tmux"), format!("{id}.exit")] {
        assert!(!sessions.join(&left).exists(), "{left} was left behind");
    }
}

/// `spawn --detach` returns only once its supervisor holds the credential and, in tmux mode,
/// the session exists: a tmux that cannot start one fails the spawn with tmux's own words,
/// and the session shows as failed, with nothing left of its credential.
#[test]
fn a_detached_spawn_whose_session_cannot_start_says_why() {
    let b = Bench::new();
    let tmux = b.bin.join("tmux");
    std::fs::write(&tmux, "#!/bin/sh\necho 'no terminal here' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&tmux, std::fs::Permissions::from_mode(0o755)).unwrap();
    b.home.add(
        "openai-codex",
        "default",
        r#"{"tokens":{"access_token":"NEVER-STARTED"}}"#,
        &[],
    );
    let mut cmd = b
        .home
        .command(&["spawn", "codex", "--service", "openai-codex", "--detach"]);
    cmd.env("PATH", format!("{}:/usr/bin:/bin", b.bin.display()));
    b.isolate_tmp(&mut cmd);
    let out = finish(cmd.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("no terminal here"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    let list: serde_json::Value =
        serde_json::from_str(&b.home.ok(&["--json", "session", "list"])).unwrap();
    assert_eq!(list[0]["state"], "failed", "{list}");
    let tmp = b.home.scratch("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "a credential directory was left: {left:?}");
    no_plaintext_under_home(&b.home, "NEVER-STARTED");
}

fn resolve(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

#[test]
fn session_stop_never_signals_a_process_that_reused_a_dead_sessions_pid() {
    let b = Bench::new();
    // A session record whose supervisor pid now belongs to an unrelated process of ours.
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let sessions = b.home.path().join("sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    let record = serde_json::json!({
        "id": "deadbeef", "agent": "claude", "dir": "/", "mode": "background",
        "supervisor_pid": bystander.id(), "started_at": 0, "ended_at": null, "exit": null, "log": null
    });
    std::fs::write(sessions.join("deadbeef.json"), record.to_string()).unwrap();
    let list: serde_json::Value =
        serde_json::from_str(&b.home.ok(&["--json", "session", "list"])).unwrap();
    assert_eq!(list[0]["state"], "lost", "{list}");
    assert!(
        b.home
            .ok(&["session", "stop", "deadbeef"])
            .contains("already ended")
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "an unrelated process was signalled"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
