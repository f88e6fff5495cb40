//! Progress lines: on a terminal only. Key derivation (Argon2id at 64 MiB) shows a line while
//! it runs; the same command with stderr piped, or with `--json`, prints none.

use crate::support::TestHome;

/// Runs `args` on `home` under a pseudo-terminal (`script`), everything it printed.
fn on_a_terminal(home: &TestHome, args: &[&str]) -> Option<String> {
    let script = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("script"))
            .find(|p| p.is_file())
    });
    let Some(script) = script else {
        eprintln!("SKIPPED: `script` (util-linux) is not installed; no pseudo-terminal test");
        return None;
    };
    let cmd = home.command(args);
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_str().unwrap();
            assert!(!a.contains('\''), "{a}");
            format!("'{a}'")
        })
        .collect();
    let mut run = std::process::Command::new(script);
    run.args(["-qec", &line.join(" "), "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => run.env(k, v),
            None => run.env_remove(k),
        };
    }
    let out = run.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn unlocking_shows_a_progress_line_on_a_terminal_only() {
    let home = TestHome::new();
    home.init();
    home.add("anthropic", "work", "sk-ant-progress-secret", &[]);
    let args = ["token", "show", "anthropic/work", "--reveal"];
    if let Some(seen) = on_a_terminal(&home, &args) {
        assert!(seen.contains("Unlocking (Argon2id, 64 MiB)..."), "{seen:?}");
        assert!(seen.contains("sk-ant-progress-secret"), "{seen:?}");
    }
    // Piped: the secret alone, not a byte of progress.
    let out = home.run(&args);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!out.stderr.contains("Unlocking"), "{out:?}");
    let out = home.run(&["--json", "token", "show", "anthropic/work", "--reveal"]);
    assert!(!out.stderr.contains("Unlocking"), "{out:?}");
}
