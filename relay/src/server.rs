//! The relay's libp2p node: transports, a connection cap, and one task per stream.
//!
//! Each stream starts with a hello (version and access check), then carries deposits, a
//! subscription and acks. Deposits are answered in order, each `Stored` only once it is
//! durable, by a task of their own: a client may send the next before the last is answered,
//! and deposits waiting together share one commit. The commit wakes the recipient's
//! subscription at once if it has one. A subscription first sends what is queued,
//! oldest first, then each new envelope as it arrives; whatever is not acknowledged is sent
//! again on the next subscription. A stream that sends garbage or an oversized frame gets its
//! connection closed; every other client goes on being served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use handoff_protocol::relay::{self as proto, Refusal, Request, Response};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol, Swarm, SwarmBuilder, noise, ping, tcp, yamux,
};
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, mpsc, watch};

use crate::metrics::Metrics;
use crate::storage::{Deposited, SqliteStorage, Storage, Store};
use crate::wire;
use crate::{Access, Limits, RelayConfig, RelayError};

/// How long the listeners have to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest hello: read before the client is admitted, so no larger than it must be.
const HELLO_MAX: usize = 16 + proto::MAX_TOKEN;
/// How long the rest of a frame may take once its first byte came.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of envelopes fetched for a subscriber at a time.
const DELIVER_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Handshakes under way at once from one address.
const PENDING_PER_ADDRESS: u32 = 8;
/// Connections one client (PeerId) may hold at once.
const PER_PEER_CONNECTIONS: u32 = 8;
/// Deposits one stream may have waiting for their answers: past this, the reader waits (the
/// rest stay in the stream) until one is answered.
const PIPELINE: usize = 32;
/// How often expired envelopes and idle rate buckets are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    per_address: crate::descriptors::PendingPerAddress,
    ping: ping::Behaviour,
    streams: libp2p_stream::Behaviour,
}

