//! Control connections as a careful network daemon keeps them: how many at once, how long each
//! may sit idle or take over a frame, and how much memory their frames may hold.
//!
//! - At most [`MAX_CONNECTIONS`] at once. A newcomer beyond that evicts the connection that has
//!   waited longest for its client (idle between requests, or stalled inside a frame), so a
//!   pile of idle or stalled clients never locks the user's own `handoff status` out; a
//!   connection whose request is being answered, or that owns the open pairing offer, is
//!   never evicted.
//! - A connection idle for [`IDLE_TIMEOUT`] between requests is closed (the owner of a pairing
//!   offer waits as long as the offer lives); once a frame's length has arrived, the rest must
//!   come within [`FRAME_TIMEOUT`].
//! - A request frame is at most [`control::MAX_REQUEST`] bytes, except an import, which may be
//!   the largest document; a frame over [`SMALL_FRAME`] first reserves its size from one
//!   budget of [`LARGE_FRAMES_BUDGET`] bytes shared by every connection, so half-sent large
//!   frames cost at most that much in total, and small requests never wait on it.
//! - Frames decode straight into the typed request; a large one decodes on the blocking pool,
//!   off the runtime thread the mesh and the other clients share. An import's document (a
//!   CBOR byte string that ends the frame) is taken out of the frame in place, so the largest
//!   import costs its own size once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use handoff_protocol::frame;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::control::{self, Request, Undecodable};
use crate::ops::Op;

/// Control connections served at once.
pub(super) const MAX_CONNECTIONS: usize = 64;
/// How long a connection may wait between requests. Generous: a CLI may hold its connection
/// while its user types a passphrase; under load the cap's eviction frees places anyway.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long writing an answer may take (the connection is evictable meanwhile).
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the rest of a frame may take once its length arrived.
pub(super) const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames up to this size are read without reserving from the budget.
pub(super) const SMALL_FRAME: usize = 64 * 1024;
/// Bytes that frames over [`SMALL_FRAME`] may hold at once, over every connection.
pub(super) const LARGE_FRAMES_BUDGET: usize = control::MAX_IMPORT + 16 * 1024 * 1024;

/// Where a connection is, for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for its client: between requests or inside a frame.
    Waiting,
    /// Its request is being answered.
    Answering,
    /// It owns the open pairing offer.
    Owner,
}

#[derive(Debug)]
struct Entry {
    phase: Phase,
    since: Instant,
    abort: Option<AbortHandle>,
}

/// Every live control connection.
#[derive(Debug)]
pub(super) struct Clients {
    entries: Mutex<BTreeMap<u64, Entry>>,
    budget: Arc<Semaphore>,
    next: AtomicU64,
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            budget: Arc::new(Semaphore::new(LARGE_FRAMES_BUDGET)),
            next: AtomicU64::new(0),
        }
    }
}

/// A connection's place among the clients; dropping it frees the place.
#[derive(Debug)]
pub(super) struct Place {
    pub id: u64,
    clients: Arc<Clients>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.id);
    }
}

