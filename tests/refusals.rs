//! A refused sync message must lead to a resync, never to silence: the smallest forms of the
//! divergences the seeded convergence simulation found, on real devices (SQLite, keys,
//! Automerge) with the network played by hand.
//!
//! The setting of the first two: admins A, B and C; C removes B while B writes a token that
//! only A sees. A then holds changes of B's past the bound C knows, and C refuses them until A,
//! on learning of the removal, vouches for what it already held. The last two are concurrent
//! removals: of an admin while it rotated, and of two devices each side took changes from.

#![allow(clippy::unwrap_used)] // a panic is the failure report

mod common;

use handoff::device::{Device, Unlocked, expose};
use handoff::doc::{Role, Service};
use handoff::home::Home;
use handoff_protocol::DeviceId;

struct Node {
    device: Device,
    key: Unlocked,
    _dir: tempfile::TempDir,
}

impl Node {
    fn id(&self) -> DeviceId {
        self.device.device_id()
    }
}

fn founder() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (device, key) = common::founder(Home::at(dir.path().join("home")), "a");
    Node {
        device,
        key,
        _dir: dir,
    }
}

fn pair(admin: &mut Node, name: &str) -> Node {
    pair_as(admin, name, Role::Admin)
}

fn pair_as(admin: &mut Node, name: &str, role: Role) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (device, key) = common::join(
        Home::at(dir.path().join("home")),
        name,
        &mut admin.device,
        &admin.key,
        role,
    );
    Node {
        device,
        key,
        _dir: dir,
    }
}

/// What happened to one message.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Taken,
    Refused,
}

/// Delivers `msg` from `from` to `to` as a session does: a refusal resets the receiver's side
/// and tells the sender the heads the message was written at.
fn deliver(from: &mut Node, to: &mut Node, msg: &[u8]) -> Delivery {
    let (f, t) = (from.id(), to.id());
    match to.device.sync_receive(&f, msg) {
        Ok(_) => Delivery::Taken,
        Err(_) => {
            to.device.sync_reset(&f);
            let heads = Device::sync_message_heads(msg);
            from.device
                .sync_refused(&t, &heads, "it refuses changes this device holds");
            Delivery::Refused
        }
    }
}

/// Both directions, in turn, until neither has anything to say (bounded).
fn exchange(x: &mut Node, y: &mut Node) {
    for _ in 0..50 {
        let mut quiet = true;
        if let Some(m) = x.device.sync_generate(&y.id()) {
            deliver(x, y, &m);
            quiet = false;
        }
        if let Some(m) = y.device.sync_generate(&x.id()) {
            deliver(y, x, &m);
            quiet = false;
        }
        if quiet {
            return;
        }
    }
    panic!("the two never went quiet");
}

fn open(x: &mut Node, y: &mut Node) {
    x.device.sync_open(y.id(), None).unwrap();
    y.device.sync_open(x.id(), None).unwrap();
}

/// A, B, C in sync; then C removes B while B writes a token A takes. Returns (A, B, C).
fn setting() -> (Node, Node, Node) {
    let mut a = founder();
    let mut b = pair(&mut a, "b");
    let mut c = pair(&mut a, "c");
    open(&mut a, &mut b);
    open(&mut a, &mut c);
    exchange(&mut a, &mut b);
    exchange(&mut a, &mut c);
    exchange(&mut a, &mut b);
    assert_eq!(a.device.heads_hex(), c.device.heads_hex());
    let b_id = b.id().to_hex();
    c.device.remove_member(&c.key, &b_id).unwrap();
    b.device
        .add_token(
            &b.key,
            Service::Anthropic,
            "late",
            b"sk-ant-late",
            false,
            false,
        )
        .unwrap();
    exchange(&mut a, &mut b);
    (a, b, c)
}

fn converged(a: &mut Node, c: &mut Node) {
    assert_eq!(
        a.device.heads_hex(),
        c.device.heads_hex(),
        "A and C were left with different documents"
    );
    let state = a.device.state().unwrap();
    let b = state.members.values().find(|m| m.name == "b").unwrap();
    assert!(!b.is_active(), "A never learned of the removal");
    for node in [a, c] {
        let out = node.device.peers_seen().unwrap();
        assert!(
            out.iter().all(|p| p.out_of_sync.is_none()),
            "converged devices still show as out of sync: {out:?}"
        );
    }
}

