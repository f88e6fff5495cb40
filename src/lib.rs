//! handoff keeps AI-vendor credentials on a person's own devices, syncs them peer to peer, and
//! materializes them only in the agent processes it starts. ARCHITECTURE.md describes how the
//! code is built, README.md how it is used.
//!
//! # Layout
//! - [`vault`]: keys, passphrase and recovery, DEK epochs, token sealing (crypto only).
//! - [`doc`]: the Automerge vault document: schema, typed reads and writes, validation.
//! - [`store`]: SQLite persistence of device keys, the document and per-peer sync state.
//! - [`addr`]: multiaddrs, and the text form records keep lists of them in.
//! - [`entropy`]: the one source of randomness and record time (seedable in tests).
//! - [`home`]: the home directory, its permissions, the one-owner lock, process hardening.
//! - [`device`]: the operations on this device's vault, shared by the CLI and the daemon;
//!   membership (admit, remove with rotation, upkeep) and per-peer sync sessions.
//! - [`net`]: the libp2p mesh: sync with members, LAN discovery, pairing.
//! - [`spawn`]: starting agents with a credential materialized only in the child.
//! - [`config`]: local settings (`config.toml`): custom agents, environment allowlist.
//! - [`daemon`]: the long-running node serving the control socket.
//! - [`control`]: the CLI <-> daemon protocol, the views commands render, the client.
//! - [`cli`]: the command line.
//!
//! Byte formats that cross machines live in the `handoff-protocol` crate.
#![forbid(unsafe_code)]

pub mod addr;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device;
pub mod doc;
pub mod entropy;
pub mod home;
pub mod net;
pub mod oauth;
pub mod ops;
pub mod spawn;
pub mod store;
pub mod vault;
