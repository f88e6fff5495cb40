//! `/handoff/relay/1`: a client and the blind relay that stores envelopes for devices that are
//! offline and delivers them when they connect.
//!
//! Every message is one [`frame`](crate::frame). The client speaks first, with a hello that
//! carries the relay's access token (if it has one); then it deposits envelopes for a recipient
//! (answered, in order, by `Stored` or a refusal each), or subscribes to its own mailbox (the
//! PeerId it proved in the connection's handshake) and acknowledges what it has applied.
//!
//! ```text
//! request  = %x01 version(u8) token-len(u8) token       ; hello (first on every stream)
//!          / %x02 to-len(u8) to envelope                ; deposit for the PeerId `to`
//!          / %x03                                       ; subscribe to my mailbox
//!          / %x04 count(u16) id(u64)*count              ; ack: delete these from my mailbox
//! response = %x81                                       ; welcome (hello accepted)
//!          / %x82 id(u64)                               ; stored (durably)
//!          / %x83 id(u64) envelope                      ; deliver
//!          / %x84 reason(u8)                            ; refused (see `Refusal`)
//! ```

use crate::DecodeError;

const WHAT: &str = "relay message";

/// The protocol id on libp2p streams.
pub const PROTOCOL: &str = "/handoff/relay/1";
/// The version a hello carries.
pub const VERSION: u8 = 1;
/// Largest envelope a relay accepts.
pub const MAX_ENVELOPE: usize = 1024 * 1024;
/// Longest access token.
pub const MAX_TOKEN: usize = 255;
/// Longest recipient (a PeerId's bytes).
pub const MAX_RECIPIENT: usize = 64;
/// Most ids in one ack.
pub const MAX_ACK: usize = 1024;
/// Largest frame payload in either direction.
pub const MAX_FRAME: usize = 2 + MAX_RECIPIENT + MAX_ENVELOPE + 16;

/// Why the relay refused a hello or a deposit. Each is a distinct, typed answer: the relay
/// never drops something silently once it said it stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The access token is missing or wrong.
    Unauthorized,
    /// This PeerId is not on the relay's allowlist.
    NotAllowed,
    /// The envelope is over the relay's size limit.
    TooLarge,
    /// The recipient's mailbox holds as many envelopes or bytes as it may.
    MailboxFull,
    /// The relay holds as many bytes as it may.
    RelayFull,
    /// Too many deposits from this client; try again later.
    RateLimited,
    /// The message was not understood.
    Malformed,
    /// The hello named a version this relay does not speak.
    Version,
    /// The relay failed to store it; try again later.
    Internal,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Unauthorized,
        Refusal::NotAllowed,
        Refusal::TooLarge,
        Refusal::MailboxFull,
        Refusal::RelayFull,
        Refusal::RateLimited,
        Refusal::Malformed,
        Refusal::Version,
        Refusal::Internal,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Refusal::Unauthorized => 1,
            Refusal::NotAllowed => 2,
            Refusal::TooLarge => 3,
            Refusal::MailboxFull => 4,
            Refusal::RelayFull => 5,
            Refusal::RateLimited => 6,
            Refusal::Malformed => 7,
            Refusal::Version => 8,
            Refusal::Internal => 9,
        }
    }

    /// A short name (metrics labels, logs).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::NotAllowed => "not_allowed",
            Refusal::TooLarge => "too_large",
            Refusal::MailboxFull => "mailbox_full",
            Refusal::RelayFull => "relay_full",
            Refusal::RateLimited => "rate_limited",
            Refusal::Malformed => "malformed",
            Refusal::Version => "version",
            Refusal::Internal => "internal",
        }
    }

    /// Whether the same deposit may succeed later (the client keeps it and retries).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Refusal::MailboxFull | Refusal::RelayFull | Refusal::RateLimited | Refusal::Internal
        )
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// What a client sends.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    Hello { version: u8, token: Vec<u8> },
    Deposit { to: Vec<u8>, envelope: Vec<u8> },
    Subscribe,
    Ack { ids: Vec<u64> },
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Hello { version, .. } => write!(f, "Hello(v{version}, token redacted)"),
            Request::Deposit { envelope, .. } => write!(f, "Deposit({} bytes)", envelope.len()),
            Request::Subscribe => f.write_str("Subscribe"),
            Request::Ack { ids } => write!(f, "Ack({} ids)", ids.len()),
        }
    }
}

