//! The control protocol between the CLI and the daemon, the views both render from, and the
//! CLI's client.
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

use serde::{Deserialize, Serialize};

use crate::doc::{Token, VaultState};
use crate::spawn::Delivery;

/// The protocol version this build speaks.
pub const VERSION: u32 = 2;
/// Largest request frame but an import's: the largest token with room to spare.
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Largest import request: the largest document the vault accepts, with its envelope.
pub const MAX_IMPORT: usize = crate::doc::schema::limits::DOC_BYTES_MAX + 4096;
/// Largest response frame (an export of the largest document, with room to spare).
pub const MAX_RESPONSE: usize = crate::doc::schema::limits::DOC_BYTES_MAX + 1024 * 1024;

/// A token as commands show it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub service: String,
    pub label: String,
    pub kind: String,
    pub default: bool,
    pub conflict: bool,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
}

impl TokenView {
    pub fn of(state: &VaultState, t: &Token) -> Self {
        Self {
            id: t.id.to_hex(),
            service: t.service.as_str().into(),
            label: t.label.clone(),
            kind: t.kind.as_str().into(),
            default: state.is_default(t),
            conflict: t.conflicted,
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            updated_at: t.updated_at,
            updated_by: t.updated_by.clone(),
        }
    }

    /// Every live token, sorted by service then label.
    pub fn all(state: &VaultState) -> Vec<Self> {
        let mut tokens: Vec<&Token> = state.live_tokens().collect();
        tokens.sort_by(|a, b| (a.service, &a.label).cmp(&(b.service, &b.label)));
        tokens.into_iter().map(|t| Self::of(state, t)).collect()
    }
}

/// A member as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub device_id: String,
    pub name: String,
    pub role: String,
    pub active: bool,
}

/// A member this device cannot converge with, as `status` and `peer list` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutOfSyncView {
    pub device_id: String,
    pub name: String,
    /// Unix seconds since when.
    pub since: i64,
    pub why: String,
}

impl OutOfSyncView {
    /// Every member this device is recorded out of sync with.
    pub fn all(seen: &[crate::device::PeerSeen], state: &VaultState) -> Vec<Self> {
        seen.iter()
            .filter_map(|p| {
                let (since, why) = p.out_of_sync.clone()?;
                let member = state.members.get(&p.device).filter(|m| m.is_active())?;
                Some(Self {
                    device_id: p.device.to_hex(),
                    name: member.name.clone(),
                    since,
                    why,
                })
            })
            .collect()
    }

    /// The line a person reads.
    pub fn line(&self, when: impl Fn(i64) -> String) -> String {
        format!(
            "out of sync with {} since {}, because {}",
            self.name,
            when(self.since),
            self.why
        )
    }
}

/// A member as `peer list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub device_id: String,
    pub name: String,
    pub role: String,
    pub active: bool,
    /// This device.
    pub this_device: bool,
    /// Connected to the daemon now (`None` when no daemon runs).
    pub online: Option<bool>,
    /// Unix seconds of the last sync with it.
    pub last_seen: Option<i64>,
    /// Where it is (connected) or was last reachable.
    pub address: Option<String>,
    /// Since when, and why, this device cannot converge with it.
    pub out_of_sync: Option<OutOfSyncView>,
}

