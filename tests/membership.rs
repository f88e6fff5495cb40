//! Membership at the document level, on real stores: admission by an admin, and removal with
//! key rotation. A removed device's copy, kept aside, opens nothing added or re-sealed after
//! its removal, and what it writes afterwards is refused by the remaining members.

#![allow(clippy::unwrap_used)] // a panic is the failure report

mod common;

use handoff::device::{Device, DeviceError, PendingJoin, Unlocked};
use handoff::doc::{DocError, Role, Service};
use handoff::home::Home;
use handoff_protocol::dek_wrap::Recipient;

fn new_home(dir: &tempfile::TempDir, name: &str) -> Home {
    Home::at(dir.path().join(name))
}

fn founder(dir: &tempfile::TempDir) -> (Device, Unlocked) {
    common::founder(new_home(dir, "a"), "laptop")
}

fn join(
    dir: &tempfile::TempDir,
    admin: &mut Device,
    key: &Unlocked,
    name: &str,
    role: Role,
) -> (Device, Unlocked) {
    common::join(new_home(dir, name), name, admin, key, role)
}

#[test]
fn a_paired_member_reads_tokens_and_a_remote_device_gets_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ak) = founder(&dir);
    a.add_token(
        &ak,
        Service::Anthropic,
        "work",
        b"sk-ant-PAIRED",
        false,
        false,
    )
    .unwrap();
    let (b, bk) = join(&dir, &mut a, &ak, "desktop", Role::Member);
    assert_eq!(expose(&b, &bk, "anthropic/work"), "sk-ant-PAIRED");
    let (phone, pk) = join(&dir, &mut a, &ak, "phone", Role::Remote);
    let state = phone.state().unwrap();
    let current = state.current_epoch().unwrap();
    assert!(
        !current
            .wraps
            .contains_key(&Recipient::Device(phone.device_id()))
    );
    assert!(phone.reveal(&pk, "anthropic/work").is_err());
    // Admitting the same device twice is refused.
    let again =
        PendingJoin::prepare(new_home(&dir, "desktop2"), &common::new_device("desktop")).unwrap();
    a.admit(&ak, &again.joiner(Role::Member)).unwrap();
    let twice = a.admit(&ak, &again.joiner(Role::Member));
    assert!(
        matches!(twice, Err(DeviceError::InvalidInput(_))),
        "{twice:?}"
    );
    // A joiner whose keys the admin's document does not admit cannot finish.
    let stranger =
        PendingJoin::prepare(new_home(&dir, "stranger"), &common::new_device("stranger")).unwrap();
    let refused = stranger.finish(&a.export(), &a.anchors().clone());
    assert!(
        matches!(refused, Err(DeviceError::InvalidInput(_))),
        "{refused:?}"
    );
}

fn expose(device: &Device, key: &Unlocked, query: &str) -> String {
    let (_, secret) = device.reveal(key, query).unwrap();
    String::from_utf8(handoff::device::expose(&secret).to_vec()).unwrap()
}

