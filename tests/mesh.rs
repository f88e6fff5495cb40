//! The mesh in one process: real libp2p nodes on loopback (TCP, Noise, Yamux), real stores in
//! temp dirs. Pairing over the network with a code, sync both ways, a wrong code burning the
//! offer on both sides, replayed, late and reflected pairing messages, a stranger's
//! connection closed before any sync message is answered, and a removed device shut out.
//! Every wait is on an event or a condition, under a deadline.

#![allow(clippy::unwrap_used)] // a panic is the failure report

mod common;

use std::time::Duration;

use common::mesh::{Node, WAIT, bare_swarm, join_with, loopback};
use common::wait::eventually;
use futures::StreamExt;
use handoff::doc::Role;
use handoff::net::{Multiaddr, PairCode, PairEvent, PairFailure, PairTicket};
use handoff_protocol::frame;
use handoff_protocol::pairing::{PairMessage, PairRefusal};
use libp2p::StreamProtocol;
use libp2p::swarm::SwarmEvent;

async fn next_event(ticket: &mut PairTicket) -> PairEvent {
    tokio::time::timeout(WAIT, ticket.events.recv())
        .await
        .expect("a pairing event")
        .expect("the offer is alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_with_a_code_then_sync_both_ways() {
    let a = Node::founder(loopback(true)).await;
    a.add("before", "sk-ant-before-pairing");

    let mut ticket = a.offer(false).await;
    let (dir, device, key) = join_with(&a, "beta", &ticket.code).await.unwrap();
    assert!(matches!(
        next_event(&mut ticket).await,
        PairEvent::Sas { .. }
    ));
    match next_event(&mut ticket).await {
        PairEvent::Paired { name, role, .. } => {
            assert_eq!(name, "beta");
            assert_eq!(role, Role::Member);
        }
        other => panic!("expected a pairing, got {other:?}"),
    }
    // The welcome carried the vault: the new member reads the old token at once.
    let b = Node::start(dir, device, key, loopback(true)).await;
    assert_eq!(
        b.reveal("anthropic/before").as_deref(),
        Some("sk-ant-before-pairing")
    );

    b.mesh.dial(a.addr()).await.unwrap();
    a.add("from-a", "sk-ant-from-a");
    b.until("a's new token on b", |n| {
        n.reveal("anthropic/from-a").is_some()
    })
    .await;
    b.add("from-b", "sk-ant-from-b");
    a.until("b's token on a", |n| {
        n.reveal("anthropic/from-b").as_deref() == Some("sk-ant-from-b")
    })
    .await;
    // Both hold the same document.
    b.until("identical heads", |n| {
        n.host.with(|d, _| d.heads_hex()) == a.host.with(|d, _| d.heads_hex())
    })
    .await;
    let online = a.mesh.view().online;
    assert_eq!(online.len(), 1, "{online:?}");

    // Converged, the mesh goes quiet; a nudge with nothing new sends nothing either.
    let quiet = settled(&[&a, &b]).await;
    a.mesh.changed();
    b.mesh.changed();
    tokio::time::sleep(Duration::from_secs(1)).await; // an observation window, not a wait
    assert_eq!(
        quiet,
        [a.mesh.stats(), b.mesh.stats()],
        "an idle mesh sent sync messages"
    );
    a.mesh.stop().await;
    b.mesh.stop().await;
}

/// The nodes' traffic counters once they stopped moving (unchanged over 300 ms).
async fn settled(nodes: &[&Node]) -> Vec<handoff::net::Stats> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last: Vec<_> = nodes.iter().map(|n| n.mesh.stats()).collect();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now: Vec<_> = nodes.iter().map(|n| n.mesh.stats()).collect();
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mesh never went quiet"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_voids_that_code_and_the_offer_goes_on_under_a_fresh_one() {
    let a = Node::founder(loopback(true)).await;
    let mut ticket = a.offer(false).await;
    // Same nameplate, other words.
    let right = ticket.code.clone();
    let wrong_text = format!("{}-zoo-zoo-zoo", right.nameplate());
    assert_ne!(right.text(), wrong_text);
    let (wrong, _) = PairCode::parse(&wrong_text).unwrap();
    let err = join_with(&a, "mallory", &wrong).await.unwrap_err();
    assert!(
        matches!(err, handoff::net::NetError::Pair(PairFailure::WrongCode)),
        "{err}"
    );
    // The owner is told, and handed a fresh code at once.
    let fresh = match next_event(&mut ticket).await {
        PairEvent::Renewed { code, why, .. } => {
            assert_eq!(why, PairFailure::WrongCode);
            code
        }
        other => panic!("expected a fresh code, got {other:?}"),
    };
    assert_ne!(fresh.text(), right.text());
    // The tried code is void, and a joiner with it is told so.
    let err = join_with(&a, "beta", &right).await.unwrap_err();
    assert!(
        matches!(err, handoff::net::NetError::Pair(PairFailure::Used)),
        "{err}"
    );
    assert_eq!(a.host.with(|d, _| d.state().unwrap().members.len()), 1);
    // The fresh one admits the real device.
    let (_dir, device, _key) = join_with(&a, "beta", &fresh).await.unwrap();
    assert!(matches!(
        next_event(&mut ticket).await,
        PairEvent::Sas { .. }
    ));
    assert!(matches!(
        next_event(&mut ticket).await,
        PairEvent::Paired { .. }
    ));
    let members = a.host.with(|d, _| d.state().unwrap().members.len());
    assert_eq!(members, 2);
    assert!(a.host.with(|d, _| d.is_active_peer(&device.device_id())));
}

