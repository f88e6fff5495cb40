//! The mesh's event loop and its handle.
//!
//! [`Mesh::start`] builds the swarm, starts listening and spawns the driver, which alone owns
//! the swarm. Everything else talks to it through channels: the [`Mesh`] handle sends
//! commands (dial, open a pairing offer, stop), session tasks report what they applied and
//! when they end, small acceptor tasks hand over inbound streams, the mDNS browser hands over
//! what it found. What others may read without a round trip (listen addresses, who is
//! online, traffic counters) sits in [`Shared`].
//!
//! The member set comes from the document: the driver re-reads it after every change (local or
//! applied from a peer), updates the gate, ends sessions with peers that are no longer
//! members, and starts sessions with connected members.
//!
//! The handle and start-up are in `handle`, the relay subscriptions and deposit rounds in
//! `relays`; the event loop itself is here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use handoff_protocol::DeviceId;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Stream, Swarm, identify};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::mdns::{self, Discovery, Found, Ports};
use super::pair::{self, Hello, Offer, PairEvent};
use super::relay::RelayTarget;
use super::sync_task::{Counters, Report, SyncTask};
use super::{Host, MeshConfig, NetError, member_peers, on_device};

mod handle;
mod offer;
mod relays;

use offer::{OfferState, OpenOffer};

pub use handle::{Mesh, NetView, OfferPhase, Route, Stats};

/// How long `start` waits for its listeners.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for sessions to persist their state.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How many addresses of a peer are remembered.
const ADDRS_KEPT: usize = 8;
/// How long an address found on the LAN is not dialled again.
const FOUND_COOLDOWN: Duration = Duration::from_secs(60);
/// Most pairing streams read at once (each waits for its hello under a timeout).
const HELLOS_AT_ONCE: usize = 8;
/// Relayed spawn requests kept waiting for room, at most, and of one member.
const BACKLOG_MAX: usize = 32;
const BACKLOG_PER_PEER: usize = 8;
/// How long after a broken session (on a connection that stays up) a new one starts.
const SESSION_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Shared {
    peer_id: PeerId,
    view: Mutex<NetView>,
    counters: Arc<Counters>,
    registry: Mutex<Registry>,
    /// Bumped whenever this document changed; every session offers on a bump.
    nudge: watch::Sender<u64>,
    /// Bumped whenever changes from a peer were applied.
    applied: watch::Sender<u64>,
    /// Spawn requests sent through a relay, and what sending one needs.
    relayed: Arc<super::spawn_ask::Relayed>,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, NetView> {
        self.view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    Offer(Box<Offer>, oneshot::Sender<Result<(), NetError>>),
    Disconnect(PeerId),
    CancelOffer,
    Stop(oneshot::Sender<()>),
}

/// What helper tasks tell the driver.
enum Internal {
    Sync(Report),
    InboundSync(PeerId, Stream),
    InboundPair(PeerId, Stream, Hello),
    InboundSpawn(PeerId, Stream),
    /// A spawn request or result from a member, through a relay.
    RelayedSpawn(DeviceId, handoff_protocol::envelope::Kind, Vec<u8>),
    Members(MemberRead),
    /// A relay round ended; `retry` if a deposit should be tried again later.
    RelayRoundDone {
        retry: bool,
    },
    /// An attempt by the joiner at this PeerId ended.
    OfferEnded(PeerId, pair::Attempt),
    Found(Found),
    /// Try a session with this peer again.
    Retry(PeerId),
    /// Reading the member set failed: read it again.
    RefreshFailed,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Dial(..) => "Dial",
            Command::Offer(..) => "Offer",
            Command::Disconnect(_) => "Disconnect",
            Command::CancelOffer => "CancelOffer",
            Command::Stop(_) => "Stop",
        })
    }
}

/// A running session, as the driver holds it.
struct SyncLink {
    id: u64,
    inbound: mpsc::Sender<Stream>,
    /// Dropped to end the session.
    _stop: oneshot::Sender<()>,
}

