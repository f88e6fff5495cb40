//! The control protocol between the CLI and the daemon (operations and their outcomes, which
//! `ops` defines, and what only the daemon does), and the CLI's client.
//!
//! Transport: the Unix socket `$HANDOFF_HOME/daemon.sock` (0600 in the 0700 home; the daemon
//! also checks the peer's uid with SO_PEERCRED). Each message is a frame: a `u32` big-endian
//! length, then a CBOR map `{ v: VERSION, body: Request | Response }`. One request, one response,
//! in order, on a connection. Frames decode straight into the typed message. A request over
//! [`MAX_REQUEST`] (an import: over [`MAX_IMPORT`]), or that does not decode, closes the
//! connection; a frame of another version gets an error response naming the versions. Byte
//! fields travel as CBOR byte strings.
//!
//! Secrets cross this socket (a revealed token, a credential for a local spawn, a passphrase
//! for a one-shot unlock) only between processes of the same user on the same machine.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use handoff_protocol::{DecodeError, frame};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ops::secret_bytes;
use crate::ops::views::{OfferView, PairStep};
use crate::ops::{Op, Outcome, Secret, Tier};

/// The protocol version this build speaks.
pub const VERSION: u32 = 8;
/// Largest request frame but an import's: the largest token with room to spare.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Largest import request: the largest document the vault accepts, with its envelope.
pub const MAX_IMPORT: usize = crate::doc::schema::limits::DOC_BYTES_MAX + 4096;
/// Largest response frame (an export of the largest document, with room to spare).
pub const MAX_RESPONSE: usize = crate::doc::schema::limits::DOC_BYTES_MAX + 1024 * 1024;

/// What the CLI asks: an operation on the vault, or one of the things only the daemon does
/// (hold the key, pair, stop). A `passphrase` rides along only when the daemon said it is
/// locked, and comes first so that an import's document ends the frame (see [`import_prefix`]).
/// `Debug` names the request only: several carry secrets.
#[derive(Serialize, Deserialize)]
pub enum Request {
    Ping,
    Op {
        #[serde(with = "secret_bytes::optional")]
        passphrase: Option<Secret>,
        op: Op,
    },
    Unlock {
        #[serde(with = "secret_bytes")]
        passphrase: Secret,
        seconds: Option<u64>,
    },
    Lock,
    /// Opens a pairing offer (one at a time).
    PairOffer {
        name: Option<String>,
        role: crate::doc::Role,
        qr: bool,
        auto_confirm: bool,
        #[serde(with = "secret_bytes::optional")]
        passphrase: Option<Secret>,
    },
    /// Waits for the open offer's next step.
    PairNext,
    /// The user compared the words: go on, or stop.
    PairConfirm {
        accept: bool,
    },
    Shutdown,
    /// The client is an agent supervisor (a spawn's subreaper): requests from its process
    /// tree are refused above [`Tier::Open`]. Sent again every few seconds while it runs, so a
    /// daemon started (or restarted) meanwhile learns of it.
    Supervising,
    /// The supervisor's tree is gone (every process in it reaped). A supervisor that stops
    /// running without saying so was killed, and its tree may have escaped it: the daemon
    /// locks.
    SupervisedEnd,
    /// A supervisor left a write-back stash (`spawn::writeback`): an unlocked daemon takes the
    /// waiting stashes now. Asks for nothing; a stash is judged on its own.
    WriteBackReady,
    /// A running session's supervisor: renew its lease on `token` (when this device holds it
    /// for `session` under `fence`, and it is half spent).
    RenewLease {
        token: String,
        session: String,
        fence: u64,
    },
    /// Asks member `device` to start an agent there (`spawn --on`); never carries a secret.
    SpawnOn {
        device: String,
        agent: String,
        dir: String,
        profile: Option<String>,
        service: Option<String>,
        args: Vec<String>,
    },
    /// Asks member `device` for the sessions this device started there.
    SessionsOn {
        device: String,
    },
    /// Asks member `device` to stop a session this device started there.
    StopOn {
        device: String,
        session: String,
    },
}

/// A session another device started for this one, as that device lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteSession {
    pub session: String,
    pub agent: String,
    pub dir: String,
    pub started_at: i64,
    /// `running`, `exited` or `failed`.
    pub state: String,
}

