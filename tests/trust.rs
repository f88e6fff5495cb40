//! Crafted documents cannot make an outsider a member, inject a DEK, or move the vault's trust
//! anchors. These run the library directly: the attacker writes Automerge changes by hand.
#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ReadDoc, ScalarValue};
use handoff::device::{Device, DeviceError, NewDevice, expose, sign_member};
use handoff::doc::schema::{Epoch, Member, Role, Service};
use handoff::doc::{DocError, VaultDoc, actor_for};
use handoff::home::Home;
use handoff::vault::epoch::{TokenBinding, wrap_statement};
use handoff::vault::{Dek, DeviceKeys, KdfParams, SignedWrap, VaultSecret, random_array};
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DeviceId, EpochId};

const PASS: &[u8] = b"trust test passphrase";

fn device(dir: &tempfile::TempDir) -> Device {
    let new = NewDevice {
        name: "victim",
        passphrase: PASS,
        kdf: KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        },
    };
    Device::init(Home::at(dir.path().join("home")), &new, "v")
        .unwrap()
        .0
}

/// Writes, as `actor`, a self-signed admin record for the attacker and a newer epoch whose DEK
/// (known to the attacker) is wrapped to the victim and signed by the attacker.
fn forge(export: &[u8], actor: &DeviceId, victim: DeviceId) -> (Vec<u8>, Dek, EpochId) {
    let attacker = DeviceKeys::generate().unwrap();
    let attacker_vault_key = VaultSecret::generate().unwrap();
    let me = attacker.device_id();
    let mut doc = VaultDoc::load_trusted(export, actor).unwrap();
    let state = doc.state().unwrap();
    let vault = state.info.id;
    let mut fake = Member::new(
        &attacker,
        attacker_vault_key.public(),
        "attacker",
        Role::Admin,
        &me.to_hex(),
        0,
    );
    sign_member(&mut fake, &vault, &me.to_hex(), |m| attacker.sign(m));
    doc.put_member(&fake).unwrap();

    let dek = Dek::generate().unwrap();
    let epoch_id = EpochId::from_bytes(random_array().unwrap());
    let to = Recipient::Device(victim);
    let victim_pub = state.members[&victim].vault_pub;
    let wrap = dek
        .wrap(&vault, &epoch_id, &to, &victim_pub)
        .unwrap()
        .encode();
    let sig = attacker
        .sign(&wrap_statement(&vault, &epoch_id, 99, &to, &wrap))
        .to_vec();
    let mut wraps = BTreeMap::new();
    wraps.insert(
        to,
        SignedWrap {
            wrap,
            sig,
            signer: me.to_hex(),
        },
    );
    let epoch = Epoch {
        id: epoch_id,
        generation: 99,
        created_by: me.to_hex(),
        created_at: 0,
        wraps,
        untrusted: Vec::new(),
        current_eligible: true,
    };
    doc.put_epoch(&epoch).unwrap();
    doc.commit("forged", |m| attacker.sign(m));
    (doc.save(), dek, epoch_id)
}

#[test]
fn changes_by_an_outsider_actor_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut victim = device(&dir);
    let export = victim.export();
    let outsider = DeviceKeys::generate().unwrap().device_id();
    let (forged, _, _) = forge(&export, &outsider, victim.device_id());
    let before = victim.export();
    let err = victim.import(&forged).unwrap_err();
    assert!(
        matches!(err, DeviceError::Doc(DocError::ForeignAuthor { .. })),
        "{err}"
    );
    assert_eq!(
        victim.export(),
        before,
        "a refused import changed the document"
    );
}

#[test]
fn a_forged_member_and_epoch_under_a_members_actor_id_are_refused_and_would_count_for_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut victim = device(&dir);
    let export = victim.export();
    // Actor ids are claims: the attacker writes as the victim's own actor. The change is not
    // vouched for by the victim's key, so ingest refuses it whole.
    let (forged, attacker_dek, forged_epoch) =
        forge(&export, &victim.device_id(), victim.device_id());
    let err = victim.import(&forged).unwrap_err();
    assert!(
        matches!(err, DeviceError::Doc(DocError::Unauthorized(_))),
        "{err}"
    );
    assert_eq!(
        victim.export(),
        export,
        "a refused import changed the document"
    );

    // Read as a document on its own, the forged member and epoch count for nothing either.
    let state = VaultDoc::load_trusted(&forged, &victim.device_id())
        .unwrap()
        .state()
        .unwrap();
    assert_eq!(
        state.unverified.len(),
        1,
        "the self-signed outsider is not a member"
    );
    assert_eq!(state.members.len(), 1);
    let current = state.current_epoch().unwrap();
    assert_eq!(
        current.generation, 1,
        "the forged epoch must not become current"
    );
    assert!(state.epochs[&forged_epoch].wraps.is_empty());

    // New tokens are still sealed under the real epoch, which the attacker's DEK cannot open.
    let key = victim.unlock(PASS).unwrap();
    victim
        .add_token(
            &key,
            Service::Openai,
            "new",
            b"sk-proj-AFTER-ATTACK",
            true,
            false,
        )
        .unwrap();
    let (token, secret) = victim.reveal(&key, "openai/new").unwrap();
    assert_eq!(expose(&secret), b"sk-proj-AFTER-ATTACK");
    assert_ne!(token.epoch, forged_epoch);
    let vault = state.info.id;
    let binding = TokenBinding {
        vault: &vault,
        token: &token.id,
        epoch: &token.epoch,
        service: "openai",
    };
    assert!(
        attacker_dek
            .open_token(binding, token.ciphertext.as_deref().unwrap())
            .is_err()
    );
}

