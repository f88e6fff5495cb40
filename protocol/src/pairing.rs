//! `/handoff/pair/1`: how a new device joins a vault through an admin device, authenticated by
//! a short code the user carries from one screen to the other.
//!
//! The joiner opens the stream. Every message is one [`frame`](crate::frame) whose payload is
//! a [`PairMessage`]:
//!
//! ```text
//! pair-message = %x01 version(u8) nameplate(u16) spake2-b(33)   ; Hello: joiner → adder
//!              / %x02 spake2-a(33)                              ; Spake: adder → joiner
//!              / %x03 noise-message(1..65535)                   ; Noise: either way
//!              / %x04 refusal(u8)                               ; Refused: either way
//! ```
//! After the SPAKE2 exchange (asymmetric: the adder is side A, the joiner side B, so a message
//! reflected back to its sender fails) both run `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s`, the
//! joiner as initiator, with the SPAKE2 key as psk. Inside the finished Noise session the
//! adder first sends [`Sealed::Ready`] (it proves the adder read the psk-bound last handshake
//! message, so the joiner knows the codes matched before it shows anything), the joiner then
//! sends a [`Sealed::Joined`] and the adder answers with a [`Sealed::Welcome`]. A sealed
//! message is `total-len(u32) || body`, cut into Noise transport messages of at most
//! [`NOISE_PLAINTEXT_MAX`] bytes each.

use crate::DecodeError;
use crate::ids::{DeviceId, VaultId};

const WHAT: &str = "pairing message";
const WHAT_SEALED: &str = "sealed pairing message";

/// The protocol id on libp2p streams.
pub const PROTOCOL: &str = "/handoff/pair/1";
/// The version a `Hello` carries.
pub const VERSION: u8 = 1;
/// Length of a SPAKE2 (Ed25519 group) message: side byte and a point.
pub const SPAKE2_LEN: usize = 33;
/// Noise's own limit on one message.
pub const NOISE_MAX: usize = 65535;
/// Plaintext that fits in one Noise transport message (its tag is 16 bytes).
pub const NOISE_PLAINTEXT_MAX: usize = NOISE_MAX - 16;
/// Largest frame payload on a pairing stream.
pub const MAX_FRAME: usize = 1 + NOISE_MAX;
/// Largest sealed message (a welcome carrying a whole document).
pub const MAX_SEALED: usize = 64 * 1024 * 1024 + 4096;
/// Longest device name a joiner may propose.
pub const NAME_MAX: usize = 128;

const TAG_HELLO: u8 = 1;
const TAG_SPAKE: u8 = 2;
const TAG_NOISE: u8 = 3;
const TAG_REFUSED: u8 = 4;
const TAG_JOINED: u8 = 0x10;
const TAG_WELCOME: u8 = 0x11;
const TAG_READY: u8 = 0x12;

/// Why one side ended a pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairRefusal {
    /// No pairing session with that nameplate is waiting.
    NoSession,
    /// The session already had its one attempt.
    Used,
    /// The session is older than its lifetime.
    Expired,
    /// The handshake failed: the codes differ.
    WrongCode,
    /// A user said the authentication strings differ, or declined.
    Declined,
    /// The adder cannot admit anyone now (locked, not an admin, or an internal failure).
    Unavailable,
    /// The other side speaks another version.
    Version,
}

