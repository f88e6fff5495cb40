//! `/handoff/spawn/1`: one device asks another to start, list or stop agent sessions. The
//! request names an agent, a directory and a profile label; it never carries a credential.
//!
//! The asker opens the stream, writes one [`frame`](crate::frame) holding a [`Request`] and
//! reads one holding a [`Response`]; then the stream ends. Through a relay the same two
//! payloads travel as envelope bodies of kind 2 (spawn request) and 3 (spawn result).
//!
//! ```text
//! request  = %x01 id(16) sent-at(i64) ask
//! ask      = %x01 agent dir opt(profile) opt(service) count(u8) arg*count  ; start a session
//!          / %x02                                                          ; list sessions
//!          / %x03 session                                                  ; stop one
//! response = %x01 id(16) outcome
//! outcome  = %x01 session                                ; started
//!          / %x02 refusal(u8) detail                     ; refused, with one line saying why
//!          / %x03 count(u16) row*count                   ; the target's sessions
//!          / %x04                                        ; stopped
//! row      = session agent dir started-at(i64) state(u8) ; state 1 running, 2 exited, 3 failed
//! text     = len(u16) utf8(len)                          ; agent, dir, profile, ... are texts
//! opt(x)   = %x00 / %x01 x
//! ```
//! `id` is 16 random bytes the asker chooses per request; `sent-at` is its clock in Unix
//! seconds. The target refuses a request older than its freshness window ([`FRESH_DIRECT`]
//! on a stream, [`FRESH_RELAY`] through a relay), more than [`FUTURE_SKEW`] ahead of its own
//! clock, or whose id it has seen within the window.

use crate::DecodeError;

const WHAT: &str = "spawn message";

/// The protocol id on libp2p streams.
pub const PROTOCOL: &str = "/handoff/spawn/1";
/// The version byte both messages start with.
pub const VERSION: u8 = 1;
/// Largest request or response payload.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Longest text field.
pub const TEXT_MAX: usize = 4096;
/// Most arguments a start request carries.
pub const ARGS_MAX: usize = 64;
/// Most sessions a listing carries.
pub const ROWS_MAX: usize = 256;
/// How old a request on a direct stream may be, in seconds.
pub const FRESH_DIRECT: i64 = 5 * 60;
/// How old a request delivered through a relay may be, in seconds.
pub const FRESH_RELAY: i64 = 15 * 60;
/// How far ahead of the target's clock a request's `sent-at` may be, in seconds.
pub const FUTURE_SKEW: i64 = 60;

/// What a start request asks for. Arguments are text: an agent's argv is the user's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub agent: String,
    pub dir: String,
    pub profile: Option<String>,
    pub service: Option<String>,
    pub args: Vec<String>,
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Start(Start),
    List,
    Stop { session: String },
}

/// A request from the asker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: [u8; 16],
    pub sent_at: i64,
    pub ask: Ask,
}

/// Why a target did not do what it was asked; each has its own exit code on the asking side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The target's policy does not let this device ask for this.
    Policy,
    /// No agent of that name in the target's configuration.
    UnknownAgent,
    /// No token with that label the agent can use.
    NoSuchProfile,
    /// The agent's program is not installed on the target.
    NotInstalled,
    /// The directory does not exist or is outside every allowed root.
    DirNotAllowed,
    /// The target's vault is locked.
    Locked,
    /// The request is older than the freshness window (or from the future).
    Stale,
    /// A request with this id was seen before.
    Replayed,
    /// The target cannot take it now (another request in flight, too many sessions).
    Busy,
    /// Extra arguments, which the policy does not allow.
    ArgsNotAllowed,
    /// The sender is not an active member of the target's vault.
    NotAMember,
    /// No session with that id on the target.
    NoSuchSession,
    /// The request did not parse.
    Malformed,
    /// Starting failed on the target.
    Failed,
}

impl Refusal {
    const ALL: [Refusal; 14] = [
        Refusal::Policy,
        Refusal::UnknownAgent,
        Refusal::NoSuchProfile,
        Refusal::NotInstalled,
        Refusal::DirNotAllowed,
        Refusal::Locked,
        Refusal::Stale,
        Refusal::Replayed,
        Refusal::Busy,
        Refusal::ArgsNotAllowed,
        Refusal::NotAMember,
        Refusal::NoSuchSession,
        Refusal::Malformed,
        Refusal::Failed,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Refusal::Policy => 1,
            Refusal::UnknownAgent => 2,
            Refusal::NoSuchProfile => 3,
            Refusal::NotInstalled => 4,
            Refusal::DirNotAllowed => 5,
            Refusal::Locked => 6,
            Refusal::Stale => 7,
            Refusal::Replayed => 8,
            Refusal::Busy => 9,
            Refusal::ArgsNotAllowed => 10,
            Refusal::NotAMember => 11,
            Refusal::NoSuchSession => 12,
            Refusal::Malformed => 13,
            Refusal::Failed => 14,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// A session as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub session: String,
    pub agent: String,
    pub dir: String,
    pub started_at: i64,
    pub state: RowState,
}

/// Where a listed session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    Running,
    Exited,
    Failed,
}

