//! `spawn-policy allow|deny|list`: this device's own rules for who may ask it to start agents.
//! Default deny; every change takes the passphrase, even through an unlocked daemon; a file
//! written without it (by an agent of this user) is not built on.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::{TestHome, finish};

fn policy(home: &TestHome) -> serde_json::Value {
    serde_json::from_str(&home.ok(&["--json", "spawn-policy", "list"])).unwrap()
}

fn set_listed_and_changed_only_with_the_passphrase(home: TestHome) {
    home.init();
    if home.wants_daemon() {
        home.ok(&["unlock"]);
    }
    let root = home.scratch("projects");
    std::fs::create_dir_all(root.join("app")).unwrap();
    let root_arg = root.to_str().unwrap();
    assert_eq!(policy(&home)["rules"], serde_json::json!([]));

    let line = home
        .run(&["spawn-policy", "allow", "test-device"])
        .fails_with(2)
        .to_string();
    assert!(line.contains("--root"), "{line}");
    let out = home.run(&["spawn-policy", "allow", "nobody", "--root", root_arg]);
    assert!(out.fails_with(2).contains("no device named"), "{out:?}");
    let missing = home.scratch("missing");
    let out = home.run(&[
        "spawn-policy",
        "allow",
        "test-device",
        "--root",
        missing.to_str().unwrap(),
    ]);
    out.fails_with(2);
    assert!(!home.path().join("spawn-policy.json").exists());

    home.ok(&[
        "spawn-policy",
        "allow",
        "test-device",
        "--agent",
        "claude",
        "--root",
        root_arg,
        "--profile",
        "work",
    ]);
    let listed = policy(&home);
    let rule = &listed["rules"][0];
    assert_eq!(rule["name"], "test-device");
    assert_eq!(rule["agents"], serde_json::json!(["claude"]));
    let canonical = std::fs::canonicalize(&root).unwrap();
    assert_eq!(
        rule["roots"],
        serde_json::json!([canonical.to_str().unwrap()])
    );
    assert_eq!(rule["profiles"], serde_json::json!(["work"]));
    assert_eq!(rule["args"], false);
    let file = home.path().join("spawn-policy.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let human = home.ok(&["spawn-policy", "list"]);
    assert!(
        human.contains("claude") && human.contains("refused"),
        "{human}"
    );

    // Without the passphrase: refused, even though the daemon (in that mode) is unlocked.
    let before = std::fs::read(&file).unwrap();
    let mut cmd = home.command(&["spawn-policy", "deny", "test-device"]);
    cmd.env_remove("HANDOFF_PASSPHRASE_FILE");
    let out = finish(cmd.spawn().unwrap(), Duration::from_secs(60));
    out.fails_with(3);
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // A file changed without the passphrase (args turned on) does not verify: the next
    // change says so and starts from nothing, so the forged rule is gone.
    let text = String::from_utf8(before).unwrap();
    let forged = text.replace("\"args\": false", "\"args\": true");
    assert_ne!(forged, text);
    std::fs::write(&file, forged).unwrap();
    let said = home.ok(&["spawn-policy", "deny", "test-device"]);
    assert!(said.contains("did not verify"), "{said}");
    assert_eq!(policy(&home)["rules"], serde_json::json!([]));

    let out = home.run(&["spawn-policy", "deny", "test-device"]);
    assert!(out.fails_with(2).contains("no rule"), "{out:?}");
}
both_modes!(set_listed_and_changed_only_with_the_passphrase);
