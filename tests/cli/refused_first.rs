//! What can be refused without the vault key is refused before the passphrase is asked for:
//! with no passphrase source at all (and a locked daemon), a label already taken, a device
//! that does not exist or is this one, and a token that does not exist fail with their own
//! line and exit code, never with "the vault is locked".

use std::time::Duration;

use crate::support::{Output, TestHome, finish, write_private};

fn refused_before_the_passphrase(home: TestHome) {
    home.init();
    home.add("anthropic", "work", "sk-ant-api03-FIRST", &[]);
    let token = home.scratch("token");
    write_private(&token, b"sk-ant-api03-SECOND");
    let token = token.to_str().unwrap().to_string();
    let without_passphrase = |args: &[&str]| -> Output {
        let mut cmd = home.command(args);
        cmd.env_remove("HANDOFF_PASSPHRASE_FILE");
        finish(cmd.spawn().unwrap(), Duration::from_secs(60))
    };
    let before = home.files();

    let out = without_passphrase(&[
        "token",
        "add",
        "anthropic",
        "--label",
        "work",
        "--from-file",
        &token,
    ]);
    let line = out.fails_with(6).to_string();
    assert!(line.contains("already exists"), "{line}");
    let out = without_passphrase(&["peer", "remove", "no-such-device"]);
    let line = out.fails_with(2).to_string();
    assert!(line.contains("no device named"), "{line}");
    let me = home.ok(&["--json", "status"]);
    let me: serde_json::Value = serde_json::from_str(&me).unwrap();
    let name = me["device"]["name"].as_str().unwrap().to_string();
    let out = without_passphrase(&["peer", "remove", &name]);
    let line = out.fails_with(2).to_string();
    assert!(line.contains("cannot remove itself"), "{line}");
    let out = without_passphrase(&["token", "show", "openai/nothing", "--reveal"]);
    out.fails_with(5);
    assert_eq!(home.files(), before, "a refused operation changed the home");

    // The same add with the key at hand still needs one: a fresh label asks for it.
    let out = without_passphrase(&[
        "token",
        "add",
        "anthropic",
        "--label",
        "new",
        "--from-file",
        &token,
    ]);
    out.fails_with(3);
}

crate::both_modes!(refused_before_the_passphrase);
