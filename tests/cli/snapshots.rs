//! What every command prints, human and `--json`, on a home used directly and on one served by
//! a daemon, compared byte for byte with the transcripts in `tests/cli/snapshots/`. Only what
//! differs from run to run is masked: ids (each distinct one keeps its own name), times, ports,
//! pids, sizes, the temp path and the recovery code.
//!
//! A change to any output fails here first. When the change is meant, rewrite the transcripts
//! with `UPDATE_SNAPSHOTS=1 cargo test --test cli snapshots` and review the diff.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::support::{TestHome, write_private};

/// The relay address the transcripts add: any valid PeerId does (nothing dials it).
const RELAY: &str =
    "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWCeRdFNkfpEHtu27jfSj3f4sEPqQK5rQNTmrzzDVHeEK5";
const RELAY_2: &str = "/ip6/::1/tcp/4002/p2p/12D3KooWCeRdFNkfpEHtu27jfSj3f4sEPqQK5rQNTmrzzDVHeEK5";

/// One command of the script: its arguments, what it reads on stdin, and whether it runs a
/// second time with `--json` (commands that change the vault run once, in the form written).
struct Step {
    args: Vec<String>,
    stdin: Option<&'static str>,
    both: bool,
}

/// Runs human, then `--json`.
fn both(args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|a| (*a).to_string()).collect(),
        stdin: None,
        both: true,
    }
}

/// Runs once, as written.
fn once(args: &[&str]) -> Step {
    Step {
        both: false,
        ..both(args)
    }
}

fn once_with(args: &[&str], stdin: &'static str) -> Step {
    Step {
        stdin: Some(stdin),
        ..once(args)
    }
}

/// Every command a user runs on one device, and the errors they most often meet. An argument
/// `@name` is the file `name` in the test's scratch dir; `@relay:N` is the Nth relay listed.
fn script(daemon: bool) -> Vec<Step> {
    let mut steps = vec![
        both(&["status"]),
        both(&["token", "list"]),
        once_with(
            &["token", "add", "anthropic", "--label", "work"],
            "sk-ant-work\n",
        ),
        once_with(
            &[
                "--json",
                "token",
                "add",
                "openai",
                "--label",
                "personal",
                "--default",
            ],
            "sk-openai-personal\n",
        ),
        once_with(&["token", "add", "gemini"], "gemini-key\n"),
        once_with(
            &["token", "add", "anthropic", "--label", "work"],
            "sk-ant-again\n",
        ),
        once_with(
            &["token", "add", "anthropic", "--label", "work", "--replace"],
            "sk-ant-replaced\n",
        ),
        once_with(&["token", "add", "nosuch"], "x\n"),
        both(&["token", "list"]),
        both(&["token", "show", "anthropic/work"]),
        both(&["token", "show", "anthropic/work", "--reveal"]),
        both(&["token", "show", "nothing-like-this"]),
        both(&["token", "default", "openai/personal"]),
        once(&["token", "rename", "anthropic/work", "job"]),
        once(&["--json", "token", "rename", "anthropic/job", "work"]),
        both(&["token", "rename", "anthropic/work", "no/slash"]),
        once(&["token", "rm", "openai/personal"]),
        once(&["--json", "token", "rm", "gemini/default"]),
        both(&["token", "rm", "openai/personal"]),
        once(&["relay", "add", RELAY, "--token-file", "@relay-token"]),
        both(&["relay", "add", "/ip4/127.0.0.1/tcp/4001"]),
        both(&["relay", "list"]),
        once(&["relay", "rm", "@relay:1"]),
        once(&["--json", "relay", "add", RELAY_2]),
        both(&["relay", "list"]),
        both(&["peer", "list"]),
        once(&["export", "--out", "@export.automerge"]),
        once(&["--json", "export", "--out", "@export-2.automerge"]),
        both(&["import", "@export.automerge"]),
        both(&["import", "@not-a-document"]),
        both(&["session", "list"]),
    ];
    if daemon {
        steps.extend([
            both(&["unlock", "--for", "1h"]),
            both(&["status"]),
            both(&["lock"]),
            both(&["daemon", "status"]),
        ]);
    } else {
        steps.push(both(&["unlock"]));
    }
    steps.extend([
        once(&["--json", "relay", "rm", "@relay:1"]),
        both(&["relay", "rm", "nothing-like-this"]),
        both(&["status"]),
    ]);
    steps
}

