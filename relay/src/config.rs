//! How a relay is run: who may use it, what it holds at most, where it listens and stores.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use zeroize::Zeroizing;

use crate::{listen, storage};

/// Errors of starting or running a relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot start the relay: {0}")]
    Start(String),
}

impl From<listen::ListenFailure> for RelayError {
    fn from(f: listen::ListenFailure) -> RelayError {
        RelayError::Listen {
            addr: f.addr,
            reason: f.reason,
        }
    }
}

/// Who may use the relay.
#[derive(Clone)]
pub enum Access {
    /// Clients must present this shared secret in their hello (compared in constant time).
    Token(Zeroizing<Vec<u8>>),
    /// Only these PeerIds (depositors then connect under their own identity).
    Allowlist(HashSet<PeerId>),
    /// Anyone.
    Open,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Token(_) => f.write_str("Token([redacted])"),
            Access::Allowlist(peers) => write!(f, "Allowlist({} peers)", peers.len()),
            Access::Open => f.write_str("Open"),
        }
    }
}

/// What the relay holds at most, and how fast it takes deposits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest envelope.
    pub max_envelope: usize,
    /// Envelopes one mailbox may hold.
    pub mailbox_envelopes: u64,
    /// Bytes one mailbox may hold (bodies, and [`storage::ROW_COST`] per envelope).
    pub mailbox_bytes: u64,
    /// Bytes the whole relay may hold (bodies, and [`storage::ROW_COST`] per envelope).
    pub total_bytes: u64,
    /// Deposits per second a client (PeerId) may make, sustained.
    pub deposits_per_second: f64,
    /// Deposits a client may make in a burst.
    pub deposit_burst: f64,
    /// Connections open at once.
    pub max_connections: u32,
    /// Incoming connections whose handshake is under way at once.
    pub max_pending: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope: handoff_protocol::relay::MAX_ENVELOPE,
            mailbox_envelopes: 10_000,
            mailbox_bytes: 256 * 1024 * 1024,
            total_bytes: 4 * 1024 * 1024 * 1024,
            deposits_per_second: 50.0,
            deposit_burst: 500.0,
            max_connections: 4096,
            max_pending: 128,
        }
    }
}

/// How to run a relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listen: Vec<Multiaddr>,
    /// The SQLite file (created 0600; the relay's identity key lives in it too).
    pub db: PathBuf,
    pub access: Access,
    /// How long an envelope waits for its recipient.
    pub ttl: Duration,
    /// Serve Prometheus text metrics on this address.
    pub metrics: Option<SocketAddr>,
    pub limits: Limits,
}

impl RelayConfig {
    /// A relay on `db` with the defaults: every interface, a port the system picks, TCP and
    /// QUIC, 14 days TTL, the default limits.
    pub fn new(db: PathBuf, access: Access) -> Self {
        Self {
            listen: ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            db,
            access,
            ttl: Duration::from_secs(14 * 24 * 3600),
            metrics: None,
            limits: Limits::default(),
        }
    }
}