struct Driver {
    swarm: Swarm<Behaviour>,
    host: Arc<dyn Host>,
    control: libp2p_stream::Control,
    config: MeshConfig,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    internal: mpsc::UnboundedReceiver<Internal>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    members: HashMap<PeerId, DeviceId>,
    /// Connected peers and the address of one connection to each.
    connections: HashMap<PeerId, Multiaddr>,
    /// Known addresses of members, for redialling.
    known: Vec<(PeerId, Vec<Multiaddr>)>,
    syncs: HashMap<PeerId, SyncLink>,
    next_link: u64,
    sync_tasks: tokio::task::JoinSet<()>,
    /// Acceptors and the LAN browser: they live as long as the node.
    helpers: tokio::task::JoinSet<()>,
    /// The pairing offer: this is its one owner (the view only mirrors its phase).
    offer: Option<OpenOffer>,
    discovery: Option<Discovery>,
    discovery_secret: Option<[u8; 32]>,
    advertised_hour: Option<u64>,
    listen: Vec<Multiaddr>,
    refreshing: bool,
    refresh_again: bool,
    /// Configured peer addresses and the peer each last reached.
    static_peers: HashMap<Multiaddr, Option<PeerId>>,
    /// Addresses found on the LAN and when they were last dialled.
    found_dials: HashMap<Multiaddr, tokio::time::Instant>,
    /// This device's libp2p identity (relay subscriptions run under it).
    identity: libp2p::identity::Keypair,
    /// The relays the vault lists.
    relays: Vec<RelayTarget>,
    /// A subscription task per relay, by the relay's settings.
    subscriptions: HashMap<String, tokio::task::JoinHandle<()>>,
    /// When offline members' changes go to the relays next.
    relay_due: Option<tokio::time::Instant>,
    relay_running: bool,
    relay_again: bool,
    /// Who answers members' spawn requests (none: they are not served), and those in flight.
    spawn_server: Option<Arc<dyn super::SpawnServer>>,
    spawn_serving: tokio::task::JoinSet<PeerId>,
    /// Requests in flight per member (each may hold only a share of the slots).
    spawn_per_peer: HashMap<PeerId, usize>,
    /// Relayed spawn requests waiting for room: (sender, its PeerId, the request's bytes).
    relayed_backlog: std::collections::VecDeque<(DeviceId, PeerId, Vec<u8>)>,
}

