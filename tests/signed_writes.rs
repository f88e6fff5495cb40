//! Who may write what (DESIGN §3): token versions, defaults and audit entries are signed by
//! their writer, under its own Automerge actor, and only a role that allows the write counts.
//! Each crafted change below is refused whole by every member, whether it arrives as an
//! `import` or in a sync message; a `remote` device may rename itself and sign its own audit
//! entries, and nothing else. The attacker writes Automerge changes by hand on a copy of the
//! document, as a hostile peer with a modified client would.

#![allow(clippy::unwrap_used)] // a panic is the failure report

mod common;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ReadDoc};
use handoff::device::{Device, DeviceError, SyncRefusal, Unlocked};
use handoff::doc::{
    DefaultChoice, DocError, Role, Service, Token, VaultDoc, VaultState, actor_for,
};
use handoff::home::Home;
use handoff::vault::DeviceKeys;
use handoff::vault::random_array;
use handoff_protocol::binding::token_version_statement;
use handoff_protocol::{DeviceId, TokenId};

/// An admin (`a`), a member (`b`) and a remote device (`phone`) of one vault, all holding the
/// same document with two tokens, and the keys of `b` and `phone` (an attacker holds its own
/// device's keys).
struct Vault {
    a: Device,
    _a_key: Unlocked,
    a_home: Home,
    b: Device,
    b_home: Home,
    phone: Device,
    phone_home: Home,
    _dir: tempfile::TempDir,
}

fn keys_of(home: &Home) -> DeviceKeys {
    let store = handoff::store::Store::open(&home.root().join("handoff.db"), false).unwrap();
    let record = store.device().unwrap();
    DeviceKeys::from_secrets(&record.identity_secret, &record.mailbox_secret)
}

fn vault() -> Vault {
    let dir = tempfile::tempdir().unwrap();
    let a_home = Home::at(dir.path().join("a"));
    let (mut a, a_key) = common::founder(a_home.clone(), "laptop");
    for (service, label, secret) in [
        (Service::Anthropic, "work", b"sk-ant-WORK".as_slice()),
        (Service::Openai, "main", b"sk-proj-MAIN".as_slice()),
    ] {
        a.add_token(&a_key, service, label, secret, false, false)
            .unwrap();
    }
    let b_home = Home::at(dir.path().join("b"));
    let (b, _) = common::join(b_home.clone(), "desktop", &mut a, &a_key, Role::Member);
    let phone_home = Home::at(dir.path().join("phone"));
    let (mut phone, _) = common::join(phone_home.clone(), "phone", &mut a, &a_key, Role::Remote);
    let mut b = b;
    // Everyone holds everything: the phone was admitted after b.
    b.import(&a.export()).unwrap();
    phone.import(&a.export()).unwrap();
    Vault {
        a,
        _a_key: a_key,
        a_home,
        b,
        b_home,
        phone,
        phone_home,
        _dir: dir,
    }
}

impl Vault {
    fn token(&self, label: &str) -> Token {
        let state = self.a.state().unwrap();
        state
            .live_tokens()
            .find(|t| t.label == label)
            .unwrap()
            .clone()
    }

    /// The keys of `b` and of the phone, as their stores hold them (an attacker holds its
    /// own device's keys).
    fn b_keys(&self) -> DeviceKeys {
        keys_of(&self.b_home)
    }

    fn phone_keys(&self) -> DeviceKeys {
        keys_of(&self.phone_home)
    }

    /// The keys of the device whose actor `actor` is.
    fn keys_for(&self, actor: &DeviceId) -> DeviceKeys {
        let home = [&self.a_home, &self.b_home, &self.phone_home]
            .into_iter()
            .find(|h| keys_of(h).device_id() == *actor)
            .unwrap();
        keys_of(home)
    }

    /// The document as `actor`'s own (hand-modified) client would write it after `edit`: a
    /// copy of `a`'s, changed, committed and vouched for with that device's key, saved.
    fn forge(
        &mut self,
        actor: &DeviceId,
        edit: impl FnOnce(&mut VaultDoc, &VaultState),
    ) -> Vec<u8> {
        let keys = self.keys_for(actor);
        forge_on(&self.a.export(), actor, &keys, edit)
    }

