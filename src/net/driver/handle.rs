//! The mesh's handle: [`Mesh::start`] builds the swarm, starts listening, spawns the driver
//! and the acceptor tasks; the handle's methods send the driver commands or read what it
//! shares.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use handoff_protocol::DeviceId;
use handoff_protocol::pairing as pair_proto;
use handoff_protocol::sync as sync_proto;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

use super::super::behaviour;
use super::super::gate::Gate;
use super::super::mdns::{self, Discovery};
use super::super::pair::{self, Offer, OfferRequest, PairTicket};
use super::super::sync_task::Counters;
use super::super::{Host, MeshConfig, NetError, keypair, on_device};
use super::{Command, Driver, HELLOS_AT_ONCE, Internal, LISTEN_TIMEOUT, Shared, read_members};

/// What the owner can read about the mesh at any time.
#[derive(Debug, Clone, Default)]
pub struct NetView {
    pub peer_id: String,
    /// Addresses this node listens on.
    pub listen: Vec<Multiaddr>,
    /// Connected members and the address of a connection to each.
    pub online: BTreeMap<DeviceId, String>,
    /// Where the open pairing offer stands, as the driver (its one owner) last published.
    pub offer: Option<OfferPhase>,
}

/// How a request reached the member it was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A stream of its own to the member.
    Direct,
    /// Sealed to the member's mailbox, through a relay.
    Relay,
}

/// Where an open pairing offer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferPhase {
    /// Its code admits the first joiner that proves it.
    Waiting,
    /// A joiner took it; the pairing runs.
    Pairing,
}

/// Sync traffic so far (frame headers included), for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub refusals_sent: u64,
    /// Connections the gate refused (non-members).
    pub connections_refused: u64,
    /// Envelopes left at relays for members that were offline.
    pub envelopes_deposited: u64,
    /// Envelopes taken from this device's mailbox and applied.
    pub envelopes_taken: u64,
}

/// The running mesh. Dropping it stops the node (sessions persist their state first when
/// [`Mesh::stop`] is used).
pub struct Mesh {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    shared: Arc<Shared>,
    host: Arc<dyn Host>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("peer_id", &self.shared.peer_id)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Starts the node for `host`'s device: listens, dials what it knows, discovers on the LAN.
    /// Returns once every listener is up.
    pub async fn start(host: Arc<dyn Host>, config: MeshConfig) -> Result<Mesh, NetError> {
        Self::start_serving(host, config, None).await
    }

