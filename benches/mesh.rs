//! Mesh benchmarks on loopback: real libp2p nodes (TCP, Noise, Yamux) in one process running
//! the same mesh code the daemon hosts, with real stores in temp dirs. Each figure is printed
//! beside a baseline measured in the same run:
//!
//! - add-to-readable latency (p50, p99 over `HANDOFF_BENCH_ADDS` adds, default 100, connection
//!   up), at each vault size in `HANDOFF_BENCH_SIZES` (default 10 and 5,000 tokens, filled
//!   before the adds, so the figure is the cost at that size, not while the vault grows): a
//!   token added on one device until the other holds it, against the round trip of a bare
//!   libp2p stream (Noise + Yamux) carrying the same bytes;
//! - bytes per single-token change: sync payload and the TCP payload bytes the kernel counts
//!   (Noise, Yamux and the frames), against the Automerge change itself;
//! - a new member's first sync of a vault of the largest size: pairing into it (the welcome
//!   carries the vault), and a member catching up on it over a sync session, against sending
//!   the document's bytes once over a bare stream.
//!
//! Run: `cargo bench --bench mesh`. Bounded: every wait has a deadline.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::mesh::{Node, bare_swarm, join_request, loopback, prepare_join};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use handoff::device::Device;
use handoff::doc::Service;
use libp2p::StreamProtocol;
use libp2p::swarm::SwarmEvent;

const KEY: &str = "sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGH";

/// What the bench reads of a node beyond what the tests do.
trait Measured {
    fn transport_bytes(&self) -> u64;
    fn substream_bytes(&self) -> u64;
    async fn converged_with(&self, other: &Node);
}

