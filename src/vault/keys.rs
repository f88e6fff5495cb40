//! A device's keys: Ed25519 identity, X25519 mailbox, X25519 vault key.
//!
//! The identity and mailbox keys are stored in the clear (mode 0600) so that sync, relaying and
//! discovery run while the vault is locked; only the vault key, which opens DEK wraps, is
//! wrapped by the passphrase. The device id is the first 16 bytes of
//! SHA-256(`handoff/v1/device-id` || identity public key).

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use handoff_protocol::DeviceId;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use super::{VaultError, random_array};

/// Derives a device id from an Ed25519 identity public key.
pub fn device_id_for(identity_pub: &[u8; 32]) -> DeviceId {
    let digest = Sha256::new()
        .chain_update(b"handoff/v1/device-id")
        .chain_update(identity_pub)
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    DeviceId::from_bytes(id)
}

/// The keys that live unwrapped on a device.
pub struct DeviceKeys {
    identity: SigningKey,
    mailbox: StaticSecret,
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

impl DeviceKeys {
    /// Fresh random keys.
    pub fn generate() -> Result<Self, VaultError> {
        let identity = zeroize::Zeroizing::new(random_array::<32>()?);
        let mailbox = zeroize::Zeroizing::new(random_array::<32>()?);
        Ok(Self::from_secrets(&identity, &mailbox))
    }

    /// Rebuilds the keys from their stored secret bytes.
    pub fn from_secrets(identity: &[u8; 32], mailbox: &[u8; 32]) -> Self {
        Self {
            identity: SigningKey::from_bytes(identity),
            mailbox: StaticSecret::from(*mailbox),
        }
    }

    /// The secret bytes to store (identity, mailbox).
    pub fn secrets(&self) -> (zeroize::Zeroizing<[u8; 32]>, zeroize::Zeroizing<[u8; 32]>) {
        (
            zeroize::Zeroizing::new(self.identity.to_bytes()),
            zeroize::Zeroizing::new(self.mailbox.to_bytes()),
        )
    }

    pub fn device_id(&self) -> DeviceId {
        device_id_for(&self.identity_public())
    }

    pub fn identity_public(&self) -> [u8; 32] {
        self.identity.verifying_key().to_bytes()
    }

    pub fn mailbox_public(&self) -> [u8; 32] {
        PublicKey::from(&self.mailbox).to_bytes()
    }

    /// Signs `message` with the identity key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.identity.sign(message).to_bytes()
    }
}

/// Verifies an Ed25519 signature strictly (no malleable or small-order keys).
pub fn verify_signature(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &sig).is_ok()
}

/// The device's X25519 vault key, which opens DEK wraps. Held only while unlocked.
pub struct VaultSecret(StaticSecret);

impl fmt::Debug for VaultSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultSecret([redacted])")
    }
}

impl VaultSecret {
    pub fn generate() -> Result<Self, VaultError> {
        Ok(Self::from_bytes(random_array::<32>()?))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }

    pub(crate) fn static_secret(&self) -> &StaticSecret {
        &self.0
    }
}
