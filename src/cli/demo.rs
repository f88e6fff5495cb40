//! `handoff demo`: the most complete flow that exists, end to end, on temporary homes.
//!
//! Today that is one device: create a vault, store a token, list it, reveal it, export the
//! document, lose the device, recover on a fresh home with the recovery code and read the token
//! there. Every step runs the real code with the real key-derivation parameters; the homes are
//! removed afterwards. It grows into two devices and a relay as the mesh lands.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use super::{CliError, print_json};
use crate::device::{Device, NewDevice, expose};
use crate::doc::Service;
use crate::home::Home;
use crate::vault::{KdfParams, random_array};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn run(json: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!("handoff-demo-{}", hex(&random_array::<8>()?)));
    std::fs::create_dir(&root).map_err(|source| CliError::File {
        what: "cannot create",
        path: root.clone(),
        source,
    })?;
    let dir = TempDir(root);
    let step = |text: &str| {
        if !json {
            println!("[{:>6.2}s] {text}", started.elapsed().as_secs_f64());
        }
    };

    let passphrase = hex(&random_array::<16>()?);
    let sample = format!("sk-ant-demo-{}", hex(&random_array::<12>()?));
    let laptop = Home::at(dir.0.join("laptop"));
    let new = NewDevice {
        name: "laptop",
        passphrase: passphrase.as_bytes(),
        kdf: KdfParams::DEFAULT,
    };
    let (mut device, code) = Device::init(laptop, &new, "demo")?;
    step(&format!(
        "laptop: created vault 'demo' as {}",
        device.device_id()
    ));

    let key = device.unlock(passphrase.as_bytes())?;
    step("laptop: unlocked the vault key with the passphrase (Argon2id, 64 MiB, t=3, p=4)");
    let id = device.add_token(
        &key,
        Service::Anthropic,
        "work",
        sample.as_bytes(),
        true,
        false,
    )?;
    step(&format!(
        "laptop: stored anthropic/work ({}), sealed with XChaCha20-Poly1305",
        &id.to_hex()[..8]
    ));

    let (token, secret) = device.reveal(&key, "anthropic/work")?;
    let round_trip = expose(&secret) == sample.as_bytes();
    step(&format!(
        "laptop: revealed {}/{}: matches what was stored: {round_trip}",
        token.service, token.label
    ));

    let export = device.export();
    let on_disk = std::fs::read(device.home().db_path()).unwrap_or_default();
    let leaked = on_disk
        .windows(sample.len())
        .any(|w| w == sample.as_bytes())
        || export.windows(sample.len()).any(|w| w == sample.as_bytes());
    step(&format!(
        "laptop: exported the document ({} bytes); plaintext token in database or export: {leaked}",
        export.len()
    ));
    drop(key);
    drop(device);
    std::fs::remove_dir_all(dir.0.join("laptop")).ok();
    step("laptop: lost (its home is deleted)");

    let desktop = Home::at(dir.0.join("desktop"));
    let new = NewDevice {
        name: "desktop",
        passphrase: passphrase.as_bytes(),
        kdf: KdfParams::DEFAULT,
    };
    let recovered = Device::recover(desktop, &new, &export, &code)?;
    step(&format!(
        "desktop: recovered the vault from the export and the recovery code as {}",
        recovered.device_id()
    ));
    let key = recovered.unlock(passphrase.as_bytes())?;
    let (_, secret) = recovered.reveal(&key, "anthropic/work")?;
    let recovered_ok = expose(&secret) == sample.as_bytes();
    step(&format!(
        "desktop: revealed anthropic/work: matches: {recovered_ok}"
    ));

    let ok = round_trip && recovered_ok && !leaked;
    if json {
        print_json(
            &json!({"ok": ok, "round_trip": round_trip, "recovered": recovered_ok, "plaintext_on_disk": leaked}),
        );
    } else {
        println!("{}", if ok { "demo ok" } else { "demo FAILED" });
    }
    if ok {
        Ok(())
    } else {
        Err(CliError::Internal("the demo's checks failed".into()))
    }
}
