//! The unlocked daemon serves the person, never the agents it starts. A hostile stand-in
//! agent, started by `spawn` in the foreground, in tmux and in the background, tries what an
//! agent must not do through the daemon, first directly and then from a process that
//! double-forked and called `setsid` to leave its parent (and, in tmux, from a window it
//! opens on its tmux server). It is even given the passphrase:
//! from inside an agent tree every attempt is refused with exit 3 and a line that says why.
//! The same commands from outside the tree work (tier 2) or want the passphrase (tier 3).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{TestHome, TmuxServer, finish, tools_dir, write_private};

/// Tries each line of its plan (`NAME ARGS...`) against the daemon, then again from a
/// double-forked, `setsid` process, and from under a process named with invalid UTF-8, and
/// records each exit code and error.
const HOSTILE: &str = r#"#!/bin/sh
res="$1"; hb="$2"; hh="$3"; pass="$4"; plan="$5"
run() {
  out="$1"; shift
  HANDOFF_PASSPHRASE_FILE="$pass" "$hb" --home "$hh" "$@" </dev/null >"$out.out" 2>"$out.err"
  echo $? >"$out.rc.tmp"; mv "$out.rc.tmp" "$out.rc"
}
if [ "$6" = --escaped ]; then shift 6; run "$@"; exit 0; fi
[ -f "$plan" ] || exit 0
while read -r name rest; do
  run "$res/$name" $rest
  ( setsid "$0" "$res" "$hb" "$hh" "$pass" "$plan" --escaped "$res/$name.escaped" $rest & )
  i=0
  while [ ! -e "$res/$name.escaped.rc" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
  # From under a process whose name is not UTF-8 (its /proc/PID/stat is not text).
  odd="$res/$(printf '\377')"
  [ -e "$odd" ] || ln -s "$(command -v sh)" "$odd"
  "$odd" "$0" "$res" "$hb" "$hh" "$pass" "$plan" --escaped "$res/$name.renamed" $rest
  # From a window of the tmux server the agent runs on, if it runs on one.
  if [ -n "$TMUX" ]; then
    tmux new-window "$0 $res $hb $hh $pass $plan --escaped $res/$name.window $rest"
    i=0
    while [ ! -e "$res/$name.window.rc" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
  fi
done < "$plan"
echo done > "$res/done"
"#;

const RELAY: &str =
    "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWCeRdFNkfpEHtu27jfSj3f4sEPqQK5rQNTmrzzDVHeEK5";
const CODEX: &str = r#"{"tokens":{"refresh_token":"CODEX-BUNDLE-SECRET"}}"#;

struct Lab {
    home: TestHome,
    bin: PathBuf,
    tools: PathBuf,
    pass: PathBuf,
    replacement: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let home = TestHome::with_daemon();
        home.init();
        home.add("anthropic", "work", "sk-ant-api03-THE-USERS-KEY", &[]);
        home.add("openai-codex", "default", CODEX, &[]);
        home.ok(&["unlock", "--for", "1h"]);
        let bin = home.scratch("bin");
        std::fs::create_dir(&bin).unwrap();
        let claude = bin.join("claude");
        std::fs::write(&claude, HOSTILE).unwrap();
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
        // What the script needs, and no tmux unless a mode asks for it.
        let tools = tools_dir(
            &home.scratch("tools"),
            &["sh", "setsid", "sleep", "mv", "ln", "printf"],
        );
        let pass = home.scratch("agent-knows-the-passphrase");
        write_private(&pass, crate::support::PASSPHRASE.as_bytes());
        let replacement = home.scratch("attacker-key");
        write_private(&replacement, b"sk-ant-api03-THE-ATTACKERS-KEY");
        Lab {
            home,
            bin,
            tools,
            pass,
            replacement,
        }
    }

    fn attempts(&self, res: &Path) -> Vec<(&'static str, Vec<String>)> {
        let export = res.join("stolen.export").display().to_string();
        let replacement = self.replacement.display().to_string();
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        vec![
            ("reveal", words("token show openai-codex/default --reveal")),
            ("export", words(&format!("export --out {export}"))),
            ("spawn", words("spawn claude")),
            (
                "replace",
                words(&format!(
                    "token add anthropic --label work --replace --from-file {replacement}"
                )),
            ),
            ("admin", words("peer add --role admin --yes --no-mdns")),
            ("remove", words("peer remove somebody")),
            ("relay", words(&format!("relay add {RELAY}"))),
            ("unlock", words("unlock --for 1h")),
            // Starting an agent on another device is as much as starting one here.
            ("remote", words("spawn claude --on somebody --dir /")),
            // And so is stopping, or reading, what this person started there.
            ("remote-stop", words("session stop --on somebody 0badc0de")),
            ("remote-list", words("session list --on somebody")),
            // Settling a conflict writes a version; the secrets of every version, or the
            // whole history (which decodes the document), are the person's.
            (
                "resolve",
                words("token resolve openai-codex/default --keep somebody"),
            ),
            (
                "versions",
                words("token resolve openai-codex/default --reveal"),
            ),
            ("history", words("token history openai-codex/default")),
            (
                "policy",
                words(&format!(
                    "spawn-policy allow test-device --args --root {}",
                    res.display()
                )),
            ),
        ]
    }

    /// Starts the hostile agent with `spawn EXTRA...` and waits until it tried everything.
    fn run_agent(&self, mode: &str, extra: &[&str], env: &[(&str, &Path)]) -> PathBuf {
        let res = self.home.scratch(&format!("results-{mode}"));
        std::fs::create_dir(&res).unwrap();
        let plan = res.join("plan");
        let text: String = self
            .attempts(&res)
            .iter()
            .map(|(name, args)| format!("{name} {}\n", args.join(" ")))
            .collect();
        std::fs::write(&plan, text).unwrap();
        let home = self.home.path().display().to_string();
        let (res_s, bin_s, pass_s, plan_s) = (
            res.display().to_string(),
            crate::support::binary().to_string(),
            self.pass.display().to_string(),
            plan.display().to_string(),
        );
        let mut args = vec!["spawn", "claude"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", &res_s, &bin_s, &home, &pass_s, &plan_s]);
        let mut cmd = self.home.command(&args);
        cmd.env(
            "PATH",
            format!("{}:{}", self.bin.display(), self.tools.display()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = finish(cmd.spawn().unwrap(), Duration::from_secs(120));
        assert_eq!(out.code, Some(0), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !res.join("done").exists() {
            assert!(Instant::now() < deadline, "the {mode} agent never finished");
            std::thread::sleep(Duration::from_millis(50));
        }
        res
    }

    /// Every attempt, direct and escaped, was refused for the reason, and changed nothing.
    fn all_refused(&self, mode: &str, res: &Path) {
        for (name, _) in self.attempts(res) {
            let mut runs = vec![
                name.to_string(),
                format!("{name}.escaped"),
                format!("{name}.renamed"),
            ];
            if mode == "tmux" {
                runs.push(format!("{name}.window"));
            }
            for run in runs {
                let rc = std::fs::read_to_string(res.join(format!("{run}.rc"))).unwrap();
                let err = std::fs::read_to_string(res.join(format!("{run}.err"))).unwrap();
                let out = std::fs::read_to_string(res.join(format!("{run}.out"))).unwrap();
                assert_eq!(rc.trim(), "3", "{mode} {run}: exit {rc} {err} {out}");
                assert_eq!(err.lines().count(), 1, "{mode} {run}: {err}");
                assert!(
                    err.contains("inside an agent session"),
                    "{mode} {run}: {err}"
                );
                assert!(!out.contains("CODEX-BUNDLE-SECRET"), "{mode} {run}: {out}");
            }
        }
        assert!(
            !res.join("stolen.export").exists(),
            "{mode}: an export was written"
        );
        assert_eq!(
            self.home.reveal("anthropic/work"),
            "sk-ant-api03-THE-USERS-KEY"
        );
        let relays = self.home.ok(&["--json", "relay", "list"]);
        assert_eq!(relays.trim(), "[]", "{mode}: {relays}");
        let status: serde_json::Value =
            serde_json::from_str(&self.home.ok(&["--json", "status"])).unwrap();
        assert_eq!(status["pairing_offer_open"], false, "{mode}: {status}");
        assert_eq!(status["locked"], false, "{mode}: {status}");
    }
}

#[test]
fn an_agent_in_the_foreground_can_ask_for_nothing_above_the_open_tier() {
    let lab = Lab::new();
    let res = lab.run_agent("foreground", &[], &[]);
    lab.all_refused("foreground", &res);

    // Outside every tree: tier 2 is served by the unlock, tier 3 wants the passphrase.
    let without_passphrase = |args: &[&str]| {
        let mut cmd = lab.home.command(args);
        cmd.env_remove("HANDOFF_PASSPHRASE_FILE");
        finish(cmd.spawn().unwrap(), Duration::from_secs(60))
    };
    let out = without_passphrase(&["token", "show", "openai-codex/default", "--reveal"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("CODEX-BUNDLE-SECRET"));
    let export = lab.home.scratch("mine.export");
    let export = export.to_str().unwrap();
    without_passphrase(&["export", "--out", export]).fails_with(3);
    assert!(!Path::new(export).exists());
    lab.home.ok(&["export", "--out", export]);
    assert!(Path::new(export).exists());
    lab.home.ok(&["relay", "add", RELAY]);
}

#[test]
fn an_agent_in_a_background_session_can_ask_for_nothing_above_the_open_tier() {
    let lab = Lab::new();
    let res = lab.run_agent("background", &["--detach"], &[]);
    lab.all_refused("background", &res);
}

#[test]
fn an_agent_in_a_tmux_session_can_ask_for_nothing_above_the_open_tier() {
    let Some(tmux) = ["/usr/bin/tmux", "/bin/tmux", "/usr/local/bin/tmux"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("SKIPPED: tmux is not installed");
        return;
    };
    let lab = Lab::new();
    std::os::unix::fs::symlink(&tmux, lab.tools.join("tmux")).unwrap();
    let server = TmuxServer::new(lab.home.scratch("tmux"));
    let res = lab.run_agent("tmux", &["--detach"], &[("TMUX_TMPDIR", &server.0)]);
    lab.all_refused("tmux", &res);
}

/// Stops its own supervisor (so it can tell no daemon that it runs), waits for `go`, then
/// asks for a secret: the attack on a daemon that learns of supervisors only from them.
const STOPS_ITS_SUPERVISOR: &str = r#"#!/bin/sh
res="$1"; hb="$2"; hh="$3"
kill -STOP "$PPID"
echo stopped > "$res/stopped"
i=0
while [ ! -e "$res/go" ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done
"$hb" --home "$hh" token show openai-codex/default --reveal </dev/null >"$res/out" 2>"$res/err"
echo $? >"$res/rc.tmp"; mv "$res/rc.tmp" "$res/rc"
kill -CONT "$PPID"
"#;

/// The agent stops its supervisor, the daemon dies (the agent can read its pid from
/// `status`), and the person starts a new one and unlocks: the new daemon finds the stopped
/// supervisor before it answers anything, and refuses the agent.
#[test]
fn a_daemon_started_while_an_agent_runs_refuses_it_though_the_agent_stopped_its_supervisor() {
    let lab = Lab::new();
    std::fs::write(lab.bin.join("claude"), STOPS_ITS_SUPERVISOR).unwrap();
    let res = lab.home.scratch("results-stopped");
    std::fs::create_dir(&res).unwrap();
    let home = lab.home.path().display().to_string();
    let res_s = res.display().to_string();
    let mut cmd = lab.home.command(&[
        "spawn",
        "claude",
        "--",
        &res_s,
        crate::support::binary(),
        &home,
    ]);
    cmd.env(
        "PATH",
        format!("{}:{}", lab.bin.display(), lab.tools.display()),
    );
    let spawn = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !res.join("stopped").exists() {
        assert!(
            Instant::now() < deadline,
            "the agent never stopped its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status: serde_json::Value =
        serde_json::from_str(&lab.home.ok(&["--json", "status"])).unwrap();
    let daemon = status["daemon_pid"].as_u64().unwrap();
    let daemon = rustix::process::Pid::from_raw(i32::try_from(daemon).unwrap()).unwrap();
    rustix::process::kill_process(daemon, rustix::process::Signal::KILL).unwrap();
    crate::wait::eventually_blocking("the daemon died", || {
        rustix::process::test_kill_process(daemon).is_err()
    });
    lab.home.ok(&["daemon", "start"]);
    lab.home.ok(&["unlock", "--for", "1h"]);
    std::fs::write(res.join("go"), b"").unwrap();
    let out = finish(spawn, Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out:?}");
    let rc = std::fs::read_to_string(res.join("rc")).unwrap();
    let err = std::fs::read_to_string(res.join("err")).unwrap();
    let stolen = std::fs::read_to_string(res.join("out")).unwrap();
    assert_eq!(rc.trim(), "3", "exit {rc}: {err} {stolen}");
    assert!(err.contains("inside an agent session"), "{err}");
    assert!(!stolen.contains("CODEX-BUNDLE-SECRET"), "{stolen}");
    // The supervisor ended its tree and said so: the person is served as before.
    assert!(
        lab.home
            .reveal("openai-codex/default")
            .contains("CODEX-BUNDLE-SECRET")
    );
}

/// Reports whether the credential arrived, and the name its supervisor runs under.
const REPORTS: &str = r#"#!/bin/sh
[ -n "$ANTHROPIC_API_KEY" ] && echo "key" > "$1/report"
cut -d' ' -f2 "/proc/$PPID/stat" >> "$1/report"
"#;

/// Every handoff process makes itself non-dumpable, which leaves its `/proc/self/comm` to
/// root: a supervisor that named itself by writing there worked for root and failed every
/// spawn of everyone else. The other tests here run as whoever runs the suite; when that is
/// root, this one runs a daemon and a spawn as another user (uid 65534).
#[test]
fn a_user_who_is_not_root_can_spawn_through_the_daemon() {
    use std::os::unix::fs::chown;
    if !rustix::process::getuid().is_root() {
        eprintln!("SKIPPED: not root, so every other spawn test already runs as a plain user");
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("SKIPPED: setpriv is not installed");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let (home, bin, res) = (root.join("home"), root.join("bin"), root.join("res"));
    std::fs::create_dir(&bin).unwrap();
    std::fs::create_dir(&res).unwrap();
    std::fs::write(bin.join("claude"), REPORTS).unwrap();
    std::fs::set_permissions(bin.join("claude"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pass = root.join("passphrase");
    write_private(&pass, crate::support::PASSPHRASE.as_bytes());
    let key = root.join("key");
    write_private(&key, b"sk-ant-api03-NOT-ROOTS");
    for path in [root, &bin, &res, &pass, &key, &bin.join("claude")] {
        chown(path, Some(65534), Some(65534)).unwrap();
    }
    let command = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&setpriv);
        cmd.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            crate::support::binary(),
            "--home",
        ])
        .arg(&home)
        .args(args)
        .env("HOME", root)
        .env("HANDOFF_PASSPHRASE_FILE", &pass)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env_remove("HANDOFF_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    let as_user = |args: &[&str]| {
        let out = finish(command(args).spawn().unwrap(), Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
    };
    as_user(&["init", "--name", "plain-user"]);
    write_private(
        &home.join("config.toml"),
        crate::support::LOOPBACK_NET.as_bytes(),
    );
    chown(home.join("config.toml"), Some(65534), Some(65534)).unwrap();
    let key_s = key.display().to_string();
    as_user(&[
        "token",
        "add",
        "anthropic",
        "--label",
        "work",
        "--from-file",
        &key_s,
    ]);
    as_user(&["daemon", "start"]);
    // However this test ends, the daemon it started as the other user stops.
    struct StopsDaemon(std::process::Command);
    impl Drop for StopsDaemon {
        fn drop(&mut self) {
            let _ = self.0.status();
        }
    }
    let daemon = StopsDaemon(command(&["daemon", "stop"]));
    as_user(&["unlock", "--for", "1h"]);
    let res_s = res.display().to_string();
    as_user(&["spawn", "claude", "--", &res_s]);
    drop(daemon);
    let report = std::fs::read_to_string(res.join("report")).unwrap();
    let mut lines = report.lines();
    assert_eq!(lines.next(), Some("key"), "{report}");
    assert!(
        lines
            .next()
            .is_some_and(|name| name.starts_with("(handoff-")),
        "the supervisor did not take its name: {report}"
    );
}
