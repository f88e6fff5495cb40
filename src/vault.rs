//! The vault's cryptography: device keys, passphrase wrapping, recovery, DEK epochs, sealing.
//!
//! Data flow: a passphrase (or the recovery code) unlocks this device's vault key; the vault
//! key opens this device's wrap of an epoch's DEK; the DEK derives the token key that seals
//! and opens vendor tokens. The byte layouts live in `handoff-protocol`; this module holds the
//! keys and runs the primitives. Every secret is held in a zeroizing type whose `Debug` is
//! redacted.
//!
//! # Layout
//! - [`primitives`]: the thin AEAD and X25519 wrappers every construction goes through (and
//!   that the Wycheproof tests exercise).
//! - [`kek`]: Argon2id passphrase key-encryption key, its stored parameters and caps.
//! - [`keys`]: a device's identity, mailbox and vault keys; device ids.
//! - [`recovery`]: the recovery code and the recovery member it derives.
//! - [`epoch`]: DEKs, token sealing, signed DEK wraps.
//! - [`envelope`]: envelopes sealed to a member's mailbox key for a relay (Noise X).

pub mod envelope;
pub mod epoch;
pub mod kek;
pub mod keys;
pub mod primitives;
pub mod recovery;

pub use epoch::{Dek, SignedWrap};
pub use kek::{KdfParams, WrappedVaultKey};
pub use keys::{DeviceKeys, VaultSecret, device_id_for};
pub use recovery::{RecoveryCode, RecoveryMember};

use handoff_protocol::DecodeError;
use secrecy::SecretBox;

/// Secret bytes: zeroized on drop, `Debug` prints nothing of them.
pub type SecretBytes = secrecy::SecretSlice<u8>;
/// A 32-byte secret key.
pub type Key32 = SecretBox<[u8; 32]>;

/// Errors of the vault's cryptography.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error("wrong passphrase for this device's vault key")]
    WrongPassphrase,
    #[error(
        "stored key-derivation parameters are out of bounds (m={m_kib} KiB, t={t}, p={p}; at most m=1 GiB, t=16, p=16): the database was tampered with or written by something else"
    )]
    KdfParamsOutOfBounds { m_kib: u32, t: u32, p: u32 },
    #[error("{what} failed authentication: it was tampered with or belongs to another record")]
    Tampered { what: &'static str },
    #[error("{what} has a bad signature or an unauthorised signer")]
    BadSignature { what: &'static str },
    #[error("key agreement gave a non-contributory (low-order) result")]
    NonContributory,
    #[error("malformed recovery code: {0}")]
    MalformedRecoveryCode(&'static str),
    #[error("the recovery code does not open this vault")]
    WrongRecoveryCode,
    #[error("token is {len} bytes, over the limit of {max}")]
    TokenTooLarge { len: usize, max: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("encryption failed: the input is beyond the cipher's limit")]
    SealFailed,
}

/// Fills a fresh array from the OS random generator.
pub fn random_array<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut out = [0u8; N];
    crate::entropy::fill(&mut out).map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(out)
}

/// A fresh random 32-byte secret key.
pub fn random_key() -> Result<Key32, VaultError> {
    let mut key = SecretBox::new(Box::new([0u8; 32]));
    crate::entropy::fill(secrecy::ExposeSecretMut::expose_secret_mut(&mut key).as_mut_slice())
        .map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(key)
}