/// A raw libp2p client speaking the pairing protocol by hand, to send what an honest joiner
/// never would.
struct Raw {
    swarm: libp2p::Swarm<libp2p_stream::Behaviour>,
    control: libp2p_stream::Control,
}

impl Raw {
    fn new() -> Raw {
        let swarm = bare_swarm();
        let control = swarm.behaviour().new_control();
        Raw { swarm, control }
    }

    /// Dials and waits for the connection (or its refusal).
    async fn connect(&mut self, addr: Multiaddr) -> libp2p::PeerId {
        self.swarm.dial(addr).unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                    self.swarm.select_next_some().await
                {
                    return peer_id;
                }
            }
        })
        .await
        .unwrap()
    }

    /// Waits until the other side closed every connection.
    async fn closed(&mut self) {
        tokio::time::timeout(WAIT, async {
            while self.swarm.connected_peers().next().is_some() {
                self.swarm.select_next_some().await;
            }
        })
        .await
        .expect("the connection is closed");
    }

    /// Sends `messages` on a new pairing stream and returns the first answer.
    async fn exchange(&mut self, peer: libp2p::PeerId, messages: &[PairMessage]) -> PairMessage {
        let mut control = self.control.clone();
        let frames: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| frame::encode(&m.encode(), 70_000).unwrap())
            .collect();
        let talk = async move {
            let mut stream = control
                .open_stream(peer, StreamProtocol::new("/handoff/pair/1"))
                .await
                .unwrap();
            use futures::{AsyncReadExt, AsyncWriteExt};
            for f in frames {
                stream.write_all(&f).await.unwrap();
            }
            stream.flush().await.unwrap();
            let mut header = [0u8; 4];
            stream.read_exact(&mut header).await.unwrap();
            let len = frame::decode_len(header, 70_000).unwrap();
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.unwrap();
            PairMessage::decode(&payload).unwrap()
        };
        tokio::pin!(talk);
        tokio::time::timeout(WAIT, async {
            loop {
                tokio::select! {
                    answer = &mut talk => return answer,
                    _ = self.swarm.select_next_some() => {}
                }
            }
        })
        .await
        .unwrap()
    }
}