impl Measured for Node {
    /// Bytes through this node's TCP sockets (payload of the TCP segments: Noise, Yamux and
    /// handoff's frames), as the kernel counts them for sockets on its listen port, both ways.
    fn transport_bytes(&self) -> u64 {
        let port = self
            .addr()
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap();
        let out = std::process::Command::new("ss")
            .args(["-tinH", "state", "established"])
            .arg(format!("( sport = :{port} )"))
            .output()
            .expect("ss (iproute2) reads the kernel's per-socket byte counters");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|field| {
                let value = field
                    .strip_prefix("bytes_acked:")
                    .or_else(|| field.strip_prefix("bytes_received:"))?;
                value.parse::<u64>().ok()
            })
            .sum()
    }

    /// Bytes through libp2p's substreams (above Noise and Yamux framing), both ways.
    fn substream_bytes(&self) -> u64 {
        self.mesh
            .transport_metrics()
            .lines()
            .filter(|l| l.starts_with("libp2p_bandwidth_bytes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits until this node's heads are `other`'s.
    async fn converged_with(&self, other: &Node) {
        self.until("the mesh converges", |n| n.heads() == other.heads())
            .await;
    }
}

/// Pairs a new device through `a` over the network; returns it (not started) and how long the
/// pairing took and how many bytes `a`'s streams moved for it (the connection is closed by the
/// time it ends, so its socket counters are gone).
async fn pair(a: &Node, name: &str) -> (tempfile::TempDir, Device, Duration, u64) {
    let ticket = a.offer(false).await;
    let (dir, pending) = prepare_join(name);
    let request = join_request(a, &ticket.code);
    let bytes_before = a.substream_bytes();
    let started = Instant::now();
    let device = handoff::net::join(pending, request).await.unwrap();
    let took = started.elapsed();
    a.mesh.changed();
    (dir, device, took, a.substream_bytes() - bytes_before)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Two bare libp2p nodes (TCP, Noise, Yamux) and one stream between them: the transport alone.
struct Bare {
    client: libp2p::Swarm<libp2p_stream::Behaviour>,
    stream: libp2p::Stream,
    server: tokio::task::JoinHandle<()>,
}

const ECHO: StreamProtocol = StreamProtocol::new("/bench/echo/1");

impl Bare {
    /// A server that answers each length-prefixed message with a one-byte ack (or an echo).
    async fn connect(echo: bool) -> Bare {
        let mut server = bare_swarm();
        server
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let mut incoming = server.behaviour().new_control().accept(ECHO).unwrap();
        let server = tokio::spawn(async move {
            let serve = async move {
                while let Some((_, mut stream)) = incoming.next().await {
                    tokio::spawn(async move {
                        let mut len = [0u8; 4];
                        while stream.read_exact(&mut len).await.is_ok() {
                            let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                            if stream.read_exact(&mut buf).await.is_err() {
                                return;
                            }
                            let reply = if echo { buf } else { vec![1] };
                            let _ = stream.write_all(&reply).await;
                            let _ = stream.flush().await;
                        }
                    });
                }
            };
            tokio::pin!(serve);
            loop {
                tokio::select! {
                    () = &mut serve => return,
                    _ = server.select_next_some() => {}
                }
            }
        });
        let mut client = bare_swarm();
        let mut control = client.behaviour().new_control();
        client.dial(addr).unwrap();
        let peer = loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                client.select_next_some().await
            {
                break peer_id;
            }
        };
        let open = control.open_stream(peer, ECHO);
        tokio::pin!(open);
        let stream = loop {
            tokio::select! {
                s = &mut open => break s.unwrap(),
                _ = client.select_next_some() => {}
            }
        };
        Bare {
            client,
            stream,
            server,
        }
    }

    /// Sends `payload` and waits for the reply of `reply_len` bytes; the time it took.
    async fn round_trip(&mut self, payload: &[u8], reply_len: usize) -> Duration {
        let started = Instant::now();
        let stream = &mut self.stream;
        let exchange = async {
            stream
                .write_all(&(payload.len() as u32).to_be_bytes())
                .await
                .unwrap();
            stream.write_all(payload).await.unwrap();
            stream.flush().await.unwrap();
            let mut reply = vec![0u8; reply_len];
            stream.read_exact(&mut reply).await.unwrap();
        };
        tokio::pin!(exchange);
        loop {
            tokio::select! {
                () = &mut exchange => break,
                _ = self.client.select_next_some() => {}
            }
        }
        started.elapsed()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let adds: usize = std::env::var("HANDOFF_BENCH_ADDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
        .max(50);
    let sizes: Vec<usize> = std::env::var("HANDOFF_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 5000]);
    println!("mesh benchmarks on loopback (TCP, Noise, Yamux), {adds} adds per vault size");
    for &size in &sizes {
        add_to_readable(size, adds).await;
    }
    first_sync(sizes.iter().copied().max().unwrap_or(1000)).await;
}

/// Fills `node`'s vault with `n` tokens through the device, as the daemon adds them; how long
/// that took.
fn fill(node: &Node, n: usize, prefix: &str) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        node.host.with(|d, k| {
            d.add_token(
                k.unwrap(),
                Service::Anthropic,
                &format!("{prefix}{i}"),
                KEY.as_bytes(),
                false,
                false,
            )
            .unwrap()
        });
    }
    started.elapsed()
}

/// Add-to-readable latency and bytes per change with `size` tokens in the vault already.
async fn add_to_readable(size: usize, adds: usize) {
    let a = Node::founder(loopback(false)).await;
    let filled = fill(&a, size, "bulk");
    let (dir, device, _, _) = pair(&a, "beta").await;
    let key = device.unlock(common::PASSPHRASE).unwrap();
    let b = Node::start(dir, device, key, loopback(false)).await;
    b.mesh.dial(a.addr()).await.unwrap();
    a.add("warmup", KEY);
    b.converged_with(&a).await;

    let mut latencies = Vec::with_capacity(adds);
    let mut local = Vec::with_capacity(adds);
    let (sync_before, wire_before) = (
        a.mesh.stats().bytes_sent + a.mesh.stats().bytes_received,
        a.transport_bytes(),
    );
    let export_before = a.host.with(|d, _| d.export());
    for i in 0..adds {
        let started = Instant::now();
        let id = a.add(&format!("t{i}"), KEY);
        local.push(started.elapsed());
        b.until("the new token on b", |n| {
            n.host
                .with(|d, _| d.state().unwrap().tokens.contains_key(&id))
        })
        .await;
        latencies.push(started.elapsed());
        // Let the last acknowledgements settle so each add is measured on a quiet mesh: same
        // heads, then a pause for the answer to the answer, which carries nothing new.
        a.converged_with(&b).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sync_bytes = a.mesh.stats().bytes_sent + a.mesh.stats().bytes_received - sync_before;
    let wire_bytes = a.transport_bytes() - wire_before;
    let change_len = {
        let mut before = automerge::AutoCommit::load(&export_before).unwrap();
        let mut after = automerge::AutoCommit::load(&a.host.with(|d, _| d.export())).unwrap();
        after.save_after(&before.get_heads()).len() / adds
    };

    let mut bare = Bare::connect(false).await;
    let payload = vec![7u8; (sync_bytes as usize / adds).max(1)];
    let mut rtts = Vec::with_capacity(adds);
    for _ in 0..adds {
        rtts.push(bare.round_trip(&payload, 1).await);
    }
    drop(bare);
    let base50 = percentile(&mut rtts, 0.5);
    let base99 = percentile(&mut rtts, 0.99);
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    let local50 = percentile(&mut local, 0.5);
    println!(
        "\nadd-to-readable latency, {size} tokens in the vault (filling them took {:.1} s), {adds} adds, connection up:",
        filled.as_secs_f64()
    );
    println!(
        "  baseline: bare stream round trip of {} bytes  p50 {}  p99 {}",
        payload.len(),
        ms(base50),
        ms(base99)
    );
    println!(
        "  token add on A until B holds it              p50 {} (x{:.1})  p99 {} (x{:.1})",
        ms(p50),
        p50.as_secs_f64() / base50.as_secs_f64(),
        ms(p99),
        p99.as_secs_f64() / base99.as_secs_f64()
    );
    println!(
        "  of which the local add on A (seal, validate, commit to SQLite)  p50 {}",
        ms(local50)
    );
    println!("\nbytes per single-token change (both directions, per add):");
    println!("  baseline: the Automerge change itself     {change_len} bytes");
    println!(
        "  sync messages (frames)                    {} bytes (x{:.1})",
        sync_bytes / adds as u64,
        (sync_bytes / adds as u64) as f64 / change_len as f64
    );
    println!(
        "  on the wire (TCP payload: Noise, Yamux)   {} bytes (x{:.1})",
        wire_bytes / adds as u64,
        (wire_bytes / adds as u64) as f64 / change_len as f64
    );
    a.mesh.stop().await;
    b.mesh.stop().await;
}

/// A new member's first sync of a vault of `size` tokens: pairing into it, and a member that
/// joined when it was empty catching up by sync.
async fn first_sync(size: usize) {
    let a = Node::founder(loopback(false)).await;
    // c joins now and then goes away while the vault grows.
    let (c_dir, c_device, _, _) = pair(&a, "gamma").await;
    let filled = fill(&a, size, "bulk");
    let snapshot = a.host.with(|d, _| d.export());

    let mut bare = Bare::connect(true).await;
    let mut sends = Vec::new();
    for _ in 0..5 {
        sends.push(bare.round_trip(&snapshot, snapshot.len()).await);
    }
    drop(bare);
    let base = percentile(&mut sends, 0.5);

    let (_d_dir, _d_device, pair_took, pair_bytes) = pair(&a, "delta").await;

    let c_key = c_device.unlock(common::PASSPHRASE).unwrap();
    let c = Node::start(c_dir, c_device, c_key, loopback(false)).await;
    let wire_before = a.transport_bytes();
    let sync_before = a.mesh.stats().bytes_sent + a.mesh.stats().bytes_received;
    let started = Instant::now();
    c.mesh.dial(a.addr()).await.unwrap();
    c.converged_with(&a).await;
    let catch_up = started.elapsed();
    let catch_up_wire = a.transport_bytes() - wire_before;
    let catch_up_sync = a.mesh.stats().bytes_sent + a.mesh.stats().bytes_received - sync_before;

    println!(
        "\nfirst sync of a {size}-token vault ({} byte document; filling it took {:.1} s):",
        snapshot.len(),
        filled.as_secs_f64()
    );
    println!(
        "  baseline: the document's bytes sent over a bare stream (and echoed)  {}",
        ms(base)
    );
    println!(
        "  pairing a new member (welcome carries the vault)  {} (x{:.1}), {} bytes in streams (x{:.2} of the document)",
        ms(pair_took),
        pair_took.as_secs_f64() / base.as_secs_f64(),
        pair_bytes,
        pair_bytes as f64 / snapshot.len() as f64
    );
    println!(
        "  a member catching up on {size} tokens by sync      {} (x{:.1}), {} bytes of sync messages, {} on the wire (x{:.2} of the document)",
        ms(catch_up),
        catch_up.as_secs_f64() / base.as_secs_f64(),
        catch_up_sync,
        catch_up_wire,
        catch_up_wire as f64 / snapshot.len() as f64
    );
    a.mesh.stop().await;
    c.mesh.stop().await;
}