#[test]
fn a_removed_device_opens_nothing_new_and_its_later_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ak) = founder(&dir);
    a.add_token(
        &ak,
        Service::Anthropic,
        "old",
        b"sk-ant-BEFORE",
        false,
        false,
    )
    .unwrap();
    let (mut b, bk) = join(&dir, &mut a, &ak, "desktop", Role::Admin);
    assert_eq!(expose(&b, &bk, "anthropic/old"), "sk-ant-BEFORE");

    let discovery_before = a.state().unwrap().info.discovery_secret;
    let removed = a.remove_member(&ak, "desktop").unwrap();
    // The removed device can no longer recognise the vault's LAN tags.
    assert_ne!(a.state().unwrap().info.discovery_secret, discovery_before);
    assert_eq!(removed.member.device, b.device_id());
    assert_eq!(
        removed
            .exposed
            .iter()
            .map(|t| t.label.as_str())
            .collect::<Vec<_>>(),
        ["old"],
        "the user is told which tokens the device could read"
    );
    a.add_token(
        &ak,
        Service::Anthropic,
        "new",
        b"sk-ant-AFTER",
        false,
        false,
    )
    .unwrap();
    let state = a.state().unwrap();
    let current = state.current_epoch().unwrap();
    assert_eq!(current.id, removed.epoch);
    assert!(
        !current
            .wraps
            .contains_key(&Recipient::Device(b.device_id()))
    );
    assert!(
        state.live_tokens().all(|t| t.epoch == current.id),
        "every token re-sealed"
    );
    assert!(!state.members[&b.device_id()].is_active());
    assert_eq!(expose(&a, &ak, "anthropic/old"), "sk-ant-BEFORE");

    // The removed device, kept aside, writes after its removal...
    b.add_token(&bk, Service::Openai, "late", b"sk-LATE-WRITE", false, false)
        .unwrap();
    let late = b.export();
    // ...and every remaining member refuses it whole.
    let err = a.import(&late).unwrap_err();
    assert!(
        matches!(err, DeviceError::Doc(DocError::ForeignAuthor { .. })),
        "{err}"
    );
    assert!(a.state().unwrap().live_tokens().all(|t| t.label != "late"));

    // Given the members' document (say, from a backup), it still opens nothing added or
    // re-sealed after the removal.
    b.import(&a.export()).unwrap();
    for label in ["anthropic/old", "anthropic/new"] {
        match b.reveal(&bk, label) {
            Err(DeviceError::NoAccess(_)) => {}
            other => panic!(
                "the removed device got {label}: {:?}",
                other.map(|(t, _)| t.label)
            ),
        }
    }
}

#[test]
fn concurrent_removals_by_two_admins_both_hold_and_the_higher_bound_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ak) = founder(&dir);
    let (mut b, bk) = join(&dir, &mut a, &ak, "desktop", Role::Admin);
    let (mut c, ck) = join(&dir, &mut a, &ak, "vm", Role::Member);
    b.import(&a.export()).unwrap();
    // c writes once; b sees it, a does not; then both remove c at once.
    c.add_token(&ck, Service::Anthropic, "c1", b"sk-ant-C1", false, false)
        .unwrap();
    b.import(&c.export()).unwrap();
    a.remove_member(&ak, "vm").unwrap();
    b.remove_member(&bk, "vm").unwrap();
    // Both removals merge (neither is lost), and c's change before b's removal is kept.
    a.import(&b.export()).unwrap();
    b.import(&a.export()).unwrap();
    let (sa, sb) = (a.state().unwrap(), b.state().unwrap());
    assert_eq!(sa.members, sb.members);
    assert_eq!(sa.members[&c.device_id()].removals.len(), 2);
    assert!(sa.live_tokens().any(|t| t.label == "c1"));
    // Upkeep converges on one current epoch that leaves c out.
    a.upkeep(&ak).unwrap();
    b.import(&a.export()).unwrap();
    b.upkeep(&bk).unwrap();
    a.import(&b.export()).unwrap();
    let current = a.state().unwrap().current_epoch().unwrap().clone();
    assert!(
        !current
            .wraps
            .contains_key(&Recipient::Device(c.device_id()))
    );
    assert_eq!(expose(&a, &ak, "anthropic/c1"), "sk-ant-C1");
    assert_eq!(expose(&b, &bk, "anthropic/c1"), "sk-ant-C1");
}