#[test]
fn moving_the_recovery_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut victim = device(&dir);
    let export = victim.export();
    let mut doc = AutoCommit::load(&export)
        .unwrap()
        .with_actor(actor_for(&victim.device_id()));
    let (_, vault) = doc.get(automerge::ROOT, "vault").unwrap().unwrap();
    let attacker_recovery = VaultSecret::generate().unwrap().public();
    doc.put(
        &vault,
        "recovery_pub",
        ScalarValue::Bytes(attacker_recovery.to_vec()),
    )
    .unwrap();
    doc.commit();
    let before = victim.export();
    let err = victim.import(&doc.save()).unwrap_err();
    assert!(
        matches!(err, DeviceError::Doc(DocError::AnchorsMoved)),
        "{err}"
    );
    assert_eq!(victim.export(), before);
}

/// Creates a vault with the real recovery code (so `recover` can be tried) and one token.
fn vault_with_code(dir: &tempfile::TempDir) -> (Device, handoff::vault::RecoveryCode) {
    let new = NewDevice {
        name: "founder",
        passphrase: PASS,
        kdf: KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        },
    };
    let (mut device, code) = Device::init(Home::at(dir.path().join("founder")), &new, "v").unwrap();
    let key = device.unlock(PASS).unwrap();
    device
        .add_token(
            &key,
            Service::Anthropic,
            "work",
            b"sk-ant-REAL",
            true,
            false,
        )
        .unwrap();
    (device, code)
}

fn try_recover(
    dir: &tempfile::TempDir,
    export: &[u8],
    code: &handoff::vault::RecoveryCode,
) -> Result<Device, DeviceError> {
    let new = NewDevice {
        name: "new",
        passphrase: PASS,
        kdf: KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        },
    };
    Device::recover(Home::at(dir.path().join("recovered")), &new, export, code)
}

/// Rewrites `vault.<field>` as the given actor, the way a crafted backup would.
fn rewrite_vault_field(
    export: &[u8],
    actor: &DeviceId,
    field: &str,
    value: ScalarValue,
) -> Vec<u8> {
    let mut doc = AutoCommit::load(export)
        .unwrap()
        .with_actor(actor_for(actor));
    let (_, vault) = doc.get(automerge::ROOT, "vault").unwrap().unwrap();
    doc.put(&vault, field, value).unwrap();
    doc.commit();
    doc.save()
}