    /// The same, under `actor`'s id but vouched for with `keys`: another device's writing.
    fn forge_as(
        &mut self,
        actor: &DeviceId,
        keys: &DeviceKeys,
        edit: impl FnOnce(&mut VaultDoc, &VaultState),
    ) -> Vec<u8> {
        forge_on(&self.a.export(), actor, keys, edit)
    }

    /// As `forge`, written with Automerge's own API: what no typed write would do.
    fn forge_raw(&mut self, actor: &DeviceId, edit: impl FnOnce(&mut AutoCommit)) -> Vec<u8> {
        let keys = self.keys_for(actor);
        let vault = self.a.state().unwrap().info.id;
        let mut doc = AutoCommit::load(&self.a.export())
            .unwrap()
            .with_actor(actor_for(actor));
        edit(&mut doc);
        doc.commit();
        let change = doc.get_last_local_change().unwrap();
        let attestation = VaultDoc::attestation(&vault, &change, |m| keys.sign(m));
        doc.apply_changes([attestation]).unwrap();
        doc.save()
    }

    /// `forged` is refused with `Unauthorized` by every member but its sender `peer`, through
    /// `import` and through a sync message from `peer`, and no document changes.
    fn refused_everywhere(&mut self, forged: &[u8], peer: DeviceId) -> String {
        let mut why = String::new();
        let others = [&mut self.a, &mut self.b, &mut self.phone];
        for device in others.into_iter().filter(|d| d.device_id() != peer) {
            let before = device.export();
            let err = device.import(forged).unwrap_err();
            assert!(
                matches!(err, DeviceError::Doc(DocError::Unauthorized(_))),
                "{err}"
            );
            why = err.to_string();
            let err = sync_from(device, peer, forged).expect_err("a sync message was taken");
            assert!(
                matches!(
                    err,
                    SyncRefusal::Device(DeviceError::Doc(DocError::Unauthorized(_)))
                ),
                "{err}"
            );
            assert_eq!(device.export(), before, "a refused change was kept");
        }
        why
    }
}

fn forge_on(
    base: &[u8],
    actor: &DeviceId,
    keys: &DeviceKeys,
    edit: impl FnOnce(&mut VaultDoc, &VaultState),
) -> Vec<u8> {
    let mut doc = VaultDoc::load_trusted(base, actor).unwrap();
    let state = doc.state().unwrap();
    edit(&mut doc, &state);
    doc.commit("forged", |m| keys.sign(m));
    doc.save()
}

/// Runs a sync session from `peer`, whose document is `theirs`, into `device` until it
/// refuses or `theirs` has nothing more to send; returns the refusal.
fn sync_from(device: &mut Device, peer: DeviceId, theirs: &[u8]) -> Result<(), SyncRefusal> {
    let mut doc = VaultDoc::load_trusted(theirs, &peer).unwrap();
    let mut state = automerge::sync::State::new();
    device.sync_open(peer, None).unwrap();
    let result = (|| {
        for _ in 0..20 {
            if let Some(msg) = device.sync_generate(&peer) {
                doc.receive_sync(&mut state, &msg).unwrap();
            }
            match doc.sync_message(&mut state, true) {
                Some(msg) => {
                    device.sync_receive(&peer, &msg)?;
                }
                None => return Ok(()),
            }
        }
        Ok(())
    })();
    device.sync_close(&peer, None);
    result
}

/// Writes `token` as its next version, signed by `keys` as `writer`.
fn put_signed(doc: &mut VaultDoc, state: &VaultState, keys: &DeviceKeys, token: &Token) {
    let mut token = token.clone();
    token.version += 1;
    token.updated_by = keys.device_id().to_hex();
    let sig = keys.sign(&token_version_statement(
        &state.info.id,
        &token.signed_fields(),
    ));
    doc.put_token(&token, &sig).unwrap();
}

