//! OAuth logins that survive their own refresh (DESIGN §9), with stand-in agents that behave
//! like the real ones: each finds its credential file where the real agent would (Codex in
//! `$CODEX_HOME/auth.json`, Claude Code in `$CLAUDE_CONFIG_DIR/.credentials.json`, Gemini CLI in
//! `$GEMINI_CLI_HOME/.gemini/oauth_creds.json`), and refreshes it the way they do: a new file
//! written beside it and renamed over it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::peers::{admin, eventually, pair};
use crate::support::{Output, TestHome, contains, finish};

const STAND_IN: &str = r#"#!/bin/sh
# A stand-in agent: records what it was given and saw, then does what it is asked to its
# credential file.
here="$(dirname "$0")"; name="$(basename "$0")"
if [ -n "$CODEX_HOME" ]; then dir="$CODEX_HOME"; f="$dir/auth.json"
elif [ -n "$CLAUDE_CONFIG_DIR" ]; then dir="$CLAUDE_CONFIG_DIR"; f="$dir/.credentials.json"
elif [ -n "$GEMINI_CLI_HOME" ]; then dir="$GEMINI_CLI_HOME/.gemini"; f="$dir/oauth_creds.json"
else dir=""; f=/dev/null; fi
cat "$f" > "$here/given.$name" 2>/dev/null
ls -a "$dir" > "$here/seen.$name" 2>/dev/null
git config --global user.name > "$here/git.$name" 2>/dev/null
echo "$HOME" > "$here/home.$name"
case "$1" in
  --write) printf '%s' "$2" > "$f.tmp" && mv "$f.tmp" "$f" ;;
  --blank) : > "$f" ;;
  --delete) rm -f "$f" ;;
  --session) mkdir -p "$dir/sessions" && echo turn > "$dir/sessions/rollout-1.jsonl" ;;
  # Saves a settings file the way most agents do: a new file renamed over the old one.
  --save) printf '%s' "$4" > "$dir/$2.tmp" && mv "$dir/$2.tmp" "$dir/$2" ;;
esac
case "$3" in
  # Stays until stopped; on SIGTERM writes $4 (a refresh that lost the lease meanwhile).
  --linger)
    echo $$ > "$here/up.$name"
    trap '[ -n "$4" ] && printf "%s" "$4" > "$f.tmp" && mv "$f.tmp" "$f"; exit 0' TERM
    i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done ;;
esac
exit 0
"#;

/// A Codex `auth.json` with this refresh token, for account `acct-1`.
fn codex(refresh: &str) -> String {
    format!(
        r#"{{"OPENAI_API_KEY":null,"tokens":{{"access_token":"ACCESS-{refresh}","refresh_token":"{refresh}","account_id":"acct-1"}},"last_refresh":"2026-11-30T10:00:00Z"}}"#
    )
}

fn claude(refresh: &str) -> String {
    format!(
        r#"{{"claudeAiOauth":{{"accessToken":"sk-ant-oat01-{refresh}","refreshToken":"{refresh}","expiresAt":1900000000000,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}}}"#
    )
}

fn gemini(refresh: &str) -> String {
    format!(
        r#"{{"access_token":"ya29.{refresh}","refresh_token":"{refresh}","expiry_date":1900000000000,"token_type":"Bearer","scope":"cloud-platform"}}"#
    )
}