/// The refusal of a message crosses C's own message on the wire: by the time it arrives, A
/// has taken the removal and vouched, so its document moved on. A must offer again at once
/// (it used to pause at its new heads, and fell silent for good).
#[test]
fn a_refusal_that_arrives_after_the_sender_moved_on_starts_a_resync() {
    let (mut a, _b, mut c) = setting();
    let to_c = a
        .device
        .sync_generate(&c.id())
        .expect("A has B's token to offer");
    // C's removal reaches A first (A vouches for the changes it holds)...
    let removal = c
        .device
        .sync_generate(&a.id())
        .expect("C has the removal to offer");
    assert_eq!(deliver(&mut c, &mut a, &removal), Delivery::Taken);
    let b = a.device.state().unwrap();
    assert!(b.members.values().any(|m| m.name == "b" && !m.is_active()));
    // ...then A's older message reaches C and is refused.
    assert_eq!(deliver(&mut a, &mut c, &to_c), Delivery::Refused);
    exchange(&mut a, &mut c);
    converged(&mut a, &mut c);
}

/// A's message is refused while A still stands where it wrote it, so A pauses. C starts
/// afresh and asks what A has; A must still answer with what it has and needs (not the
/// refused changes), or C can never send A the removal that lets A vouch.
#[test]
fn a_paused_sender_still_answers_so_the_refuser_can_send_what_it_lacks() {
    let (mut a, _b, mut c) = setting();
    let to_c = a
        .device
        .sync_generate(&c.id())
        .expect("A has B's token to offer");
    assert_eq!(deliver(&mut a, &mut c, &to_c), Delivery::Refused);
    let out = a.device.peers_seen().unwrap();
    let mark = out.iter().find(|p| p.device == c.id()).unwrap();
    assert!(
        mark.out_of_sync
            .as_ref()
            .is_some_and(|(_, why)| why.contains("refuses")),
        "the refusal is not shown: {mark:?}"
    );
    exchange(&mut a, &mut c);
    converged(&mut a, &mut c);
}

fn removed(node: &Node, name: &str) -> bool {
    let state = node.device.state().unwrap();
    !state
        .members
        .values()
        .find(|m| m.name == name)
        .unwrap()
        .is_active()
}

fn same_document(x: &mut Node, y: &mut Node) {
    assert_eq!(
        x.device.heads_hex(),
        y.device.heads_hex(),
        "the two were left with different documents"
    );
}

/// Admin B rotates twice (removing C, then D) while the founder A, who has not seen either,
/// removes B. A device that took B's rotations must still take the removal, although the
/// current epoch then moves back to A's (B's epochs lose their standing with B): it used to
/// refuse it as "the current key epoch moved back", and A refused B's changes past A's bound,
/// for good. A's epoch still reaches C and D, so nothing may be sealed under it until an
/// admin rotates: a member leaves the tokens where they are and cannot add, an admin's add
/// rotates first.
#[test]
fn an_admin_removed_while_it_rotated_is_removed_everywhere() {
    let mut a = founder();
    let mut b = pair(&mut a, "b");
    let mut c = pair(&mut a, "c");
    let mut d = pair(&mut a, "d");
    let mut e = pair(&mut a, "e");
    let mut m = pair_as(&mut a, "m", Role::Member);
    a.device
        .add_token(&a.key, Service::Anthropic, "t", b"sk-ant-t", false, false)
        .unwrap();
    for other in [&mut b, &mut c, &mut d, &mut e, &mut m] {
        open(&mut a, other);
        exchange(&mut a, other);
    }
    open(&mut b, &mut e);
    open(&mut e, &mut m);
    exchange(&mut b, &mut e);
    exchange(&mut e, &mut m);
    same_document(&mut a, &mut m);
    b.device.remove_member(&b.key, &c.id().to_hex()).unwrap();
    b.device.remove_member(&b.key, &d.id().to_hex()).unwrap();
    exchange(&mut b, &mut e);
    exchange(&mut e, &mut m);
    a.device.remove_member(&a.key, &b.id().to_hex()).unwrap();
    let before = m
        .device
        .state()
        .unwrap()
        .current_epoch()
        .unwrap()
        .generation;
    exchange(&mut a, &mut e);
    exchange(&mut e, &mut m);
    same_document(&mut a, &mut e);
    same_document(&mut e, &mut m);
    for gone in ["b", "c", "d"] {
        assert!(
            removed(&a, gone) && removed(&m, gone),
            "{gone} is not removed"
        );
    }
    let state = m.device.state().unwrap();
    let current = state.current_epoch().unwrap();
    assert!(current.generation < before, "the epoch did not move back");
    assert!(state.reaches_outsider(current));
    let sealed_under = |node: &Node| {
        let state = node.device.state().unwrap();
        state.live_tokens().map(|t| t.epoch).collect::<Vec<_>>()
    };
    let was = sealed_under(&m);
    assert!(!was.contains(&current.id));
    let upkeep = m.device.upkeep(&m.key).unwrap();
    assert_eq!(
        upkeep.resealed, 0,
        "a member re-sealed into a removed device's epoch"
    );
    assert_eq!(sealed_under(&m), was);
    let refused = m
        .device
        .add_token(&m.key, Service::Openai, "m", b"sk-m", false, false)
        .unwrap_err();
    assert!(
        matches!(refused, handoff::device::DeviceError::KeyNeedsRotation),
        "{refused}"
    );
    e.device
        .add_token(&e.key, Service::Openai, "e", b"sk-e", false, false)
        .unwrap();
    exchange(&mut e, &mut m);
    exchange(&mut a, &mut e);
    same_document(&mut a, &mut e);
    same_document(&mut e, &mut m);
    let state = m.device.state().unwrap();
    let current = state.current_epoch().unwrap();
    assert!(!state.reaches_outsider(current));
    for gone in [&b, &c, &d] {
        let wrapped = current
            .wraps
            .keys()
            .any(|r| *r == handoff_protocol::dek_wrap::Recipient::Device(gone.id()));
        assert!(!wrapped, "the current epoch still reaches a removed device");
    }
    for (query, want) in [("anthropic/t", &b"sk-ant-t"[..]), ("openai/e", b"sk-e")] {
        let (_, secret) = m.device.reveal(&m.key, query).unwrap();
        assert_eq!(expose(&secret), want);
    }
}