fn spake_message(code: &PairCode, side_a: bool) -> [u8; 33] {
    use spake2::{Ed25519Group, Identity, Password, Spake2};
    let pw = code.password();
    let (_, msg) = if side_a {
        Spake2::<Ed25519Group>::start_a(
            &Password::new(&pw[..]),
            &Identity::new(b"x"),
            &Identity::new(b"y"),
        )
    } else {
        Spake2::<Ed25519Group>::start_b(
            &Password::new(&pw[..]),
            &Identity::new(b"x"),
            &Identity::new(b"y"),
        )
    };
    msg.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflected_replayed_and_late_pairing_messages_are_refused() {
    let a = Node::founder(loopback(true)).await;
    let mut raw = Raw::new();
    let mut ticket = a.offer(false).await;
    let peer = raw.connect(a.addr()).await;
    // A message from side A (as if the adder's own message were reflected back to it).
    let reflected = PairMessage::Hello {
        version: 1,
        nameplate: ticket.code.nameplate(),
        spake: spake_message(&ticket.code, true),
    };
    let answer = raw.exchange(peer, &[reflected]).await;
    // The adder answers its SPAKE2 message, then finds the side wrong and refuses: that
    // code is void, the offer goes on under a fresh one, and the prober is disconnected.
    assert!(matches!(answer, PairMessage::Spake(_)), "{answer:?}");
    let fresh = match next_event(&mut ticket).await {
        PairEvent::Renewed { code, why, .. } => {
            assert_eq!(why, PairFailure::WrongCode);
            code
        }
        other => panic!("expected a fresh code, got {other:?}"),
    };
    raw.closed().await;

    // Replaying the hello: the code it names is void, and it is told so.
    let peer = raw.connect(a.addr()).await;
    let replay = PairMessage::Hello {
        version: 1,
        nameplate: ticket.code.nameplate(),
        spake: spake_message(&ticket.code, false),
    };
    let answer = raw.exchange(peer, &[replay]).await;
    assert_eq!(answer, PairMessage::Refused(PairRefusal::Used));
    ticket.code = fresh;

    // A hello with another nameplate is told there is no such offer, and does not void this
    // one — the honest joiner still gets in.
    let other = PairMessage::Hello {
        version: 1,
        nameplate: ticket.code.nameplate().wrapping_add(1),
        spake: spake_message(&ticket.code, false),
    };
    let answer = raw.exchange(peer, &[other]).await;
    assert_eq!(answer, PairMessage::Refused(PairRefusal::NoSession));
    let joined = join_with(&a, "beta", &ticket.code).await;
    assert!(joined.is_ok(), "{:?}", joined.err());
    assert!(matches!(
        next_event(&mut ticket).await,
        PairEvent::Sas { .. }
    ));
    assert!(matches!(
        next_event(&mut ticket).await,
        PairEvent::Paired { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_closed_out_before_any_sync_message_is_answered() {
    let a = Node::founder(loopback(true)).await;
    a.add("secret", "sk-ant-not-for-strangers");
    let mut raw = Raw::new();
    raw.swarm.dial(a.addr()).unwrap();
    // The gate refuses the connection once the handshake names the stranger.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match raw.swarm.select_next_some().await {
                SwarmEvent::ConnectionClosed { .. } => return true,
                SwarmEvent::OutgoingConnectionError { .. } => return true,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(closed);
    assert!(raw.swarm.connected_peers().next().is_none());
    let stats = a.mesh.stats();
    assert_eq!(stats.frames_sent, 0, "{stats:?}");
    assert_eq!(stats.frames_received, 0, "{stats:?}");
}

/// Pairs a new node through `adder` over the network and starts it.
async fn paired(adder: &Node, name: &str) -> Node {
    let (dir, device, key) = pair_device(adder, name, Role::Member).await;
    Node::start(dir, device, key, loopback(true)).await
}

/// A new device of `role` paired through `adder`, not started yet.
async fn pair_device(
    adder: &Node,
    name: &str,
    role: Role,
) -> (
    tempfile::TempDir,
    handoff::device::Device,
    handoff::device::Unlocked,
) {
    let mut ticket = adder
        .offer_for(role, false, handoff::net::OFFER_LIFETIME)
        .await;
    let joined = join_with(adder, name, &ticket.code).await.unwrap();
    assert!(matches!(
        next_event(&mut ticket).await,
        PairEvent::Sas { .. }
    ));
    assert!(matches!(
        next_event(&mut ticket).await,
        PairEvent::Paired { .. }
    ));
    // The adder's own document now holds the new member; its mesh re-reads members.
    adder.mesh.changed();
    joined
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_shut_out_and_opens_nothing_new() {
    let a = Node::founder(loopback(true)).await;
    let b = paired(&a, "beta").await;
    let c = paired(&a, "gamma").await;
    b.mesh.dial(a.addr()).await.unwrap();
    c.mesh.dial(a.addr()).await.unwrap();
    a.add("old", "sk-ant-old");
    c.until("the old token on c", |n| {
        n.reveal("anthropic/old").is_some()
    })
    .await;
    b.until("the old token on b", |n| {
        n.reveal("anthropic/old").is_some()
    })
    .await;

    let c_id = c.host.with(|d, _| d.device_id());
    let removed = a
        .host
        .with(|d, k| d.remove_member(k.unwrap(), "gamma").unwrap());
    assert_eq!(removed.exposed.len(), 1, "c could read the old token");
    a.mesh.changed();
    a.add("new", "sk-ant-after-removal");
    // b learns of the removal and the new token (under the new epoch).
    b.until("the new token on b", |n| {
        n.reveal("anthropic/new").as_deref() == Some("sk-ant-after-removal")
    })
    .await;
    b.until("b sees c removed", |n| {
        n.host
            .with(|d, _| !d.state().unwrap().members[&c_id].is_active())
    })
    .await;
    // c is disconnected from both and refused when it tries again.
    eventually("a and b drop c", || {
        !a.mesh.view().online.contains_key(&c_id) && !b.mesh.view().online.contains_key(&c_id)
    })
    .await;
    let refused_before = a.mesh.stats().connections_refused;
    c.mesh.dial(a.addr()).await.unwrap();
    eventually("a refuses c's new connection", || {
        a.mesh.stats().connections_refused > refused_before
    })
    .await;

    // Given the members' later document, c's kept state opens neither the re-sealed old token
    // nor the new one.
    let export = a.host.with(|d, _| d.export());
    let imported = c.host.with(|d, _| d.import(&export));
    assert!(imported.is_ok(), "{imported:?}");
    let opens = |query: &str| c.host.with(|d, k| d.reveal(k.unwrap(), query).map(|_| ()));
    assert!(matches!(
        opens("anthropic/new"),
        Err(handoff::device::DeviceError::NoAccess(_))
    ));
    assert!(matches!(
        opens("anthropic/old"),
        Err(handoff::device::DeviceError::NoAccess(_))
    ));
    // c's own later write (a delete needs no key; c may already hold the new epoch it
    // cannot open) reaches no one:
    // offered as a document, a member refuses it whole.
    c.host.with(|d, _| d.remove_token("anthropic/old").unwrap());
    c.mesh.changed();
    let late = c.host.with(|d, _| d.export());
    for (name, member) in [("a", &a), ("b", &b)] {
        let refused = member.host.with(|d, _| d.import(&late));
        assert!(refused.is_err(), "{name} took c's late write");
    }
    assert_eq!(a.reveal("anthropic/old").as_deref(), Some("sk-ant-old"));
    assert_eq!(b.reveal("anthropic/old").as_deref(), Some("sk-ant-old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_offer_admits_no_one() {
    let a = Node::founder(loopback(true)).await;
    let mut ticket = a.offer_lasting(false, Duration::from_millis(200)).await;
    assert_eq!(
        next_event(&mut ticket).await,
        PairEvent::Failed(PairFailure::Expired)
    );
    // The door is shut again: the late joiner's connection is refused before any message.
    let err = join_with(&a, "late", &ticket.code).await.unwrap_err();
    assert!(
        matches!(err, handoff::net::NetError::Pair(PairFailure::Closed)),
        "{err}"
    );
    assert!(a.mesh.stats().connections_refused >= 1);
    let members = a.host.with(|d, _| d.state().unwrap().members.len());
    assert_eq!(members, 1);
}

/// A phone paired as `remote` whose client was modified to delete a token (a deletion it signs
/// itself, already in its own store when it connects): over the real mesh, the admin and the
/// member refuse its changes, say they are out of sync with it, and keep the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phones_forged_deletion_is_refused_over_the_mesh() {
    let a = Node::founder(loopback(true)).await;
    let b = paired(&a, "beta").await;
    b.mesh.dial(a.addr()).await.unwrap();
    a.add("work", "sk-ant-KEPT");
    b.until("the token on b", |n| n.reveal("anthropic/work").is_some())
        .await;

    let (dir, phone, _) = pair_device(&a, "phone", Role::Remote).await;
    let phone_id = phone.device_id();
    b.until("b knows the phone", |n| {
        n.host
            .with(|d, _| d.state().unwrap().members.contains_key(&phone_id))
    })
    .await;
    let home = handoff::home::Home::at(dir.path().join("home"));
    drop(phone);
    // The modified client writes a deletion signed with the phone's own key into its store.
    let store = handoff::store::Store::open(&home.root().join("handoff.db"), false).unwrap();
    let record = store.device().unwrap();
    let keys =
        handoff::vault::DeviceKeys::from_secrets(&record.identity_secret, &record.mailbox_secret);
    let (snapshot, changes) = store.doc_parts().unwrap();
    let mut doc = handoff::doc::VaultDoc::load_parts(
        &snapshot,
        changes.iter().map(Vec::as_slice),
        &phone_id,
        Some(&record.anchors),
    )
    .unwrap();
    let state = doc.state().unwrap();
    let mut gone = state.live_tokens().next().unwrap().clone();
    gone.deleted = true;
    gone.ciphertext = None;
    gone.version += 1;
    gone.updated_by = phone_id.to_hex();
    let statement =
        handoff_protocol::binding::token_version_statement(&state.info.id, &gone.signed_fields());
    doc.put_token(&gone, &keys.sign(&statement)).unwrap();
    doc.commit("token.rm", |m| keys.sign(m));
    store
        .append_change(&doc.take_unsaved().unwrap(), &[], 0)
        .unwrap();
    drop(store);
    let phone = handoff::device::Device::open(home).unwrap();
    let key = phone.unlock(common::PASSPHRASE).unwrap();
    let phone = Node::start(dir, phone, key, loopback(true)).await;
    phone.mesh.dial(a.addr()).await.unwrap();
    phone.mesh.dial(b.addr()).await.unwrap();

    for (name, member) in [("a", &a), ("b", &b)] {
        member
            .until(&format!("{name} out of sync with the phone"), |n| {
                n.host.with(|d, _| {
                    d.peers_seen().unwrap().iter().any(|p| {
                        p.device == phone_id
                            && p.out_of_sync.as_ref().is_some_and(|(_, why)| {
                                why.contains("not signed") || why.contains("not allowed")
                            })
                    })
                })
            })
            .await;
        assert_eq!(
            member.reveal("anthropic/work").as_deref(),
            Some("sk-ant-KEPT"),
            "{name} took the phone's deletion"
        );
    }
}
