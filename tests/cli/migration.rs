//! A vault written before token versions, defaults and audit entries were signed (schema 1,
//! `tests/data/legacy-v1`, made by the previous release) opens with every token shown as
//! unverified; the first unlock of its admin re-signs every record it can vouch for, and no
//! token, default or deletion is lost. Directly and through the daemon.

use std::os::unix::fs::PermissionsExt;

use automerge::{AutoCommit, ReadDoc};

use crate::support::TestHome;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/legacy-v1");

/// What the fixture's README says it holds: (service/label, secret, default), sorted.
const TOKENS: [(&str, &str, bool); 4] = [
    ("anthropic/home", "sk-ant-api03-LEGACY-HOME", true),
    ("anthropic/work", "sk-ant-api03-LEGACY-WORK-2", false),
    (
        "openai-codex/sub",
        r#"{"tokens":{"refresh_token":"rt-LEGACY","access_token":"at-LEGACY"}}"#,
        true,
    ),
    ("openai/primary", "sk-proj-LEGACY-OPENAI", true),
];

/// A home holding a copy of the fixture's store, private as handoff keeps its files.
fn legacy_home() -> TestHome {
    let home = TestHome::with_passphrase("legacy fixture passphrase");
    std::fs::create_dir(home.path()).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(format!("{FIXTURE}/handoff.db"), home.db()).unwrap();
    std::fs::set_permissions(home.db(), std::fs::Permissions::from_mode(0o600)).unwrap();
    home.configure_loopback();
    home
}

/// (service/label, default, verified, writer's name) of every live token, sorted.
fn listed(home: &TestHome) -> Vec<(String, bool, bool, String)> {
    let mut list: Vec<_> = home
        .list_json()
        .iter()
        .map(|t| {
            (
                format!(
                    "{}/{}",
                    t["service"].as_str().unwrap(),
                    t["label"].as_str().unwrap()
                ),
                t["default"].as_bool().unwrap(),
                t["updated_by"]["verified"].as_bool().unwrap(),
                t["updated_by"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    list.sort();
    list
}

fn schema_of(home: &TestHome) -> String {
    let export = home.export("after.automerge");
    let doc = AutoCommit::load(&std::fs::read(export).unwrap()).unwrap();
    doc.get(automerge::ROOT, "schema")
        .unwrap()
        .unwrap()
        .0
        .to_string()
}

fn migrates(daemon: bool) {
    let home = legacy_home();
    // Before any unlock: every token is there, shown as unverified.
    let before = listed(&home);
    let expected: Vec<(String, bool)> =
        TOKENS.iter().map(|(q, _, d)| (q.to_string(), *d)).collect();
    assert_eq!(
        before
            .iter()
            .map(|(q, d, _, _)| (q.clone(), *d))
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        before.iter().all(|(_, _, verified, _)| !verified),
        "{before:?}"
    );
    let human = home.ok(&["token", "list"]);
    assert_eq!(human.matches("(unverified)").count(), 4, "{human}");

    if daemon {
        home.ok(&["daemon", "start"]);
        home.ok(&["unlock"]);
    }
    // The first unlocked command (or the daemon's unlock) re-signs, then runs.
    for (query, secret, _) in TOKENS {
        assert_eq!(home.reveal(query), secret, "{query}");
    }
    let after = listed(&home);
    assert_eq!(
        after
            .iter()
            .map(|(q, d, _, _)| (q.clone(), *d))
            .collect::<Vec<_>>(),
        expected,
        "a token or a default was lost"
    );
    for (query, _, verified, by) in &after {
        assert!(verified, "{query} is still unverified: {after:?}");
        assert_eq!(by, "laptop", "{query}");
    }
    assert!(!home.ok(&["token", "list"]).contains("unverified"));
    // The deleted token stays deleted; the document says it is the current schema.
    home.run(&["token", "show", "gemini/old"]).fails_with(5);
    assert_eq!(schema_of(&home), "2");
    // And the vault goes on working: a new token, an edit.
    home.add("gemini", "new", "AIza-AFTER-MIGRATION", &[]);
    home.add("anthropic", "work", "sk-ant-api03-AFTER", &["--replace"]);
    assert_eq!(home.reveal("anthropic/work"), "sk-ant-api03-AFTER");
    if daemon {
        home.ok(&["daemon", "stop"]);
    }
}

#[test]
fn a_schema_1_vault_is_re_signed_by_its_admin_directly() {
    migrates(false);
}

#[test]
fn a_schema_1_vault_is_re_signed_by_its_admin_through_the_daemon() {
    migrates(true);
}

/// The previous release's export imports into nothing new (it is another vault), but loads:
/// the library reads a schema-1 document and shows its tokens unverified.
#[test]
fn a_schema_1_export_reads_as_unverified() {
    let bytes = std::fs::read(format!("{FIXTURE}/vault.automerge")).unwrap();
    let me = handoff_protocol::DeviceId::from_bytes([9; 16]);
    let state = handoff::doc::VaultDoc::load_trusted(&bytes, &me)
        .unwrap()
        .state()
        .unwrap();
    assert_eq!(state.schema, 1);
    assert_eq!(state.live_tokens().count(), 4);
    assert!(state.tokens.values().all(|t| !t.verified));
    assert!(state.audit.iter().all(|e| !e.verified));
}