impl RemoteSession {
    /// A row as the target sent it; its texts are shown to the person, so made one line.
    pub fn of(row: &handoff_protocol::spawn::Row) -> Self {
        use handoff_protocol::spawn::RowState;
        let text = |s: &str| crate::spawn::policy::one_line(s, 1024);
        let session = if crate::spawn::session::is_id(&row.session) {
            row.session.clone()
        } else {
            "?".into()
        };
        Self {
            session,
            agent: text(&row.agent),
            dir: text(&row.dir),
            started_at: row.started_at,
            state: match row.state {
                RowState::Running => "running",
                RowState::Exited => "exited",
                RowState::Failed => "failed",
            }
            .into(),
        }
    }
}

/// What the daemon answers. `Debug` names the answer only: several carry secrets.
#[derive(Serialize, Deserialize)]
pub enum Response {
    Pong {
        pid: u32,
        unlocked_until: Option<i64>,
    },
    Outcome(Box<Outcome>),
    Offered(OfferView),
    /// The session another device started; `relayed` when the request went through a relay.
    Spawned {
        session: String,
        #[serde(default)]
        relayed: bool,
    },
    /// The sessions another device started for this one.
    RemoteSessions {
        rows: Vec<RemoteSession>,
    },
    PairStep(PairStep),
    Done,
    /// A failure: the exit code the CLI leaves with, and its one line; `passphrase` when the
    /// same request with the passphrase may succeed (the daemon is locked, or the operation
    /// needs it every time).
    Error {
        exit: u8,
        message: String,
        #[serde(default)]
        passphrase: bool,
    },
}

impl Request {
    /// Who may ask for it (see [`Tier`]); an operation's is its own.
    pub fn tier(&self) -> Tier {
        match self {
            Request::Ping
            | Request::Lock
            | Request::Supervising
            | Request::SupervisedEnd
            | Request::WriteBackReady
            | Request::RenewLease { .. } => Tier::Open,
            Request::Op { op, .. } => op.tier(),
            // Starting an agent elsewhere is as much as starting one here.
            Request::PairNext
            | Request::PairConfirm { .. }
            | Request::Shutdown
            | Request::SpawnOn { .. }
            | Request::SessionsOn { .. }
            | Request::StopOn { .. } => Tier::Person,
            // Unlocking (or extending an unlock), and admitting a device of any role.
            Request::Unlock { .. } | Request::PairOffer { .. } => Tier::Fresh,
        }
    }

    /// The request's name (what `Debug` shows; an operation shows as its own name).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "Ping",
            Request::Op { op, .. } => op.name(),
            Request::Unlock { .. } => "Unlock",
            Request::Lock => "Lock",
            Request::PairOffer { .. } => "PairOffer",
            Request::PairNext => "PairNext",
            Request::PairConfirm { .. } => "PairConfirm",
            Request::Shutdown => "Shutdown",
            Request::SpawnOn { .. } => "SpawnOn",
            Request::SessionsOn { .. } => "SessionsOn",
            Request::StopOn { .. } => "StopOn",
            Request::Supervising => "Supervising",
            Request::SupervisedEnd => "SupervisedEnd",
            Request::WriteBackReady => "WriteBackReady",
            Request::RenewLease { .. } => "RenewLease",
        }
    }
}

impl Response {
    /// The answer's name (what `Debug` shows; an outcome shows as its own name).
    pub fn name(&self) -> &'static str {
        match self {
            Response::Pong { .. } => "Pong",
            Response::Outcome(outcome) => outcome.name(),
            Response::Offered(_) => "Offered",
            Response::Spawned { .. } => "Spawned",
            Response::RemoteSessions { .. } => "RemoteSessions",
            Response::PairStep(_) => "PairStep",
            Response::Done => "Done",
            Response::Error { .. } => "Error",
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", self.name())
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", self.name())
    }
}

/// A frame's envelope.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    pub body: T,
}

/// Errors of the control channel itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("the daemon's control socket failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a control frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("a control frame did not decode: {0}")]
    Malformed(String),
}

/// The capacity a frame buffer starts with: a request or a response that holds the largest
/// token there can be, with room for the rest of the message, fits in it.
const FRAME_START: usize = handoff_protocol::sealed_token::MAX_PLAINTEXT + 16 * 1024;

