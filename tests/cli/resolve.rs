//! `token resolve` and `token history`: two daemons rename one token while they cannot reach
//! each other; when they meet, both show the conflict; a resolve on one clears it on both and
//! keeps the chosen label; the other version stays in the history. Refusals change nothing.

use serde_json::Value;

use crate::peers::{admin, eventually, pair};
use crate::support::{LOOPBACK_NET, TestHome, write_private};

/// Mesh settings of a daemon that dials nobody (and that nobody knows the port of).
const NO_DIAL: &str =
    "[net]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\ndial_known = false\n";

fn json(home: &TestHome, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&home.ok(&all)).unwrap()
}

fn conflicted(home: &TestHome, id: &str) -> bool {
    home.list_json()
        .iter()
        .any(|t| t["id"] == id && t["conflict"] == true)
}

fn label(home: &TestHome, id: &str) -> Option<String> {
    home.list_json()
        .iter()
        .find(|t| t["id"] == id)
        .map(|t| t["label"].as_str().unwrap().to_string())
}

#[test]
fn a_conflict_from_a_partition_is_shown_on_both_and_resolved_once_for_all() {
    let laptop = admin();
    let desktop = TestHome::with_daemon();
    pair(&laptop, &desktop, "desktop");
    let id = laptop.add("anthropic", "work", "sk-ant-api03-SHARED", &[]);
    eventually("the token on the desktop", || {
        label(&desktop, &id).is_some()
    });

    // The partition: the desktop's daemon restarts on a port the laptop does not know and
    // dials nobody; each daemon renames the token.
    let config = desktop.path().join("config.toml");
    desktop.ok(&["daemon", "stop"]);
    write_private(&config, NO_DIAL.as_bytes());
    desktop.ok(&["daemon", "start"]);
    desktop.ok(&["token", "rename", &id[..8], "desk-name"]);
    laptop.ok(&["token", "rename", &id[..8], "laptop-name"]);
    assert!(!conflicted(&laptop, &id), "no conflict before they meet");
    assert!(!conflicted(&desktop, &id), "no conflict before they meet");
    assert_eq!(label(&laptop, &id).as_deref(), Some("laptop-name"));
    // They meet: the desktop dials the laptop's address again.
    desktop.ok(&["daemon", "stop"]);
    write_private(&config, LOOPBACK_NET.as_bytes());
    desktop.ok(&["daemon", "start"]);
    eventually("the conflict on both", || {
        conflicted(&laptop, &id) && conflicted(&desktop, &id)
    });
    let list = desktop.ok(&["token", "list"]);
    assert!(list.contains("(conflict)"), "{list}");
    assert!(
        list.contains("token resolve"),
        "a hint names the command: {list}"
    );

    // Both list the same two versions, with the same codes, and no secret.
    let on_laptop = json(&laptop, &["token", "resolve", &id[..8]]);
    let on_desktop = json(&desktop, &["token", "resolve", &id[..8]]);
    assert_eq!(on_laptop["versions"], on_desktop["versions"]);
    let versions = on_laptop["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{on_laptop}");
    let mut labels: Vec<&str> = versions
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    labels.sort_unstable();
    assert_eq!(labels, ["desk-name", "laptop-name"]);
    let writers: Vec<&str> = versions
        .iter()
        .map(|v| v["written_by"]["name"].as_str().unwrap())
        .collect();
    assert!(writers.contains(&"desktop"), "{writers:?}");
    let text = laptop.ok(&["token", "resolve", &id[..8]]);
    assert!(!text.contains("SHARED"), "resolve shows no secret: {text}");
    assert!(
        text.contains("desk-name") && text.contains("laptop-name"),
        "{text}"
    );
    let desk = versions.iter().find(|v| v["label"] == "desk-name").unwrap();
    let code = desk["code"].as_str().unwrap();

    // With --reveal (the passphrase), each version's secret.
    let revealed = json(&laptop, &["token", "resolve", &id[..8], "--reveal"]);
    for v in revealed["versions"].as_array().unwrap() {
        assert_eq!(v["secret"], "sk-ant-api03-SHARED");
    }

    // Refusals: a version that is not there, a token that is not conflicted.
    let before = laptop.files();
    let said = laptop
        .run(&["token", "resolve", &id[..8], "--keep", "ffffffff"])
        .fails_with(2)
        .to_string();
    assert!(said.contains(code), "the refusal lists the codes: {said}");
    // A place in the list is no name for a version (the list can change under it).
    laptop
        .run(&["token", "resolve", &id[..8], "--keep", "1"])
        .fails_with(2);
    assert_eq!(laptop.files(), before, "a refused resolve changed the home");

    // Keep the desktop's label, from the laptop, by naming the device that wrote it.
    let kept = json(
        &laptop,
        &["token", "resolve", &id[..8], "--keep", "desktop"],
    );
    assert_eq!(kept["kept"], code, "{kept}");
    assert_eq!(kept["conflict"], false, "{kept}");
    assert!(!conflicted(&laptop, &id));
    assert_eq!(label(&laptop, &id).as_deref(), Some("desk-name"));
    eventually("the resolution on the desktop", || {
        !conflicted(&desktop, &id) && label(&desktop, &id).as_deref() == Some("desk-name")
    });
    assert_eq!(desktop.reveal("anthropic/desk-name"), "sk-ant-api03-SHARED");
    let again = desktop.run(&["token", "resolve", &id[..8], "--keep", "1"]);
    let said = again.fails_with(2);
    assert!(said.contains("no conflict"), "{said}");

    // History keeps both, the one set aside included, on either device.
    for home in [&laptop, &desktop] {
        let history = json(home, &["token", "history", &id[..8]]);
        let labels: Vec<&str> = history["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels.first(), Some(&"work"), "oldest first: {labels:?}");
        assert!(labels.contains(&"laptop-name"), "{labels:?}");
        assert_eq!(labels.last(), Some(&"desk-name"), "{labels:?}");
        assert_eq!(labels.len(), 4, "{labels:?}");
    }
    // With the passphrase, each version's secret: the same one, kept through each rename.
    let revealed = json(&laptop, &["token", "history", &id[..8], "--reveal"]);
    for v in revealed["versions"].as_array().unwrap() {
        assert_eq!(v["secret"], "sk-ant-api03-SHARED", "{v}");
    }
    // Both audits name the resolve.
    let audit = json(&desktop, &["audit"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.resolve"),
        "{audit}"
    );
}

#[test]
fn a_token_without_conflict_lists_one_version_and_refuses_a_resolve() {
    let home = TestHome::new();
    home.init();
    let id = home.add("openai", "solo", "sk-proj-SOLO", &[]);
    let listed = json(&home, &["token", "resolve", "openai/solo"]);
    assert_eq!(listed["conflict"], false);
    assert_eq!(listed["versions"].as_array().unwrap().len(), 1);
    let text = home.ok(&["token", "resolve", "openai/solo"]);
    assert!(text.contains("no conflict"), "{text}");
    let before = home.files();
    home.run(&["token", "resolve", &id[..8], "--keep", "1"])
        .fails_with(2);
    home.run(&["token", "resolve", "openai/none", "--keep", "1"])
        .fails_with(5);
    home.run(&["token", "resolve", &id[..8], "--keep", "1", "--reveal"])
        .fails_with(2);
    assert_eq!(home.files(), before);
    home.ok(&["token", "rename", "openai/solo", "renamed"]);
    let history = json(&home, &["token", "history", &id[..8]]);
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["label"], "solo");
    assert_eq!(versions[1]["label"], "renamed");
    assert!(versions[0]["version"].as_u64() < versions[1]["version"].as_u64());
}