#[test]
fn a_token_version_signed_by_nobody_is_refused() {
    let mut v = vault();
    let b = v.b.device_id();
    let mut token = v.token("work");
    token.label = "stolen".into();
    let forged = v.forge(&b, |doc, _| {
        let mut t = token.clone();
        t.version += 1;
        t.updated_by = b.to_hex();
        doc.put_token(&t, &[0u8; 64]).unwrap();
    });
    let why = v.refused_everywhere(&forged, b);
    assert!(why.contains("not signed"), "{why}");
}

#[test]
fn a_members_change_under_another_members_actor_is_refused() {
    let mut v = vault();
    let (a, b) = (v.a.device_id(), v.b.device_id());
    let token = v.token("work");
    let keys = v.b_keys();
    // b signs its own version, but writes it as a's actor: the audit would say a did it.
    let edit = |doc: &mut VaultDoc, state: &VaultState| {
        let mut t = token.clone();
        t.label = "relabelled".into();
        put_signed(doc, state, &keys, &t);
    };
    let forged = v.forge_as(&a, &keys, edit);
    v.refused_everywhere(&forged, b);
    // The same edit under b's own actor is what a member may do: taken, and shown as b's.
    let honest = v.forge(&b, edit);
    assert!(v.a.import(&honest).unwrap() > 0);
    let state = v.a.state().unwrap();
    let shown = &state.tokens[&token.id];
    assert_eq!(
        (
            shown.label.as_str(),
            shown.updated_by.as_str(),
            shown.verified
        ),
        ("relabelled", b.to_hex().as_str(), true)
    );
}

#[test]
fn a_remote_device_cannot_delete_relabel_or_redefault_a_token() {
    let mut v = vault();
    let phone = v.phone.device_id();
    let work = v.token("work");
    let keys = v.phone_keys();
    let deleted = v.forge(&phone, |doc, state| {
        let mut t = work.clone();
        t.deleted = true;
        t.ciphertext = None;
        put_signed(doc, state, &keys, &t);
    });
    v.refused_everywhere(&deleted, phone);
    let relabelled = v.forge(&phone, |doc, state| {
        let mut t = work.clone();
        t.label = "mine".into();
        put_signed(doc, state, &keys, &t);
    });
    v.refused_everywhere(&relabelled, phone);
    let redefaulted = v.forge(&phone, |doc, state| {
        let choice = DefaultChoice {
            service: Service::Anthropic,
            token: None,
            version: 99,
            at: 1,
            writer: phone.to_hex(),
        };
        let sig = keys.sign(&choice.statement(&state.info.id));
        doc.set_default(&choice, &sig).unwrap();
    });
    v.refused_everywhere(&redefaulted, phone);
    // Nothing it tried shows anywhere.
    for device in [&v.a, &v.b] {
        let state = device.state().unwrap();
        let t = &state.tokens[&work.id];
        assert!(!t.deleted && t.label == "work" && t.verified);
        assert_eq!(state.defaults.get(&Service::Anthropic), Some(&work.id));
    }
}

#[test]
fn removing_a_token_record_or_its_versions_is_refused() {
    let mut v = vault();
    let b = v.b.device_id();
    let work = v.token("work").id;
    let removed = v.forge_raw(&b, |doc| {
        let tokens = doc_map(doc, &["tokens"]);
        doc.delete(&tokens, work.to_hex()).unwrap();
    });
    let why = v.refused_everywhere(&removed, b);
    assert!(why.contains("removed"), "{why}");
    let emptied = v.forge_raw(&b, |doc| {
        let record = doc_map(doc, &["tokens", &work.to_hex()]);
        doc.delete(&record, "current").unwrap();
    });
    v.refused_everywhere(&emptied, b);
    // Editing a field of a signed version in place breaks it: refused too.
    let edited = v.forge_raw(&b, |doc| {
        let version = doc_map(doc, &["tokens", &work.to_hex(), "current"]);
        doc.put(&version, "label", "edited").unwrap();
    });
    v.refused_everywhere(&edited, b);
}