#[test]
fn a_crafted_backup_cannot_name_another_founder() {
    let dir = tempfile::tempdir().unwrap();
    let (mut founder, code) = vault_with_code(&dir);
    let export = founder.export();
    let (forged, _, _) = forge(&export, &founder.device_id(), founder.device_id());
    let attacker = handoff::doc::VaultDoc::load_trusted(&forged, &founder.device_id())
        .unwrap()
        .state()
        .unwrap()
        .unverified[0];
    let crafted = rewrite_vault_field(
        &forged,
        &founder.device_id(),
        "founder",
        ScalarValue::Str(attacker.to_hex().into()),
    );
    let err = try_recover(&dir, &crafted, &code).unwrap_err();
    assert!(
        matches!(err, DeviceError::Doc(DocError::UnvouchedFounder)),
        "{err}"
    );

    // Replacing the recovery signing key too (and re-signing genesis with it) is caught because
    // the code derives the real key.
    let fake_recovery = DeviceKeys::generate().unwrap();
    let crafted = rewrite_vault_field(
        &crafted,
        &founder.device_id(),
        "recovery_sign_pub",
        ScalarValue::Bytes(fake_recovery.identity_public().to_vec()),
    );
    let vault = founder.state().unwrap().info.id;
    let attacker_identity: [u8; 32] = {
        let doc = AutoCommit::load(&forged).unwrap();
        let (_, members) = doc.get(automerge::ROOT, "members").unwrap().unwrap();
        let (_, record) = doc
            .get(&members, attacker.to_hex().as_str())
            .unwrap()
            .unwrap();
        let (value, _) = doc.get(&record, "identity_pub").unwrap().unwrap();
        value.as_bytes().unwrap().try_into().unwrap()
    };
    let genesis = fake_recovery.sign(&handoff_protocol::binding::genesis_statement(
        &vault,
        &attacker,
        &attacker_identity,
    ));
    let crafted = rewrite_vault_field(
        &crafted,
        &founder.device_id(),
        "genesis_sig",
        ScalarValue::Bytes(genesis.to_vec()),
    );
    // The crafted document is self-consistent...
    assert!(handoff::doc::VaultDoc::load_trusted(&crafted, &founder.device_id()).is_ok());
    // ...but not with the keys the recovery code derives.
    let err = try_recover(&dir, &crafted, &code).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::Vault(handoff::vault::VaultError::WrongRecoveryCode)
        ),
        "{err}"
    );
    assert!(!dir.path().join("recovered/handoff.db").exists());
}

#[test]
fn an_import_that_breaks_the_current_epoch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut victim, _) = vault_with_code(&dir);
    let export = victim.export();
    let state = victim.state().unwrap();
    let epoch = state.current_epoch().unwrap().id;
    // As the victim's own actor: bump the current epoch's generation, breaking every wrap
    // signature of it.
    let mut doc = AutoCommit::load(&export)
        .unwrap()
        .with_actor(actor_for(&victim.device_id()));
    let (_, epochs) = doc.get(automerge::ROOT, "epochs").unwrap().unwrap();
    let (_, record) = doc.get(&epochs, epoch.to_hex().as_str()).unwrap().unwrap();
    doc.put(&record, "generation", 2u64).unwrap();
    doc.commit();
    let before = victim.export();
    let err = victim.import(&doc.save()).unwrap_err();
    assert!(
        matches!(err, DeviceError::Doc(DocError::Regression(_))),
        "{err}"
    );
    assert_eq!(victim.export(), before);
    let key = victim.unlock(PASS).unwrap();
    let (_, secret) = victim.reveal(&key, "anthropic/work").unwrap();
    assert_eq!(expose(&secret), b"sk-ant-REAL");
}

/// A removed admin's key still signs wraps the reader trusts (they open older epochs), but a
/// wrap it signs cannot make an epoch current. Rewriting every wrap of the current epoch under
/// such a signer would strip the epoch of its standing and move the vault back to a key the
/// removed admin holds: refused, whoever's actor writes it.
#[test]
fn wraps_rewritten_under_a_removed_admins_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut victim = device(&dir);
    let key = victim.unlock(PASS).unwrap();
    let attacker = DeviceKeys::generate().unwrap();
    let joiner = handoff::device::Joiner {
        name: "soon-removed".into(),
        role: Role::Admin,
        identity_pub: attacker.identity_public(),
        mailbox_pub: attacker.mailbox_public(),
        vault_pub: VaultSecret::generate().unwrap().public(),
    };
    victim.admit(&key, &joiner).unwrap();
    let first = victim.state().unwrap().current_epoch().unwrap().id;
    victim
        .remove_member(&key, &attacker.device_id().to_hex())
        .unwrap();
    let state = victim.state().unwrap();
    let current = state.current_epoch().unwrap().clone();
    assert_ne!(current.id, first);

    let mut doc = VaultDoc::load_trusted(&victim.export(), &victim.device_id()).unwrap();
    for (recipient, wrap) in &current.wraps {
        let statement = wrap_statement(
            &state.info.id,
            &current.id,
            current.generation,
            recipient,
            &wrap.wrap,
        );
        let rewritten = SignedWrap {
            wrap: wrap.wrap.clone(),
            sig: attacker.sign(&statement).to_vec(),
            signer: attacker.device_id().to_hex(),
        };
        doc.put_wrap(&current.id, recipient, &rewritten).unwrap();
    }
    doc.commit("rewrap", |m| attacker.sign(m));
    let before = victim.export();
    let err = victim.import(&doc.save()).unwrap_err();
    assert!(
        matches!(err, DeviceError::Doc(DocError::Regression(_))),
        "{err}"
    );
    assert_eq!(victim.export(), before);
    assert_eq!(
        victim.state().unwrap().current_epoch().unwrap().id,
        current.id
    );
}