/// Admins A and B, members X and Y. Apart, A removes Y and B removes X, while X writes a
/// token that A takes and Y one that B takes. Each side then holds changes of a device the
/// other removed, past the bound the other knows, so each refuses the other: neither could
/// take the removal that makes it vouch. Each must vouch from the document it refused.
#[test]
fn two_sides_that_each_removed_a_device_the_other_took_from_both_vouch() {
    // Seeded, so the ids (and so Automerge's choices) are the same on every run. Unseeded,
    // about 3 runs in 100 diverged: a change the other side's Bloom filter wrongly claimed
    // was left out of a message, which then failed the check alone and was refused (now the
    // receiver asks for everything). These seeds were the ones that showed it.
    for seed in [0, 35, 69, 88, 97, 131, 167] {
        let _seeded = handoff::entropy::seed_thread(seed);
        two_sides_body();
    }
}

/// The same over many seeds (about 0.8 s each in a debug build):
/// `cargo test --test refusals -- --ignored`.
#[test]
#[ignore = "a long run; see the comment"]
fn two_sides_that_each_removed_a_device_the_other_took_from_both_vouch_under_many_seeds() {
    for seed in 0..500 {
        let _seeded = handoff::entropy::seed_thread(seed);
        two_sides_body();
    }
}

/// A message whose change fails the check, sent under heads naming a change it leaves out, is
/// not judged alone: the receiver asks for everything instead (an empty Bloom filter, and a
/// reset of what the sender thinks it sent). A sender that keeps leaving changes out is asked
/// a bounded number of times, then refused; the document never takes the change.
#[test]
fn a_message_that_leaves_out_what_it_names_is_asked_for_again_a_few_times_then_refused() {
    use automerge::sync::{Message, MessageFlags, MessageVersion};
    let mut a = founder();
    let mut b = pair(&mut a, "b");
    let mut y = pair_as(&mut a, "y", Role::Member);
    for other in [&mut b, &mut y] {
        open(&mut a, other);
        exchange(&mut a, other);
    }
    open(&mut b, &mut y);
    exchange(&mut b, &mut y);
    exchange(&mut a, &mut b);
    a.device.remove_member(&a.key, &y.id().to_hex()).unwrap();
    y.device
        .add_token(
            &y.key,
            Service::Anthropic,
            "late",
            b"sk-ant-late",
            false,
            false,
        )
        .unwrap();
    exchange(&mut b, &mut y);
    let actor = y.device.state().unwrap().members[&y.id()].actor.clone();
    let mut held = automerge::AutoCommit::load(&b.device.export()).unwrap();
    let late = held
        .get_changes(&[])
        .into_iter()
        // Its last change with ops (each is followed by an attestation without any).
        .filter(|c| c.actor_id().to_bytes() == actor.as_slice() && !c.is_empty())
        .max_by_key(|c| c.seq())
        .unwrap()
        .raw_bytes()
        .to_vec();
    let crafted = Message {
        heads: vec![automerge::ChangeHash([7; 32])],
        need: Vec::new(),
        have: Vec::new(),
        changes: vec![late].into(),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode();
    let before = a.device.heads_hex();
    for _ in 0..3 {
        assert_eq!(a.device.sync_receive(&b.id(), &crafted).unwrap(), 0);
        let ask = a.device.sync_generate(&b.id()).unwrap();
        let ask = Message::decode(&ask).unwrap();
        assert!(ask.changes.is_empty());
        assert_eq!(ask.have, vec![automerge::sync::Have::default()]);
        assert!(ask.flags.unwrap().contains(MessageFlags::SYNC_RESET));
    }
    let refused = a.device.sync_receive(&b.id(), &crafted).unwrap_err();
    assert!(
        refused.to_string().contains("not a member allowed"),
        "{refused}"
    );
    assert_eq!(a.device.heads_hex(), before);
    // Synced honestly, B takes the removal and vouches for the change, and the two converge.
    exchange(&mut a, &mut b);
    same_document(&mut a, &mut b);
}

fn two_sides_body() {
    let mut a = founder();
    let mut b = pair(&mut a, "b");
    let mut x = pair_as(&mut a, "x", Role::Member);
    let mut y = pair_as(&mut a, "y", Role::Member);
    for other in [&mut b, &mut x, &mut y] {
        open(&mut a, other);
        exchange(&mut a, other);
    }
    open(&mut b, &mut y);
    exchange(&mut b, &mut y);
    exchange(&mut a, &mut b);
    same_document(&mut a, &mut b);
    a.device.remove_member(&a.key, &y.id().to_hex()).unwrap();
    b.device.remove_member(&b.key, &x.id().to_hex()).unwrap();
    for (node, label) in [(&mut x, "from-x"), (&mut y, "from-y")] {
        let secret = format!("sk-ant-{label}");
        node.device
            .add_token(
                &node.key,
                Service::Anthropic,
                label,
                secret.as_bytes(),
                false,
                false,
            )
            .unwrap();
    }
    exchange(&mut a, &mut x);
    exchange(&mut b, &mut y);
    exchange(&mut a, &mut b);
    same_document(&mut a, &mut b);
    for node in [&a, &b] {
        assert!(removed(node, "x") && removed(node, "y"));
    }
    for node in [&mut a, &mut b] {
        for label in ["from-x", "from-y"] {
            let (_, secret) = node
                .device
                .reveal(&node.key, &format!("anthropic/{label}"))
                .unwrap();
            assert_eq!(expose(&secret), format!("sk-ant-{label}").as_bytes());
        }
    }
}

/// A change taken from a peer is saved in one row with the digests of the signatures checked
/// to take it: reopening the vault finds both, and the vault reads as it did.
#[test]
fn a_taken_change_is_saved_with_the_signatures_it_checked() {
    let mut a = founder();
    let mut b = pair_as(&mut a, "b", Role::Member);
    open(&mut a, &mut b);
    exchange(&mut a, &mut b);
    let home = b.device.home().clone();
    let saved = || {
        let store = handoff::store::Store::open(&home.root().join("handoff.db"), false).unwrap();
        let (_, changes) = store.doc_parts().unwrap();
        (changes.len(), store.verified_digests().unwrap().len())
    };
    let (rows, digests) = saved();
    a.device
        .add_token(&a.key, Service::Gemini, "new", b"AIzaNEW", false, false)
        .unwrap();
    exchange(&mut a, &mut b);
    let (rows_after, digests_after) = saved();
    assert_eq!(rows_after, rows + 1, "one row for the change taken");
    assert!(
        digests_after > digests,
        "the signatures checked were not saved: {digests} -> {digests_after}"
    );
    let expected = b.device.state().unwrap();
    let Node { device, _dir, .. } = b;
    drop(device);
    let reopened = Device::open(home).unwrap();
    assert_eq!(*reopened.state().unwrap(), *expected);
}