impl PeerView {
    /// Every member, this device first, then by name.
    pub fn all(
        device: &crate::device::Device,
        state: &VaultState,
        online: Option<&std::collections::BTreeMap<handoff_protocol::DeviceId, String>>,
    ) -> Result<Vec<Self>, crate::device::DeviceError> {
        let seen = device.peers_seen()?;
        let me = device.device_id();
        let mut out: Vec<Self> = state
            .members
            .values()
            .map(|m| {
                let record = seen.iter().find(|p| p.device == m.device);
                let live = online.and_then(|o| o.get(&m.device));
                Self {
                    device_id: m.device.to_hex(),
                    name: m.name.clone(),
                    role: m.role.as_str().into(),
                    active: m.is_active(),
                    this_device: m.device == me,
                    online: (m.device != me)
                        .then(|| online.map(|_| live.is_some()))
                        .flatten(),
                    last_seen: record.map(|r| r.seen_at).filter(|s| *s > 0),
                    address: live
                        .cloned()
                        .or_else(|| record.and_then(|r| r.addr.clone())),
                    out_of_sync: record.and_then(|r| {
                        let (since, why) = r.out_of_sync.clone()?;
                        Some(OutOfSyncView {
                            device_id: m.device.to_hex(),
                            name: m.name.clone(),
                            since,
                            why,
                        })
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| (!a.this_device, &a.name).cmp(&(!b.this_device, &b.name)));
        Ok(out)
    }
}

/// A relay as `relay list` shows it (never its access token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayView {
    pub id: String,
    pub addrs: Vec<String>,
    pub access_token: bool,
    pub added_by: String,
    pub added_at: i64,
}

impl RelayView {
    pub fn of(r: &crate::doc::Relay) -> Self {
        Self {
            id: r.id.clone(),
            addrs: r.addrs.split_whitespace().map(str::to_string).collect(),
            access_token: r.access_token.is_some(),
            added_by: r.added_by.clone(),
            added_at: r.added_at,
        }
    }
}

/// What `peer remove` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedView {
    pub device_id: String,
    pub name: String,
    /// Tokens the removed device could read: rotate them at the vendor.
    pub exposed: Vec<TokenView>,
    pub epoch_generation: u64,
}

impl RemovedView {
    pub fn of(state: &VaultState, removed: &crate::device::Removed) -> Self {
        Self {
            device_id: removed.member.device.to_hex(),
            name: removed.member.name.clone(),
            exposed: removed
                .exposed
                .iter()
                .map(|t| TokenView::of(state, t))
                .collect(),
            epoch_generation: state.epochs.get(&removed.epoch).map_or(0, |e| e.generation),
        }
    }
}

/// An open pairing offer, as `peer add` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferView {
    pub code: String,
    /// The `handoff://pair?...` link (with `--qr`).
    pub link: Option<String>,
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub expires_at: i64,
}

impl OfferView {
    /// What `peer add` shows of `ticket`, an offer `mesh` opened (with the link for a QR code
    /// when `qr`).
    pub fn of(ticket: &crate::net::PairTicket, mesh: &crate::net::Mesh, qr: bool) -> OfferView {
        let view = mesh.view();
        let link = qr.then(|| {
            let addrs: Vec<crate::net::Multiaddr> =
                view.listen.iter().filter_map(|a| a.parse().ok()).collect();
            ticket.code.link(&mesh.peer_id(), &addrs).to_string()
        });
        OfferView {
            code: ticket.code.text().to_string(),
            link,
            peer_id: view.peer_id,
            addrs: view.listen,
            expires_at: ticket.expires_at,
        }
    }
}

/// One step of a pairing, as `peer add` follows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PairStep {
    /// Compare these words with the other screen.
    Sas {
        sas: String,
    },
    /// The last code was tried and is void; the offer waits under this fresh one.
    Renewed {
        code: String,
        link: Option<String>,
        message: String,
    },
    Paired {
        device_id: String,
        name: String,
        role: String,
    },
    Failed {
        exit: u8,
        message: String,
    },
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub vault_id: String,
    pub vault_name: String,
    pub vault_created_at: i64,
    pub device_id: String,
    pub device_name: String,
    pub role: String,
    pub identity_pub: String,
    /// The daemon's pid, when one serves this home.
    pub daemon_pid: Option<u32>,
    /// Unix time the daemon's unlock lasts until; `None` when locked.
    pub unlocked_until: Option<i64>,
    pub tokens: usize,
    pub epoch_generation: u64,
    pub members: Vec<MemberView>,
    /// This device's libp2p PeerId.
    pub peer_id: String,
    /// The mesh's listen addresses (empty when no daemon runs).
    pub listen: Vec<String>,
    /// Members connected now (0 when no daemon runs).
    pub online: usize,
    /// A pairing offer waits for its joiner.
    pub offer_open: bool,
    /// Members this device cannot converge with.
    pub out_of_sync: Vec<OutOfSyncView>,
}

