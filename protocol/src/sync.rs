//! `/handoff/sync/1`: the messages two members exchange to sync their vault document.
//!
//! Each side opens one stream to the other and only writes on it, so the two directions never
//! race. Every message is one [`frame`](crate::frame) whose payload is a [`SyncFrame`]:
//!
//! ```text
//! sync-frame = %x01 automerge-sync-message      ; Automerge's own sync message, opaque here
//!            / %x02 refusal(u8) [count(u8, 1..) head(32)*count]   ; a message was not taken
//! refusal    = 1 (not a member) / 2 (changes refused) / 3 (malformed)
//! ```
//! A refusal names the heads the refused message was written at (the heads field of the
//! Automerge message; none if it did not parse; an older peer sends no count). The sender
//! stops offering while its document is still at those heads (the receiver starts its side
//! of the session afresh), so a change no member accepts does not loop; if its document has
//! moved on since (a refusal can cross a newer message on the wire), it starts afresh at
//! once, so a refusal never ends in silence while there is something new to offer.

use crate::DecodeError;

const WHAT: &str = "sync frame";

/// The protocol id on libp2p streams.
pub const PROTOCOL: &str = "/handoff/sync/1";
/// Largest sync payload: a whole document (the first sync of a new member) fits.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest frame payload: a tag and a message.
pub const MAX_FRAME: usize = 1 + MAX_MESSAGE;

const TAG_SYNC: u8 = 1;
const TAG_REFUSED: u8 = 2;

/// Why a receiver did not take a sync message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The sender is not an active member of the receiver's vault.
    NotAMember,
    /// The message held changes the receiver refuses (an author past its removal, a schema
    /// violation, an undone removal).
    ChangesRefused,
    /// The message did not parse.
    Malformed,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::NotAMember => 1,
            Refusal::ChangesRefused => 2,
            Refusal::Malformed => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [
            Refusal::NotAMember,
            Refusal::ChangesRefused,
            Refusal::Malformed,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

/// Heads a refusal names at most (a document has a handful; more are sent as none).
pub const MAX_REFUSED_HEADS: usize = 255;

/// One message on a sync stream.
#[derive(Clone, PartialEq, Eq)]
pub enum SyncFrame {
    /// An Automerge sync message.
    Sync(Vec<u8>),
    /// The receiver refused a message, written at `heads` (empty: unknown).
    Refused { why: Refusal, heads: Vec<[u8; 32]> },
}

impl std::fmt::Debug for SyncFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncFrame::Sync(m) => write!(f, "Sync({} bytes)", m.len()),
            SyncFrame::Refused { why, heads } => {
                write!(f, "Refused({why:?}, {} heads)", heads.len())
            }
        }
    }
}

impl SyncFrame {
    /// Length of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            SyncFrame::Sync(m) => 1 + m.len(),
            SyncFrame::Refused { heads, .. }
                if heads.is_empty() || heads.len() > MAX_REFUSED_HEADS =>
            {
                2
            }
            SyncFrame::Refused { heads, .. } => 3 + 32 * heads.len(),
        }
    }

    /// The frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        match self {
            SyncFrame::Sync(m) => {
                out.push(TAG_SYNC);
                out.extend_from_slice(m);
            }
            SyncFrame::Refused { why, heads } => {
                out.push(TAG_REFUSED);
                out.push(why.code());
                // No heads (or past MAX_REFUSED_HEADS: say nothing rather than lie) is the
                // two-byte form older peers send.
                if !heads.is_empty() && heads.len() <= MAX_REFUSED_HEADS {
                    out.push(heads.len() as u8);
                    for h in heads {
                        out.extend_from_slice(h);
                    }
                }
            }
        }
        out
    }

    /// Reads one frame payload (the whole input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(DecodeError::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_FRAME,
            });
        }
        match bytes {
            [] => Err(DecodeError::Incomplete {
                what: WHAT,
                needed: 1,
            }),
            [TAG_SYNC] => Err(DecodeError::Invalid {
                what: WHAT,
                reason: "an empty sync message",
            }),
            [TAG_SYNC, message @ ..] => Ok(SyncFrame::Sync(message.to_vec())),
            [TAG_REFUSED] => Err(DecodeError::Incomplete {
                what: WHAT,
                needed: 1,
            }),
            [TAG_REFUSED, code, rest @ ..] => {
                let why = Refusal::from_code(*code).ok_or(DecodeError::Invalid {
                    what: WHAT,
                    reason: "unknown refusal code",
                })?;
                let heads = match rest {
                    // An older peer names no heads.
                    [] => Vec::new(),
                    [0, ..] => {
                        return Err(DecodeError::Invalid {
                            what: WHAT,
                            reason: "a refusal naming no heads leaves out the count",
                        });
                    }
                    [count, hashes @ ..] => {
                        let count = usize::from(*count);
                        if hashes.len() < 32 * count {
                            return Err(DecodeError::Incomplete {
                                what: WHAT,
                                needed: 32 * count - hashes.len(),
                            });
                        }
                        if hashes.len() > 32 * count {
                            return Err(DecodeError::Invalid {
                                what: WHAT,
                                reason: "a refusal runs past its heads",
                            });
                        }
                        hashes
                            .chunks_exact(32)
                            .map(|h| <[u8; 32]>::try_from(h).unwrap_or([0; 32]))
                            .collect()
                    }
                };
                Ok(SyncFrame::Refused { why, heads })
            }
            _ => Err(DecodeError::Invalid {
                what: WHAT,
                reason: "unknown message tag",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> impl Strategy<Value = SyncFrame> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..512).prop_map(SyncFrame::Sync),
            (
                prop_oneof![
                    Just(Refusal::NotAMember),
                    Just(Refusal::ChangesRefused),
                    Just(Refusal::Malformed)
                ],
                proptest::collection::vec(any::<[u8; 32]>(), 0..4)
            )
                .prop_map(|(why, heads)| SyncFrame::Refused { why, heads }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(frame in frames()) {
            let bytes = frame.encode();
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            prop_assert_eq!(SyncFrame::decode(&bytes).unwrap(), frame);
        }

        #[test]
        fn perturbed_bytes_never_panic(frame in frames(), at in any::<usize>(), bit in 0u8..8) {
            let mut bytes = frame.encode();
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = SyncFrame::decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SyncFrame::decode(&bytes);
        }
    }

    #[test]
    fn unknown_tags_and_codes_are_invalid() {
        assert!(matches!(
            SyncFrame::decode(&[9, 1]),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            SyncFrame::decode(&[TAG_REFUSED, 0]),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            SyncFrame::decode(&[TAG_SYNC]),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            SyncFrame::decode(&[TAG_REFUSED, 2, 1, 0]),
            Err(DecodeError::Incomplete { .. })
        ));
        let mut long = vec![TAG_REFUSED, 2, 0];
        long.push(9);
        assert!(matches!(
            SyncFrame::decode(&long),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn a_refusal_from_an_older_peer_names_no_heads() {
        assert_eq!(
            SyncFrame::decode(&[TAG_REFUSED, 2]).unwrap(),
            SyncFrame::Refused {
                why: Refusal::ChangesRefused,
                heads: Vec::new()
            }
        );
    }
}