/// A client's deposit allowance (token bucket).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A mailbox's live subscription: what wakes its delivery task, and the task.
struct Subscriber {
    notify: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

/// The live subscription of each mailbox.
type Subscribers = Mutex<HashMap<Vec<u8>, Subscriber>>;

/// Wakes `mailbox`'s live subscription, if it has one: called by the store's thread for each
/// mailbox a commit stored envelopes for, so no client's pace delays another's delivery.
fn wake(subscribers: &Subscribers, mailbox: &[u8]) {
    let subscribers = subscribers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(subscriber) = subscribers.get(mailbox) {
        subscriber.notify.notify_one();
    }
}

/// What every stream task shares.
struct Shared {
    store: Store,
    access: Access,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// The live subscription of each mailbox.
    subscribers: Arc<Subscribers>,
    buckets: Mutex<HashMap<PeerId, Bucket>>,
    disconnect: mpsc::UnboundedSender<PeerId>,
}

impl Shared {
    /// Takes one deposit from `peer`'s allowance.
    fn allow_deposit(&self, peer: PeerId) -> bool {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(peer).or_insert(Bucket {
            tokens: self.limits.deposit_burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.limits.deposits_per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.limits.deposit_burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Starts `mailbox`'s delivery task with a new wake-up and makes it the live one, ending
    /// the one before: a client gets one delivery task however many streams it subscribes on
    /// (each would hold a batch of envelopes in memory for a reader that may never read).
    fn subscribe(
        &self,
        mailbox: &[u8],
        start: impl FnOnce(Arc<Notify>) -> tokio::task::JoinHandle<()>,
    ) -> (AbortOnDrop, Arc<Notify>) {
        // Started under the lock: a deposit's wake-up comes either before (and the task's
        // first read finds the envelope) or after (and reaches the new task).
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let notify = Arc::new(Notify::new());
        let task = start(notify.clone());
        let old = subscribers.insert(
            mailbox.to_vec(),
            Subscriber {
                notify: notify.clone(),
                task: task.abort_handle(),
            },
        );
        drop(subscribers);
        if let Some(old) = old {
            old.task.abort();
        }
        (AbortOnDrop(task), notify)
    }

    fn unsubscribe(&self, mailbox: &[u8], notify: &Arc<Notify>) {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if subscribers
            .get(mailbox)
            .is_some_and(|s| Arc::ptr_eq(&s.notify, notify))
        {
            subscribers.remove(mailbox);
        }
    }

    fn admits(&self, peer: &PeerId, token: &[u8]) -> Result<(), Refusal> {
        match &self.access {
            Access::Open => Ok(()),
            Access::Token(secret) => {
                if bool::from(secret.as_slice().ct_eq(token)) {
                    Ok(())
                } else {
                    Err(Refusal::Unauthorized)
                }
            }
            Access::Allowlist(peers) => {
                if peers.contains(peer) {
                    Ok(())
                } else {
                    Err(Refusal::NotAllowed)
                }
            }
        }
    }
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    peer_id: PeerId,
    listen: Vec<Multiaddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    store_thread: Option<std::thread::JoinHandle<()>>,
}

/// The relay's identity, kept in its database so its PeerId survives restarts.
fn identity(storage: &mut SqliteStorage) -> Result<libp2p::identity::Keypair, RelayError> {
    const NAME: &str = "identity_ed25519";
    if let Some(secret) = storage.setting(NAME)? {
        let mut secret = zeroize::Zeroizing::new(secret);
        return libp2p::identity::Keypair::ed25519_from_bytes(&mut secret[..])
            .map_err(|e| RelayError::Start(format!("the stored identity key is damaged: {e}")));
    }
    let keypair = libp2p::identity::ed25519::Keypair::generate();
    let secret = zeroize::Zeroizing::new(keypair.secret().as_ref().to_vec());
    storage.set_setting(NAME, &secret)?;
    Ok(keypair.into())
}

/// Makes the database and its WAL files private to the relay's user.
fn make_private(db: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
}

impl Relay {
    /// Opens the database, starts listening, and serves until [`Relay::stop`].
    pub async fn start(config: RelayConfig) -> Result<Relay, RelayError> {
        let mut storage = SqliteStorage::open(&config.db)?;
        make_private(&config.db);
        let keypair = identity(&mut storage)?;
        let subscribers = Arc::new(Subscribers::default());
        let woken = subscribers.clone();
        let (store, store_thread) = Store::start(storage, config.limits, move |mailbox| {
            wake(&woken, mailbox);
        })?;
        let metrics = Arc::new(Metrics::new(store.totals.clone()));
        // Counted before the handshake: connections that never finish one cannot pin the
        // relay's descriptors, and each lasts at most the swarm's connection timeout.
        let caps = crate::descriptors::ConnectionCaps {
            pending_incoming: config.limits.max_pending,
            pending_per_address: PENDING_PER_ADDRESS,
            established_incoming: config.limits.max_connections,
            per_peer: PER_PEER_CONNECTIONS,
        };
        let start = |e: &dyn std::fmt::Display| RelayError::Start(e.to_string());
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| start(&e))?
            .with_quic()
            .with_behaviour(|_| Behaviour {
                limits: crate::descriptors::connection_limits(caps),
                per_address: crate::descriptors::PendingPerAddress::new(caps),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(30)),
                ),
                streams: libp2p_stream::Behaviour::new(),
            })
            .map_err(|e| start(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let listen = crate::listen::listen_all(&mut swarm, &config.listen, LISTEN_TIMEOUT).await?;
        let peer_id = *swarm.local_peer_id();
        let (stop, stop_rx) = watch::channel(false);
        let metrics_addr = match config.metrics {
            Some(addr) => {
                let listener =
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| RelayError::Listen {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        })?;
                let bound = listener.local_addr().ok();
                tokio::spawn(crate::metrics::serve(
                    listener,
                    metrics.clone(),
                    stop_rx.clone(),
                ));
                bound
            }
            None => None,
        };
        let mut control = swarm.behaviour().streams.new_control();
        let incoming = control
            .accept(StreamProtocol::new(proto::PROTOCOL))
            .map_err(|e| start(&e))?;
        let (disconnect, disconnects) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store,
            access: config.access.clone(),
            limits: config.limits,
            metrics,
            subscribers,
            buckets: Mutex::new(HashMap::new()),
            disconnect,
        });
        tracing::info!(%peer_id, listen = ?listen, "relay listening");
        let task = tokio::spawn(run(
            swarm,
            incoming,
            shared,
            disconnects,
            stop_rx,
            config.ttl,
        ));
        Ok(Relay {
            peer_id,
            listen,
            metrics_addr,
            stop,
            task: Some(task),
            store_thread: Some(store_thread),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses it listens on, each with `/p2p/<its PeerId>` (what clients should dial:
    /// it proves they reached this relay).
    pub fn addrs(&self) -> Vec<Multiaddr> {
        self.listen
            .iter()
            .map(|a| {
                a.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(self.peer_id))
            })
            .collect()
    }

    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Stops serving: listeners close, streams end, the store finishes what it was given.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(thread) = self.store_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!("relay stopped");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut incoming: libp2p_stream::IncomingStreams,
    shared: Arc<Shared>,
    mut disconnects: mpsc::UnboundedReceiver<PeerId>,
    mut stop: watch::Receiver<bool>,
    ttl: Duration,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { .. } => {
                    shared.metrics.connections.inc();
                }
                SwarmEvent::ConnectionClosed { .. } => {
                    shared.metrics.connections.dec();
                }
                SwarmEvent::IncomingConnectionError {
                    error: libp2p::swarm::ListenError::Denied { .. },
                    ..
                } => {
                    shared.metrics.connections_refused.inc();
                }
                _ => {}
            },
            Some((peer, stream)) = incoming.next() => {
                streams.spawn(serve_stream(shared.clone(), peer, stream));
            }
            Some(peer) = disconnects.recv() => {
                let _ = swarm.disconnect_peer_id(peer);
            }
            _ = sweep.tick() => {
                let cutoff = unix_now().saturating_sub(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Ok(n) = shared.store.expire(cutoff).await {
                        shared.metrics.expired.inc_by(n);
                    }
                    // A bucket idle this long is full again: forgetting it changes nothing.
                    if let Some(idle) = Instant::now().checked_sub(Duration::from_secs(600)) {
                        shared
                            .buckets
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .retain(|_, b| b.at > idle);
                    }
                });
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    shared.store.shutdown();
}

/// One response written but not flushed: a run of them goes out with one flush.
async fn write_unflushed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) -> std::io::Result<()> {
    wire::write_unflushed(stream, &response.encode(), proto::MAX_FRAME).await
}

/// One frame of at most `max` bytes, `None` at a clean end of stream; once a frame has begun
/// the rest of it must come within [`FRAME_TIMEOUT`].
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    wire::read_frame_within(stream, max, FRAME_TIMEOUT).await
}