/// A JWT-shaped string whose payload says `exp`.
fn jwt(exp: i64) -> String {
    let payload = format!(r#"{{"exp":{exp},"sub":"user-1"}}"#);
    let b64: String = {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = payload.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    };
    format!("eyJhbGciOiJub25lIn0.{b64}.sig")
}

/// A home with the stand-in agents in a bin directory of its own.
struct Agents {
    home: TestHome,
    bin: PathBuf,
}

impl Agents {
    fn on(home: TestHome) -> Self {
        let bin = home.scratch("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let _ = std::fs::create_dir(home.scratch("tmp"));
        for name in ["claude", "codex", "gemini"] {
            let path = bin.join(name);
            std::fs::write(&path, STAND_IN).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { home, bin }
    }

    fn direct() -> Self {
        let home = TestHome::new();
        home.init();
        Self::on(home)
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut full = vec!["spawn"];
        full.extend_from_slice(args);
        let mut cmd = self.home.command(&full);
        cmd.env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin.display()),
        )
        .env("TMPDIR", self.home.scratch("tmp"))
        .env("XDG_RUNTIME_DIR", self.home.scratch("tmp"));
        cmd
    }

    /// Restarts the daemon with this bench's runtime dir, and unlocks it.
    fn restart_daemon(&self) {
        self.home.ok(&["daemon", "stop"]);
        let mut start = self.home.command(&["daemon", "start"]);
        start
            .env("TMPDIR", self.home.scratch("tmp"))
            .env("XDG_RUNTIME_DIR", self.home.scratch("tmp"));
        let out = finish(start.spawn().unwrap(), Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "{out:?}");
        self.home.ok(&["unlock", "--for", "1h"]);
    }

    fn spawn(&self, args: &[&str]) -> Output {
        finish(self.command(args).spawn().unwrap(), Duration::from_secs(60))
    }

    fn given(&self, agent: &str) -> String {
        std::fs::read_to_string(self.bin.join(format!("given.{agent}"))).unwrap_or_default()
    }

    fn seen(&self, agent: &str) -> String {
        std::fs::read_to_string(self.bin.join(format!("seen.{agent}"))).unwrap_or_default()
    }

    fn wait_for(&self, what: &str) -> String {
        let path = self.bin.join(what);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&path)
                && !text.is_empty()
            {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what} never appeared");
    }

    /// Nothing under the handoff home, the user's home or the runtime dir holds `needle` in
    /// the clear.
    fn nothing_on_disk(&self, needle: &str) {
        for root in [
            self.home.path(),
            self.home.user_home(),
            self.home.scratch("tmp"),
        ] {
            for (path, bytes) in files_under(&root) {
                assert!(
                    !contains(&bytes, needle.as_bytes()),
                    "{} holds {needle}",
                    path.display()
                );
            }
        }
    }
}

fn files_under(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(entry.path())
            {
                out.push((entry.path(), bytes));
            }
        }
    }
    out
}

/// Each agent's refreshed file comes back as the token's next version, and the next spawn is
/// handed it (directly, with no daemon: the write-back waits, sealed, for the next unlock).
#[test]
fn a_refreshed_login_is_handed_to_the_next_spawn_for_each_agent() {
    let a = Agents::direct();
    for (agent, service, bundle) in [
        ("codex", "openai-codex", codex as fn(&str) -> String),
        ("claude", "claude-subscription", claude),
        ("gemini", "gemini", gemini),
    ] {
        a.home
            .add(service, "default", &bundle("rt-first-4b1d9c"), &[]);
        let out = a.spawn(&[
            agent,
            "--service",
            service,
            "--",
            "--write",
            &bundle("rt-second-8e2f7a"),
        ]);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(a.given(agent), bundle("rt-first-4b1d9c"));
        a.nothing_on_disk("rt-second-8e2f7a");
        let out = a.spawn(&[agent, "--service", service]);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(
            a.given(agent),
            bundle("rt-second-8e2f7a"),
            "{agent} was not handed its refreshed login"
        );
        assert_eq!(
            a.home.reveal(&format!("{service}/default")),
            bundle("rt-second-8e2f7a")
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&a.home.ok(&["--json", "token", "list"])).unwrap();
    let claude = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["service"] == "claude-subscription")
        .unwrap();
    assert_eq!(claude["kind"], "oauth-json", "{claude}");
    assert_eq!(claude["expires_at"], 1_900_000_000, "{claude}");
    assert!(
        claude["lease"].is_null(),
        "the session's end released its lease: {claude}"
    );
}