fn transcript(home: &TestHome) -> String {
    let code = home.init();
    write_private(&home.scratch("relay-token"), b"relay access token\n");
    write_private(&home.scratch("not-a-document"), b"this is not automerge");
    let mut masks = Masks::new(home.scratch("x").parent().unwrap(), &code);
    let mut out = String::new();
    for step in script(home.wants_daemon()) {
        let args: Vec<String> = step.args.iter().map(|a| argument(home, a)).collect();
        let mut runs = vec![args.clone()];
        if step.both {
            runs.push(std::iter::once("--json".to_string()).chain(args).collect());
        }
        for (i, args) in runs.iter().enumerate() {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = home.run_with_stdin(&argv, step.stdin.map(str::as_bytes));
            let mut shown = step.args.join(" ");
            if i == 1 {
                shown.insert_str(0, "--json ");
            }
            writeln!(out, "$ handoff {shown}").unwrap();
            out.push_str(&masks.apply(&run.stdout));
            if !run.stdout.is_empty() && !run.stdout.ends_with('\n') {
                out.push_str("[no newline]\n");
            }
            for line in run.stderr.lines() {
                writeln!(out, "[stderr] {}", masks.apply(line)).unwrap();
            }
            let code = run.code.map_or("signal".to_string(), |c| c.to_string());
            writeln!(out, "[exit {code}]\n").unwrap();
        }
    }
    out
}

/// The value a script argument stands for.
fn argument(home: &TestHome, arg: &str) -> String {
    let Some(name) = arg.strip_prefix('@') else {
        return arg.to_string();
    };
    if let Some(n) = name.strip_prefix("relay:") {
        let list: serde_json::Value =
            serde_json::from_str(&home.ok(&["--json", "relay", "list"])).unwrap();
        let n: usize = n.parse().unwrap();
        return list[n - 1]["id"].as_str().unwrap().to_string();
    }
    home.scratch(name).to_str().unwrap().to_string()
}

/// Replaces what varies between runs with stable names.
struct Masks {
    tmp: String,
    code: String,
    names: HashMap<String, String>,
}

impl Masks {
    fn new(tmp: &Path, code: &str) -> Self {
        Self {
            tmp: tmp.to_str().unwrap().to_string(),
            code: code.to_string(),
            names: HashMap::new(),
        }
    }

    fn apply(&mut self, text: &str) -> String {
        let text = text
            .replace(&self.tmp, "<tmp>")
            .replace(&self.code, "<recovery code>");
        let times = regex::Regex::new(
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z|\\b1[7-9][0-9]{8}\\b",
        )
        .unwrap();
        let text = times.replace_all(&text, "<time>");
        let numbers =
            regex::Regex::new("(/(?:tcp|udp)/|pid[\": =]+|\"bytes\":)[0-9]+|\\b[0-9]+( bytes)")
                .unwrap();
        let text = numbers.replace_all(&text, "${1}<n>${2}");
        let words =
            regex::Regex::new("\\b12D3KooW[1-9A-HJ-NP-Za-km-z]+\\b|\\b[0-9a-f]{8,64}\\b").unwrap();
        words
            .replace_all(&text, |c: &regex::Captures<'_>| {
                let word = &c[0];
                // A short id is its long form's first 8 characters: one name for both.
                let key = if word.starts_with("12D3KooW") {
                    word.to_string()
                } else {
                    word[..8].to_string()
                };
                let next = self.names.len() + 1;
                let name = self
                    .names
                    .entry(key)
                    .or_insert_with(|| format!("id{next}"))
                    .clone();
                format!("<{name}:{}>", word.len())
            })
            .into_owned()
    }
}

fn check(name: &str, home: TestHome) {
    let got = transcript(&home);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cli/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        let context = |t: &str| {
            t.lines()
                .skip(first.saturating_sub(3))
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "the output differs from {} at line {}:\n--- now\n{}\n--- snapshot\n{}\n(if meant: UPDATE_SNAPSHOTS=1 cargo test --test cli snapshots)",
            path.display(),
            first + 1,
            context(&got),
            context(&want)
        );
    }
}

#[test]
fn every_command_prints_what_it_printed_directly() {
    check("direct", TestHome::new());
}

#[test]
fn every_command_prints_what_it_printed_through_the_daemon() {
    check("daemon", TestHome::with_daemon());
}