/// Serves one stream: hello, then deposits, a subscription and acks.
async fn serve_stream(shared: Arc<Shared>, peer: PeerId, stream: Stream) {
    let (mut reader, mut writer) = stream.split();
    let (out, mut responses) = mpsc::channel::<Response>(16);
    let writing = tokio::spawn(async move {
        // What is queued together goes out with one flush.
        while let Some(first) = responses.recv().await {
            let mut next = Some(first);
            while let Some(response) = next {
                if write_unflushed(&mut writer, &response).await.is_err() {
                    return;
                }
                next = responses.try_recv().ok();
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.close().await;
    });
    let admitted =
        match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut reader, HELLO_MAX)).await {
            Ok(Ok(Some(bytes))) => match Request::decode(&bytes) {
                Ok(Request::Hello { version, token }) if version == proto::VERSION => {
                    shared.admits(&peer, &token)
                }
                Ok(Request::Hello { .. }) => Err(Refusal::Version),
                _ => Err(Refusal::Malformed),
            },
            _ => Err(Refusal::Malformed),
        };
    if let Err(why) = admitted {
        shared.metrics.refused(why);
        let _ = out.send(Response::Refused(why)).await;
        drop(out);
        let _ = writing.await;
        // Garbage, or a wrong token: the connection ends, so each guess at the token costs
        // a new handshake.
        if matches!(why, Refusal::Malformed | Refusal::Unauthorized) {
            let _ = shared.disconnect.send(peer);
        }
        return;
    }
    if out.send(Response::Welcome).await.is_err() {
        return;
    }
    let mailbox = peer.to_bytes();
    let mut subscription: Option<(AbortOnDrop, Arc<Notify>)> = None;
    // Deposits are answered in order by their own task, so the client may send the next
    // before the last is committed and deposits from many streams share one transaction.
    let (owe, owed) = mpsc::channel::<Owed>(PIPELINE);
    let mut answering = tokio::spawn(answer(shared.clone(), owed, out.clone()));
    let mut garbage = false;
    loop {
        let request = match read_frame(&mut reader, proto::MAX_FRAME).await {
            Ok(Some(bytes)) => Request::decode(&bytes),
            Ok(None) => break,
            Err(_) => Err(handoff_protocol::DecodeError::Invalid {
                what: "relay message",
                reason: "an unreadable or oversized frame",
            }),
        };
        match request {
            Ok(Request::Deposit { to, envelope }) => {
                let owed = if !shared.allow_deposit(peer) {
                    Owed::Refused(Refusal::RateLimited)
                } else if PeerId::from_bytes(&to).is_err() {
                    // No one could ever drain it.
                    Owed::Refused(Refusal::Malformed)
                } else {
                    let answer = shared.store.submit(to, envelope, unix_now()).await;
                    Owed::Deposit { answer }
                };
                if owe.send(owed).await.is_err() {
                    break;
                }
            }
            Ok(Request::Subscribe) => {
                if subscription.is_none() {
                    subscription = Some(shared.subscribe(&mailbox, |notify| {
                        tokio::spawn(deliver(
                            shared.clone(),
                            mailbox.clone(),
                            notify,
                            out.clone(),
                        ))
                    }));
                }
            }
            Ok(Request::Ack { ids }) => {
                // Only this client's own mailbox: ids of anyone else's are not touched.
                if let Ok(n) = shared.store.ack(mailbox.clone(), ids).await {
                    shared.metrics.acked.inc_by(n as u64);
                }
            }
            Ok(Request::Hello { .. }) | Err(_) => {
                tracing::debug!("closed a relay connection that sent garbage");
                let _ = owe.send(Owed::Refused(Refusal::Malformed)).await;
                garbage = true;
                break;
            }
        }
    }
    drop(owe);
    if garbage {
        // The connection closes once its answers, the refusal last, are out, or after a
        // while if the client does not read them.
        let _ = tokio::time::timeout(FRAME_TIMEOUT, &mut answering).await;
        let _ = shared.disconnect.send(peer);
    }
    let _ = answering.await;
    if let Some((task, notify)) = subscription {
        drop(task);
        shared.unsubscribe(&mailbox, &notify);
    }
    drop(out);
    let _ = writing.await;
}