impl PairRefusal {
    const ALL: [PairRefusal; 7] = [
        PairRefusal::NoSession,
        PairRefusal::Used,
        PairRefusal::Expired,
        PairRefusal::WrongCode,
        PairRefusal::Declined,
        PairRefusal::Unavailable,
        PairRefusal::Version,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            PairRefusal::NoSession => 1,
            PairRefusal::Used => 2,
            PairRefusal::Expired => 3,
            PairRefusal::WrongCode => 4,
            PairRefusal::Declined => 5,
            PairRefusal::Unavailable => 6,
            PairRefusal::Version => 7,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// One message on a pairing stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairMessage {
    Hello {
        version: u8,
        nameplate: u16,
        spake: [u8; SPAKE2_LEN],
    },
    Spake([u8; SPAKE2_LEN]),
    Noise(Vec<u8>),
    Refused(PairRefusal),
}

impl PairMessage {
    /// The frame payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PairMessage::Hello {
                version,
                nameplate,
                spake,
            } => {
                let mut out = vec![TAG_HELLO, *version];
                out.extend_from_slice(&nameplate.to_be_bytes());
                out.extend_from_slice(spake);
                out
            }
            PairMessage::Spake(spake) => {
                let mut out = vec![TAG_SPAKE];
                out.extend_from_slice(spake);
                out
            }
            PairMessage::Noise(bytes) => {
                let mut out = Vec::with_capacity(1 + bytes.len());
                out.push(TAG_NOISE);
                out.extend_from_slice(bytes);
                out
            }
            PairMessage::Refused(r) => vec![TAG_REFUSED, r.code()],
        }
    }

    /// Reads one frame payload (the whole input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |reason| DecodeError::Invalid { what: WHAT, reason };
        let Some((&tag, rest)) = bytes.split_first() else {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: 1,
            });
        };
        let exact = |len: usize| match rest.len().cmp(&len) {
            std::cmp::Ordering::Less => Err(DecodeError::Incomplete {
                what: WHAT,
                needed: len - rest.len(),
            }),
            std::cmp::Ordering::Greater => Err(invalid("trailing bytes")),
            std::cmp::Ordering::Equal => Ok(()),
        };
        match tag {
            TAG_HELLO => {
                exact(3 + SPAKE2_LEN)?;
                let mut spake = [0u8; SPAKE2_LEN];
                spake.copy_from_slice(&rest[3..]);
                Ok(PairMessage::Hello {
                    version: rest[0],
                    nameplate: u16::from_be_bytes([rest[1], rest[2]]),
                    spake,
                })
            }
            TAG_SPAKE => {
                exact(SPAKE2_LEN)?;
                let mut spake = [0u8; SPAKE2_LEN];
                spake.copy_from_slice(rest);
                Ok(PairMessage::Spake(spake))
            }
            TAG_NOISE if rest.is_empty() => Err(invalid("an empty Noise message")),
            TAG_NOISE if rest.len() > NOISE_MAX => Err(DecodeError::TooLarge {
                what: WHAT,
                len: rest.len(),
                max: NOISE_MAX,
            }),
            TAG_NOISE => Ok(PairMessage::Noise(rest.to_vec())),
            TAG_REFUSED => {
                exact(1)?;
                PairRefusal::from_code(rest[0])
                    .map(PairMessage::Refused)
                    .ok_or(invalid("unknown refusal code"))
            }
            _ => Err(invalid("unknown message tag")),
        }
    }
}

/// What the joiner presents: the name it proposes and its public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedBody {
    pub name: String,
    pub identity_pub: [u8; 32],
    pub mailbox_pub: [u8; 32],
    pub vault_pub: [u8; 32],
}

/// What the adder hands the new member: the anchors to pin and the whole document.
#[derive(Clone, PartialEq, Eq)]
pub struct WelcomeBody {
    pub vault: VaultId,
    pub founder: DeviceId,
    pub recovery_pub: [u8; 32],
    pub recovery_sign_pub: [u8; 32],
    /// The vault document (standard Automerge binary).
    pub document: Vec<u8>,
}

impl std::fmt::Debug for WelcomeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WelcomeBody")
            .field("vault", &self.vault)
            .field("founder", &self.founder)
            .field("document_len", &self.document.len())
            .finish_non_exhaustive()
    }
}

/// A message inside the finished Noise session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    Ready,
    Joined(JoinedBody),
    Welcome(WelcomeBody),
}

