//! Damaged or tampered state gives one clear line, exit 8, and changes nothing on disk.

use handoff::doc::{Token, VaultDoc, VaultState};
use handoff::store::Store;
use handoff::vault::DeviceKeys;
use handoff_protocol::dek_wrap::Recipient;

use crate::support::TestHome;

/// A home with two tokens, ready to be damaged (its daemon, if any, starts after the damage).
fn seeded(home: TestHome) -> TestHome {
    home.init_without_daemon();
    home.add("anthropic", "work", "sk-ant-api03-first", &[]);
    home.add("openai", "default", "sk-proj-second", &[]);
    home
}

/// Rewrites the document the way someone with write access to the database could: with the
/// device's own identity key, which the database holds.
fn tamper(home: &TestHome, edit: impl FnOnce(&mut VaultDoc, &VaultState, &DeviceKeys)) {
    let store = Store::open(&home.db(), false).unwrap();
    let device = store.device().unwrap();
    let keys = DeviceKeys::from_secrets(&device.identity_secret, &device.mailbox_secret);
    let (snapshot, changes) = store.doc_parts().unwrap();
    let mut doc = VaultDoc::load_parts(
        &snapshot,
        changes.iter().map(Vec::as_slice),
        &device.device_id,
        Some(&device.anchors),
    )
    .unwrap();
    let state = doc.state().unwrap();
    edit(&mut doc, &state, &keys);
    doc.commit("tamper", |m| keys.sign(m));
    store
        .append_change(&doc.take_unsaved().unwrap(), &[], 0)
        .unwrap();
}

/// Runs a reveal (through the daemon, on a daemon-mode home) that must fail with exit 8 and
/// leave every file as it was.
/// Writes `token` as its next version, signed by the device whose keys these are.
fn put_signed(doc: &mut VaultDoc, state: &VaultState, keys: &DeviceKeys, token: &Token) {
    let mut token = token.clone();
    token.version += 1;
    token.updated_by = keys.device_id().to_hex();
    let statement =
        handoff_protocol::binding::token_version_statement(&state.info.id, &token.signed_fields());
    doc.put_token(&token, &keys.sign(&statement)).unwrap();
}

fn reveal_fails_cleanly(home: &TestHome, query: &str) -> String {
    home.start_daemon_if_wanted();
    let before = home.files();
    let out = home.run(&["token", "show", query, "--reveal"]);
    let line = out.fails_with(8).to_string();
    assert!(!out.stdout.contains("sk-"), "{out:?}");
    assert_eq!(home.files(), before, "a failed command changed the home");
    line
}

fn tampered_ciphertext_is_refused(home: TestHome) {
    let home = seeded(home);
    tamper(&home, |doc, state, keys| {
        let mut token = state
            .live_tokens()
            .find(|t| t.label == "work")
            .unwrap()
            .clone();
        let ct = token.ciphertext.as_mut().unwrap();
        *ct.last_mut().unwrap() ^= 0x01;
        put_signed(doc, state, keys, &token);
    });
    let line = reveal_fails_cleanly(&home, "anthropic/work");
    assert!(
        line.contains("token ciphertext failed authentication"),
        "{line}"
    );
    // The untouched token still opens.
    assert_eq!(home.reveal("openai/default"), "sk-proj-second");
}

fn ciphertext_moved_to_another_token_is_refused(home: TestHome) {
    let home = seeded(home);
    tamper(&home, |doc, state, keys| {
        let work = state.live_tokens().find(|t| t.label == "work").unwrap();
        let mut other = state
            .live_tokens()
            .find(|t| t.label == "default")
            .unwrap()
            .clone();
        other.ciphertext = work.ciphertext.clone();
        put_signed(doc, state, keys, &other);
    });
    reveal_fails_cleanly(&home, "openai/default");
}

fn tampered_wrap_is_refused(home: TestHome) {
    let home = seeded(home);
    tamper(&home, |doc, state, _| {
        let epoch = state.current_epoch().unwrap();
        let (recipient, wrap) = epoch
            .wraps
            .iter()
            .find(|(r, _)| matches!(r, Recipient::Device(_)))
            .unwrap();
        let mut bad = wrap.clone();
        bad.wrap[40] ^= 0x80;
        doc.put_wrap(&epoch.id, recipient, &bad).unwrap();
    });
    let line = reveal_fails_cleanly(&home, "anthropic/work");
    assert!(line.contains("wrap"), "{line}");
}

