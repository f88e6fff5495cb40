//! Envelopes: what a device leaves at a relay for another device, sealed so that the relay
//! learns the recipient (its mailbox), the size and the time, and nothing else.
//!
//! ```text
//! envelope = %x01 piece+                       ; at most MAX_ENVELOPE bytes in all
//! piece    = len(u16) noise-message(len)       ; the first is the Noise X handshake message,
//!                                              ; the rest Noise transport messages
//! inner    = vault-id(16) sender(16) seq(u64) kind(u8) body
//! kind     = 1 (document changes) / 2 (spawn request) / 3 (spawn result)
//! ```
//! The sender runs `Noise_X_25519_ChaChaPoly_BLAKE2s` as initiator with its mailbox key as the
//! static key, to the recipient's mailbox key, prologue = the `handoff/v1/envelope` domain;
//! the handshake message carries the first piece of `inner`, transport messages the rest.
//! The recipient learns (and authenticates) the sender's mailbox key from the handshake and
//! checks that `sender` is an active member whose record names that key.

use crate::DecodeError;
use crate::ids::{DeviceId, VaultId};

const WHAT: &str = "envelope";

/// The current envelope version.
pub const VERSION: u8 = 1;
/// Largest envelope (the relay's own limit).
pub const MAX_ENVELOPE: usize = crate::relay::MAX_ENVELOPE;
/// Largest Noise message.
pub const NOISE_MAX: usize = 65535;
/// Plaintext in one Noise transport message.
pub const TRANSPORT_PLAINTEXT_MAX: usize = NOISE_MAX - 16;
/// Plaintext in the handshake message (e 32, s 32+16, payload tag 16).
pub const HANDSHAKE_PLAINTEXT_MAX: usize = NOISE_MAX - 32 - 48 - 16;
/// Bytes of `inner` before the body.
pub const INNER_HEADER: usize = 16 + 16 + 8 + 1;
/// The Noise prologue of every envelope.
pub const PROLOGUE: &[u8] = b"handoff/v1/envelope";

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    DocChanges,
    SpawnRequest,
    SpawnResult,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::DocChanges => 1,
            Kind::SpawnRequest => 2,
            Kind::SpawnResult => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [Kind::DocChanges, Kind::SpawnRequest, Kind::SpawnResult]
            .into_iter()
            .find(|k| k.code() == code)
    }
}

/// The plaintext inside an envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct Inner {
    pub vault: VaultId,
    pub sender: DeviceId,
    pub seq: u64,
    pub kind: Kind,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("sender", &self.sender)
            .field("seq", &self.seq)
            .field("kind", &self.kind)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INNER_HEADER + self.body.len());
        out.extend_from_slice(self.vault.as_bytes());
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(self.kind.code());
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < INNER_HEADER {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: INNER_HEADER - bytes.len(),
            });
        }
        let (head, body) = bytes.split_at(INNER_HEADER);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[32..40]);
        Ok(Self {
            vault: VaultId::from_slice(&head[..16])?,
            sender: DeviceId::from_slice(&head[16..32])?,
            seq: u64::from_be_bytes(seq),
            kind: Kind::from_code(head[40]).ok_or(DecodeError::Invalid {
                what: WHAT,
                reason: "unknown kind",
            })?,
            body: body.to_vec(),
        })
    }
}

/// Joins Noise messages into an envelope.
pub fn join(pieces: &[Vec<u8>]) -> Result<Vec<u8>, DecodeError> {
    let mut out = vec![VERSION];
    for piece in pieces {
        let len = u16::try_from(piece.len()).map_err(|_| DecodeError::TooLarge {
            what: WHAT,
            len: piece.len(),
            max: NOISE_MAX,
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(piece);
    }
    if out.len() > MAX_ENVELOPE {
        return Err(DecodeError::TooLarge {
            what: WHAT,
            len: out.len(),
            max: MAX_ENVELOPE,
        });
    }
    Ok(out)
}

/// Splits an envelope into its Noise messages (at least one).
pub fn split(envelope: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(DecodeError::TooLarge {
            what: WHAT,
            len: envelope.len(),
            max: MAX_ENVELOPE,
        });
    }
    let Some((&version, mut rest)) = envelope.split_first() else {
        return Err(DecodeError::Incomplete {
            what: WHAT,
            needed: 3,
        });
    };
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what: WHAT,
            version,
        });
    }
    let mut pieces = Vec::new();
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: 2 - rest.len(),
            });
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 {
            return Err(DecodeError::Invalid {
                what: WHAT,
                reason: "an empty piece",
            });
        }
        if tail.len() < len {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: len - tail.len(),
            });
        }
        let (piece, next) = tail.split_at(len);
        pieces.push(piece);
        rest = next;
    }
    if pieces.is_empty() {
        return Err(DecodeError::Incomplete {
            what: WHAT,
            needed: 2,
        });
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pieces_round_trip(pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..5)) {
            let envelope = join(&pieces).unwrap();
            let back: Vec<Vec<u8>> = split(&envelope).unwrap().into_iter().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(back, pieces);
        }

        #[test]
        fn inner_round_trips(vault in any::<[u8; 16]>(), sender in any::<[u8; 16]>(), seq in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let inner = Inner { vault: VaultId::from_bytes(vault), sender: DeviceId::from_bytes(sender), seq, kind: Kind::DocChanges, body };
            prop_assert_eq!(Inner::decode(&inner.encode()).unwrap(), inner);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = split(&bytes);
            let _ = Inner::decode(&bytes);
        }
    }

    #[test]
    fn refuses_other_versions_empty_pieces_and_truncation() {
        assert!(matches!(
            split(&[2, 0, 1, 9]),
            Err(DecodeError::UnsupportedVersion { version: 2, .. })
        ));
        assert!(split(&[1, 0, 0]).is_err());
        assert!(split(&[1, 0, 5, 1]).is_err());
        assert!(split(&[1]).is_err());
        assert!(join(&[vec![0; NOISE_MAX + 1]]).is_err());
    }
}
