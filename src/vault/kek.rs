//! The passphrase key-encryption key (KEK) and the vault key it wraps.
//!
//! Argon2id(passphrase, 16-byte random salt) with the parameters stored beside the wrapped
//! key; XChaCha20-Poly1305 with AD = `handoff/v1/device-key` || device id. Stored parameters
//! are checked against caps before any memory is allocated, so a tampered database cannot make
//! `unlock` allocate gigabytes or spin for hours.

use argon2::{Algorithm, Argon2, Params, Version};
use handoff_protocol::DeviceId;
use handoff_protocol::binding::device_key_ad;
use zeroize::Zeroizing;

use super::keys::VaultSecret;
use super::primitives::{xchacha_open, xchacha_seal};
use super::{VaultError, random_array};

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };
    /// Largest memory cost accepted from storage: 1 GiB.
    pub const MAX_M_KIB: u32 = 1024 * 1024;
    /// Largest pass count accepted from storage.
    pub const MAX_T: u32 = 16;
    /// Largest lane count accepted from storage.
    pub const MAX_P: u32 = 16;

    /// Refuses parameters above the caps (or below Argon2's own minimums).
    pub fn checked(self) -> Result<Params, VaultError> {
        let out_of_bounds = VaultError::KdfParamsOutOfBounds {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
        };
        if self.m_kib > Self::MAX_M_KIB || self.t > Self::MAX_T || self.p > Self::MAX_P {
            return Err(out_of_bounds);
        }
        Params::new(self.m_kib, self.t, self.p, Some(32)).map_err(|_| out_of_bounds)
    }

    /// Argon2id(secret, salt) to 32 bytes, after checking the caps.
    pub fn derive(self, secret: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let params = self.checked()?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(secret, salt, out.as_mut())
            .map_err(|e| VaultError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// A device's vault key wrapped under its passphrase, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedVaultKey {
    pub params: KdfParams,
    pub salt: [u8; 16],
    pub nonce: [u8; 24],
    pub ciphertext: Vec<u8>,
}

impl WrappedVaultKey {
    /// Wraps `secret` under a KEK derived from `passphrase` with fresh salt and nonce.
    pub fn seal(
        secret: &VaultSecret,
        passphrase: &[u8],
        device: &DeviceId,
        params: KdfParams,
    ) -> Result<Self, VaultError> {
        let salt = random_array::<16>()?;
        let nonce = random_array::<24>()?;
        let kek = params.derive(passphrase, &salt)?;
        let ciphertext = xchacha_seal(&kek, &nonce, &device_key_ad(device), &secret.to_bytes()[..])
            .map_err(|_| VaultError::SealFailed)?;
        Ok(Self {
            params,
            salt,
            nonce,
            ciphertext,
        })
    }

    /// Unwraps with `passphrase`. A wrong passphrase and a modified ciphertext look alike to
    /// the AEAD; both are reported as a wrong passphrase.
    pub fn open(&self, passphrase: &[u8], device: &DeviceId) -> Result<VaultSecret, VaultError> {
        if self.ciphertext.len() != 32 + 16 {
            return Err(VaultError::Tampered {
                what: "the wrapped vault key",
            });
        }
        let kek = self.params.derive(passphrase, &self.salt)?;
        let plain = Zeroizing::new(
            xchacha_open(&kek, &self.nonce, &device_key_ad(device), &self.ciphertext)
                .map_err(|_| VaultError::WrongPassphrase)?,
        );
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&plain);
        Ok(VaultSecret::from_bytes(*bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn wrong_passphrase_is_refused_and_right_one_opens() {
        let device = DeviceId::from_bytes([5; 16]);
        let secret = VaultSecret::generate().unwrap();
        let wrapped = WrappedVaultKey::seal(&secret, b"correct horse", &device, CHEAP).unwrap();
        assert!(matches!(
            wrapped.open(b"wrong horse", &device),
            Err(VaultError::WrongPassphrase)
        ));
        let opened = wrapped.open(b"correct horse", &device).unwrap();
        assert_eq!(opened.public(), secret.public());
        // Bound to the device: another device id does not open it.
        assert!(
            wrapped
                .open(b"correct horse", &DeviceId::from_bytes([6; 16]))
                .is_err()
        );
    }

    #[test]
    fn caps_are_enforced_before_deriving() {
        for params in [
            KdfParams {
                m_kib: KdfParams::MAX_M_KIB + 1,
                t: 1,
                p: 1,
            },
            KdfParams {
                m_kib: 64,
                t: KdfParams::MAX_T + 1,
                p: 1,
            },
            KdfParams {
                m_kib: 1024,
                t: 1,
                p: KdfParams::MAX_P + 1,
            },
            KdfParams {
                m_kib: 1,
                t: 1,
                p: 1,
            },
        ] {
            assert!(matches!(
                params.derive(b"x", &[0; 16]),
                Err(VaultError::KdfParamsOutOfBounds { .. })
            ));
        }
    }
}
