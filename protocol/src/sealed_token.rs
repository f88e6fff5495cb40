//! A vendor token sealed under an epoch's token key.
//!
//! ```text
//! sealed-token = version(1) || nonce(24) || ciphertext(plaintext-len + 16)
//! ```
//! Version 1 is XChaCha20-Poly1305 with AD = [`crate::binding::token_ad`]. The nonce is random
//! (24 bytes, so collisions are negligible for any number of seals under one key).

use crate::DecodeError;

const WHAT: &str = "sealed token";

/// The current (and only) format version.
pub const VERSION: u8 = 1;
/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Largest plaintext token accepted: an OAuth bundle is a few KiB, an API key under 200 bytes.
pub const MAX_PLAINTEXT: usize = 64 * 1024;
/// Largest encoded sealed token.
pub const MAX_ENCODED: usize = 1 + NONCE_LEN + MAX_PLAINTEXT + TAG_LEN;

/// A decoded sealed token. The ciphertext includes the tag.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedToken")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl SealedToken {
    /// Length of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        1 + NONCE_LEN + self.ciphertext.len()
    }

    /// Writes the wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(VERSION);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Reads the wire form; the whole input is one sealed token.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: 1 + NONCE_LEN + TAG_LEN,
            });
        };
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: WHAT,
                version,
            });
        }
        if bytes.len() > MAX_ENCODED {
            return Err(DecodeError::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_ENCODED,
            });
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: NONCE_LEN + TAG_LEN - rest.len(),
            });
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        Ok(Self {
            nonce: n,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(nonce in any::<[u8; NONCE_LEN]>(), ct in proptest::collection::vec(any::<u8>(), TAG_LEN..512)) {
            let sealed = SealedToken { nonce, ciphertext: ct };
            let bytes = sealed.encode();
            prop_assert_eq!(bytes.len(), sealed.encoded_len());
            prop_assert_eq!(SealedToken::decode(&bytes).unwrap(), sealed);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = SealedToken::decode(&bytes);
        }

        #[test]
        fn truncation_is_incomplete(cut in 0usize..(1 + NONCE_LEN + TAG_LEN)) {
            let sealed = SealedToken { nonce: [7; NONCE_LEN], ciphertext: vec![1; TAG_LEN] };
            let bytes = sealed.encode();
            let is_incomplete = matches!(SealedToken::decode(&bytes[..cut]), Err(DecodeError::Incomplete { .. }));
            prop_assert!(is_incomplete);
        }
    }

    #[test]
    fn rejects_unknown_version_and_oversize() {
        let mut bytes = SealedToken {
            nonce: [0; NONCE_LEN],
            ciphertext: vec![0; TAG_LEN],
        }
        .encode();
        bytes[0] = 2;
        assert!(matches!(
            SealedToken::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { version: 2, .. })
        ));
        let mut big = vec![VERSION];
        big.resize(MAX_ENCODED + 1, 0);
        assert!(matches!(
            SealedToken::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
