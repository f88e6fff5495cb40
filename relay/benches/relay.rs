//! Relay benchmarks on loopback, each figure beside a baseline measured in the same run:
//!
//! - sustained deposits per second of 1 KiB envelopes, durable (SQLite WAL, synchronous
//!   FULL), from 8 clients at once, against the same clients getting a bare acknowledgement
//!   from a server that stores nothing, and against SQLite committing one row per transaction;
//! - delivery latency to a subscribed recipient (p50, p99), against a bare stream round trip;
//! - the relay process's memory (RSS) idle, with 10,000 queued envelopes, and with 1,000 idle
//!   connections besides.
//!
//! Run: `cargo bench -p handoff-relay`. Bounded: fixed counts, every wait under a deadline.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::BufRead;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use handoff_protocol::frame;
use handoff_protocol::relay::{MAX_FRAME, Request, Response};
use handoff_relay::{Access, Limits, Relay, RelayConfig};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, StreamProtocol};

const WAIT: Duration = Duration::from_secs(300);
const CLIENTS: usize = 8;
const DEPOSITS: usize = 8000;
/// Deposits each client has sent ahead of their answers: one (each waits for its `Stored`),
/// and a window, as a node leaving several envelopes for one member does.
const WINDOWS: [usize; 2] = [1, 16];
const ENVELOPE: usize = 1024;
const LATENCY_SAMPLES: usize = 200;
const QUEUED: usize = 10_000;
const IDLE_CONNECTIONS: usize = 1000;
/// Connections the relay lets one client hold at once.
const CONNECTIONS_PER_CLIENT: usize = 8;
const RELAY: StreamProtocol = StreamProtocol::new("/handoff/relay/1");
const BARE: StreamProtocol = StreamProtocol::new("/bench/ack/1");

type Swarm = libp2p::Swarm<libp2p_stream::Behaviour>;

fn swarm() -> Swarm {
    support::common::mesh::bare_swarm()
}

/// A client swarm driven in the background, and a stream to the server.
struct Client {
    peer: PeerId,
    stream: libp2p::Stream,
    _driver: tokio::task::JoinHandle<()>,
}

async fn client(addr: &Multiaddr, protocol: StreamProtocol) -> Client {
    let mut swarm = swarm();
    let peer = *swarm.local_peer_id();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(addr.clone()).unwrap();
    let server = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
            break peer_id;
        }
    };
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let stream = control.open_stream(server, protocol).await.unwrap();
    Client {
        peer,
        stream,
        _driver: driver,
    }
}

async fn send(stream: &mut libp2p::Stream, payload: &[u8]) {
    stream
        .write_all(&frame::encode(payload, MAX_FRAME).unwrap())
        .await
        .unwrap();
    stream.flush().await.unwrap();
}

async fn recv(stream: &mut libp2p::Stream) -> Vec<u8> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.unwrap();
    let mut payload = vec![0u8; frame::decode_len(header, MAX_FRAME).unwrap()];
    stream.read_exact(&mut payload).await.unwrap();
    payload
}

async fn relay_client(addr: &Multiaddr) -> Client {
    let mut c = client(addr, RELAY).await;
    send(
        &mut c.stream,
        &Request::Hello {
            version: 1,
            token: Vec::new(),
        }
        .encode(),
    )
    .await;
    assert_eq!(
        Response::decode(&recv(&mut c.stream).await).unwrap(),
        Response::Welcome
    );
    c
}

fn deposit(to: &PeerId, n: usize) -> Vec<u8> {
    let mut envelope = vec![0u8; ENVELOPE];
    envelope[..8].copy_from_slice(&(n as u64).to_be_bytes());
    Request::Deposit {
        to: to.to_bytes(),
        envelope,
    }
    .encode()
}