impl Driver {
    async fn run(mut self) {
        let mut redial = tokio::time::interval(self.config.redial_every);
        let mut minute = tokio::time::interval(Duration::from_secs(60));
        let mut nudges = self.shared.nudge.subscribe();
        let stopped = loop {
            let offer_deadline = self.offer.as_ref().map(|o| o.deadline);
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm(event),
                command = self.commands.recv() => match command {
                    Some(Command::Stop(done)) => break Some(done),
                    Some(command) => self.on_command(command),
                    None => break None,
                },
                Some(message) = self.internal.recv() => self.on_internal(message),
                changed = nudges.changed() => {
                    if changed.is_ok() {
                        self.refresh();
                        self.schedule_relay(self.config.relay_grace);
                    }
                }
                _ = redial.tick() => {
                    self.redial();
                    self.schedule_relay(Duration::ZERO);
                }
                _ = minute.tick() => self.advertise(),
                () = sleep_until(offer_deadline) => self.expire_offer(),
                () = sleep_until(self.relay_due) => self.relay_round(),
                Some(_) = self.sync_tasks.join_next(), if !self.sync_tasks.is_empty() => {}
                Some(done) = self.spawn_serving.join_next(), if !self.spawn_serving.is_empty() => {
                    if let Ok(peer) = done
                        && let Some(n) = self.spawn_per_peer.get_mut(&peer)
                    {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.spawn_per_peer.remove(&peer);
                        }
                    }
                    // An answer may have written to the document (its audit entry).
                    self.shared.nudge.send_modify(|n| *n = n.wrapping_add(1));
                    self.serve_backlog();
                }
            }
        };
        self.shutdown().await;
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    async fn shutdown(&mut self) {
        self.syncs.clear(); // each session persists its state and ends
        let tasks = &mut self.sync_tasks;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        self.sync_tasks.abort_all();
        self.spawn_serving.abort_all();
        self.helpers.abort_all();
        for (_, task) in self.subscriptions.drain() {
            task.abort();
        }
        if let Some(discovery) = self.discovery.take() {
            discovery.shutdown();
        }
    }

    /// A member's spawn request: served when this node has a server and room for it.
    fn on_spawn_stream(&mut self, peer: PeerId, stream: Stream) {
        let Some(device) = self.members.get(&peer).copied() else {
            return;
        };
        if !self.swarm.behaviour().gate.is_member(&peer) {
            return;
        }
        let Some(server) = self.spawn_room(peer) else {
            return;
        };
        self.spawn_serving.spawn(async move {
            super::spawn_ask::serve(stream, device, server).await;
            peer
        });
    }

    /// A member's spawn request through a relay, served as one on a stream is; or the result
    /// of one this device sent.
    fn on_relayed_spawn(
        &mut self,
        from: DeviceId,
        kind: handoff_protocol::envelope::Kind,
        body: Vec<u8>,
    ) {
        if kind == handoff_protocol::envelope::Kind::SpawnResult {
            self.shared.relayed.result(from, &body);
            return;
        }
        if self.spawn_server.is_none() {
            tracing::info!("a spawn request came through a relay; this node serves none");
            return;
        }
        let Some(peer) = self
            .members
            .iter()
            .find(|(_, device)| **device == from)
            .map(|(peer, _)| *peer)
        else {
            return;
        };
        let Some(server) = self.spawn_room(peer) else {
            // Acknowledged at the relay already: kept here (bounded) until there is room,
            // never dropped for being one too many.
            let theirs = self.relayed_backlog.iter().filter(|r| r.1 == peer).count();
            if self.relayed_backlog.len() < BACKLOG_MAX && theirs < BACKLOG_PER_PEER {
                self.relayed_backlog.push_back((from, peer, body));
            } else {
                tracing::warn!("dropped a relayed spawn request: too many wait already");
            }
            return;
        };
        self.serve_relayed(server, from, peer, body);
    }

    /// Serves the relayed requests that wait, as far as there is room.
    fn serve_backlog(&mut self) {
        for _ in 0..self.relayed_backlog.len() {
            let Some((from, peer, body)) = self.relayed_backlog.pop_front() else {
                return;
            };
            match self.spawn_room(peer) {
                Some(server) => self.serve_relayed(server, from, peer, body),
                None => self.relayed_backlog.push_back((from, peer, body)),
            }
        }
    }

    fn serve_relayed(
        &mut self,
        server: Arc<dyn super::SpawnServer>,
        from: DeviceId,
        peer: PeerId,
        body: Vec<u8>,
    ) {
        let (host, relayed) = (self.host.clone(), self.shared.relayed.clone());
        self.spawn_serving.spawn(async move {
            super::spawn_ask::answer_relayed(server, host, relayed, from, peer, body).await;
            peer
        });
    }

    /// The server, when this node has one and room for another request of `peer`'s (counted
    /// until its task ends); more are dropped unanswered.
    fn spawn_room(&mut self, peer: PeerId) -> Option<Arc<dyn super::SpawnServer>> {
        let server = self.spawn_server.clone()?;
        let mine = self.spawn_per_peer.get(&peer).copied().unwrap_or(0);
        if self.spawn_serving.len() >= super::spawn_ask::SERVED_AT_ONCE
            || mine >= super::spawn_ask::SERVED_PER_PEER
        {
            return None;
        }
        *self.spawn_per_peer.entry(peer).or_default() += 1;
        Some(server)
    }

    fn connected(&self) -> Vec<PeerId> {
        self.swarm.connected_peers().copied().collect()
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                self.connections
                    .entry(peer_id)
                    .or_insert_with(|| addr.clone());
                self.publish_online();
                if endpoint.is_dialer() {
                    self.remember(peer_id, vec![addr.clone()]);
                }
                if let Some(peer) = self.static_peers.get_mut(&addr) {
                    *peer = Some(peer_id);
                }
                self.ensure_sync(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.syncs.remove(&peer_id);
                self.connections.remove(&peer_id);
                self.publish_online();
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                self.listen.push(address.clone());
                self.shared.view().listen.push(address.clone());
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen.retain(|a| *a != address);
                self.shared.view().listen.retain(|a| *a != address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if self.members.contains_key(&peer_id) => {
                let addrs = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| !is_unspecified(a))
                    .take(ADDRS_KEPT)
                    .collect();
                self.remember(peer_id, addrs);
            }
            _ => {}
        }
    }

    /// Stores where a member can be reached.
    fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let Some(device) = self.members.get(&peer).copied() else {
            return;
        };
        if addrs.is_empty() {
            return;
        }
        let host = self.host.clone();
        tokio::spawn(async move {
            let _ = on_device(&host, move |d, _| d.note_peer_addr(&device, &addrs)).await;
        });
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr, done) => {
                let result = self
                    .swarm
                    .dial(DialOpts::unknown_peer_id().address(addr.clone()).build())
                    .map_err(|e| NetError::Listen {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    });
                let _ = done.send(result);
            }
            Command::Offer(offer, done) => {
                let _ = done.send(self.open_offer(offer));
            }
            Command::Disconnect(peer) => {
                self.syncs.remove(&peer);
                self.swarm.behaviour_mut().gate.close_peer(peer);
            }
            Command::CancelOffer => {
                if let Some(open) = &mut self.offer {
                    open.withdrawn = true;
                }
                if let Some(open) = &mut self.offer
                    && matches!(open.state, OfferState::Waiting(_))
                    && let OfferState::Waiting(offer) =
                        std::mem::replace(&mut open.state, OfferState::Expired)
                {
                    tracing::info!("pairing offer withdrawn");
                    let _ = offer
                        .events
                        .send(PairEvent::Failed(pair::PairFailure::Local(
                            "the offer was withdrawn".into(),
                        )));
                    self.close_offer();
                }
            }
            Command::Stop(_) => {}
        }
    }

    fn on_internal(&mut self, message: Internal) {
        match message {
            Internal::Sync(Report::Applied) => {
                self.shared.applied.send_modify(|n| *n = n.wrapping_add(1));
                // Other sessions offer what arrived (and so do the relays, through the nudge);
                // the member set may have changed.
                self.shared.nudge.send_modify(|n| *n = n.wrapping_add(1));
            }
            Internal::Sync(Report::Ended {
                peer,
                id,
                not_member,
            }) => {
                if self.syncs.get(&peer).is_some_and(|s| s.id == id) {
                    self.syncs.remove(&peer);
                }
                if not_member {
                    self.swarm.behaviour_mut().gate.close_peer(peer);
                } else if self.swarm.is_connected(&peer) {
                    // The session broke but the connection stays: try again shortly.
                    let internal = self.internal_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(SESSION_RETRY).await;
                        let _ = internal.send(Internal::Retry(peer));
                    });
                }
            }
            Internal::InboundSync(peer, stream) => {
                if !self.swarm.behaviour().gate.is_member(&peer) {
                    // A guest (or a removed device) gets no sync at all.
                    drop(stream);
                    self.swarm.behaviour_mut().gate.close_peer(peer);
                    return;
                }
                self.ensure_sync(peer);
                if let Some(link) = self.syncs.get(&peer) {
                    let _ = link.inbound.try_send(stream);
                }
            }
            Internal::InboundPair(peer, stream, hello) => self.on_pair_stream(peer, stream, hello),
            Internal::InboundSpawn(peer, stream) => self.on_spawn_stream(peer, stream),
            Internal::RelayedSpawn(from, kind, body) => self.on_relayed_spawn(from, kind, body),
            Internal::Members(read) => self.on_members(read),
            Internal::RelayRoundDone { retry } => {
                self.relay_running = false;
                if std::mem::take(&mut self.relay_again) {
                    self.schedule_relay(self.config.relay_grace);
                } else if retry {
                    self.schedule_relay(self.config.relay_retry);
                }
            }
            Internal::OfferEnded(peer, attempt) => self.attempt_ended(peer, attempt),
            Internal::Found(found) => self.on_found(found),
            Internal::Retry(peer) => self.ensure_sync(peer),
            Internal::RefreshFailed => {
                self.refreshing = false;
                self.refresh();
            }
        }
    }

    /// Re-reads the member set (and what discovery and relaying need) from the document.
    fn refresh(&mut self) {
        if self.refreshing {
            self.refresh_again = true;
            return;
        }
        self.refreshing = true;
        let host = self.host.clone();
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            match read_members(&host).await {
                Ok(read) => {
                    let _ = internal.send(Internal::Members(read));
                }
                Err(e) => {
                    // Never leave the member set stale for good: try again shortly.
                    tracing::warn!(error = %e, "cannot read the member set; trying again");
                    tokio::time::sleep(SESSION_RETRY).await;
                    let _ = internal.send(Internal::RefreshFailed);
                }
            }
        });
    }

    fn on_members(&mut self, read: MemberRead) {
        let MemberRead {
            peers,
            discovery,
            known,
            relays,
        } = read;
        self.refreshing = false;
        let first = self.discovery_secret.is_none();
        let connected = self.connected();
        self.swarm
            .behaviour_mut()
            .gate
            .set_members(peers.keys().copied().collect(), &connected);
        self.syncs.retain(|peer, _| peers.contains_key(peer));
        self.members = peers;
        self.publish_online();
        self.known = known;
        if self.discovery_secret != discovery {
            // A removal rotated the secret: the old tag goes at once, not at the next hour.
            self.discovery_secret = discovery;
            self.advertised_hour = None;
            if !first {
                self.advertise();
            }
        }
        for peer in connected {
            self.ensure_sync(peer);
        }
        self.keep_subscriptions(relays);
        if first {
            self.redial();
            self.advertise();
            self.schedule_relay(self.config.relay_grace);
        }
        if std::mem::take(&mut self.refresh_again) {
            self.refresh();
        }
    }

    /// Connected members, as the owner reads them.
    fn publish_online(&self) {
        let online = self
            .connections
            .iter()
            .filter_map(|(peer, addr)| Some((*self.members.get(peer)?, addr.to_string())))
            .collect();
        self.shared.view().online = online;
    }

    fn ensure_sync(&mut self, peer: PeerId) {
        if self.syncs.contains_key(&peer) || !self.swarm.is_connected(&peer) {
            return;
        }
        let Some(device) = self.members.get(&peer).copied() else {
            return;
        };
        if !self.swarm.behaviour().gate.is_member(&peer) {
            return;
        }
        let (inbound_tx, inbound) = mpsc::channel(4);
        let (stop_tx, stop) = oneshot::channel();
        self.next_link += 1;
        let id = self.next_link;
        let reports = {
            let internal = self.internal_tx.clone();
            let (tx, mut rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(report) = rx.recv().await {
                    if internal.send(Internal::Sync(report)).is_err() {
                        return;
                    }
                }
            });
            tx
        };
        let addr = self.connections.get(&peer).map(ToString::to_string);
        let session = SyncTask {
            id,
            host: self.host.clone(),
            peer,
            device,
            control: self.control.clone(),
            inbound,
            nudge: self.shared.nudge.subscribe(),
            stop,
            reports,
            counters: self.shared.counters.clone(),
            addr,
            token: None,
        };
        self.sync_tasks.spawn(session.run());
        self.syncs.insert(
            peer,
            SyncLink {
                id,
                inbound: inbound_tx,
                _stop: stop_tx,
            },
        );
    }

    /// Dials members that are not connected, at the addresses they were last seen at, and the
    /// configured peers.
    fn redial(&mut self) {
        if self.config.dial_known {
            for (peer, addrs) in &self.known {
                if self.swarm.is_connected(peer) || addrs.is_empty() {
                    continue;
                }
                let opts = DialOpts::peer_id(*peer)
                    .addresses(addrs.clone())
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
        for (addr, reached) in &self.static_peers {
            if reached.is_some_and(|p| self.swarm.is_connected(&p)) {
                continue;
            }
            let _ = self
                .swarm
                .dial(DialOpts::unknown_peer_id().address(addr.clone()).build());
        }
    }

    /// Advertises this member on the LAN under this hour's tag (again, when the hour turned).
    fn advertise(&mut self) {
        let (Some(discovery), Some(secret)) = (&mut self.discovery, &self.discovery_secret) else {
            return;
        };
        let hour = mdns::hour_now();
        if self.advertised_hour == Some(hour) {
            return;
        }
        match discovery.advertise_member(&mdns::tag(secret, hour), Ports::of(&self.listen)) {
            Ok(()) => self.advertised_hour = Some(hour),
            Err(e) => tracing::warn!(error = %e, "cannot advertise on the LAN"),
        }
    }

    fn on_found(&mut self, found: Found) {
        let Found::Member { tag, addrs } = found else {
            return;
        };
        let Some(secret) = &self.discovery_secret else {
            return;
        };
        let hour = mdns::hour_now();
        let ours = [hour, hour.saturating_sub(1)]
            .iter()
            .any(|h| mdns::tag(secret, *h) == tag);
        // Nothing to gain when every member is connected already.
        let all_connected = self.members.keys().all(|p| self.swarm.is_connected(p));
        if !ours || all_connected {
            return;
        }
        let now = tokio::time::Instant::now();
        self.found_dials
            .retain(|_, at| now.duration_since(*at) < FOUND_COOLDOWN);
        for addr in addrs {
            if self.listen.contains(&addr) || self.found_dials.contains_key(&addr) {
                continue; // our own advertisement, or dialled a moment ago
            }
            self.found_dials.insert(addr.clone(), now);
            tracing::debug!(%addr, "found a member on the LAN");
            let _ = self
                .swarm
                .dial(DialOpts::unknown_peer_id().address(addr).build());
        }
    }
}

/// What the driver keeps from the document: members by PeerId, the discovery secret, where
/// members were last seen, and the relays.
struct MemberRead {
    peers: HashMap<PeerId, DeviceId>,
    discovery: Option<[u8; 32]>,
    known: Vec<(PeerId, Vec<Multiaddr>)>,
    relays: Vec<RelayTarget>,
}

async fn read_members(host: &Arc<dyn Host>) -> Result<MemberRead, NetError> {
    let (peers, discovery, seen, relays) = on_device(host, |d, _| {
        let peers = member_peers(d);
        let state = d.state().ok();
        let discovery = state.as_ref().map(|s| s.info.discovery_secret);
        let relays = state
            .map(|s| s.relays.values().map(RelayTarget::of).collect())
            .unwrap_or_default();
        let seen = d.peers_seen().unwrap_or_default();
        (peers, discovery, seen, relays)
    })
    .await?;
    let known = seen
        .into_iter()
        .filter_map(|p| {
            let peer = peers.iter().find(|(_, d)| **d == p.device)?.0;
            Some((*peer, crate::addr::from_text(&p.addr?)))
        })
        .collect();
    Ok(MemberRead {
        peers,
        discovery,
        known,
        relays,
    })
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