impl RowState {
    fn code(self) -> u8 {
        match self {
            RowState::Running => 1,
            RowState::Exited => 2,
            RowState::Failed => 3,
        }
    }
}

/// What the target did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Started { session: String },
    Refused { why: Refusal, detail: String },
    Sessions(Vec<Row>),
    Stopped,
}

/// The target's answer to the request with this id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: [u8; 16],
    pub outcome: Outcome,
}

const ASK_START: u8 = 1;
const ASK_LIST: u8 = 2;
const ASK_STOP: u8 = 3;
const OUT_STARTED: u8 = 1;
const OUT_REFUSED: u8 = 2;
const OUT_SESSIONS: u8 = 3;
const OUT_STOPPED: u8 = 4;

impl Request {
    /// The frame payload. Fails on a field over its limit (nothing is cut short).
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut w = Writer::new();
        w.out.push(VERSION);
        w.out.extend_from_slice(&self.id);
        w.out.extend_from_slice(&self.sent_at.to_be_bytes());
        match &self.ask {
            Ask::Start(s) => {
                w.out.push(ASK_START);
                w.text(&s.agent)?;
                w.text(&s.dir)?;
                w.opt(s.profile.as_deref())?;
                w.opt(s.service.as_deref())?;
                if s.args.len() > ARGS_MAX {
                    return Err(too_large(s.args.len(), ARGS_MAX));
                }
                w.out.push(s.args.len() as u8);
                for arg in &s.args {
                    w.text(arg)?;
                }
            }
            Ask::List => w.out.push(ASK_LIST),
            Ask::Stop { session } => {
                w.out.push(ASK_STOP);
                w.text(session)?;
            }
        }
        w.finish()
    }

    /// Reads one payload (the whole input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes)?;
        let id = r.array::<16>()?;
        let sent_at = i64::from_be_bytes(r.array::<8>()?);
        let ask = match r.byte()? {
            ASK_START => {
                let agent = r.text()?;
                let dir = r.text()?;
                let profile = r.opt()?;
                let service = r.opt()?;
                let count = usize::from(r.byte()?);
                if count > ARGS_MAX {
                    return Err(too_large(count, ARGS_MAX));
                }
                let args = (0..count).map(|_| r.text()).collect::<Result<_, _>>()?;
                Ask::Start(Start {
                    agent,
                    dir,
                    profile,
                    service,
                    args,
                })
            }
            ASK_LIST => Ask::List,
            ASK_STOP => Ask::Stop { session: r.text()? },
            _ => return Err(invalid("unknown ask")),
        };
        r.end()?;
        Ok(Request { id, sent_at, ask })
    }
}

impl Response {
    /// The frame payload. Fails on a field over its limit.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut w = Writer::new();
        w.out.push(VERSION);
        w.out.extend_from_slice(&self.id);
        match &self.outcome {
            Outcome::Started { session } => {
                w.out.push(OUT_STARTED);
                w.text(session)?;
            }
            Outcome::Refused { why, detail } => {
                w.out.push(OUT_REFUSED);
                w.out.push(why.code());
                w.text(detail)?;
            }
            Outcome::Sessions(rows) => {
                if rows.len() > ROWS_MAX {
                    return Err(too_large(rows.len(), ROWS_MAX));
                }
                w.out.push(OUT_SESSIONS);
                w.out.extend_from_slice(&(rows.len() as u16).to_be_bytes());
                for row in rows {
                    w.text(&row.session)?;
                    w.text(&row.agent)?;
                    w.text(&row.dir)?;
                    w.out.extend_from_slice(&row.started_at.to_be_bytes());
                    w.out.push(row.state.code());
                }
            }
            Outcome::Stopped => w.out.push(OUT_STOPPED),
        }
        w.finish()
    }

    /// Reads one payload (the whole input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes)?;
        let id = r.array::<16>()?;
        let outcome = match r.byte()? {
            OUT_STARTED => Outcome::Started { session: r.text()? },
            OUT_REFUSED => {
                let why = Refusal::from_code(r.byte()?).ok_or(invalid("unknown refusal code"))?;
                Outcome::Refused {
                    why,
                    detail: r.text()?,
                }
            }
            OUT_SESSIONS => {
                let count = usize::from(u16::from_be_bytes(r.array::<2>()?));
                if count > ROWS_MAX {
                    return Err(too_large(count, ROWS_MAX));
                }
                let mut rows = Vec::with_capacity(count);
                for _ in 0..count {
                    let session = r.text()?;
                    let agent = r.text()?;
                    let dir = r.text()?;
                    let started_at = i64::from_be_bytes(r.array::<8>()?);
                    let state = match r.byte()? {
                        1 => RowState::Running,
                        2 => RowState::Exited,
                        3 => RowState::Failed,
                        _ => return Err(invalid("unknown session state")),
                    };
                    rows.push(Row {
                        session,
                        agent,
                        dir,
                        started_at,
                        state,
                    });
                }
                Outcome::Sessions(rows)
            }
            OUT_STOPPED => Outcome::Stopped,
            _ => return Err(invalid("unknown outcome")),
        };
        r.end()?;
        Ok(Response { id, outcome })
    }
}