/// What a stream owes its client, in the order its requests came.
enum Owed {
    /// A deposit queued for its commit.
    Deposit {
        answer: Deposited,
    },
    Refused(Refusal),
}

/// Answers a stream's deposits in order, each once its commit is done. If the client is gone,
/// what it still had under way is counted all the same (its commits happen regardless).
async fn answer(shared: Arc<Shared>, mut owed: mpsc::Receiver<Owed>, out: mpsc::Sender<Response>) {
    let mut listening = true;
    while let Some(next) = owed.recv().await {
        let response = match next {
            Owed::Deposit { answer } => match answer.await {
                Ok(id) => {
                    shared.metrics.deposits.inc();
                    Response::Stored { id }
                }
                Err(why) => Response::Refused(why),
            },
            Owed::Refused(why) => Response::Refused(why),
        };
        if let Response::Refused(why) = response {
            shared.metrics.refused(why);
        }
        if listening {
            listening = out.send(response).await.is_ok();
        }
    }
}

/// A task that ends with whatever owns it (a stream task aborted at shutdown takes its
/// subscription with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `mailbox`'s envelopes, queued then live, until the stream ends.
async fn deliver(
    shared: Arc<Shared>,
    mailbox: Vec<u8>,
    notify: Arc<Notify>,
    out: mpsc::Sender<Response>,
) {
    let mut after = 0;
    loop {
        let rows = match shared
            .store
            .pending(mailbox.clone(), after, DELIVER_BATCH_BYTES)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading a mailbox failed");
                return;
            }
        };
        if rows.is_empty() {
            // A deposit since the read left a permit: no wake-up is lost.
            notify.notified().await;
            continue;
        }
        for (id, envelope) in rows {
            if out.send(Response::Deliver { id, envelope }).await.is_err() {
                return;
            }
            shared.metrics.deliveries.inc();
            after = id;
        }
    }
}