/// Relayed envelopes at the document level. A member admitted while the recipient was away
/// brings its own admission in its envelope; changes waiting for one the recipient lacks keep
/// their envelope at the relay until they apply; a removed member's envelope is refused.
#[test]
fn relayed_envelopes_from_a_new_member_apply_and_from_a_removed_one_are_refused() {
    use handoff::device::Taken;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ak) = founder(&dir);
    let (mut b, bk) = join(&dir, &mut a, &ak, "desktop", Role::Member);
    // b is away while a admits c; b has never heard of c.
    let (mut c, ck) = join(&dir, &mut a, &ak, "phone", Role::Member);
    let add = |c: &mut Device, label: &str, secret: &[u8]| {
        c.add_token(&ck, Service::Anthropic, label, secret, false, false)
            .unwrap();
    };
    add(&mut c, "first", b"sk-ant-FIRST-FROM-C");
    let first = c.relay_envelopes(&b.device_id()).unwrap().unwrap();
    c.note_relayed(&b.device_id(), &first).unwrap();
    add(&mut c, "second", b"sk-ant-SECOND-FROM-C");
    let second = c.relay_envelopes(&b.device_id()).unwrap().unwrap();
    c.note_relayed(&b.device_id(), &second).unwrap();

    // Delivered out of order: the second waits for the first, and is taken again after it.
    for envelope in &second.envelopes {
        assert_eq!(b.take_envelope(envelope).unwrap(), Taken::Waiting);
    }
    assert!(b.reveal(&bk, "anthropic/second").is_err());
    for envelope in &first.envelopes {
        assert!(matches!(
            b.take_envelope(envelope).unwrap(),
            Taken::Applied(n) if n > 0
        ));
    }
    for envelope in &second.envelopes {
        assert!(matches!(
            b.take_envelope(envelope).unwrap(),
            Taken::Applied(_)
        ));
    }
    assert_eq!(expose(&b, &bk, "anthropic/first"), "sk-ant-FIRST-FROM-C");
    assert_eq!(expose(&b, &bk, "anthropic/second"), "sk-ant-SECOND-FROM-C");
    // Taking an envelope again changes nothing.
    let heads = b.heads_hex();
    assert_eq!(
        b.take_envelope(&first.envelopes[0]).unwrap(),
        Taken::Applied(0)
    );
    assert_eq!(b.heads_hex(), heads);

    // Once b knows c is removed, c's envelopes are refused.
    a.import(&c.export()).unwrap();
    a.remove_member(&ak, "phone").unwrap();
    b.import(&a.export()).unwrap();
    add(&mut c, "late", b"sk-ant-LATE-FROM-C");
    let late = c.relay_envelopes(&b.device_id()).unwrap().unwrap();
    assert!(matches!(
        b.take_envelope(&late.envelopes[0]).unwrap(),
        Taken::Rejected(_)
    ));
    assert!(b.reveal(&bk, "anthropic/late").is_err());
}

/// Two devices rename two tokens to one label at once: after they merge, the label names
/// neither. Asking for it is refused as ambiguous (by query and by a spawn's profile) instead
/// of quietly picking one account's token; each is still reachable by its id.
#[test]
fn a_label_two_devices_gave_at_once_names_neither_token() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ak) = founder(&dir);
    let (mut b, _bk) = join(&dir, &mut a, &ak, "desktop", Role::Admin);
    let x = a
        .add_token(&ak, Service::Anthropic, "x", b"sk-ant-X", false, false)
        .unwrap();
    let y = a
        .add_token(&ak, Service::Anthropic, "y", b"sk-ant-Y", false, false)
        .unwrap();
    b.import(&a.export()).unwrap();
    a.rename_token("anthropic/x", "job").unwrap();
    b.rename_token("anthropic/y", "job").unwrap();
    a.import(&b.export()).unwrap();
    let state = a.state().unwrap();
    let err = a.find_token(&state, "anthropic/job").unwrap_err();
    assert!(
        matches!(err, handoff::device::DeviceError::AmbiguousToken { .. }),
        "{err}"
    );
    let claude =
        handoff::spawn::Agent::find("claude", &handoff::config::Config::default()).unwrap();
    let chosen = handoff::spawn::choose_token(&state, &claude, None, Some("job"));
    assert!(
        chosen.is_err(),
        "a spawn picked one of two tokens named job"
    );
    for id in [x, y] {
        assert_eq!(a.find_token(&state, &id.to_hex()).unwrap().label, "job");
    }
}