    /// The same, answering members' spawn requests with `server`.
    pub async fn start_serving(
        host: Arc<dyn Host>,
        config: MeshConfig,
        server: Option<Arc<dyn super::super::SpawnServer>>,
    ) -> Result<Mesh, NetError> {
        let secret = on_device(&host, |d, _| d.identity_secret()).await?;
        let identity = keypair(&secret)?;
        drop(secret);
        let mut registry = Registry::default();
        let counters = Arc::new(Counters::default());
        let gate = Gate::counting(counters.connections_refused.clone());
        let mut swarm = behaviour::build(identity.clone(), gate, &mut registry)?;
        let listen =
            handoff_relay::listen::listen_all(&mut swarm, &config.listen, LISTEN_TIMEOUT).await?;
        let peer_id = *swarm.local_peer_id();
        let mut control = swarm.behaviour().streams.new_control();
        let (internal_tx, internal) = mpsc::unbounded_channel();
        let sync_in = control
            .accept(StreamProtocol::new(sync_proto::PROTOCOL))
            .map_err(|e| NetError::Transport(e.to_string()))?;
        let pair_in = control
            .accept(StreamProtocol::new(pair_proto::PROTOCOL))
            .map_err(|e| NetError::Transport(e.to_string()))?;
        let spawn_in = control
            .accept(StreamProtocol::new(handoff_protocol::spawn::PROTOCOL))
            .map_err(|e| NetError::Transport(e.to_string()))?;
        let shared = Arc::new(Shared {
            peer_id,
            view: Mutex::new(NetView {
                peer_id: peer_id.to_string(),
                listen: listen.clone(),
                online: BTreeMap::new(),
                offer: None,
            }),
            counters,
            registry: Mutex::new(registry),
            nudge: watch::channel(0).0,
            applied: watch::channel(0).0,
            relayed: Arc::new(super::super::spawn_ask::Relayed::new(identity.clone())),
        });
        let mut helpers = tokio::task::JoinSet::new();
        helpers.spawn(accept_sync(sync_in, internal_tx.clone()));
        helpers.spawn(accept_spawn(spawn_in, internal_tx.clone()));
        helpers.spawn(accept_pair(pair_in, internal_tx.clone(), shared.clone()));
        let discovery = if config.mdns {
            let discovery = Discovery::start()?;
            let events = discovery.browse()?;
            helpers.spawn(browse(events, internal_tx.clone()));
            Some(discovery)
        } else {
            None
        };
        let (commands, command_rx) = mpsc::channel(16);
        let asking = control.clone();
        let mut driver = Driver {
            swarm,
            host,
            control,
            config,
            shared: shared.clone(),
            commands: command_rx,
            internal,
            internal_tx,
            members: HashMap::new(),
            connections: HashMap::new(),
            known: Vec::new(),
            syncs: HashMap::new(),
            next_link: 0,
            sync_tasks: tokio::task::JoinSet::new(),
            helpers,
            offer: None,
            discovery,
            discovery_secret: None,
            advertised_hour: None,
            listen,
            refreshing: false,
            refresh_again: false,
            static_peers: HashMap::new(),
            found_dials: HashMap::new(),
            identity,
            relays: Vec::new(),
            subscriptions: HashMap::new(),
            relay_due: None,
            relay_running: false,
            relay_again: false,
            spawn_server: server,
            spawn_serving: tokio::task::JoinSet::new(),
            spawn_per_peer: HashMap::new(),
            relayed_backlog: std::collections::VecDeque::new(),
        };
        driver.static_peers = driver
            .config
            .peers
            .iter()
            .map(|a| (a.clone(), None))
            .collect();
        // Know the members before anything can connect, so the gate never refuses one.
        let read = read_members(&driver.host).await?;
        driver.on_members(read);
        let host = driver.host.clone();
        let task = tokio::spawn(driver.run());
        Ok(Mesh {
            commands,
            control: asking,
            shared,
            host,
            task: Some(task),
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// Listen addresses, who is online, this node's PeerId.
    pub fn view(&self) -> NetView {
        self.shared.view().clone()
    }

    /// Sync traffic so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            refusals_sent: c.refusals_sent.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            envelopes_deposited: c.envelopes_deposited.load(Ordering::Relaxed),
            envelopes_taken: c.envelopes_taken.load(Ordering::Relaxed),
        }
    }

    /// Bytes through the transports (Noise/TLS, Yamux and all), as Prometheus text.
    pub fn transport_metrics(&self) -> String {
        let mut out = String::new();
        let registry = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// The document changed here: every session offers the change.
    pub fn changed(&self) {
        self.shared.nudge.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever changes from a peer were applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Dials an address (a member's; anyone else is refused by the gate).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Dial(addr, tx)).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Opens a pairing offer; its events and confirmation travel through the ticket.
    pub async fn offer(&self, request: OfferRequest) -> Result<PairTicket, NetError> {
        let (offer, ticket) = Offer::open(request)?;
        let (tx, rx) = oneshot::channel();
        self.send(Command::Offer(Box::new(offer), tx)).await?;
        rx.await.map_err(|_| NetError::Stopped)??;
        Ok(ticket)
    }

    /// Withdraws a pairing offer still waiting for its joiner (its owner went away).
    pub async fn cancel_offer(&self) -> Result<(), NetError> {
        self.send(Command::CancelOffer).await
    }

    /// Asks member `to` (PeerId `peer`) to start, list or stop agent sessions: over
    /// `/handoff/spawn/1` when a stream to it opens, otherwise (when the vault lists a relay)
    /// through a relay, waiting up to `relay_wait` for the result. Never both: a request that
    /// may have reached it directly is not sent again.
    pub async fn ask(
        &self,
        to: DeviceId,
        peer: PeerId,
        request: &handoff_protocol::spawn::Request,
        relay_wait: Duration,
    ) -> Result<(handoff_protocol::spawn::Response, Route), NetError> {
        use super::super::spawn_ask::{self, OPEN_BEFORE_RELAY, OPEN_TIMEOUT};
        let connected = self.shared.view().online.contains_key(&to);
        if connected || self.shared.relayed.relays().is_empty() {
            return spawn_ask::ask(self.control.clone(), peer, request, OPEN_TIMEOUT)
                .await
                .map(|r| (r, Route::Direct));
        }
        match spawn_ask::ask(self.control.clone(), peer, request, OPEN_BEFORE_RELAY).await {
            // No stream opened: nothing reached it.
            Err(NetError::Unreachable(why)) => {
                tracing::debug!(why, "no direct stream; asking through a relay");
            }
            other => return other.map(|r| (r, Route::Direct)),
        }
        self.shared
            .relayed
            .ask(&self.host, to, peer, request, relay_wait)
            .await
            .map(|r| (r, Route::Relay))
    }

    /// Closes every connection to `device`'s PeerId now.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Disconnect(peer)).await
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Stops the node: sessions persist their sync state, listeners close. Returns when done.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_sync(
    mut incoming: libp2p_stream::IncomingStreams,
    internal: mpsc::UnboundedSender<Internal>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        if internal.send(Internal::InboundSync(peer, stream)).is_err() {
            return;
        }
    }
}

async fn accept_spawn(
    mut incoming: libp2p_stream::IncomingStreams,
    internal: mpsc::UnboundedSender<Internal>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        if internal.send(Internal::InboundSpawn(peer, stream)).is_err() {
            return;
        }
    }
}

/// Reads each pairing stream's `Hello` (concurrently, each under its own timeout) before the
/// driver matches it to an offer.
async fn accept_pair(
    mut incoming: libp2p_stream::IncomingStreams,
    internal: mpsc::UnboundedSender<Internal>,
    shared: Arc<Shared>,
) {
    let mut hellos = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, mut stream)) = next else { return };
                // Nothing to pair with, or strangers piling up: the stream is dropped unread.
                let waiting = shared.view().offer == Some(OfferPhase::Waiting);
                if !waiting || hellos.len() >= HELLOS_AT_ONCE {
                    continue;
                }
                hellos.spawn(async move {
                    pair::read_hello(&mut stream).await.ok().map(|h| (peer, stream, h))
                });
            }
            Some(done) = hellos.join_next(), if !hellos.is_empty() => {
                if let Ok(Some((peer, stream, hello))) = done
                    && internal.send(Internal::InboundPair(peer, stream, hello)).is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn browse(
    events: mdns_sd::Receiver<mdns_sd::ServiceEvent>,
    internal: mpsc::UnboundedSender<Internal>,
) {
    while let Ok(event) = events.recv_async().await {
        if let Some(found) = mdns::found(&event)
            && internal.send(Internal::Found(found)).is_err()
        {
            return;
        }
    }
}