impl StatusView {
    pub fn of(device: &crate::device::Device, state: &VaultState) -> Self {
        let me = device.device_id();
        Self {
            vault_id: state.info.id.to_hex(),
            vault_name: state.info.name.clone(),
            vault_created_at: state.info.created_at,
            device_id: me.to_hex(),
            device_name: device.device_name().into(),
            role: state
                .members
                .get(&me)
                .map_or("unknown", |m| m.role.as_str())
                .into(),
            identity_pub: hex::encode(device.identity_public()),
            peer_id: crate::net::peer_id_for(&device.identity_public())
                .map(|p| p.to_string())
                .unwrap_or_default(),
            listen: Vec::new(),
            online: 0,
            offer_open: false,
            out_of_sync: device
                .peers_seen()
                .map(|seen| OutOfSyncView::all(&seen, state))
                .unwrap_or_default(),
            daemon_pid: None,
            unlocked_until: None,
            tokens: state.live_tokens().count(),
            epoch_generation: state.current_epoch().map_or(0, |e| e.generation),
            members: state
                .members
                .values()
                .map(|m| MemberView {
                    device_id: m.device.to_hex(),
                    name: m.name.clone(),
                    role: m.role.as_str().into(),
                    active: m.is_active(),
                })
                .collect(),
        }
    }
}

