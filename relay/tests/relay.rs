//! The blind relay end to end: the real `handoff-relay` binary on loopback, devices in this
//! process. Devices that are never online together converge through it, across relay
//! restarts and a SIGKILL between deposit and delivery; the relay's database, log and metrics
//! hold no token, vault id or sender; mailboxes are private; refusals are typed; garbage
//! closes only the connection that sent it; a subscribed recipient gets a deposit at once;
//! deposits sent ahead of their answers are answered in order.

#![allow(clippy::unwrap_used)] // a panic is the failure report

mod support;

use std::time::Duration;

use handoff_protocol::relay::{Refusal, Request, Response};
use support::common::wait::eventually;
use support::{Client, Node, RelayProc, TOKEN, contains};

fn list_relay(admin: &Node, relay: &RelayProc) {
    admin.with(|d, _| {
        d.add_relay(std::slice::from_ref(&relay.addr), Some(TOKEN.as_bytes()))
            .unwrap()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_never_online_together_converge_through_restarts_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(dir.path(), None, &[]);
    let mut a = Node::founder("alpha");
    list_relay(&a, &relay);
    let mut b = a.admit("beta"); // holds the relay entry from the vault it received

    // a alone: a token, left at the relay for b; then a goes away.
    a.go_online().await;
    a.add("first", "sk-ant-first-via-relay");
    eventually("a's envelope at the relay", || {
        a.mesh().stats().envelopes_deposited >= 1
    })
    .await;
    a.go_offline().await;
    // A graceful restart of the relay keeps it.
    relay = relay.restart();
    assert_eq!(relay.metric("handoff_relay_queued_envelopes"), 1);

    // a again, a second token, and the relay is killed outright before b comes.
    a.go_online().await;
    a.add("second", "sk-ant-second-via-relay");
    eventually("a's second envelope", || {
        a.mesh().stats().envelopes_deposited >= 1
    })
    .await;
    a.go_offline().await;
    relay = relay.kill_and_restart();
    assert_eq!(relay.metric("handoff_relay_queued_envelopes"), 2);

    // b, alone: drains its mailbox and has both.
    b.go_online().await;
    eventually("both tokens on b", || {
        b.reveal("anthropic/first").as_deref() == Some("sk-ant-first-via-relay")
            && b.reveal("anthropic/second").as_deref() == Some("sk-ant-second-via-relay")
    })
    .await;
    // Acknowledged only once applied, then gone from the relay.
    eventually("the relay emptied", || {
        relay.metric("handoff_relay_queued_envelopes") == 0
    })
    .await;
    // b restarts: nothing is delivered twice or lost.
    b.go_offline().await;
    b.go_online().await;
    assert!(b.reveal("anthropic/first").is_some());
    let heads_b = b.with(|d, _| d.heads_hex());
    a.go_online().await;
    let heads_a = a.with(|d, _| d.heads_hex());
    assert_eq!(heads_a, heads_b, "b holds exactly a's document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_admitted_while_the_recipient_was_away_reaches_it_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &[]);
    let a = Node::founder("alpha");
    list_relay(&a, &relay);
    let mut b = a.admit("beta");
    // b is away when a admits c: b has never heard of c.
    let mut c = a.admit("gamma");
    let c_id = c.with(|d, _| d.device_id());
    c.go_online().await;
    c.add("from-c", "sk-ant-from-the-new-member");
    eventually("c's envelopes at the relay", || {
        c.mesh().stats().envelopes_deposited >= 2
    })
    .await;
    c.go_offline().await;

    // b takes c's envelope: it carries c's admission, so b learns c and its token at once.
    b.go_online().await;
    eventually("c's token on b", || {
        b.reveal("anthropic/from-c").as_deref() == Some("sk-ant-from-the-new-member")
    })
    .await;
    assert!(b.with(|d, _| d.state().unwrap().members[&c_id].is_active()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_keeps_no_token_vault_id_or_sender() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &[]);
    let mut a = Node::founder("alpha");
    list_relay(&a, &relay);
    let b = a.admit("beta");
    let secret = "sk-ant-api03-KNOWN-PLAINTEXT-0123456789";
    a.go_online().await;
    a.add("known", secret);
    eventually("the envelope at the relay", || {
        relay.metric("handoff_relay_queued_envelopes") >= 1
    })
    .await;
    let (vault, sender, identity, mailbox, peer) = a.with(|d, _| {
        let state = d.state().unwrap();
        let me = &state.members[&d.device_id()];
        (
            state.info.id,
            d.device_id(),
            me.identity_pub,
            me.mailbox_pub,
            handoff::net::peer_id_for(&me.identity_pub).unwrap(),
        )
    });
    let recipient = b.with(|d, _| handoff::net::peer_id_for(&d.identity_public()).unwrap());
    let mut files = Vec::new();
    for name in ["relay.db", "relay.db-wal", "relay.log"] {
        files.push((
            name,
            std::fs::read(dir.path().join(name)).unwrap_or_default(),
        ));
    }
    files.push(("metrics", relay.metrics_text().into_bytes()));
    let db = &files[0].1;
    assert!(
        contains(db, &recipient.to_bytes()) || contains(&files[1].1, &recipient.to_bytes()),
        "the relay stores by recipient (it must, to deliver): the search below would find data"
    );
    let forbidden: Vec<(&str, Vec<u8>)> = vec![
        ("the token", secret.as_bytes().to_vec()),
        ("the vault id", vault.as_bytes().to_vec()),
        ("the vault id (hex)", vault.to_hex().into_bytes()),
        ("the sender's device id", sender.as_bytes().to_vec()),
        ("the sender's device id (hex)", sender.to_hex().into_bytes()),
        ("the sender's identity key", identity.to_vec()),
        ("the sender's mailbox key", mailbox.to_vec()),
        ("the sender's PeerId", peer.to_bytes()),
        ("the sender's PeerId (text)", peer.to_string().into_bytes()),
    ];
    for (file, bytes) in &files {
        for (what, needle) in &forbidden {
            assert!(!contains(bytes, needle), "{file} holds {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_are_private_and_every_refusal_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &["--max-mailbox-envelopes", "2"]);
    let mut stranger = Client::new();
    stranger.connect(&relay.addr).await;
    let (_, answer) = stranger.hello("not-the-token").await;
    assert_eq!(answer, Response::Refused(Refusal::Unauthorized));
    // A wrong token ends the connection: each guess costs a new handshake.
    stranger.closed().await;

    let mut owner = Client::new();
    let mut other = Client::new();
    let mut depositor = Client::new();
    for c in [&mut owner, &mut other, &mut depositor] {
        c.connect(&relay.addr).await;
    }
    let (mut deposits, welcome) = depositor.hello(TOKEN).await;
    assert_eq!(welcome, Response::Welcome);
    let to = owner.peer.to_bytes();
    let deposit = |n: u8| Request::Deposit {
        to: to.clone(),
        envelope: vec![n; 100],
    };
    let Some(Response::Stored { id: first }) = depositor.request(&mut deposits, &deposit(1)).await
    else {
        panic!("the first deposit is stored");
    };
    assert!(matches!(
        depositor.request(&mut deposits, &deposit(2)).await,
        Some(Response::Stored { .. })
    ));
    // Over the mailbox's quota: a typed refusal, and nothing lost of what was stored.
    assert_eq!(
        depositor.request(&mut deposits, &deposit(3)).await,
        Some(Response::Refused(Refusal::MailboxFull))
    );

    // Someone else subscribes: it gets its own (empty) mailbox, and its acks of the owner's
    // ids delete nothing.
    let (mut theirs, _) = other.hello(TOKEN).await;
    other.send_only(&mut theirs, &Request::Subscribe).await;
    other
        .send_only(
            &mut theirs,
            &Request::Ack {
                ids: vec![first, first + 1],
            },
        )
        .await;
    let (mut mine, _) = owner.hello(TOKEN).await;
    owner.send_only(&mut mine, &Request::Subscribe).await;
    let got: Vec<u64> = [owner.next(&mut mine).await, owner.next(&mut mine).await]
        .into_iter()
        .map(|r| match r {
            Some(Response::Deliver { id, .. }) => id,
            other => panic!("expected a delivery, got {other:?}"),
        })
        .collect();
    assert_eq!(got, [first, first + 1], "both still there, oldest first");
    assert_eq!(
        relay.metric("handoff_relay_refusals_total{reason=\"unauthorized\"}"),
        1
    );
    assert_eq!(
        relay.metric("handoff_relay_refusals_total{reason=\"mailbox_full\"}"),
        1
    );
    owner
        .send_only(&mut mine, &Request::Ack { ids: got.clone() })
        .await;
    eventually("the owner's ack empties its mailbox", || {
        relay.metric("handoff_relay_queued_envelopes") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_that_connection_only() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &[]);
    let mut good = Client::new();
    good.connect(&relay.addr).await;
    let (mut stream, welcome) = good.hello(TOKEN).await;
    assert_eq!(welcome, Response::Welcome);

    let mut garbage = Client::new();
    garbage.connect(&relay.addr).await;
    let (mut bad, _) = garbage.hello(TOKEN).await;
    garbage.raw(&mut bad, &[0, 0, 0, 3, 0xde, 0xad, 0xff]).await;
    garbage.closed().await;

    let mut liar = Client::new();
    liar.connect(&relay.addr).await;
    let (mut bad, _) = liar.hello(TOKEN).await;
    liar.raw(&mut bad, &[0x7f, 0xff, 0xff, 0xff]).await; // a 2 GiB frame
    liar.closed().await;

    let mut no_hello = Client::new();
    no_hello.connect(&relay.addr).await;
    let mut bad = no_hello.stream().await;
    no_hello.raw(&mut bad, b"GET / HTTP/1.1\r\n\r\n").await;
    no_hello.closed().await;

    // The others are served as before.
    assert!(good.is_connected());
    let to = good.peer.to_bytes();
    assert!(matches!(
        good.request(
            &mut stream,
            &Request::Deposit {
                to,
                envelope: vec![9; 64]
            }
        )
        .await,
        Some(Response::Stored { .. })
    ));
    assert!(relay.metric("handoff_relay_refusals_total{reason=\"malformed\"}") >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_recipient_gets_a_deposit_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &[]);
    let mut recipient = Client::new();
    recipient.connect(&relay.addr).await;
    let (mut inbox, _) = recipient.hello(TOKEN).await;
    recipient.send_only(&mut inbox, &Request::Subscribe).await;
    let mut sender = Client::new();
    sender.connect(&relay.addr).await;
    let (mut out, _) = sender.hello(TOKEN).await;
    for n in 0..5u8 {
        let Some(Response::Stored { id }) = sender
            .request(
                &mut out,
                &Request::Deposit {
                    to: recipient.peer.to_bytes(),
                    envelope: vec![n; 32],
                },
            )
            .await
        else {
            panic!("stored");
        };
        // Delivered while the subscription is open: pushed, not found by a later poll.
        match recipient.next(&mut inbox).await {
            Some(Response::Deliver { id: got, envelope }) => {
                assert_eq!((got, envelope), (id, vec![n; 32]));
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    // A second subscription, on another stream, takes over: it gets the mailbox from the
    // start (nothing was acknowledged) and what comes next; the first delivers no more.
    let (mut again, _) = recipient.hello(TOKEN).await;
    recipient.send_only(&mut again, &Request::Subscribe).await;
    let to = recipient.peer.to_bytes();
    for n in 0..5u8 {
        match recipient.next(&mut again).await {
            Some(Response::Deliver { envelope, .. }) => assert_eq!(envelope, vec![n; 32]),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    assert!(matches!(
        sender
            .request(
                &mut out,
                &Request::Deposit {
                    to,
                    envelope: vec![9; 32],
                },
            )
            .await,
        Some(Response::Stored { .. })
    ));
    match recipient.next(&mut again).await {
        Some(Response::Deliver { envelope, .. }) => assert_eq!(envelope, vec![9; 32]),
        other => panic!("expected a delivery, got {other:?}"),
    }
    // An observation window, not a wait: the superseded stream must stay silent.
    let quiet = tokio::time::timeout(Duration::from_millis(300), recipient.next(&mut inbox)).await;
    assert!(
        quiet.is_err(),
        "the superseded subscription delivered: {quiet:?}"
    );

    // A recipient that is not a PeerId could never be drained: refused, typed.
    assert_eq!(
        sender
            .request(
                &mut out,
                &Request::Deposit {
                    to: vec![7; 20],
                    envelope: vec![1; 8],
                },
            )
            .await,
        Some(Response::Refused(Refusal::Malformed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_sent_ahead_of_their_answers_are_answered_in_order() {
    const SENT: u8 = 100;
    const BAD: u8 = 40;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &[]);
    let mut recipient = Client::new();
    recipient.connect(&relay.addr).await;
    let mut sender = Client::new();
    sender.connect(&relay.addr).await;
    let (mut out, _) = sender.hello(TOKEN).await;
    // Every deposit written before any answer is read, more than the relay reads ahead; one
    // in the middle names no PeerId and is refused in its place.
    let answers = sender
        .drive(async {
            for n in 0..SENT {
                let to = if n == BAD {
                    vec![7; 20]
                } else {
                    recipient.peer.to_bytes()
                };
                support::send(
                    &mut out,
                    &Request::Deposit {
                        to,
                        envelope: vec![n; 64],
                    },
                )
                .await;
            }
            let mut answers = Vec::new();
            for _ in 0..SENT {
                answers.push(support::recv(&mut out).await);
            }
            answers
        })
        .await;
    let mut ids = Vec::new();
    for (n, answer) in answers.into_iter().enumerate() {
        match answer {
            Some(Response::Refused(Refusal::Malformed)) if n == usize::from(BAD) => {}
            Some(Response::Stored { id }) if n != usize::from(BAD) => ids.push(id),
            other => panic!("deposit {n} was answered {other:?}"),
        }
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "answers out of order: {ids:?}"
    );
    // What was stored is what was sent, in the order sent, under the ids answered.
    let (mut inbox, _) = recipient.hello(TOKEN).await;
    recipient.send_only(&mut inbox, &Request::Subscribe).await;
    let expected = (0..SENT).filter(|&n| n != BAD);
    for (n, id) in expected.zip(ids) {
        match recipient.next(&mut inbox).await {
            Some(Response::Deliver { id: got, envelope }) => {
                assert_eq!((got, envelope), (id, vec![n; 64]));
            }
            other => panic!("expected delivery {n}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deposit_is_retried_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &["--max-mailbox-envelopes", "1"]);
    let mut a = Node::founder("alpha");
    list_relay(&a, &relay);
    let mut b = a.admit("beta");
    a.go_online().await;
    a.add("one", "sk-ant-one");
    eventually("the first envelope", || {
        a.mesh().stats().envelopes_deposited >= 1
    })
    .await;
    // b's mailbox is full now: the next change is refused and stays with a, retried.
    a.add("two", "sk-ant-two");
    eventually("a refusal for the full mailbox", || {
        relay.metric("handoff_relay_refusals_total{reason=\"mailbox_full\"}") >= 1
    })
    .await;
    // b drains its mailbox; a's retry then gets the rest through.
    b.go_online().await;
    eventually("both tokens on b", || {
        b.reveal("anthropic/one").is_some() && b.reveal("anthropic/two").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_admits_only_its_peers() {
    let allowed = Client::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        dir.path(),
        None,
        &[
            "--access",
            "allowlist",
            "--allow",
            &allowed.peer.to_string(),
        ],
    );
    let mut allowed = allowed;
    allowed.connect(&relay.addr).await;
    assert_eq!(allowed.hello("").await.1, Response::Welcome);
    let mut other = Client::new();
    other.connect(&relay.addr).await;
    assert_eq!(
        other.hello(TOKEN).await.1,
        Response::Refused(Refusal::NotAllowed)
    );
}

/// Connections that never finish a handshake are refused past the pending cap before any
/// handshake work, and each is dropped by the connection timeout: however many a stranger
/// holds, a real client still connects, subscribes and gets a deposit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_do_not_keep_clients_out() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(dir.path(), None, &["--max-pending", "16"]);
    // A stranger on another loopback address holds 600 raw TCP connections open, sending
    // nothing: past its few pending slots, each is refused before any handshake.
    let held = hold_connections([127, 0, 0, 2], relay.port, 600).await;
    let mut recipient = Client::new();
    recipient.connect(&relay.addr).await;
    let (mut inbox, _) = recipient.hello(TOKEN).await;
    recipient.send_only(&mut inbox, &Request::Subscribe).await;
    let mut sender = Client::new();
    sender.connect(&relay.addr).await;
    let (mut out, _) = sender.hello(TOKEN).await;
    let stored = sender
        .request(
            &mut out,
            &Request::Deposit {
                to: recipient.peer.to_bytes(),
                envelope: vec![7; 64],
            },
        )
        .await;
    assert!(
        matches!(stored, Some(Response::Stored { .. })),
        "{stored:?}"
    );
    match recipient.next(&mut inbox).await {
        Some(Response::Deliver { envelope, .. }) => assert_eq!(envelope, vec![7; 64]),
        other => panic!("expected a delivery, got {other:?}"),
    }
    // The cap refused the excess before any handshake, and says so in the metrics.
    assert!(
        relay.metric("handoff_relay_connections_refused_total") > 0,
        "{}",
        relay.metrics_text()
    );
    drop(held);
}

/// Opens `n` TCP connections from `from` (a loopback address) to `port` and holds them.
async fn hold_connections(from: [u8; 4], port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
        let connected = tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await;
        match connected {
            Ok(Ok(stream)) => held.push(stream),
            other => panic!("cannot connect to the relay's port: {other:?}"),
        }
    }
    held
}
