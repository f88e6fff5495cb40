//! The generated reference: completion scripts a shell loads, manual pages `man` renders
//! without a warning, for both binaries. `man` is checked where it is installed (CI requires
//! it there: `HANDOFF_REQUIRE_MAN=1`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{TestHome, tool};

fn handoff() -> PathBuf {
    PathBuf::from(crate::support::binary())
}

/// `man`, or `None` after saying loudly that the pages are not rendered.
fn man() -> Option<PathBuf> {
    let found = tool("man");
    if found.is_none() {
        assert!(
            std::env::var_os("HANDOFF_REQUIRE_MAN").is_none(),
            "man is required here but missing"
        );
        eprintln!("SKIPPED: man is not installed; the manual pages are not rendered");
    }
    found
}

/// `man -l PAGE` with warnings on: what it rendered, and anything it said on stderr.
fn render(man: &Path, page: &Path) -> (String, String) {
    let out = Command::new(man)
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("MANPAGER")
        .env("PAGER", "cat")
        .output()
        .unwrap();
    assert!(out.status.success(), "man -l {}: {out:?}", page.display());
    (
        plain(&String::from_utf8_lossy(&out.stdout)),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rendered text without its overstrikes (`N\bN` for bold, `_\bx` for underline): what
/// follows a backspace replaces the character before it.
fn plain(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
            continue;
        }
        out.push(c);
    }
    out.into_iter().collect()
}

fn stdout_of(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_loads_the_completions_of_both_binaries() {
    for (binary, name) in [
        (handoff(), "handoff"),
        (crate::relay_proc::binary(), "handoff-relay"),
    ] {
        let script = format!(
            "source <('{}' completions bash) && complete -p {name}",
            binary.display()
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &script])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {out:?}");
        assert!(said.trim_end().ends_with(&format!(" {name}")), "{said}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The scripts know the subcommands and their options.
    let bash = stdout_of(&handoff(), &["completions", "bash"]);
    for word in [
        "token",
        "resolve",
        "--keep",
        "spawn-policy",
        "--passphrase-file",
    ] {
        assert!(bash.contains(word), "bash completions lack {word}");
    }
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    let zsh = stdout_of(&handoff(), &["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef handoff"), "{}", &zsh[..80]);
    let fish = stdout_of(&handoff(), &["completions", "fish"]);
    assert!(fish.contains("complete -c handoff"), "fish script");
    assert!(
        fish.contains("token") && fish.contains("peer"),
        "fish script"
    );
    // A shell clap does not know is a usage error, one line, exit 2.
    let home = TestHome::new();
    home.run(&["completions", "tcsh"]).fails_with(2);
}

#[test]
fn man_writes_pages_man_renders_without_warnings() {
    let home = TestHome::new();
    let dir = home.scratch("man");
    std::fs::create_dir_all(&dir).unwrap();
    home.ok(&["man", "--out", dir.to_str().unwrap()]);
    let relay = crate::relay_proc::binary();
    stdout_of(&relay, &["man", "--out", dir.to_str().unwrap()]);
    let pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for name in [
        "handoff.1",
        "handoff-token-add.1",
        "handoff-spawn.1",
        "handoff-relay.1",
        "handoff-relay.8",
        "handoff-relay-serve.8",
    ] {
        assert!(dir.join(name).is_file(), "no {name} among {pages:?}");
    }
    // Internal commands have no page.
    assert!(!dir.join("handoff-session-supervise.1").exists());
    // Without --out the top page goes to stdout, the same as the file.
    let top = home.ok(&["man"]);
    assert_eq!(
        top.as_bytes(),
        std::fs::read(dir.join("handoff.1")).unwrap()
    );
    let Some(man) = man() else { return };
    for page in &pages {
        let (text, warnings) = render(&man, page);
        assert!(warnings.trim().is_empty(), "{}: {warnings}", page.display());
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    }
    let (text, _) = render(&man, &dir.join("handoff-token-add.1"));
    assert!(text.contains("--from-file"), "{text}");
}

#[test]
fn man_into_a_missing_directory_is_one_line_and_writes_nothing() {
    let home = TestHome::new();
    let missing = home.scratch("no-such-dir");
    let said = home
        .run(&["man", "--out", missing.to_str().unwrap()])
        .fails_with(5)
        .to_string();
    assert!(said.contains("no-such-dir"), "{said}");
    assert!(!missing.exists());
    // The reference needs no vault: the home was never created.
    assert!(!home.path().exists());
}