/// Encodes one message as a frame (the project's one frame codec, [`frame`]): length, then
/// the CBOR envelope, serialized in place. `max` is the side's limit: [`MAX_IMPORT`] for a
/// request, [`MAX_RESPONSE`] for a response.
///
/// Frames carry passphrases and revealed secrets: the buffer is zeroed when dropped, and it
/// starts large enough that a frame of ordinary size never grows (a grown buffer would leave
/// its old copy behind, unzeroed).
pub fn encode<T: Serialize>(body: &T, max: usize) -> Result<Zeroizing<Vec<u8>>, ControlError> {
    let mut out = Zeroizing::new(Vec::with_capacity(FRAME_START));
    out.resize(frame::HEADER_LEN, 0);
    ciborium::into_writer(&Envelope { v: VERSION, body }, &mut *out)
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    let header = frame::header(out.len() - frame::HEADER_LEN, max)?;
    out[..frame::HEADER_LEN].copy_from_slice(&header);
    Ok(out)
}

/// A frame that breaks the codec's rules (only an oversized length can).
impl From<DecodeError> for ControlError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooLarge { len, .. } => ControlError::TooLarge(len),
            other => ControlError::Malformed(other.to_string()),
        }
    }
}

/// The bytes every import request's payload starts with, up to its document's byte-string
/// header: the daemon admits a frame over [`MAX_REQUEST`] only when it starts so.
pub fn import_prefix() -> Vec<u8> {
    let mut payload = Vec::new();
    // An empty byte string encodes as one byte (0x40) at the very end; what precedes it is the
    // same for every import.
    let _ = ciborium::into_writer(
        &Envelope {
            v: VERSION,
            body: Request::Op {
                passphrase: None,
                op: Op::Import { data: Vec::new() },
            },
        },
        &mut payload,
    );
    payload.pop();
    payload
}

/// Why a frame payload is not a message of this protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undecodable {
    /// A well-formed envelope of another version.
    Version(u32),
    /// Not an envelope this side understands.
    Malformed(String),
}

/// Only the version of an envelope, the body skipped without building anything.
#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Decodes a frame payload straight into `T` (no generic value tree: a hostile frame costs
/// no more memory than its own bytes). An envelope of another version is told apart, so the
/// answer can name both versions.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Undecodable> {
    match ciborium::from_reader::<Envelope<T>, _>(payload) {
        Ok(env) if env.v == VERSION => Ok(env.body),
        Ok(env) => Err(Undecodable::Version(env.v)),
        Err(e) => match ciborium::from_reader::<VersionOnly, _>(payload) {
            Ok(VersionOnly { v }) if v != VERSION => Err(Undecodable::Version(v)),
            _ => Err(Undecodable::Malformed(e.to_string())),
        },
    }
}