fn invalid(reason: &'static str) -> DecodeError {
    DecodeError::Invalid { what: WHAT, reason }
}

fn too_large(len: usize, max: usize) -> DecodeError {
    DecodeError::TooLarge {
        what: WHAT,
        len,
        max,
    }
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn new() -> Self {
        Self {
            out: Vec::with_capacity(256),
        }
    }

    fn text(&mut self, text: &str) -> Result<(), DecodeError> {
        if text.len() > TEXT_MAX {
            return Err(too_large(text.len(), TEXT_MAX));
        }
        self.out
            .extend_from_slice(&(text.len() as u16).to_be_bytes());
        self.out.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn opt(&mut self, text: Option<&str>) -> Result<(), DecodeError> {
        match text {
            None => {
                self.out.push(0);
                Ok(())
            }
            Some(t) => {
                self.out.push(1);
                self.text(t)
            }
        }
    }

    fn finish(self) -> Result<Vec<u8>, DecodeError> {
        if self.out.len() > MAX_MESSAGE {
            return Err(too_large(self.out.len(), MAX_MESSAGE));
        }
        Ok(self.out)
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the size and the version byte.
    fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(too_large(bytes.len(), MAX_MESSAGE));
        }
        let mut r = Self { rest: bytes };
        match r.byte()? {
            VERSION => Ok(r),
            version => Err(DecodeError::UnsupportedVersion {
                what: WHAT,
                version,
            }),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Incomplete {
                what: WHAT,
                needed: n - self.rest.len(),
            });
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(u16::from_be_bytes(self.array::<2>()?));
        if len > TEXT_MAX {
            return Err(too_large(len, TEXT_MAX));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| invalid("a text field is not UTF-8"))
    }

    fn opt(&mut self) -> Result<Option<String>, DecodeError> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.text().map(Some),
            _ => Err(invalid("an optional field's flag is not 0 or 1")),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(invalid("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn start() -> Request {
        Request {
            id: [7; 16],
            sent_at: 1_760_000_000,
            ask: Ask::Start(Start {
                agent: "claude".into(),
                dir: "/home/u/src/app".into(),
                profile: Some("work".into()),
                service: None,
                args: vec!["--model".into(), "opus".into()],
            }),
        }
    }

    #[test]
    fn messages_round_trip() {
        let requests = [
            start(),
            Request {
                ask: Ask::List,
                ..start()
            },
            Request {
                ask: Ask::Stop {
                    session: "s-1".into(),
                },
                ..start()
            },
        ];
        for r in requests {
            assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        }
        let outcomes = [
            Outcome::Started {
                session: "abc".into(),
            },
            Outcome::Refused {
                why: Refusal::DirNotAllowed,
                detail: "/etc is outside every allowed root".into(),
            },
            Outcome::Sessions(vec![Row {
                session: "abc".into(),
                agent: "claude".into(),
                dir: "/d".into(),
                started_at: -5,
                state: RowState::Failed,
            }]),
            Outcome::Stopped,
        ];
        for outcome in outcomes {
            let r = Response {
                id: [1; 16],
                outcome,
            };
            assert_eq!(Response::decode(&r.encode().unwrap()).unwrap(), r);
        }
        for why in Refusal::ALL {
            assert_eq!(Refusal::from_code(why.code()), Some(why));
        }
    }

    #[test]
    fn hostile_bytes_are_refused() {
        let good = start().encode().unwrap();
        // Every strict prefix is incomplete, never a panic or a shorter valid message.
        for n in 0..good.len() {
            assert!(Request::decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Request::decode(&trailing).is_err());
        let mut version = good.clone();
        version[0] = 2;
        assert!(matches!(
            Request::decode(&version),
            Err(DecodeError::UnsupportedVersion { version: 2, .. })
        ));
        let too_many = Request {
            ask: Ask::Start(Start {
                args: vec!["a".into(); ARGS_MAX + 1],
                ..match start().ask {
                    Ask::Start(s) => s,
                    _ => unreachable!(),
                }
            }),
            ..start()
        };
        assert!(too_many.encode().is_err());
        let long = "x".repeat(TEXT_MAX + 1);
        let stop = Request {
            ask: Ask::Stop { session: long },
            ..start()
        };
        assert!(stop.encode().is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }
}