impl Clients {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection, evicting the longest-waiting one if every place is taken;
    /// `None` if every connection is busy answering (the newcomer is closed).
    pub fn admit(self: &Arc<Self>) -> Option<Place> {
        let mut entries = self.lock();
        if entries.len() >= MAX_CONNECTIONS {
            let oldest = entries
                .iter()
                .filter(|(_, e)| e.phase == Phase::Waiting)
                .min_by_key(|(_, e)| e.since)
                .map(|(id, _)| *id)?;
            if let Some(evicted) = entries.remove(&oldest)
                && let Some(abort) = evicted.abort
            {
                abort.abort();
            }
            tracing::warn!(
                "control connections at their cap ({MAX_CONNECTIONS}); closed the one idle longest"
            );
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        entries.insert(
            id,
            Entry {
                phase: Phase::Waiting,
                since: Instant::now(),
                abort: None,
            },
        );
        Some(Place {
            id,
            clients: self.clone(),
        })
    }

    /// Records how to end connection `id` when it must be evicted.
    pub fn set_abort(&self, id: u64, abort: AbortHandle) {
        match self.lock().get_mut(&id) {
            Some(entry) => entry.abort = Some(abort),
            // Evicted or gone before its task was even registered.
            None => abort.abort(),
        }
    }

    fn set(&self, id: u64, phase: Phase) {
        if let Some(entry) = self.lock().get_mut(&id)
            && entry.phase != Phase::Owner
        {
            entry.phase = phase;
            entry.since = Instant::now();
        }
    }

    /// Connection `id` opened the pairing offer: it is never evicted and waits as long as the
    /// offer lives. There is one owner at a time: a previous one goes back to waiting.
    pub fn set_owner(&self, id: u64) {
        let mut entries = self.lock();
        for entry in entries.values_mut().filter(|e| e.phase == Phase::Owner) {
            entry.phase = Phase::Waiting;
            entry.since = Instant::now();
        }
        if let Some(entry) = entries.get_mut(&id) {
            entry.phase = Phase::Owner;
        }
    }

    fn is_owner(&self, id: u64) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|e| e.phase == Phase::Owner)
    }

    /// Connection `id` goes back to waiting for its client.
    pub fn waiting(&self, id: u64) {
        self.set(id, Phase::Waiting);
    }

    /// Reads connection `id`'s next request. `Ok(None)`: the client hung up or idled out.
    pub async fn next_request(
        &self,
        id: u64,
        stream: &mut UnixStream,
    ) -> Result<Option<Incoming>, FrameError> {
        self.waiting(id);
        let idle = if self.is_owner(id) {
            crate::net::OFFER_LIFETIME + IDLE_TIMEOUT
        } else {
            IDLE_TIMEOUT
        };
        let mut len = [0u8; frame::HEADER_LEN];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(None), // idle too long
            Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
        let len = frame::decode_len(len, control::MAX_IMPORT).map_err(|_| FrameError::TooLarge)?;
        let deadline = Instant::now() + FRAME_TIMEOUT;
        // The frame may hold a passphrase: zeroed however this ends (the request keeps its
        // own, zeroizing, copy; an import's document is taken out whole).
        let mut payload = zeroize::Zeroizing::new(Vec::new());
        let permit = if len > SMALL_FRAME {
            Some(
                self.admit_large(stream, len, deadline, &mut payload)
                    .await?,
            )
        } else {
            None
        };
        let have = payload.len();
        payload.reserve_exact(len - have);
        let rest = (len - payload.len()) as u64;
        let read = tokio::time::timeout_at(
            deadline,
            (&mut *stream).take(rest).read_to_end(&mut payload),
        )
        .await;
        match read {
            Err(_) => return Err(FrameError::Stalled),
            Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) if payload.len() != len => return Ok(None),
            Ok(Ok(_)) => {}
        }
        self.set(id, Phase::Answering);
        let prefix = control::import_prefix();
        if payload.starts_with(&prefix) {
            // An import's document is taken out of the frame in place: it costs its own
            // bytes once, not a second copy.
            let request = take_import(std::mem::take(&mut *payload), prefix.len())
                .ok_or(FrameError::Malformed)?;
            return Ok(Some(Incoming::Request(Box::new(request), permit)));
        }
        let decoded = if len > SMALL_FRAME {
            tokio::task::spawn_blocking(move || control::decode::<Request>(&payload))
                .await
                .map_err(|_| FrameError::Malformed)?
        } else {
            control::decode::<Request>(&payload)
        };
        match decoded {
            Ok(request) => Ok(Some(Incoming::Request(Box::new(request), permit))),
            Err(Undecodable::Version(v)) => Ok(Some(Incoming::OtherVersion(v))),
            Err(Undecodable::Malformed(why)) => {
                tracing::debug!(why, "an undecodable control frame");
                Err(FrameError::Malformed)
            }
        }
    }

    /// A frame over [`SMALL_FRAME`]: only an import may be that large, and it must first get
    /// its size from the shared budget. Reads the import's prefix into `payload`.
    async fn admit_large(
        &self,
        stream: &mut UnixStream,
        len: usize,
        deadline: Instant,
        payload: &mut Vec<u8>,
    ) -> Result<OwnedSemaphorePermit, FrameError> {
        let prefix = control::import_prefix();
        if len > control::MAX_REQUEST {
            // The prefix and the first byte after it, which must open a byte string.
            payload.resize(prefix.len() + 1, 0);
            match tokio::time::timeout_at(deadline, stream.read_exact(payload)).await {
                Err(_) => return Err(FrameError::Stalled),
                Ok(Err(_)) => return Err(FrameError::Malformed),
                Ok(Ok(_)) if !payload.starts_with(&prefix) => return Err(FrameError::TooLarge),
                Ok(Ok(_)) if payload[prefix.len()] >> 5 != 2 => return Err(FrameError::Malformed),
                Ok(Ok(_)) => {}
            }
        }
        let want = u32::try_from(len).map_err(|_| FrameError::TooLarge)?;
        tokio::time::timeout_at(deadline, self.budget.clone().acquire_many_owned(want))
            .await
            .map_err(|_| FrameError::Stalled)?
            .map_err(|_| FrameError::Stalled)
    }
}

