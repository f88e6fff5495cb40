//! An epoch's data-encryption key (DEK) wrapped to one recipient, age-style.
//!
//! ```text
//! dek-wrap = version(1) || ephemeral-x25519-public(32) || ciphertext(32 + 16)
//! ```
//! Version 1: the wrapper makes an ephemeral X25519 key, agrees with the recipient's vault
//! key (non-contributory results are refused), derives key = HKDF-SHA256(shared, salt =
//! eph_pub || recipient_pub, info = [`crate::binding::DEK_WRAP_DOMAIN`]) and seals the DEK with
//! ChaCha20-Poly1305 under a zero nonce (the key is used once), AD =
//! [`crate::binding::dek_wrap_ad`]. The length is fixed, so any other length is refused before
//! a key agreement or an AEAD call runs.

use std::fmt;

use crate::DecodeError;
use crate::ids::DeviceId;

const WHAT: &str = "DEK wrap";

/// The current (and only) format version.
pub const VERSION: u8 = 1;
/// Length of the wrapped DEK plus its tag.
pub const CIPHERTEXT_LEN: usize = 32 + 16;
/// Exact encoded length of a version-1 wrap.
pub const ENCODED_LEN: usize = 1 + 32 + CIPHERTEXT_LEN;

/// Who a wrap is for: a member device, or the vault's recovery key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Recipient {
    Device(DeviceId),
    Recovery,
}

impl Recipient {
    /// The name used as the key of the wraps map in the document.
    pub const RECOVERY_NAME: &'static str = "recovery";

    /// Bytes bound into the wrap's AD and signature.
    pub fn binding_bytes(&self) -> Vec<u8> {
        match self {
            Recipient::Device(id) => id.as_bytes().to_vec(),
            Recipient::Recovery => Self::RECOVERY_NAME.as_bytes().to_vec(),
        }
    }

    /// Parses a wraps-map key: a device id in hex, or `recovery`.
    pub fn parse(key: &str) -> Result<Self, DecodeError> {
        if key == Self::RECOVERY_NAME {
            Ok(Recipient::Recovery)
        } else {
            key.parse().map(Recipient::Device)
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::Device(id) => write!(f, "{id}"),
            Recipient::Recovery => f.write_str(Self::RECOVERY_NAME),
        }
    }
}

/// A decoded DEK wrap.
#[derive(Clone, PartialEq, Eq)]
pub struct DekWrap {
    pub ephemeral: [u8; 32],
    pub ciphertext: [u8; CIPHERTEXT_LEN],
}

impl fmt::Debug for DekWrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DekWrap").finish_non_exhaustive()
    }
}

impl DekWrap {
    /// Length of [`Self::encode`]'s output (always [`ENCODED_LEN`]).
    pub const fn encoded_len(&self) -> usize {
        ENCODED_LEN
    }

    /// Writes the wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Reads the wire form; any length but [`ENCODED_LEN`] is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(&version) = bytes.first() else {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: ENCODED_LEN,
            });
        };
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: WHAT,
                version,
            });
        }
        if bytes.len() < ENCODED_LEN {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: ENCODED_LEN - bytes.len(),
            });
        }
        if bytes.len() > ENCODED_LEN {
            return Err(DecodeError::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: ENCODED_LEN,
            });
        }
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&bytes[1..33]);
        let mut ciphertext = [0u8; CIPHERTEXT_LEN];
        ciphertext.copy_from_slice(&bytes[33..]);
        Ok(Self {
            ephemeral,
            ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(ephemeral in any::<[u8; 32]>(), ct in proptest::collection::vec(any::<u8>(), CIPHERTEXT_LEN)) {
            let mut ciphertext = [0u8; CIPHERTEXT_LEN];
            ciphertext.copy_from_slice(&ct);
            let wrap = DekWrap { ephemeral, ciphertext };
            let bytes = wrap.encode();
            prop_assert_eq!(bytes.len(), wrap.encoded_len());
            prop_assert_eq!(DekWrap::decode(&bytes).unwrap(), wrap);
        }

        #[test]
        fn every_other_length_is_refused(len in 0usize..200) {
            prop_assume!(len != ENCODED_LEN);
            let mut bytes = vec![0u8; len];
            if let Some(first) = bytes.first_mut() { *first = VERSION; }
            prop_assert!(DekWrap::decode(&bytes).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = DekWrap::decode(&bytes);
        }
    }

    #[test]
    fn recipient_names_round_trip() {
        let device = Recipient::Device(DeviceId::from_bytes([0xab; 16]));
        assert_eq!(Recipient::parse(&device.to_string()).unwrap(), device);
        assert_eq!(Recipient::parse("recovery").unwrap(), Recipient::Recovery);
        assert!(Recipient::parse("admin").is_err());
    }
}
