//! `Debug` output of every type that holds a secret shows none of it.
#![allow(clippy::unwrap_used)] // a panic is the failure report

use handoff::device::{Device, NewDevice};
use handoff::doc::Service;
use handoff::home::Home;
use handoff::store::Store;
use handoff::vault::{Dek, DeviceKeys, KdfParams, RecoveryCode, VaultSecret};

/// The forms a 32-byte secret could take in formatted output.
fn renderings(bytes: &[u8]) -> Vec<String> {
    vec![
        hex::encode(bytes),
        format!("{bytes:?}"),
        format!("{:?}", &bytes[..8])
            .trim_end_matches(']')
            .to_string(),
    ]
}

fn assert_hidden(debug: &str, secret: &[u8]) {
    for form in renderings(secret) {
        assert!(
            !debug.contains(&form),
            "Debug output reveals {form}: {debug}"
        );
    }
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let keys = DeviceKeys::generate().unwrap();
    let (identity, mailbox) = keys.secrets();
    assert_hidden(&format!("{keys:?}"), &identity[..]);
    assert_hidden(&format!("{keys:?}"), &mailbox[..]);

    let vault_key = VaultSecret::generate().unwrap();
    assert_hidden(&format!("{vault_key:?}"), &vault_key.to_bytes()[..]);

    let dek_bytes = [0x5a; 32];
    assert_hidden(&format!("{:?}", Dek::from_bytes(dek_bytes)), &dek_bytes);

    let code = RecoveryCode::generate().unwrap();
    assert!(!format!("{code:?}").contains(code.reveal().as_str()));

    // A whole device, its store record and an unlocked key, with a token inside.
    let dir = tempfile::tempdir().unwrap();
    let new = NewDevice {
        name: "d",
        passphrase: b"redaction passphrase",
        kdf: KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        },
    };
    let (mut device, code) = Device::init(Home::at(dir.path().join("h")), &new, "v").unwrap();
    let key = device.unlock(b"redaction passphrase").unwrap();
    let plaintext = b"sk-ant-api03-MUST-NOT-APPEAR";
    device
        .add_token(&key, Service::Anthropic, "work", plaintext, true, false)
        .unwrap();
    let (_, secret) = device.reveal(&key, "anthropic/work").unwrap();
    let record = Store::open(&dir.path().join("h/handoff.db"), false)
        .unwrap()
        .device()
        .unwrap();
    for debug in [
        format!("{device:?}"),
        format!("{key:?}"),
        format!("{secret:?}"),
        format!("{record:?}"),
        format!("{code:?}"),
    ] {
        assert!(!debug.contains("MUST-NOT-APPEAR"), "{debug}");
        assert_hidden(&debug, &record.identity_secret[..]);
        assert_hidden(&debug, &record.mailbox_secret[..]);
        assert!(!debug.contains(code.reveal().as_str()));
    }
}