impl Sealed {
    /// The body, without the total-length prefix.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Sealed::Ready => vec![TAG_READY],
            Sealed::Joined(j) => {
                let mut out = vec![TAG_JOINED];
                // Names are at most NAME_MAX bytes, checked by the caller and by decode.
                let len = u16::try_from(j.name.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(j.name.as_bytes());
                out.extend_from_slice(&j.identity_pub);
                out.extend_from_slice(&j.mailbox_pub);
                out.extend_from_slice(&j.vault_pub);
                out
            }
            Sealed::Welcome(w) => {
                let mut out = Vec::with_capacity(1 + 96 + w.document.len());
                out.push(TAG_WELCOME);
                out.extend_from_slice(w.vault.as_bytes());
                out.extend_from_slice(w.founder.as_bytes());
                out.extend_from_slice(&w.recovery_pub);
                out.extend_from_slice(&w.recovery_sign_pub);
                out.extend_from_slice(&w.document);
                out
            }
        }
    }

    /// Reads a body (the whole input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let invalid = |reason| DecodeError::Invalid {
            what: WHAT_SEALED,
            reason,
        };
        let short = |needed| DecodeError::Incomplete {
            what: WHAT_SEALED,
            needed,
        };
        if bytes.len() > MAX_SEALED {
            return Err(DecodeError::TooLarge {
                what: WHAT_SEALED,
                len: bytes.len(),
                max: MAX_SEALED,
            });
        }
        let Some((&tag, rest)) = bytes.split_first() else {
            return Err(short(1));
        };
        let key = |b: &[u8]| {
            let mut k = [0u8; 32];
            k.copy_from_slice(b);
            k
        };
        match tag {
            TAG_READY if rest.is_empty() => Ok(Sealed::Ready),
            TAG_READY => Err(invalid("trailing bytes")),
            TAG_JOINED => {
                let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                    return Err(short(2 - rest.len()));
                };
                let len = usize::from(u16::from_be_bytes(*len));
                if len == 0 || len > NAME_MAX {
                    return Err(invalid("a device name is 1 to 128 bytes"));
                }
                if rest.len() < len + 96 {
                    return Err(short(len + 96 - rest.len()));
                }
                if rest.len() > len + 96 {
                    return Err(invalid("trailing bytes"));
                }
                let (name, keys) = rest.split_at(len);
                let name = std::str::from_utf8(name)
                    .map_err(|_| invalid("a device name is UTF-8"))?
                    .to_string();
                Ok(Sealed::Joined(JoinedBody {
                    name,
                    identity_pub: key(&keys[..32]),
                    mailbox_pub: key(&keys[32..64]),
                    vault_pub: key(&keys[64..]),
                }))
            }
            TAG_WELCOME => {
                if rest.len() < 96 {
                    return Err(short(96 - rest.len()));
                }
                let (head, document) = rest.split_at(96);
                Ok(Sealed::Welcome(WelcomeBody {
                    vault: VaultId::from_slice(&head[..16])?,
                    founder: DeviceId::from_slice(&head[16..32])?,
                    recovery_pub: key(&head[32..64]),
                    recovery_sign_pub: key(&head[64..96]),
                    document: document.to_vec(),
                }))
            }
            _ => Err(invalid("unknown sealed message tag")),
        }
    }

    /// The body with its total-length prefix, cut into Noise-sized plaintext pieces.
    pub fn pieces(&self) -> Vec<Vec<u8>> {
        let body = self.encode();
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut whole = Vec::with_capacity(4 + body.len());
        whole.extend_from_slice(&len.to_be_bytes());
        whole.extend_from_slice(&body);
        whole
            .chunks(NOISE_PLAINTEXT_MAX)
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// The total body length announced by the first piece (checked against [`MAX_SEALED`]).
    pub fn announced_len(first: &[u8]) -> Result<usize, DecodeError> {
        let Some((len, _)) = first.split_first_chunk::<4>() else {
            return Err(DecodeError::Incomplete {
                what: WHAT_SEALED,
                needed: 4 - first.len(),
            });
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_SEALED {
            return Err(DecodeError::TooLarge {
                what: WHAT_SEALED,
                len,
                max: MAX_SEALED,
            });
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn messages() -> impl Strategy<Value = PairMessage> {
        prop_oneof![
            (any::<u8>(), any::<u16>(), any::<[u8; 32]>(), any::<u8>()).prop_map(
                |(version, nameplate, p, side)| {
                    let mut spake = [side; SPAKE2_LEN];
                    spake[1..].copy_from_slice(&p);
                    PairMessage::Hello {
                        version,
                        nameplate,
                        spake,
                    }
                }
            ),
            any::<[u8; 32]>().prop_map(|p| {
                let mut spake = [0x41; SPAKE2_LEN];
                spake[1..].copy_from_slice(&p);
                PairMessage::Spake(spake)
            }),
            proptest::collection::vec(any::<u8>(), 1..300).prop_map(PairMessage::Noise),
            proptest::sample::select(PairRefusal::ALL.to_vec()).prop_map(PairMessage::Refused),
        ]
    }

    fn sealed() -> impl Strategy<Value = Sealed> {
        prop_oneof![
            Just(Sealed::Ready),
            (
                "[a-z0-9 -]{1,40}",
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(name, identity_pub, mailbox_pub, vault_pub)| {
                    Sealed::Joined(JoinedBody {
                        name,
                        identity_pub,
                        mailbox_pub,
                        vault_pub,
                    })
                }),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 0..2000)
            )
                .prop_map(|(v, f, k, document)| {
                    Sealed::Welcome(WelcomeBody {
                        vault: VaultId::from_bytes(v),
                        founder: DeviceId::from_bytes(f),
                        recovery_pub: k,
                        recovery_sign_pub: k,
                        document,
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(m in messages()) {
            prop_assert_eq!(PairMessage::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn sealed_round_trips_through_pieces(s in sealed()) {
            let pieces = s.pieces();
            prop_assert!(pieces.iter().all(|p| p.len() <= NOISE_PLAINTEXT_MAX));
            let whole: Vec<u8> = pieces.concat();
            let len = Sealed::announced_len(&whole).unwrap();
            prop_assert_eq!(len, whole.len() - 4);
            prop_assert_eq!(Sealed::decode(&whole[4..]).unwrap(), s);
        }

        #[test]
        fn perturbed_bytes_never_panic(m in messages(), s in sealed(), at in any::<usize>(), bit in 0u8..8) {
            let mut bytes = m.encode();
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = PairMessage::decode(&bytes);
            let mut bytes = s.encode();
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = Sealed::decode(&bytes);
        }

        #[test]
        fn truncated_fixed_messages_are_incomplete(m in messages(), cut in 1usize..36) {
            let bytes = m.encode();
            prop_assume!(!matches!(m, PairMessage::Noise(_)) && cut < bytes.len());
            let incomplete = matches!(PairMessage::decode(&bytes[..cut]), Err(DecodeError::Incomplete { .. }));
            prop_assert!(incomplete);
        }
    }

    #[test]
    fn refuses_unknown_tags_codes_and_long_names() {
        assert!(PairMessage::decode(&[9]).is_err());
        assert!(PairMessage::decode(&[TAG_REFUSED, 0]).is_err());
        assert!(PairMessage::decode(&[TAG_NOISE]).is_err());
        let long = Sealed::Joined(JoinedBody {
            name: "x".repeat(NAME_MAX + 1),
            identity_pub: [0; 32],
            mailbox_pub: [0; 32],
            vault_pub: [0; 32],
        });
        assert!(Sealed::decode(&long.encode()).is_err());
        assert!(Sealed::announced_len(&[0xff; 4]).is_err());
    }
}