/// The import request in `payload` (which starts with the import prefix, `at` bytes): the
/// document is the CBOR byte string that follows and must end the frame exactly.
fn take_import(mut payload: Vec<u8>, at: usize) -> Option<Request> {
    let head = *payload.get(at)?;
    if head >> 5 != 2 {
        return None; // not a byte string
    }
    let (len, header) = match head & 0x1f {
        n @ 0..=23 => (u64::from(n), 1),
        24 => (u64::from(*payload.get(at + 1)?), 2),
        25 => (
            u64::from(u16::from_be_bytes(
                payload.get(at + 1..at + 3)?.try_into().ok()?,
            )),
            3,
        ),
        26 => (
            u64::from(u32::from_be_bytes(
                payload.get(at + 1..at + 5)?.try_into().ok()?,
            )),
            5,
        ),
        _ => return None,
    };
    let start = at + header;
    if payload.len().checked_sub(start)? as u64 != len {
        return None;
    }
    payload.drain(..start);
    Some(Request::Op {
        passphrase: None,
        op: Op::Import { data: payload },
    })
}

/// What a connection's next frame held.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A request, with its share of the large-frame budget: kept until it is answered, since
    /// the request (an import's document) lives that long.
    Request(Box<Request>, Option<OwnedSemaphorePermit>),
    /// An envelope of another protocol version.
    OtherVersion(u32),
}

/// Why a connection is closed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum FrameError {
    #[error("a control frame over its size limit")]
    TooLarge,
    #[error("a control frame that did not arrive in time")]
    Stalled,
    #[error("an undecodable control frame")]
    Malformed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_is_taken_out_of_its_frame_whole_or_not_at_all() {
        for size in [0usize, 23, 24, 300, 70_000] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let frame = control::encode(
                &Request::Op {
                    passphrase: None,
                    op: Op::Import { data: data.clone() },
                },
                control::MAX_IMPORT,
            )
            .unwrap();
            let payload = frame[4..].to_vec();
            let prefix = control::import_prefix().len();
            match take_import(payload.clone(), prefix) {
                Some(Request::Op {
                    op: Op::Import { data: got },
                    ..
                }) => assert_eq!(got, data),
                other => panic!("{other:?}"),
            }
            // Cut short or run long: refused.
            assert!(take_import(payload[..payload.len() - 1].to_vec(), prefix).is_none());
            let mut long = payload.clone();
            long.push(0);
            assert!(take_import(long, prefix).is_none());
        }
    }
}
