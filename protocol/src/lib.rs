//! handoff-protocol: every byte format that crosses a machine boundary.
//!
//! This crate is pure: no I/O, no clocks, no randomness, no cryptography. It says how the
//! things handoff stores in its synced document and sends between devices are laid out, so
//! that a client in another language can be written from it (and from `README.md`, which
//! gives each format in CDDL-like notation with test vectors).
//!
//! # Layout
//! - [`ids`]: the 16-byte identifiers of vaults, devices, epochs and tokens.
//! - [`binding`]: the associated data and signed statements that bind a ciphertext or a
//!   signature to its context (vault, epoch, token, recipient, service).
//! - [`sealed_token`]: a vendor token encrypted under an epoch's token key.
//! - [`dek_wrap`]: an epoch's data-encryption key wrapped to one member.
//! - [`frame`]: length-prefixed frames, the unit of every stream between machines.
//! - [`sync`]: `/handoff/sync/1`, document sync between members.
//! - [`pairing`]: `/handoff/pair/1`, a new device joining through an admin with a short code.
//! - [`relay`]: `/handoff/relay/1`, deposits into and deliveries from a blind relay.
//! - [`envelope`]: what a device leaves at a relay for another, sealed to the recipient.
//! - [`spawn`]: `/handoff/spawn/1`, one device asking another to start, list or stop agent
//!   sessions.
//! - [`DecodeError`]: how a decoder says no.
#![forbid(unsafe_code)]

pub mod binding;
pub mod dek_wrap;
pub mod envelope;
mod error;
pub mod frame;
pub mod ids;
pub mod pairing;
pub mod relay;
pub mod sealed_token;
pub mod spawn;
pub mod sync;

pub use dek_wrap::DekWrap;
pub use error::DecodeError;
pub use ids::{DeviceId, EpochId, TokenId, VaultId};
pub use sealed_token::SealedToken;