fn argon2_parameters_above_the_caps_are_refused(first: TestHome) {
    let daemon = first.wants_daemon();
    let mut first = Some(first);
    for (column, value) in [
        ("kdf_m_kib", 4 * 1024 * 1024),
        ("kdf_t", 1000),
        ("kdf_p", 64),
    ] {
        let fresh = first.take().unwrap_or_else(|| {
            if daemon {
                TestHome::with_daemon()
            } else {
                TestHome::new()
            }
        });
        let home = seeded(fresh);
        let conn = rusqlite::Connection::open(home.db()).unwrap();
        conn.execute(&format!("UPDATE device SET {column} = ?1"), [value])
            .unwrap();
        drop(conn);
        let line = reveal_fails_cleanly(&home, "anthropic/work");
        assert!(line.contains("out of bounds"), "{column}: {line}");
    }
}

fn corrupt_database_header_is_refused(home: TestHome) {
    let home = seeded(home);
    let mut bytes = std::fs::read(home.db()).unwrap();
    bytes[..100].fill(0xA5);
    std::fs::write(home.db(), &bytes).unwrap();
    let before = home.files();
    daemon_refuses_to_start(&home);
    for args in [
        &["token", "list"][..],
        &["status"],
        &["token", "show", "anthropic/work", "--reveal"],
    ] {
        let line = home.run(args).fails_with(8).to_string();
        assert!(line.contains("damaged"), "{line}");
    }
    assert_eq!(home.files(), before);
}

fn truncated_database_is_refused(home: TestHome) {
    let home = seeded(home);
    let bytes = std::fs::read(home.db()).unwrap();
    std::fs::write(home.db(), &bytes[..bytes.len() / 2]).unwrap();
    let before = home.files();
    daemon_refuses_to_start(&home);
    let line = home.run(&["token", "list"]).fails_with(8).to_string();
    assert!(line.contains("damaged"), "{line}");
    home.run_with_stdin(&["token", "add", "gemini"], Some(b"AIza-x"))
        .fails_with(8);
    assert_eq!(home.files(), before);
}

fn corrupt_document_bytes_are_refused(home: TestHome) {
    let home = seeded(home);
    // Flip a byte inside the stored document snapshot (its checksum no longer matches).
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    let mut snapshot: Vec<u8> = conn
        .query_row("SELECT bytes FROM doc_snapshot", [], |r| r.get(0))
        .unwrap();
    let middle = snapshot.len() / 2;
    snapshot[middle] ^= 0xFF;
    conn.execute("UPDATE doc_snapshot SET bytes = ?1", [&snapshot])
        .unwrap();
    drop(conn);
    let before = home.files();
    daemon_refuses_to_start(&home);
    let line = home.run(&["token", "list"]).fails_with(8).to_string();
    assert!(
        line.contains("damaged") || line.contains("document"),
        "{line}"
    );
    assert_eq!(home.files(), before);
}

crate::both_modes!(tampered_ciphertext_is_refused);

crate::both_modes!(ciphertext_moved_to_another_token_is_refused);

crate::both_modes!(tampered_wrap_is_refused);

crate::both_modes!(corrupt_database_header_is_refused);

crate::both_modes!(truncated_database_is_refused);

crate::both_modes!(corrupt_document_bytes_are_refused);

crate::both_modes!(argon2_parameters_above_the_caps_are_refused);

/// On a daemon-mode home, `daemon start` on a damaged store fails with the store's own exit code
/// and leaves no daemon behind.
fn daemon_refuses_to_start(home: &TestHome) {
    if home.wants_daemon() {
        let line = home.run(&["daemon", "start"]).fails_with(8).to_string();
        assert!(
            line.contains("damaged") || line.contains("document"),
            "{line}"
        );
        assert!(!home.path().join("daemon.sock").exists());
    }
}
