//! init → token add → token list → token show --reveal, through the real binary.

use crate::support::{TestHome, contains};

fn init_add_list_reveal_round_trip(home: TestHome) {
    let code = home.init();
    assert_eq!(code.split('-').count(), 8, "recovery code shape: {code}");

    let work = home.add("anthropic", "work", "sk-ant-api03-WORKSECRET", &[]);
    let personal = home.add(
        "anthropic",
        "personal",
        "sk-ant-api03-PERSONALSECRET",
        &["--default"],
    );
    let codex_json = r#"{"tokens":{"access_token":"eyJ-CODEX-SECRET","refresh_token":"rt-CODEX"}}"#;
    home.add("openai-codex", "default", codex_json, &[]);

    // The list shows services, labels, kinds and default marks, and never a secret.
    let text = home.ok(&["token", "list"]);
    for secret in ["WORKSECRET", "PERSONALSECRET", "CODEX-SECRET"] {
        assert!(!text.contains(secret), "list leaked a secret: {text}");
    }
    let list = home.list_json();
    assert_eq!(list.len(), 3);
    let find = |label: &str, service: &str| {
        list.iter()
            .find(|t| t["label"] == label && t["service"] == service)
            .unwrap_or_else(|| panic!("{service}/{label} missing from {list:?}"))
            .clone()
    };
    assert_eq!(find("personal", "anthropic")["default"], true);
    assert_eq!(find("work", "anthropic")["default"], false);
    assert_eq!(find("default", "openai-codex")["kind"], "oauth-json");
    assert_eq!(find("work", "anthropic")["kind"], "api-key");
    assert!(!contains(
        serde_json::to_string(&list).unwrap().as_bytes(),
        b"SECRET"
    ));

    // Reveal by SERVICE/LABEL, by full id and by id prefix.
    assert_eq!(home.reveal("anthropic/work"), "sk-ant-api03-WORKSECRET");
    assert_eq!(home.reveal(&personal), "sk-ant-api03-PERSONALSECRET");
    assert_eq!(home.reveal(&work[..8]), "sk-ant-api03-WORKSECRET");
    assert_eq!(home.reveal("openai-codex/default"), codex_json);

    // `show` without --reveal prints details, not the secret.
    let shown = home.ok(&["token", "show", "anthropic/work"]);
    assert!(
        shown.contains("anthropic") && !shown.contains("WORKSECRET"),
        "{shown}"
    );

    // Default moves, edit replaces, rm deletes.
    home.ok(&["token", "default", "anthropic/work"]);
    let list = home.list_json();
    assert!(
        list.iter()
            .any(|t| t["label"] == "work" && t["default"] == true)
    );
    home.add("anthropic", "work", "sk-ant-api03-ROTATED", &["--replace"]);
    assert_eq!(home.reveal("anthropic/work"), "sk-ant-api03-ROTATED");
    home.ok(&["token", "rm", "anthropic/personal"]);
    let list = home.list_json();
    assert_eq!(list.len(), 2);
    home.run(&["token", "show", "anthropic/personal"])
        .fails_with(5);
}

fn usage_errors_are_one_line_with_distinct_codes(home: TestHome) {
    // Before init: not found.
    home.run(&["token", "list"]).fails_with(5);
    home.init();
    // Second init: conflict.
    home.run(&["init"]).fails_with(6);
    // Unknown service: usage, naming the known ones.
    let line = home
        .run_with_stdin(&["token", "add", "openia"], Some(b"x"))
        .fails_with(2)
        .to_string();
    assert!(
        line.contains("anthropic") && line.contains("openai-codex"),
        "{line}"
    );
    // Duplicate label without --replace: conflict.
    home.add("openai", "default", "sk-proj-abc", &[]);
    home.run_with_stdin(&["token", "add", "openai"], Some(b"sk-proj-def"))
        .fails_with(6);
    // Empty token and non-JSON OAuth bundle: usage.
    home.run_with_stdin(&["token", "add", "gemini", "--label", "e"], Some(b"  \n"))
        .fails_with(2);
    home.run_with_stdin(&["token", "add", "openai-codex"], Some(b"not json"))
        .fails_with(2);
    // Unknown token: not found.
    home.run(&["token", "rm", "anthropic/nope"]).fails_with(5);
    // No passphrase source and no terminal: locked.
    let mut cmd = home.command(&["token", "show", "openai/default", "--reveal"]);
    cmd.env_remove("HANDOFF_PASSPHRASE_FILE");
    let out = crate::support::finish(cmd.spawn().unwrap(), std::time::Duration::from_secs(60));
    out.fails_with(3);
}

fn wrong_passphrase_exits_4_with_one_line(home: TestHome) {
    home.init();
    home.add("anthropic", "default", "sk-ant-xyz", &[]);
    let wrong = home.scratch("wrong");
    crate::support::write_private(&wrong, b"not the passphrase\n");
    let before = home.files();
    let mut cmd = home.command(&["token", "show", "anthropic/default", "--reveal"]);
    cmd.env("HANDOFF_PASSPHRASE_FILE", &wrong);
    let out = crate::support::finish(cmd.spawn().unwrap(), std::time::Duration::from_secs(60));
    let line = out.fails_with(4).to_string();
    assert!(line.contains("wrong passphrase"), "{line}");
    assert!(!out.stdout.contains("sk-ant"), "{out:?}");
    assert_eq!(home.files(), before, "a failed unlock changed the home");
    // Adding with a wrong passphrase adds nothing.
    let mut cmd = home.command(&["token", "add", "openai"]);
    cmd.env("HANDOFF_PASSPHRASE_FILE", &wrong)
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"sk-proj-123").unwrap();
    crate::support::finish(child, std::time::Duration::from_secs(60)).fails_with(4);
    assert_eq!(home.list_json().len(), 1);
}

crate::both_modes!(init_add_list_reveal_round_trip);

crate::both_modes!(usage_errors_are_one_line_with_distinct_codes);

crate::both_modes!(wrong_passphrase_exits_4_with_one_line);