#[test]
fn a_valid_signature_moved_to_another_record_or_field_is_refused() {
    let mut v = vault();
    let b = v.b.device_id();
    let keys = v.b_keys();
    let work = v.token("work");
    let main = v.token("main");
    // b signs a version of `work`, then writes it (signature and all) as `main`'s version.
    let moved = v.forge(&b, |doc, state| {
        let mut signed = work.clone();
        signed.version = main.version + 1;
        signed.updated_by = b.to_hex();
        let sig = keys.sign(&token_version_statement(
            &state.info.id,
            &signed.signed_fields(),
        ));
        let mut other = signed.clone();
        other.id = main.id;
        doc.put_token(&other, &sig).unwrap();
    });
    v.refused_everywhere(&moved, b);
    // The same signature over one label, written with another.
    let relabelled = v.forge(&b, |doc, state| {
        let mut signed = work.clone();
        signed.version += 1;
        signed.updated_by = b.to_hex();
        let sig = keys.sign(&token_version_statement(
            &state.info.id,
            &signed.signed_fields(),
        ));
        signed.label = "elsewhere".into();
        doc.put_token(&signed, &sig).unwrap();
    });
    v.refused_everywhere(&relabelled, b);
    // A brand-new token signed by nobody, too.
    let injected = v.forge(&b, |doc, _| {
        let mut t = work.clone();
        t.id = TokenId::from_bytes(random_array().unwrap());
        t.updated_by = b.to_hex();
        doc.put_token(&t, &[7u8; 64]).unwrap();
    });
    v.refused_everywhere(&injected, b);
}

#[test]
fn a_remote_device_may_rename_itself_and_sign_its_audit_entries_only() {
    let mut v = vault();
    let (a, phone) = (v.a.device_id(), v.phone.device_id());
    let keys = v.phone_keys();
    let renamed = v.forge_raw(&phone, |doc| {
        let record = doc_map(doc, &["members", &phone.to_hex()]);
        doc.put(&record, "name", "my phone").unwrap();
    });
    let own = forge_on(&renamed, &phone, &keys, |doc, _| {
        doc.audit(&phone, "session.ask", "laptop", |m| keys.sign(m))
            .unwrap();
    });
    for device in [&mut v.a, &mut v.b] {
        assert!(device.import(&own).unwrap() > 0);
        let state = device.state().unwrap();
        assert_eq!(state.members[&phone].name, "my phone");
        let last = state.audit.last().unwrap();
        assert!(last.verified && last.device == phone.to_hex(), "{last:?}");
    }
    let other = v.forge_raw(&phone, |doc| {
        let record = doc_map(doc, &["members", &a.to_hex()]);
        doc.put(&record, "name", "pwned").unwrap();
    });
    v.refused_everywhere(&other, phone);
    // An audit entry it signs in another device's name is refused.
    let as_a = v.forge(&phone, |doc, _| {
        doc.audit(&a, "token.rm", "everything", |m| keys.sign(m))
            .unwrap();
    });
    v.refused_everywhere(&as_a, phone);
}

/// The id of the map at `path` in `doc`.
fn doc_map(doc: &AutoCommit, path: &[&str]) -> automerge::ObjId {
    let mut obj = automerge::ROOT;
    for key in path {
        obj = doc.get(&obj, *key).unwrap().unwrap().1;
    }
    obj
}