/// A server that answers every frame with a one-byte frame and stores nothing.
async fn bare_server() -> (Multiaddr, tokio::task::JoinHandle<()>) {
    let mut server = swarm();
    server
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let mut incoming = server.behaviour().new_control().accept(BARE).unwrap();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some((_, mut stream)) = incoming.next() => {
                    tokio::spawn(async move {
                        let mut header = [0u8; 4];
                        while stream.read_exact(&mut header).await.is_ok() {
                            let mut payload = vec![0u8; frame::decode_len(header, MAX_FRAME).unwrap()];
                            if stream.read_exact(&mut payload).await.is_err() {
                                return;
                            }
                            send(&mut stream, &[1]).await;
                        }
                    });
                }
                _ = server.select_next_some() => {}
            }
        }
    });
    (addr, task)
}

/// `CLIENTS` clients sending `DEPOSITS` frames in all, each with up to `window` sent ahead
/// of their answers (which come in order); frames/s.
async fn throughput(clients: Vec<Client>, recipient: PeerId, window: usize) -> f64 {
    let per = DEPOSITS / clients.len();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut answered = 0;
            for n in 0..per {
                if n >= answered + window {
                    stored_or_acked(&recv(&mut c.stream).await);
                    answered += 1;
                }
                send(&mut c.stream, &deposit(&recipient, i * per + n)).await;
            }
            while answered < per {
                stored_or_acked(&recv(&mut c.stream).await);
                answered += 1;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    (per * CLIENTS) as f64 / started.elapsed().as_secs_f64()
}

fn stored_or_acked(answer: &[u8]) {
    assert!(
        answer.len() == 1 || answer[0] == 0x82,
        "stored or acked, not {answer:?}"
    );
}

/// SQLite with synchronous = FULL committing one 1 KiB row per transaction: rows/s.
fn sqlite_single_commits(dir: &std::path::Path) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("baseline.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, mailbox BLOB, body BLOB);",
    )
    .unwrap();
    let body = vec![7u8; ENVELOPE];
    let n = 500;
    let started = Instant::now();
    for _ in 0..n {
        conn.execute("INSERT INTO t (mailbox, body) VALUES (x'01', ?1)", [&body])
            .unwrap();
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new(dir.path().join("relay.db"), Access::Open);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.limits = Limits {
        deposits_per_second: 1e9,
        deposit_burst: 1e9,
        ..Limits::default()
    };
    let relay = Relay::start(config).await.unwrap();
    let addr = relay.addrs()[0].clone();
    println!("relay benchmarks on loopback (TCP, Noise, Yamux)\n");

    // --- sustained deposits ---
    let (bare_addr, bare_task) = bare_server().await;
    println!(
        "sustained deposits of {ENVELOPE}-byte envelopes, {CLIENTS} clients, {DEPOSITS} in all:"
    );
    let single = sqlite_single_commits(dir.path());
    println!("  baseline: SQLite FULL, one commit per row                 {single:>8.0} /s");
    for window in WINDOWS {
        // A mailbox of its own for each run: the last run's envelopes are still queued.
        let recipient = PeerId::random();
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(client(&bare_addr, BARE).await);
        }
        let bare = throughput(clients, recipient, window).await;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(relay_client(&addr).await);
        }
        let deposits = throughput(clients, recipient, window).await;
        println!("  {window:>2} in flight per client:");
        println!("    baseline: bare acknowledgements, nothing stored       {bare:>8.0} /s");
        println!(
            "    relay, stored durably before each Stored              {deposits:>8.0} /s (x{:.2} of bare, x{:.1} of one commit per row)",
            deposits / bare,
            deposits / single
        );
    }

    // --- delivery latency to a subscriber ---
    let mut subscriber = relay_client(&addr).await;
    send(&mut subscriber.stream, &Request::Subscribe.encode()).await;
    let mut sender = relay_client(&addr).await;
    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for n in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        send(&mut sender.stream, &deposit(&subscriber.peer, n)).await;
        let delivered = tokio::time::timeout(WAIT, recv(&mut subscriber.stream))
            .await
            .unwrap();
        latencies.push(started.elapsed());
        let Response::Deliver { id, .. } = Response::decode(&delivered).unwrap() else {
            panic!("a delivery");
        };
        let _ = recv(&mut sender.stream).await; // its Stored
        send(
            &mut subscriber.stream,
            &Request::Ack { ids: vec![id] }.encode(),
        )
        .await;
    }
    let mut bare_client = client(&bare_addr, BARE).await;
    let mut rtts = Vec::with_capacity(LATENCY_SAMPLES);
    for n in 0..LATENCY_SAMPLES {
        let started = Instant::now();
        send(&mut bare_client.stream, &deposit(&subscriber.peer, n)).await;
        let _ = recv(&mut bare_client.stream).await;
        rtts.push(started.elapsed());
    }
    bare_task.abort();
    let (b50, b99) = (percentile(&mut rtts, 0.5), percentile(&mut rtts, 0.99));
    let (p50, p99) = (
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    );
    println!("\ndelivery to a subscribed recipient ({LATENCY_SAMPLES} envelopes):");
    println!(
        "  baseline: bare round trip       p50 {}  p99 {}",
        ms(b50),
        ms(b99)
    );
    println!(
        "  deposit until delivered         p50 {} (x{:.1})  p99 {} (x{:.1})",
        ms(p50),
        p50.as_secs_f64() / b50.as_secs_f64(),
        ms(p99),
        p99.as_secs_f64() / b99.as_secs_f64()
    );
    relay.stop().await;

    // --- memory of the relay process ---
    let mem_dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_handoff-relay"))
        .args([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--access",
            "open",
        ])
        .arg("--db")
        .arg(mem_dir.path().join("relay.db"))
        .args(["--rate", "1000000", "--burst", "1000000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let addr: Multiaddr = line.trim_start_matches("listening on ").parse().unwrap();
    let pid = child.id();
    let idle = rss_mib(pid);
    let mut filler = relay_client(&addr).await;
    for n in 0..QUEUED {
        // 100 recipients, 100 envelopes each.
        let to = PeerId::from_bytes(&peer_bytes(n % 100)).unwrap();
        send(&mut filler.stream, &deposit(&to, n)).await;
        let _ = recv(&mut filler.stream).await;
    }
    let queued = rss_mib(pid);
    let relay_peer = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(p) => Some(p),
            _ => None,
        })
        .unwrap();
    // The relay holds a few connections per client and a few handshakes per address at once:
    // distinct clients, each connecting CONNECTIONS_PER_CLIENT times, one handshake at a time.
    let mut idle_clients = Vec::new();
    for _ in 0..IDLE_CONNECTIONS / CONNECTIONS_PER_CLIENT {
        let mut one = swarm();
        for _ in 0..CONNECTIONS_PER_CLIENT {
            one.dial(
                DialOpts::peer_id(relay_peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::Always)
                    .build(),
            )
            .unwrap();
            tokio::time::timeout(WAIT, async {
                loop {
                    match one.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { .. } => break,
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            panic!("the relay refused an idle connection: {error}")
                        }
                        _ => {}
                    }
                }
            })
            .await
            .unwrap();
        }
        idle_clients.push(tokio::spawn(async move {
            loop {
                one.select_next_some().await;
            }
        }));
    }
    let connected = rss_mib(pid);
    println!("\nrelay process memory (RSS):");
    println!("  baseline: idle                                   {idle:>7.1} MiB");
    println!(
        "  with {QUEUED} queued {ENVELOPE}-byte envelopes          {queued:>7.1} MiB (x{:.2})",
        queued / idle
    );
    println!(
        "  and {IDLE_CONNECTIONS} idle connections besides             {connected:>7.1} MiB (x{:.2}; {:.1} KiB per connection)",
        connected / idle,
        (connected - queued) * 1024.0 / IDLE_CONNECTIONS as f64
    );
    for c in idle_clients {
        c.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A valid PeerId's bytes for recipient `n` (an identity multihash of a fixed key).
fn peer_bytes(n: usize) -> Vec<u8> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(n as u64).to_be_bytes());
    let key = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
    key.public().to_peer_id().to_bytes()
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