/// What the relay answers.
#[derive(Clone, PartialEq, Eq)]
pub enum Response {
    Welcome,
    Stored { id: u64 },
    Deliver { id: u64, envelope: Vec<u8> },
    Refused(Refusal),
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Welcome => f.write_str("Welcome"),
            Response::Stored { id } => write!(f, "Stored({id})"),
            Response::Deliver { id, envelope } => {
                write!(f, "Deliver({id}, {} bytes)", envelope.len())
            }
            Response::Refused(r) => write!(f, "Refused({r:?})"),
        }
    }
}

fn invalid(reason: &'static str) -> DecodeError {
    DecodeError::Invalid { what: WHAT, reason }
}

fn short(needed: usize) -> DecodeError {
    DecodeError::Incomplete { what: WHAT, needed }
}

fn too_large(len: usize, max: usize) -> DecodeError {
    DecodeError::TooLarge {
        what: WHAT,
        len,
        max,
    }
}

/// Reads a `u8` length then that many bytes, at most `max`.
fn short_bytes(input: &[u8], max: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    let Some((&len, rest)) = input.split_first() else {
        return Err(short(1));
    };
    let len = usize::from(len);
    if len > max {
        return Err(too_large(len, max));
    }
    if rest.len() < len {
        return Err(short(len - rest.len()));
    }
    Ok(rest.split_at(len))
}

