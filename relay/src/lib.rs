//! handoff-relay: the blind store-and-forward relay.
//!
//! A libp2p node (TCP with Noise and Yamux, QUIC) speaking `/handoff/relay/1` (frames and
//! messages in `handoff_protocol::relay`). It keeps envelopes for devices that are offline and
//! hands them over when they connect, at once to a recipient already subscribed. It cannot
//! read any of it: envelopes are sealed by the sender to the recipient's mailbox key, and a
//! depositor may connect under a throwaway identity. The relay learns a recipient's PeerId,
//! sizes and times; its database, logs and metrics hold nothing else about an envelope.
//!
//! A mailbox is a recipient PeerId, and only the client that proved that PeerId in its
//! connection's handshake can drain it or acknowledge (delete) what is in it. Nothing is
//! deleted before an acknowledgement or the TTL.
//!
//! # Layout
//! - [`storage`]: the durable store (SQLite behind a trait) and its quota accounting.
//! - `server`: the libp2p node, the connection cap, and one task per stream.
//! - `metrics`: counters and the Prometheus text endpoint.
//! - [`listen`]: starting listeners and waiting for their addresses, [`wire`]: frames on a
//!   stream, and [`descriptors`]: connection caps before the handshake, the open-files
//!   limit and accept back-off (the handoff node uses all three).
//!
//! Everything but those three is the relay itself, behind the `server` feature (on by
//! default): the node depends on this crate without it, and links no SQLite store, metrics or
//! relay server.
#![forbid(unsafe_code)]

pub mod descriptors;
pub mod listen;
pub mod wire;

#[cfg(feature = "reference")]
pub mod reference;

#[cfg(feature = "server")]
mod config;
#[cfg(feature = "server")]
mod metrics;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
pub mod storage;

#[cfg(feature = "server")]
pub use config::{Access, Limits, RelayConfig, RelayError};
#[cfg(feature = "server")]
pub use server::Relay;