/// What a lost refresh race leaves (an empty file, no file, garbage, a bundle without its
/// refresh token, another account's login) never replaces the good version.
#[test]
fn a_blanked_deleted_or_foreign_file_never_replaces_the_good_version() {
    let a = Agents::direct();
    a.home
        .add("openai-codex", "default", &codex("rt-good-5d0e1a"), &[]);
    let other_account = codex("rt-foreign-3c8f2d").replace("acct-1", "acct-attacker");
    let no_refresh = r#"{"tokens":{"access_token":"A","refresh_token":"","account_id":"acct-1"}}"#;
    for action in [
        vec!["--blank"],
        vec!["--delete"],
        vec!["--write", "garbage"],
        vec!["--write", no_refresh],
        vec!["--write", &other_account],
        vec!["--write", r#"{"OPENAI_API_KEY":"sk-not-a-login"}"#],
    ] {
        let mut args = vec!["codex", "--"];
        args.extend(action.iter().copied());
        let out = a.spawn(&args);
        assert_eq!(out.code, Some(0), "{out:?}");
        a.spawn(&["codex"]);
        assert_eq!(
            a.given("codex"),
            codex("rt-good-5d0e1a"),
            "after {action:?}"
        );
    }
    assert_eq!(
        a.home.reveal("openai-codex/default"),
        codex("rt-good-5d0e1a")
    );
}

/// A refresh on one device reaches a paired device through the mesh: its next spawn is handed
/// the new bundle.
#[test]
fn a_refresh_on_one_device_is_handed_to_the_next_spawn_on_another() {
    let a = Agents::on(admin());
    let b = Agents::on(TestHome::with_daemon());
    pair(&a.home, &b.home, "beta");
    a.home
        .add("openai-codex", "default", &codex("rt-first-4b1d9c"), &[]);
    let out = a.spawn(&["codex", "--", "--write", &codex("rt-second-8e2f7a")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    eventually("the refreshed login on b", || {
        b.home.reveal("openai-codex/default") == codex("rt-second-8e2f7a")
    });
    let out = b.spawn(&["codex"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(b.given("codex"), codex("rt-second-8e2f7a"));
}

/// A foreground spawn killed outright while its agent refreshes: the daemon's sweep keeps the
/// refreshed bundle (sealed) before it removes the private directory, and it is the token's
/// next version once the daemon is unlocked again.
#[test]
fn the_sweep_writes_back_for_a_killed_spawn_and_leaves_nothing_in_the_clear() {
    let a = Agents::on(admin());
    // The daemon sweeps the runtime dir its spawns use (the user's, in real life).
    a.restart_daemon();
    a.home
        .add("openai-codex", "default", &codex("rt-first-4b1d9c"), &[]);
    let mut cli = a
        .command(&[
            "codex",
            "--",
            "--write",
            &codex("rt-after-kill-6e2c"),
            "--linger",
        ])
        .spawn()
        .unwrap();
    let agent_pid = a.wait_for("up.codex");
    let cli_pid = cli.id();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(cli_pid).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = cli.wait();
    // The agent outlived its supervisor; it goes too.
    if let Ok(pid) = agent_pid.trim().parse::<i32>() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    let writeback = a.home.path().join("writeback");
    eventually(
        "the sweep kept the refreshed login and removed the directory",
        || {
            let private_left = std::fs::read_dir(a.home.scratch("tmp"))
                .map(|d| {
                    d.flatten().any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("handoff-session-")
                    })
                })
                .unwrap_or(false);
            let version = a
                .home
                .run(&["token", "show", "--reveal", "openai-codex/default"]);
            !private_left && (writeback.is_dir() || version.stdout.contains("rt-after-kill-6e2c"))
        },
    );
    a.nothing_on_disk("rt-after-kill-6e2c");
    // A daemon that saw a supervisor die with its tree alive locks until restarted.
    a.restart_daemon();
    assert_eq!(
        a.home.reveal("openai-codex/default"),
        codex("rt-after-kill-6e2c")
    );
    a.nothing_on_disk("rt-after-kill-6e2c");
}

/// One refresher at a time: a spawn of the same login on a second device while the first
/// device's session holds its lease is refused naming the holder; after the session ends it
/// succeeds (with what the session refreshed). `--take` takes the lease over, and the older
/// session's later write-back does not overwrite the newer version.
#[test]
fn a_leased_login_is_refused_elsewhere_taken_with_take_and_fenced() {
    let a = Agents::on(admin());
    let b = Agents::on(TestHome::with_daemon());
    pair(&a.home, &b.home, "beta");
    a.home
        .add("openai-codex", "default", &codex("rt-first-4b1d9c"), &[]);
    eventually("the login on b", || {
        b.home.reveal("openai-codex/default") == codex("rt-first-4b1d9c")
    });

    let lingering = |on: &Agents, write_on_stop: &str| {
        let _ = std::fs::remove_file(on.bin.join("up.codex"));
        let out = on.spawn(&[
            "codex",
            "--detach",
            "--",
            "--write",
            &codex("rt-second-8e2f7a"),
            "--linger",
            write_on_stop,
        ]);
        assert_eq!(out.code, Some(0), "{out:?}");
        on.wait_for("up.codex");
        let sessions: serde_json::Value =
            serde_json::from_str(&on.home.ok(&["--json", "session", "list"])).unwrap();
        sessions[0]["id"].as_str().unwrap().to_string()
    };
    let first = lingering(&a, "");
    eventually("b sees a's lease", || {
        let t: serde_json::Value =
            serde_json::from_str(
                &b.home
                    .ok(&["--json", "token", "show", "openai-codex/default"]),
            )
            .unwrap();
        !t["lease"].is_null()
    });
    let refused = b.spawn(&["codex"]);
    assert_eq!(refused.code, Some(11), "{refused:?}");
    assert!(
        refused.stderr.contains("test-device"),
        "names the holder: {refused:?}"
    );
    assert!(refused.stderr.contains("--take"), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "{refused:?}");

    a.home.ok(&["session", "stop", &first]);
    eventually("a's refresh and release reach b", || {
        b.home.reveal("openai-codex/default") == codex("rt-second-8e2f7a")
    });
    let out = b.spawn(&["codex"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(b.given("codex"), codex("rt-second-8e2f7a"));

    // a holds it again; b takes it over and refreshes; a's session then refreshes too late.
    let second = lingering(&a, &codex("rt-stale-7b4a6e"));
    eventually("b sees a's new lease", || {
        b.spawn(&["codex"]).code == Some(11)
    });
    let out = b.spawn(&[
        "codex",
        "--take",
        "--",
        "--write",
        &codex("rt-fourth-1c5e0b"),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    eventually("b's refresh reaches a", || {
        a.home.reveal("openai-codex/default") == codex("rt-fourth-1c5e0b")
    });
    a.home.ok(&["session", "stop", &second]);
    // The session has ended and its last write-back has been judged.
    eventually("a's stopped session's write-back judged", || {
        let sessions: serde_json::Value =
            serde_json::from_str(&a.home.ok(&["--json", "session", "list"])).unwrap();
        let ended = sessions[0]["state"] != "running";
        let waiting = std::fs::read_dir(a.home.path().join("writeback"))
            .map(|d| d.flatten().count())
            .unwrap_or(0);
        ended && waiting == 0
    });
    for home in [&a.home, &b.home] {
        assert_eq!(
            home.reveal("openai-codex/default"),
            codex("rt-fourth-1c5e0b"),
            "fenced"
        );
    }
}

/// `token list` shows an OAuth login's access-token expiry; `token check` exits 12 for an
/// expired one and 0 for a fresh one.
#[test]
fn expiry_is_listed_and_checked() {
    let a = Agents::direct();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let fresh = format!(
        r#"{{"tokens":{{"access_token":"{}","refresh_token":"RF","account_id":"a"}}}}"#,
        jwt(now + 3 * 3600)
    );
    let stale = format!(r#"{{"tokens":{{"access_token":"{}"}}}}"#, jwt(now - 86_400));
    a.home.add("openai-codex", "fresh", &fresh, &[]);
    a.home.add("openai-codex", "stale", &stale, &[]);
    let list: serde_json::Value =
        serde_json::from_str(&a.home.ok(&["--json", "token", "list"])).unwrap();
    let by_label = |l: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == l)
            .unwrap()
            .clone()
    };
    assert_eq!(by_label("fresh")["expires_at"], now + 3 * 3600);
    assert!(by_label("fresh")["refreshed_at"].is_i64());
    assert!(
        by_label("stale")["refreshed_at"].is_null(),
        "it has no refresh token"
    );
    let human = a.home.ok(&["token", "list"]);
    assert!(human.contains("EXPIRES"), "{human}");
    assert!(
        human.contains("in 2h") || human.contains("in 3h"),
        "{human}"
    );
    assert!(human.contains("expired 1d ago"), "{human}");

    let out = a.home.run(&["token", "check", "openai-codex/fresh"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    a.home
        .run(&["token", "check", "openai-codex/fresh", "--within", "4h"])
        .fails_with(12);
    let out = a.home.run(&["token", "check"]);
    assert_eq!(out.code, Some(12), "{out:?}");
    assert!(out.stdout.contains("openai-codex/stale"), "{out:?}");
    assert!(!out.stdout.contains("openai-codex/fresh"), "{out:?}");
    // A spawn with an expired access token and no refresh token warns before it starts.
    let out = a.spawn(&["codex", "--profile", "stale"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("expired"), "{out:?}");
}

/// The private agent directories mirror the user's own: configuration seen, history kept,
/// HOME the user's (so git and ssh still work), only the credential file private.
#[test]
fn agents_keep_their_users_configuration_and_history() {
    let a = Agents::direct();
    let user = a.home.user_home();
    std::fs::write(user.join(".gitconfig"), "[user]\n\tname = Ada Lovelace\n").unwrap();
    std::fs::create_dir_all(user.join(".codex")).unwrap();
    std::fs::write(user.join(".codex/config.toml"), "model = \"o3\"\n").unwrap();
    std::fs::write(user.join(".codex/auth.json"), "the user's own codex login").unwrap();
    std::fs::create_dir_all(user.join(".claude")).unwrap();
    std::fs::write(user.join(".claude/settings.json"), "{}").unwrap();
    std::fs::write(user.join(".claude.json"), "{\"projects\":{}}").unwrap();
    std::fs::create_dir_all(user.join(".gemini")).unwrap();
    std::fs::write(user.join(".gemini/settings.json"), "{}").unwrap();
    a.home
        .add("openai-codex", "default", &codex("rt-first-4b1d9c"), &[]);
    a.home.add(
        "claude-subscription",
        "default",
        &claude("rt-claude-9a7d3e"),
        &[],
    );
    a.home
        .add("gemini", "default", &gemini("rt-gemini-2f6b8c"), &[]);

    let out = a.spawn(&["codex", "--", "--session"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        a.seen("codex").lines().any(|l| l == "config.toml"),
        "{}",
        a.seen("codex")
    );
    assert_eq!(
        a.given("codex"),
        codex("rt-first-4b1d9c"),
        "the session's login, not the user's own"
    );
    assert!(
        user.join(".codex/sessions/rollout-1.jsonl").exists(),
        "the session's history stays in the user's ~/.codex"
    );
    assert_eq!(
        std::fs::read_to_string(user.join(".codex/auth.json")).unwrap(),
        "the user's own codex login"
    );
    for agent in ["codex", "claude", "gemini"] {
        if agent == "claude" {
            let out = a.spawn(&[
                agent,
                "--",
                "--save",
                ".claude.json",
                "-",
                "{\"projects\":{\"new\":1}}",
            ]);
            assert_eq!(out.code, Some(0), "{out:?}");
        } else if agent == "gemini" {
            let out = a.spawn(&[
                agent,
                "--",
                "--save",
                "settings.json",
                "-",
                "{\"theme\":\"dark\"}",
            ]);
            assert_eq!(out.code, Some(0), "{out:?}");
        }
        let git = std::fs::read_to_string(a.bin.join(format!("git.{agent}"))).unwrap();
        assert_eq!(git.trim(), "Ada Lovelace", "{agent}");
        let home = std::fs::read_to_string(a.bin.join(format!("home.{agent}"))).unwrap();
        assert_eq!(home.trim(), user.to_str().unwrap(), "{agent}'s HOME");
    }
    let claude_seen = a.seen("claude");
    assert!(
        claude_seen.lines().any(|l| l == "settings.json"),
        "{claude_seen}"
    );
    assert!(
        claude_seen.lines().any(|l| l == ".claude.json"),
        "{claude_seen}"
    );
    assert_eq!(a.given("claude"), claude("rt-claude-9a7d3e"));
    assert!(
        a.seen("gemini").lines().any(|l| l == "settings.json"),
        "{}",
        a.seen("gemini")
    );
    assert_eq!(a.given("gemini"), gemini("rt-gemini-2f6b8c"));
    // Settings saved by a rename over their link came back to where the user keeps them.
    assert_eq!(
        std::fs::read_to_string(user.join(".claude.json")).unwrap(),
        "{\"projects\":{\"new\":1}}"
    );
    assert!(!user.join(".claude/.claude.json").exists());
    assert_eq!(
        std::fs::read_to_string(user.join(".gemini/settings.json")).unwrap(),
        "{\"theme\":\"dark\"}"
    );
    a.nothing_on_disk("rt-claude-9a7d3e");
    a.nothing_on_disk("rt-gemini-2f6b8c");
}

/// `token add claude-subscription` tells a setup-token from the OAuth credentials file, and
/// refuses a credentials file without its scopes (Claude Code would not be logged in).
#[test]
fn claude_subscription_takes_setup_tokens_and_oauth_credentials() {
    let a = Agents::direct();
    a.home
        .add("claude-subscription", "setup", "sk-ant-oat01-SETUP", &[]);
    let file = a.home.scratch("credentials.json");
    std::fs::write(&file, claude("rt-claude-9a7d3e")).unwrap();
    a.home.ok(&[
        "token",
        "add",
        "claude-subscription",
        "--label",
        "login",
        "--from-file",
        file.to_str().unwrap(),
    ]);
    let list = a.home.list_json();
    let kind = |l: &str| list.iter().find(|t| t["label"] == l).unwrap()["kind"].clone();
    assert_eq!(kind("setup"), "setup-token");
    assert_eq!(kind("login"), "oauth-json");
    std::fs::write(
        &file,
        r#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r"}}"#,
    )
    .unwrap();
    let out = a.home.run(&[
        "token",
        "add",
        "claude-subscription",
        "--label",
        "scopeless",
        "--from-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("user:inference"), "{out:?}");
    // The setup-token still goes in its variable; the login in a private CLAUDE_CONFIG_DIR.
    a.spawn(&["claude", "--profile", "setup"]);
    assert_eq!(a.given("claude"), "");
    a.spawn(&["claude", "--profile", "login"]);
    assert_eq!(a.given("claude"), claude("rt-claude-9a7d3e"));
}