#[test]
fn concurrent_signed_edits_resolve_the_same_everywhere_and_show_as_a_conflict() {
    let mut v = vault();
    let work = v.token("work");
    // b edits the token while a, not having seen it, edits it too; a needs the key to seal.
    let b_key = v.b.unlock(common::PASSPHRASE).unwrap();
    v.b.add_token(
        &b_key,
        Service::Anthropic,
        "work",
        b"sk-ant-FROM-B",
        false,
        true,
    )
    .unwrap();
    v.a.add_token(
        &v._a_key,
        Service::Anthropic,
        "work",
        b"sk-ant-FROM-A",
        false,
        true,
    )
    .unwrap();
    let (from_a, from_b) = (v.a.export(), v.b.export());
    v.a.import(&from_b).unwrap();
    v.b.import(&from_a).unwrap();
    let (sa, sb) = (v.a.state().unwrap(), v.b.state().unwrap());
    let (ta, tb) = (&sa.tokens[&work.id], &sb.tokens[&work.id]);
    assert_eq!(ta, tb, "the two devices read the conflict differently");
    assert!(ta.conflicted && ta.verified, "{ta:?}");
    let (_, secret) = v.a.reveal(&v._a_key, "anthropic/work").unwrap();
    let (_, seen_on_b) = v.b.reveal(&b_key, "anthropic/work").unwrap();
    let shown = handoff::device::expose(&secret).to_vec();
    assert_eq!(shown, handoff::device::expose(&seen_on_b));
    assert!(shown == b"sk-ant-FROM-A" || shown == b"sk-ant-FROM-B");
    // A later write, made having seen both, ends the conflict everywhere.
    v.a.add_token(
        &v._a_key,
        Service::Anthropic,
        "work",
        b"sk-ant-PICKED",
        false,
        true,
    )
    .unwrap();
    v.b.import(&v.a.export()).unwrap();
    for device in [&v.a, &v.b] {
        let t = &device.state().unwrap().tokens[&work.id];
        assert!(!t.conflicted && t.verified, "{t:?}");
        assert_eq!(t.version, work.version + 2);
    }
}

