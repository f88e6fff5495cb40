//! The mesh: a libp2p node that keeps this device's vault document in sync with the other
//! members, finds them on the LAN, and pairs new devices.
//!
//! Whoever owns the device (the daemon, a `peer add` without a daemon, a test) starts a
//! [`Mesh`] with a [`Host`] that lends it the device one operation at a time. The mesh runs an
//! event loop around the libp2p swarm (`driver`); every connected member gets one sync session
//! task (`session`) that offers this document's changes and applies the peer's, validated on a
//! fork before they are kept. The owner calls [`Mesh::changed`] after it changes the document,
//! and sessions offer the change; an idle mesh sends nothing.
//!
//! Connections are gated: only active members of the vault get a connection at all, except
//! while a pairing offer is open, when a stranger may connect to run `/handoff/pair/1` and
//! nothing else.
//!
//! # Layout
//! - `behaviour`: the swarm's behaviours (gate, identify, ping, streams) and its transports.
//! - `gate`: the connection gate.
//! - `driver`: the event loop: connections, sessions, dials, pairing offers, discovery.
//! - `session`: one member's sync session over `/handoff/sync/1`.
//! - [`pair`]: the pairing protocol, both sides; [`code`]: pairing codes and SAS words.
//! - `mdns`: LAN discovery with mDNS/DNS-SD.
//! - `spawn_ask`: `/handoff/spawn/1`, members asking this device for agent sessions and this
//!   device asking them.
//! - `relay`: the client side of the blind relay: deposits for offline members, this
//!   device's mailbox drained and acknowledged once applied.

mod behaviour;
pub mod code;
mod driver;
mod gate;
mod mdns;
pub mod pair;
mod relay;
mod spawn_ask;
mod sync_task;

pub use code::{LinkHints, PairCode};
pub use driver::{Mesh, NetView, OfferPhase, Route, Stats};
pub use libp2p::{Multiaddr, PeerId};
pub use pair::{
    JoinRequest, OFFER_LIFETIME, OfferRequest, PairEvent, PairFailure, PairTicket, join,
};
pub use spawn_ask::{SpawnServer, refused};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use handoff_protocol::DeviceId;

use crate::device::{Device, Unlocked};

/// Errors of the mesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error(transparent)]
    BadAddress(#[from] crate::addr::BadAddress),
    #[error("cannot start the network: {0}")]
    Transport(String),
    #[error("the network node has stopped")]
    Stopped,
    #[error("a pairing is running on this device; let it finish first")]
    OfferOpen,
    #[error(transparent)]
    Pair(#[from] PairFailure),
    #[error("the device is busy or gone")]
    HostGone,
    #[error("cannot reach the device: {0}")]
    Unreachable(String),
    /// The request may have reached the device, but no answer came.
    #[error("no answer from the device: {0}")]
    NoAnswer(String),
}

impl From<handoff_relay::listen::ListenFailure> for NetError {
    fn from(f: handoff_relay::listen::ListenFailure) -> NetError {
        NetError::Listen {
            addr: f.addr,
            reason: f.reason,
        }
    }
}

/// Lends the device to the mesh for one operation at a time, with the vault key while it is
/// unlocked. The owner serializes these with its own operations (one lock).
pub trait Host: Send + Sync + 'static {
    fn lend(&self, f: &mut dyn FnMut(&mut Device, Option<&Unlocked>));
}

/// A device owned by the mesh's caller alone (a command without a daemon, a test).
#[derive(Debug)]
pub struct Owned(Mutex<(Device, Option<Unlocked>)>);

impl Owned {
    pub fn new(device: Device, key: Option<Unlocked>) -> Arc<Self> {
        Arc::new(Self(Mutex::new((device, key))))
    }

    /// Runs `f` on the device and key.
    pub fn with<T>(&self, f: impl FnOnce(&mut Device, Option<&Unlocked>) -> T) -> T {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (device, key) = &mut *guard;
        f(device, key.as_ref())
    }

    /// Gives up or replaces the vault key.
    pub fn set_key(&self, key: Option<Unlocked>) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.1 = key;
    }
}

impl Host for Owned {
    fn lend(&self, f: &mut dyn FnMut(&mut Device, Option<&Unlocked>)) {
        self.with(|device, key| f(device, key));
    }
}

/// Runs `f` on the host's device on the blocking pool (device operations touch SQLite and
/// validate the document; they must not stall the network loop).
pub(crate) async fn on_device<T: Send + 'static>(
    host: &Arc<dyn Host>,
    f: impl FnOnce(&mut Device, Option<&Unlocked>) -> T + Send + 'static,
) -> Result<T, NetError> {
    let host = host.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = Some(f);
        let mut out = None;
        host.lend(&mut |device, key| {
            if let Some(f) = f.take() {
                out = Some(f(device, key));
            }
        });
        out
    })
    .await
    .ok()
    .flatten()
    .ok_or(NetError::HostGone)
}

/// How the node listens and whom it looks for.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Addresses to listen on (TCP and QUIC multiaddrs).
    pub listen: Vec<Multiaddr>,
    /// Advertise and browse on the LAN with mDNS.
    pub mdns: bool,
    /// Addresses to dial at start and whenever the connection is lost (a VM, a server).
    pub peers: Vec<Multiaddr>,
    /// Redial the addresses members were last seen at.
    pub dial_known: bool,
    /// How often unconnected members are redialled.
    pub redial_every: Duration,
    /// How long after a change a member that is not connected gets it through the relays.
    pub relay_grace: Duration,
    /// How long after a refused or failed deposit it is tried again.
    pub relay_retry: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            mdns: true,
            peers: Vec::new(),
            dial_known: true,
            redial_every: Duration::from_secs(30),
            relay_grace: Duration::from_secs(5),
            relay_retry: Duration::from_secs(30),
        }
    }
}

/// All interfaces, a port the system picks, TCP and QUIC.
pub fn default_listen() -> Vec<Multiaddr> {
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Parses a multiaddr given by the user.
pub fn parse_addr(text: &str) -> Result<Multiaddr, NetError> {
    Ok(crate::addr::parse(text)?)
}

pub use crate::addr::names_peer;

/// The libp2p PeerId of the device whose Ed25519 identity public key this is.
pub fn peer_id_for(identity_pub: &[u8; 32]) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(identity_pub).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The libp2p keypair of an identity secret.
fn keypair(identity_secret: &[u8; 32]) -> Result<libp2p::identity::Keypair, NetError> {
    // The copy is zeroized by libp2p as it reads it.
    let mut copy = zeroize::Zeroizing::new(*identity_secret);
    libp2p::identity::Keypair::ed25519_from_bytes(&mut copy[..])
        .map_err(|e| NetError::Transport(format!("bad identity key: {e}")))
}

/// The active members other than this device, by PeerId.
pub(crate) fn member_peers(device: &Device) -> std::collections::HashMap<PeerId, DeviceId> {
    let me = device.device_id();
    device
        .state()
        .map(|s| {
            s.members
                .values()
                .filter(|m| m.is_active() && m.device != me)
                .filter_map(|m| Some((peer_id_for(&m.identity_pub)?, m.device)))
                .collect()
        })
        .unwrap_or_default()
}
