//! Progress lines: on a terminal only. Key derivation (Argon2id at 64 MiB) shows a line while
//! it runs, and `peer add` counts the wait for the new device with the time left on its code;
//! the same commands with stderr piped, or with `--json`, print none.

use crate::support::TestHome;

/// `args` on `home` under a pseudo-terminal (`script`), not started yet; `None` (after saying
/// so) where `script` is missing.
fn terminal_command(home: &TestHome, args: &[&str]) -> Option<std::process::Command> {
    let script = crate::support::tool("script");
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
    run.stdin(std::process::Stdio::null());
    Some(run)
}

/// Runs `args` on `home` under a pseudo-terminal, everything it printed.
fn on_a_terminal(home: &TestHome, args: &[&str]) -> Option<String> {
    let out = terminal_command(home, args)?.output().unwrap();
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

#[test]
fn peer_add_counts_the_wait_and_the_time_left_on_the_code() {
    use std::io::{BufRead, BufReader};
    let admin = TestHome::new();
    admin.init();
    admin.configure_loopback();
    let args = [
        "peer",
        "add",
        "--yes",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ];
    let Some(mut cmd) = terminal_command(&admin, &args) else {
        return;
    };
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        // The terminal's stream: lines end in \r\n, progress rewrites one with \r.
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let mut code = None;
    let mut addr = None;
    let mut all = String::new();
    while code.is_none() || addr.is_none() {
        let line = seen
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("peer add printed no code: {all}"));
        all.push_str(&line);
        // A line may start with what cleared the progress line before it.
        let after = |label: &str| {
            line.split_once(label)
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        };
        code = code.or_else(|| after("Pairing code: "));
        addr = addr.or_else(|| after("This device listens on: "));
    }
    // Long enough for the line to count a second or two.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let new = TestHome::new();
    let (code, addr) = (code.unwrap(), addr.unwrap());
    let joined = new.run(&[
        "peer",
        "join",
        &code,
        "--addr",
        &addr,
        "--yes",
        "--no-mdns",
        "--name",
        "late",
    ]);
    assert_eq!(joined.code, Some(0), "{joined:?}");
    // Piped, as here: the joiner printed no progress line.
    assert!(!joined.stderr.contains("waiting..."), "{joined:?}");
    let out = crate::support::finish(child, std::time::Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    reader.join().unwrap();
    while let Ok(line) = seen.try_recv() {
        all.push_str(&line);
    }
    assert!(all.contains("Waiting... "), "{all:?}");
    assert!(all.contains("(the code is valid "), "{all:?}");
    assert!(all.contains("Paired 'late'"), "{all:?}");
}