/// Review findings: writes that a state-only check would have let through.
#[test]
fn a_change_whose_op_counter_jumps_is_refused() {
    let mut v = vault();
    let b = v.b.device_id();
    // b renames itself (which it may), in a change whose ops start near the counter's limit:
    // every later commit on a device that took it would overflow.
    let base = v.a.export();
    let renamed = v.forge_raw(&b, |doc| {
        let record = doc_map(doc, &["members", &b.to_hex()]);
        doc.put(&record, "name", "desk").unwrap();
    });
    let mut doc = AutoCommit::load(&renamed).unwrap();
    let heads = AutoCommit::load(&base).unwrap().get_heads();
    let mut change = doc.get_changes(&heads)[0].decode();
    change.start_op = std::num::NonZeroU64::new(u64::from(u32::MAX) - 1000).unwrap();
    change.hash = None;
    let crafted = automerge::Change::from(change);
    // In a sync message, as a peer sends changes (a document holding it does not even load).
    let message = automerge::sync::Message {
        heads: vec![crafted.hash()],
        need: Vec::new(),
        have: Vec::new(),
        changes: vec![crafted.raw_bytes().to_vec()].into(),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
    .encode();
    for device in [&mut v.a, &mut v.phone] {
        let before = device.export();
        device.sync_open(b, None).unwrap();
        let err = device.sync_receive(&b, &message).unwrap_err();
        assert!(
            matches!(
                err,
                SyncRefusal::Device(DeviceError::Doc(DocError::Unauthorized(_)))
            ),
            "{err}"
        );
        assert!(err.to_string().contains("op counter"), "{err}");
        device.sync_close(&b, None);
        assert_eq!(device.export(), before);
    }
}

#[test]
fn old_versions_put_back_deleted_values_and_hidden_removals_are_refused() {
    let mut v = vault();
    let (a, b) = (v.a.device_id(), v.b.device_id());
    let keys = v.b_keys();
    let work = v.token("work");
    // b writes a version, then a newer one; putting the older one back (its own signature,
    // its own actor) would roll the token back.
    let mut first = work.clone();
    first.label = "first".into();
    let edited = v.forge(&b, |doc, state| put_signed(doc, state, &keys, &first));
    assert!(v.a.import(&edited).unwrap() > 0);
    let old = VaultDoc::load_trusted(&edited, &b)
        .unwrap()
        .state()
        .unwrap()
        .tokens[&work.id]
        .clone();
    let newer = v.forge(&b, |doc, state| {
        let mut t = old.clone();
        t.label = "second".into();
        put_signed(doc, state, &keys, &t);
    });
    assert!(v.a.import(&newer).unwrap() > 0);
    v.b.import(&v.a.export()).unwrap();
    let vault_id = v.a.state().unwrap().info.id;
    let sig = keys.sign(&token_version_statement(&vault_id, &old.signed_fields()));
    let replayed = v.forge_raw(&b, |doc| {
        let record = doc_map(doc, &["tokens", &work.id.to_hex()]);
        let version = doc
            .put_object(&record, "current", automerge::ObjType::Map)
            .unwrap();
        copy_version(doc, &version, &old, &sig);
    });
    let why = v.refused_everywhere(&replayed, b);
    assert!(why.contains("may not"), "{why}");
    // Deleting a field of an audit entry, or a token's version, in place.
    let unsigned = v.forge_raw(&b, |doc| {
        let (_, audit) = doc.get(automerge::ROOT, "audit").unwrap().unwrap();
        let (_, entry) = doc.get(&audit, 0).unwrap().unwrap();
        doc.delete(&entry, "sig").unwrap();
    });
    v.refused_everywhere(&unsigned, b);
    // A member replacing another member's removals map would hide a removal written there.
    let hidden = v.forge_raw(&b, |doc| {
        let record = doc_map(doc, &["members", &a.to_hex()]);
        doc.put_object(&record, "removals", automerge::ObjType::Map)
            .unwrap();
    });
    v.refused_everywhere(&hidden, b);
    // A junk removal entry under another signer's name.
    let junk = v.forge_raw(&b, |doc| {
        let removals = doc_map(doc, &["members", &a.to_hex(), "removals"]);
        let entry = doc
            .put_object(&removals, a.to_hex(), automerge::ObjType::Map)
            .unwrap();
        doc.put(&entry, "at", 1i64).unwrap();
        doc.put(&entry, "after_seq", u64::MAX).unwrap();
        doc.put(&entry, "sig", automerge::ScalarValue::Bytes(vec![0; 64]))
            .unwrap();
    });
    v.refused_everywhere(&junk, b);
}

/// Writes `t`'s fields into the map `obj`, as `VaultDoc::put_token` does.
fn copy_version(doc: &mut AutoCommit, obj: &automerge::ObjId, t: &Token, sig: &[u8]) {
    doc.put(obj, "version", t.version).unwrap();
    doc.put(obj, "service", t.service.as_str()).unwrap();
    doc.put(obj, "label", t.label.as_str()).unwrap();
    doc.put(obj, "kind", t.kind.as_str()).unwrap();
    doc.put(obj, "epoch", t.epoch.to_hex()).unwrap();
    if let Some(ct) = &t.ciphertext {
        doc.put(obj, "ciphertext", automerge::ScalarValue::Bytes(ct.clone()))
            .unwrap();
    }
    doc.put(obj, "deleted", t.deleted).unwrap();
    doc.put(obj, "created_at", t.created_at).unwrap();
    doc.put(obj, "created_by", t.created_by.as_str()).unwrap();
    doc.put(obj, "updated_at", t.updated_at).unwrap();
    doc.put(obj, "updated_by", t.updated_by.as_str()).unwrap();
    doc.put(obj, "sig", automerge::ScalarValue::Bytes(sig.to_vec()))
        .unwrap();
}

/// Any change under another member's actor id is refused, whatever it writes: here b renames a
/// (which a may do itself) and deletes nothing, writing as a's actor with its own key.
#[test]
fn any_change_under_another_members_actor_is_refused() {
    let mut v = vault();
    let (a, b) = (v.a.device_id(), v.b.device_id());
    let keys = v.b_keys();
    let vault_id = v.a.state().unwrap().info.id;
    let mut doc = AutoCommit::load(&v.a.export())
        .unwrap()
        .with_actor(actor_for(&a));
    let record = doc_map(&doc, &["members", &a.to_hex()]);
    doc.put(&record, "name", "not-the-laptop").unwrap();
    doc.commit();
    let change = doc.get_last_local_change().unwrap();
    doc.apply_changes([VaultDoc::attestation(&vault_id, &change, |m| keys.sign(m))])
        .unwrap();
    let why = v.refused_everywhere(&doc.save(), b);
    assert!(why.contains("not vouched for"), "{why}");
    // Without any attestation, too.
    let mut bare = AutoCommit::load(&v.a.export())
        .unwrap()
        .with_actor(actor_for(&a));
    let record = doc_map(&bare, &["members", &a.to_hex()]);
    bare.put(&record, "name", "not-the-laptop").unwrap();
    bare.commit();
    v.refused_everywhere(&bare.save(), b);
}

/// Second review's findings: the schema set back to exempt a change from attestation, an old
/// attestation copied under a new header, and a version counter run up to its limit.
#[test]
fn schema_rollback_copied_attestations_and_spent_counters_are_refused() {
    let mut v = vault();
    let (a, b, phone) = (v.a.device_id(), v.b.device_id(), v.phone.device_id());
    // The phone sets the schema back, under the admin's actor, unattested.
    let mut doc = AutoCommit::load(&v.a.export())
        .unwrap()
        .with_actor(actor_for(&a));
    doc.put(automerge::ROOT, "schema", 1u64).unwrap();
    doc.commit();
    v.refused_everywhere(&doc.save(), phone);
    // b copies one of a's attestations under a new change header of a's actor.
    let mut doc = AutoCommit::load(&v.a.export()).unwrap();
    let changes = doc.get_changes(&[]);
    let own: Vec<&automerge::Change> = changes
        .iter()
        .filter(|c| c.actor_id() == &actor_for(&a))
        .collect();
    let attestation = own.iter().rev().find(|c| c.is_empty()).unwrap();
    let attested = own
        .iter()
        .find(|c| c.hash() == attestation.deps()[0])
        .unwrap();
    let last = own.iter().map(|c| c.seq()).max().unwrap();
    let copied = automerge::Change::from(automerge::ExpandedChange {
        operations: Vec::new(),
        actor_id: actor_for(&a),
        hash: None,
        seq: last + 1,
        start_op: std::num::NonZeroU64::new(attested.max_op() + 1).unwrap(),
        time: 0,
        message: attestation.message().map(str::to_string),
        deps: vec![attested.hash()],
        extra_bytes: Vec::new(),
        author: None,
    });
    doc.apply_changes([copied]).unwrap();
    let why = v.refused_everywhere(&doc.save(), b);
    assert!(why.contains("not vouched for"), "{why}");
    // b signs a version whose counter jumps to the limit: no later version could follow it.
    let keys = v.b_keys();
    let work = v.token("work");
    let spent = v.forge(&b, |doc, state| {
        let mut t = work.clone();
        t.version = u64::MAX - 1; // put_signed adds one
        put_signed(doc, state, &keys, &t);
    });
    v.refused_everywhere(&spent, b);
}

/// An admin's migration of a schema-1 vault is taken by a device that still holds the vault
/// as it was (the previous release's export, tests/data/legacy-v1).
#[test]
fn a_migration_is_taken_by_a_device_that_holds_the_old_vault() {
    use std::os::unix::fs::PermissionsExt;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/legacy-v1");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(format!("{fixture}/handoff.db"), home.join("handoff.db")).unwrap();
    let mut admin = Device::open(Home::at(&home)).unwrap();
    let key = admin.unlock(b"legacy fixture passphrase").unwrap();
    let done = admin.upkeep(&key).unwrap();
    assert!(done.resigned >= 5, "{done:?}");
    let migrated = admin.export();
    let old = std::fs::read(format!("{fixture}/vault.automerge")).unwrap();
    let other = DeviceId::from_bytes([3; 16]);
    let mut held = VaultDoc::load_trusted(&old, &other).unwrap();
    assert!(held.ingest(&migrated).unwrap() > 0);
    let state = held.state().unwrap();
    assert_eq!(state.schema, 2);
    assert_eq!(state.live_tokens().count(), 4);
    assert!(state.live_tokens().all(|t| t.verified));
}

/// A lease version as `keys` would sign it for `token`, holder `holder`.
fn lease(version: u64, holder: &DeviceId, fence: u64) -> handoff::doc::Lease {
    handoff::doc::Lease {
        holder: holder.to_hex(),
        session: "s1".into(),
        fence,
        until: 1_800_000_600,
        at: 1_800_000_000,
        version,
    }
}

fn put_lease(
    doc: &mut VaultDoc,
    state: &VaultState,
    keys: &DeviceKeys,
    id: &TokenId,
    l: &handoff::doc::Lease,
) {
    let sig = keys.sign(&handoff_protocol::binding::lease_statement(
        &state.info.id,
        &l.signed_fields(id),
    ));
    doc.put_lease(id, l, &sig).unwrap();
}

/// A lease (who may use a rotating OAuth login now) is signed by its holder, a member that may
/// write tokens: a remote device cannot hold one, nobody can write one in another member's
/// name, and an unsigned one is refused; the holder's own is taken and read everywhere.
#[test]
fn a_lease_is_its_holders_own_and_never_a_remote_devices() {
    let mut v = vault();
    let (a, b, phone) = (v.a.device_id(), v.b.device_id(), v.phone.device_id());
    let work = v.token("work").id;
    let (b_keys, phone_keys) = (v.b_keys(), v.phone_keys());
    let by_phone = v.forge(&phone, |doc, state| {
        put_lease(doc, state, &phone_keys, &work, &lease(1, &phone, 1));
    });
    v.refused_everywhere(&by_phone, phone);
    // b signs a lease naming a as its holder: a would seem to hold the login.
    let in_as_name = v.forge(&b, |doc, state| {
        put_lease(doc, state, &b_keys, &work, &lease(1, &a, 1));
    });
    v.refused_everywhere(&in_as_name, b);
    let unsigned = v.forge(&b, |doc, _| {
        doc.put_lease(&work, &lease(1, &b, 1), &[0u8; 64]).unwrap();
    });
    v.refused_everywhere(&unsigned, b);
    // Signed by its holder, but such as no honest holder writes: a fence no later acquisition
    // could count on from (so `--take` would fail for ever), or a lease that runs for years.
    let pinned = v.forge(&b, |doc, state| {
        put_lease(doc, state, &b_keys, &work, &lease(1, &b, u64::MAX));
    });
    v.refused_everywhere(&pinned, b);
    let forever = v.forge(&b, |doc, state| {
        let mut l = lease(1, &b, 1);
        l.until = l.at + 10 * 365 * 24 * 3600;
        put_lease(doc, state, &b_keys, &work, &l);
    });
    v.refused_everywhere(&forever, b);
    // A version that does not count on from the one it replaces could put an old lease back.
    let honest = v.forge(&b, |doc, state| {
        put_lease(doc, state, &b_keys, &work, &lease(1, &b, 1));
    });
    assert!(v.a.import(&honest).unwrap() > 0);
    let held = v.a.state().unwrap().tokens[&work].lease.clone().unwrap();
    assert_eq!((held.holder, held.fence), (b.to_hex(), 1));
    let jumped = forge_on(&v.a.export(), &b, &b_keys, |doc, state| {
        put_lease(doc, state, &b_keys, &work, &lease(5, &b, 2));
    });
    v.refused_everywhere(&jumped, b);
}

/// Two devices taking one lease at once both write a version; every device reads the same
/// holder (the newest valid version), so both sides agree on whose write-back counts.
#[test]
fn concurrent_lease_takes_resolve_the_same_everywhere() {
    let mut v = vault();
    let (a, b) = (v.a.device_id(), v.b.device_id());
    let work = v.token("work").id;
    let (a_keys, b_keys) = (v.keys_for(&a), v.b_keys());
    let base = v.a.export();
    let from_a = forge_on(&base, &a, &a_keys, |doc, state| {
        put_lease(doc, state, &a_keys, &work, &lease(1, &a, 1));
    });
    let from_b = forge_on(&base, &b, &b_keys, |doc, state| {
        put_lease(doc, state, &b_keys, &work, &lease(1, &b, 1));
    });
    v.a.import(&from_b).unwrap();
    v.a.import(&from_a).unwrap();
    v.b.import(&from_a).unwrap();
    v.b.import(&from_b).unwrap();
    let on_a = v.a.state().unwrap().tokens[&work].lease.clone().unwrap();
    let on_b = v.b.state().unwrap().tokens[&work].lease.clone().unwrap();
    assert_eq!(on_a, on_b);
}