/// The CLI's connection to a running daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects if a daemon answers on `socket`; `None` if none runs.
    pub fn connect(socket: &Path) -> Option<Self> {
        let stream = UnixStream::connect(socket).ok()?;
        // Passphrases go down this socket: only to a daemon of our own user. (A socket in a
        // home we do not own is refused when the home is opened; this covers a swapped file.)
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if rustix::net::sockopt::socket_peercred(&stream).ok()?.uid != rustix::process::getuid() {
            return None;
        }
        // A wedged daemon must not hang the CLI forever; Argon2 and imports take well under this.
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .ok()?;
        Some(Self { stream })
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, ControlError> {
        let written = self.stream.write_all(&encode(request, MAX_IMPORT)?);
        // A daemon that refuses us answers and hangs up without reading: if our write failed,
        // its answer may still be waiting to be read, and it says more than a broken pipe.
        let mut header = [0u8; frame::HEADER_LEN];
        if let Err(e) = self.stream.read_exact(&mut header) {
            return Err(written.err().unwrap_or(e).into());
        }
        let len = frame::decode_len(header, MAX_RESPONSE)?;
        // Read into exactly its size, once, and zeroed when dropped (it may hold a secret).
        let mut payload = Zeroizing::new(Vec::with_capacity(len));
        (&mut self.stream)
            .take(len as u64)
            .read_to_end(&mut payload)?;
        if payload.len() != len {
            return Err(ControlError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        decode(&payload).map_err(|e| match e {
            Undecodable::Version(v) => ControlError::Malformed(format!(
                "the daemon speaks control version {v}, this CLI {VERSION}: restart the daemon"
            )),
            Undecodable::Malformed(why) => ControlError::Malformed(why),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_carry_the_version() {
        let encoded = encode(
            &Request::Op {
                passphrase: Some(zeroize::Zeroizing::new(b"pass".to_vec())),
                op: Op::Reveal {
                    query: "anthropic/work".into(),
                },
            },
            MAX_IMPORT,
        )
        .unwrap();
        let len = frame::decode_len(encoded[..4].try_into().unwrap(), MAX_REQUEST).unwrap();
        assert_eq!(len, encoded.len() - 4);
        let req: Request = decode(&encoded[4..]).unwrap();
        assert!(matches!(
            req,
            Request::Op { op: Op::Reveal { ref query }, .. } if query == "anthropic/work"
        ));
        assert!(frame::decode_len((MAX_REQUEST as u32 + 1).to_be_bytes(), MAX_REQUEST).is_err());
        assert!(matches!(
            decode::<Request>(b"\xff\x00garbage"),
            Err(Undecodable::Malformed(_))
        ));
        let mut other = Vec::new();
        ciborium::into_writer(
            &Envelope {
                v: 99u32,
                body: "?",
            },
            &mut other,
        )
        .unwrap();
        assert_eq!(
            decode::<Request>(&other).err(),
            Some(Undecodable::Version(99))
        );
    }

    #[test]
    fn an_import_starts_with_the_import_prefix_and_nothing_else_does() {
        let prefix = import_prefix();
        let import = encode(
            &Request::Op {
                passphrase: None,
                op: Op::Import {
                    data: vec![7u8; 70_000],
                },
            },
            MAX_IMPORT,
        )
        .unwrap();
        assert!(import[4..].starts_with(&prefix));
        // Bytes travel as one byte string: the frame is the data plus a few bytes.
        assert!(import.len() < 70_000 + 64);
        let add = encode(
            &Request::Op {
                passphrase: None,
                op: Op::AddToken {
                    service: crate::doc::Service::Anthropic,
                    label: "x".into(),
                    secret: zeroize::Zeroizing::new(vec![0; 100]),
                    default: false,
                    replace: false,
                },
            },
            MAX_IMPORT,
        )
        .unwrap();
        assert!(!add[4..].starts_with(&prefix));
    }

    #[test]
    fn hostile_payloads_fail_without_building_them() {
        // An array of a million zeros where a request belongs, and deep nesting.
        let mut zeros = vec![
            0xa2,
            0x61,
            b'v',
            VERSION as u8,
            0x64,
            b'b',
            b'o',
            b'd',
            b'y',
            0x9a,
        ];
        zeros.extend_from_slice(&1_000_000u32.to_be_bytes());
        zeros.extend(std::iter::repeat_n(0u8, 1_000_000));
        assert!(decode::<Request>(&zeros).is_err());
        let mut deep = vec![
            0xa2,
            0x61,
            b'v',
            VERSION as u8,
            0x64,
            b'b',
            b'o',
            b'd',
            b'y',
        ];
        deep.extend(std::iter::repeat_n(0x81u8, 100_000));
        deep.push(0);
        assert!(decode::<Request>(&deep).is_err());
    }

    #[test]
    fn debug_shows_no_secret() {
        let op = || Op::AddToken {
            service: crate::doc::Service::Anthropic,
            label: "work".into(),
            secret: zeroize::Zeroizing::new(b"sk-ant-SECRET".to_vec()),
            default: false,
            replace: false,
        };
        assert_eq!(format!("{:?}", op()), "AddToken(..)");
        let request = Request::Op {
            passphrase: Some(zeroize::Zeroizing::new(b"hunter2-passphrase".to_vec())),
            op: op(),
        };
        // A request for an operation shows as the operation.
        assert_eq!(format!("{request:?}"), "AddToken(..)");
        let outcome = Outcome::Credential {
            delivery: crate::spawn::Delivery::Env(vec!["X".into()]),
            secret: zeroize::Zeroizing::new(b"sk-ant-SECRET".to_vec()),
            ticket: None,
            warnings: Vec::new(),
        };
        assert_eq!(format!("{outcome:?}"), "Credential(..)");
        let response = Response::Outcome(Box::new(outcome));
        assert!(!format!("{response:?}").contains("SECRET"));
        assert_eq!(format!("{:?}", Request::Ping), "Ping(..)");
    }
}