/// What the CLI asks. A `passphrase` rides along only when the daemon said it is locked.
/// `Debug` names the request only: several carry secrets.
#[derive(Serialize, Deserialize)]
pub enum Request {
    Ping,
    Status,
    ListTokens,
    ShowToken {
        query: String,
    },
    AddToken {
        service: String,
        label: String,
        #[serde(with = "serde_bytes")]
        secret: Vec<u8>,
        default: bool,
        replace: bool,
        #[serde(with = "serde_bytes")]
        passphrase: Option<Vec<u8>>,
    },
    Reveal {
        query: String,
        #[serde(with = "serde_bytes")]
        passphrase: Option<Vec<u8>>,
    },
    RemoveToken {
        query: String,
    },
    SetDefault {
        query: String,
    },
    Export,
    Import {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Unlock {
        #[serde(with = "serde_bytes")]
        passphrase: Vec<u8>,
        seconds: Option<u64>,
    },
    Lock,
    PeerList,
    PeerRemove {
        query: String,
        #[serde(with = "serde_bytes")]
        passphrase: Option<Vec<u8>>,
    },
    RelayAdd {
        addrs: String,
        #[serde(with = "serde_bytes")]
        token: Option<Vec<u8>>,
    },
    RelayList,
    RelayRemove {
        query: String,
    },
    /// Opens a pairing offer (one at a time).
    PairOffer {
        name: Option<String>,
        role: String,
        qr: bool,
        auto_confirm: bool,
        #[serde(with = "serde_bytes")]
        passphrase: Option<Vec<u8>>,
    },
    /// Waits for the open offer's next step.
    PairNext,
    /// The user compared the words: go on, or stop.
    PairConfirm {
        accept: bool,
    },
    /// The credential for a local spawn of `agent`.
    Credential {
        agent: String,
        service: Option<String>,
        profile: Option<String>,
        #[serde(with = "serde_bytes")]
        passphrase: Option<Vec<u8>>,
    },
    Shutdown,
}

/// What the daemon answers. `Debug` names the answer only: several carry secrets.
#[derive(Serialize, Deserialize)]
pub enum Response {
    Pong {
        pid: u32,
        unlocked_until: Option<i64>,
    },
    Status(StatusView),
    Tokens(Vec<TokenView>),
    Token(TokenView),
    Secret {
        token: TokenView,
        #[serde(with = "serde_bytes")]
        secret: Vec<u8>,
    },
    Exported(#[serde(with = "serde_bytes")] Vec<u8>),
    Imported(usize),
    Credential {
        delivery: Delivery,
        #[serde(with = "serde_bytes")]
        secret: Vec<u8>,
    },
    Peers(Vec<PeerView>),
    Relays(Vec<RelayView>),
    Relay(RelayView),
    Removed(RemovedView),
    Offered(OfferView),
    PairStep(PairStep),
    Done,
    /// A failure: the exit code the CLI leaves with, and its one line.
    Error {
        exit: u8,
        message: String,
    },
}

/// The name of a serialized enum variant (what `Debug` shows of requests and responses).
fn variant_name<T: Serialize>(value: &T) -> String {
    match ciborium::Value::serialized(value) {
        Ok(ciborium::Value::Text(name)) => name,
        Ok(ciborium::Value::Map(entries)) => entries
            .first()
            .and_then(|(k, _)| k.as_text().map(str::to_string))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", variant_name(self))
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", variant_name(self))
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

/// Encodes a frame: length, then the CBOR envelope.
pub fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, ControlError> {
    let mut frame = vec![0u8; 4];
    ciborium::into_writer(&Envelope { v: VERSION, body }, &mut frame)
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    let len = frame.len() - 4;
    let len = u32::try_from(len).map_err(|_| ControlError::TooLarge(len))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Checks a frame length read from the wire against `max`.
pub fn check_len(len: [u8; 4], max: usize) -> Result<usize, ControlError> {
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ControlError::TooLarge(len));
    }
    Ok(len)
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
            body: Request::Import { data: Vec::new() },
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
        let written = self.stream.write_all(&encode(request)?);
        // A daemon that refuses us answers and hangs up without reading: if our write failed,
        // its answer may still be waiting to be read, and it says more than a broken pipe.
        let mut len = [0u8; 4];
        if let Err(e) = self.stream.read_exact(&mut len) {
            return Err(written.err().unwrap_or(e).into());
        }
        let len = check_len(len, MAX_RESPONSE)?;
        let mut payload = Vec::with_capacity(len);
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
        let frame = encode(&Request::Reveal {
            query: "anthropic/work".into(),
            passphrase: Some(b"pass".to_vec()),
        })
        .unwrap();
        let len = check_len(frame[..4].try_into().unwrap(), MAX_REQUEST).unwrap();
        assert_eq!(len, frame.len() - 4);
        let req: Request = decode(&frame[4..]).unwrap();
        assert!(matches!(req, Request::Reveal { ref query, .. } if query == "anthropic/work"));
        assert!(check_len((MAX_REQUEST as u32 + 1).to_be_bytes(), MAX_REQUEST).is_err());
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
        let import = encode(&Request::Import {
            data: vec![7u8; 70_000],
        })
        .unwrap();
        assert!(import[4..].starts_with(&prefix));
        // Bytes travel as one byte string: the frame is the data plus a few bytes.
        assert!(import.len() < 70_000 + 64);
        let add = encode(&Request::AddToken {
            service: "anthropic".into(),
            label: "x".into(),
            secret: vec![0; 100],
            default: false,
            replace: false,
            passphrase: None,
        })
        .unwrap();
        assert!(!add[4..].starts_with(&prefix));
    }

    #[test]
    fn hostile_payloads_fail_without_building_them() {
        // An array of a million zeros where a request belongs, and deep nesting.
        let mut zeros = vec![0xa2, 0x61, b'v', 0x02, 0x64, b'b', b'o', b'd', b'y', 0x9a];
        zeros.extend_from_slice(&1_000_000u32.to_be_bytes());
        zeros.extend(std::iter::repeat_n(0u8, 1_000_000));
        assert!(decode::<Request>(&zeros).is_err());
        let mut deep = vec![0xa2, 0x61, b'v', 0x02, 0x64, b'b', b'o', b'd', b'y'];
        deep.extend(std::iter::repeat_n(0x81u8, 100_000));
        deep.push(0);
        assert!(decode::<Request>(&deep).is_err());
    }

    #[test]
    fn debug_shows_no_secret() {
        let request = Request::AddToken {
            service: "anthropic".into(),
            label: "work".into(),
            secret: b"sk-ant-SECRET".to_vec(),
            default: false,
            replace: false,
            passphrase: Some(b"hunter2-passphrase".to_vec()),
        };
        let shown = format!("{request:?}");
        assert_eq!(shown, "AddToken(..)");
        let response = Response::Credential {
            delivery: crate::spawn::Delivery::Env(vec!["X".into()]),
            secret: b"sk-ant-SECRET".to_vec(),
        };
        assert_eq!(format!("{response:?}"), "Credential(..)");
        assert_eq!(format!("{:?}", Request::Ping), "Ping(..)");
    }
}