fn u64_at(bytes: &[u8]) -> Result<u64, DecodeError> {
    let (head, _) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| short(8 - bytes.len()))?;
    Ok(u64::from_be_bytes(*head))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Hello { version, token } => {
                let mut out = vec![1, *version, u8::try_from(token.len()).unwrap_or(u8::MAX)];
                out.extend_from_slice(&token[..token.len().min(MAX_TOKEN)]);
                out
            }
            Request::Deposit { to, envelope } => {
                let mut out = Vec::with_capacity(2 + to.len() + envelope.len());
                out.push(2);
                out.push(u8::try_from(to.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(&to[..to.len().min(MAX_RECIPIENT)]);
                out.extend_from_slice(envelope);
                out
            }
            Request::Subscribe => vec![3],
            Request::Ack { ids } => {
                let ids = &ids[..ids.len().min(MAX_ACK)];
                let mut out = Vec::with_capacity(3 + 8 * ids.len());
                out.push(4);
                out.extend_from_slice(&u16::try_from(ids.len()).unwrap_or(0).to_be_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
                out
            }
        }
    }

    /// Reads one frame payload (the whole input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(too_large(bytes.len(), MAX_FRAME));
        }
        let Some((&tag, rest)) = bytes.split_first() else {
            return Err(short(1));
        };
        match tag {
            1 => {
                let Some((&version, rest)) = rest.split_first() else {
                    return Err(short(2));
                };
                let (token, trailing) = short_bytes(rest, MAX_TOKEN)?;
                if !trailing.is_empty() {
                    return Err(invalid("trailing bytes"));
                }
                Ok(Request::Hello {
                    version,
                    token: token.to_vec(),
                })
            }
            2 => {
                let (to, envelope) = short_bytes(rest, MAX_RECIPIENT)?;
                if to.is_empty() {
                    return Err(invalid("a deposit names no recipient"));
                }
                if envelope.is_empty() {
                    return Err(invalid("an empty envelope"));
                }
                if envelope.len() > MAX_ENVELOPE {
                    return Err(too_large(envelope.len(), MAX_ENVELOPE));
                }
                Ok(Request::Deposit {
                    to: to.to_vec(),
                    envelope: envelope.to_vec(),
                })
            }
            3 if rest.is_empty() => Ok(Request::Subscribe),
            3 => Err(invalid("trailing bytes")),
            4 => {
                let Some((count, ids)) = rest.split_first_chunk::<2>() else {
                    return Err(short(2 - rest.len()));
                };
                let count = usize::from(u16::from_be_bytes(*count));
                if count > MAX_ACK {
                    return Err(too_large(count, MAX_ACK));
                }
                match ids.len().cmp(&(8 * count)) {
                    std::cmp::Ordering::Less => return Err(short(8 * count - ids.len())),
                    std::cmp::Ordering::Greater => return Err(invalid("trailing bytes")),
                    std::cmp::Ordering::Equal => {}
                }
                let ids = ids.chunks_exact(8).map(u64_at).collect::<Result<_, _>>()?;
                Ok(Request::Ack { ids })
            }
            _ => Err(invalid("unknown request tag")),
        }
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Welcome => vec![0x81],
            Response::Stored { id } => {
                let mut out = vec![0x82];
                out.extend_from_slice(&id.to_be_bytes());
                out
            }
            Response::Deliver { id, envelope } => {
                let mut out = Vec::with_capacity(9 + envelope.len());
                out.push(0x83);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(envelope);
                out
            }
            Response::Refused(r) => vec![0x84, r.code()],
        }
    }

    /// Reads one frame payload (the whole input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(too_large(bytes.len(), MAX_FRAME));
        }
        let Some((&tag, rest)) = bytes.split_first() else {
            return Err(short(1));
        };
        match tag {
            0x81 if rest.is_empty() => Ok(Response::Welcome),
            0x82 if rest.len() == 8 => Ok(Response::Stored { id: u64_at(rest)? }),
            0x82 if rest.len() < 8 => Err(short(8 - rest.len())),
            0x83 if rest.len() > 8 => {
                let envelope = &rest[8..];
                if envelope.len() > MAX_ENVELOPE {
                    return Err(too_large(envelope.len(), MAX_ENVELOPE));
                }
                Ok(Response::Deliver {
                    id: u64_at(rest)?,
                    envelope: envelope.to_vec(),
                })
            }
            0x83 => Err(short(9 - rest.len())),
            0x84 => match rest {
                [] => Err(short(1)),
                [code] => Refusal::from_code(*code)
                    .map(Response::Refused)
                    .ok_or(invalid("unknown refusal code")),
                _ => Err(invalid("trailing bytes")),
            },
            0x81 | 0x82 => Err(invalid("trailing bytes")),
            _ => Err(invalid("unknown response tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requests() -> impl Strategy<Value = Request> {
        prop_oneof![
            (
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_TOKEN)
            )
                .prop_map(|(version, token)| Request::Hello { version, token }),
            (
                proptest::collection::vec(any::<u8>(), 1..=MAX_RECIPIENT),
                proptest::collection::vec(any::<u8>(), 1..400)
            )
                .prop_map(|(to, envelope)| Request::Deposit { to, envelope }),
            Just(Request::Subscribe),
            proptest::collection::vec(any::<u64>(), 0..40).prop_map(|ids| Request::Ack { ids }),
        ]
    }

    fn responses() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Welcome),
            any::<u64>().prop_map(|id| Response::Stored { id }),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 1..400))
                .prop_map(|(id, envelope)| Response::Deliver { id, envelope }),
            proptest::sample::select(Refusal::ALL.to_vec()).prop_map(Response::Refused),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in requests()) {
            prop_assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn responses_round_trip(r in responses()) {
            prop_assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn perturbed_bytes_never_panic(r in requests(), s in responses(), at in any::<usize>(), bit in 0u8..8) {
            for mut bytes in [r.encode(), s.encode()] {
                let i = at % bytes.len();
                bytes[i] ^= 1 << bit;
                let _ = Request::decode(&bytes);
                let _ = Response::decode(&bytes);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }

    #[test]
    fn limits_are_enforced() {
        let big = Request::Deposit {
            to: vec![1],
            envelope: vec![0; MAX_ENVELOPE + 1],
        };
        assert!(matches!(
            Request::decode(&big.encode()),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(Request::decode(&[2, 0, 1]).is_err(), "no recipient");
        assert!(Request::decode(&[4, 0xff, 0xff]).is_err(), "too many acks");
        assert!(Response::decode(&[0x84, 0]).is_err());
        assert!(Refusal::MailboxFull.is_transient() && !Refusal::Unauthorized.is_transient());
        assert!(
            !format!(
                "{:?}",
                Request::Hello {
                    version: 1,
                    token: b"s3cret".to_vec()
                }
            )
            .contains("s3cret")
        );
    }
}
