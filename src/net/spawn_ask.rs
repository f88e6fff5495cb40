//! `/handoff/spawn/1`: a member's request to start, list or stop agent sessions here,
//! answered by the owner's [`SpawnServer`]; and [`ask`], this device's own request to another.
//! On the mesh, one request and one response per stream. Through a relay (no direct
//! connection), the same payloads travel sealed to the other's mailbox as envelopes of kind 2
//! (request) and 3 (result): [`answer_relayed`] answers one, [`Relayed`] holds the requests
//! this device sent until their results arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use handoff_protocol::DeviceId;
use handoff_protocol::envelope::Kind;
use handoff_protocol::spawn::{self as proto, Outcome, Refusal, Request, Response};
use handoff_relay::wire::{read_frame_within, write_frame};
use libp2p::identity::Keypair;
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::oneshot;

use super::relay::{self, RelayTarget};
use super::{Host, NetError, on_device};

/// How long a request may take to arrive once its stream is open.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a stream to the target may take.
pub(super) const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long opening one may take before a relay is tried instead (the target is not
/// connected: the stream needs a dial first).
pub(super) const OPEN_BEFORE_RELAY: Duration = Duration::from_secs(5);
/// Most requests sent through a relay waiting for their results at once.
const WAITING_MAX: usize = 64;
/// How long the target may take to answer (it starts the session before it answers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Most requests served at once; more are dropped unread.
pub(super) const SERVED_AT_ONCE: usize = 8;
/// Most requests of one member served at once.
pub(super) const SERVED_PER_PEER: usize = 2;

/// Whoever owns the device answers requests from members (the daemon). Called on the
/// blocking pool; `request` is what the stream carried, or why it did not decode.
pub trait SpawnServer: Send + Sync + 'static {
    fn answer(
        &self,
        from: DeviceId,
        request: Result<Request, handoff_protocol::DecodeError>,
        relayed: bool,
    ) -> Response;
}

/// Reads one request from member `from` on `stream`, answers it, and closes.
pub(super) async fn serve(mut stream: Stream, from: DeviceId, server: Arc<dyn SpawnServer>) {
    use futures::AsyncWriteExt;
    let read = read_frame_within(&mut stream, proto::MAX_MESSAGE, READ_TIMEOUT);
    let Ok(Ok(Some(bytes))) = tokio::time::timeout(READ_TIMEOUT, read).await else {
        return;
    };
    let request = Request::decode(&bytes);
    let Ok(response) =
        tokio::task::spawn_blocking(move || server.answer(from, request, false)).await
    else {
        return;
    };
    let Ok(payload) = response.encode() else {
        tracing::warn!("a spawn response did not encode");
        return;
    };
    let _ = tokio::time::timeout(
        READ_TIMEOUT,
        write_frame(&mut stream, &payload, proto::MAX_MESSAGE),
    )
    .await;
    let _ = stream.close().await;
}

/// Sends `request` to `peer` over a new stream and reads its answer. `Unreachable` when no
/// stream opened within `open` (nothing was sent); `NoAnswer` once the request may have
/// reached it.
pub(super) async fn ask(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    request: &Request,
    open: Duration,
) -> Result<Response, NetError> {
    let payload = request
        .encode()
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let unreachable = |why: String| NetError::Unreachable(why);
    let mut stream = tokio::time::timeout(
        open,
        control.open_stream(peer, StreamProtocol::new(proto::PROTOCOL)),
    )
    .await
    .map_err(|_| unreachable("it did not answer in time".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let no_answer = |why: String| NetError::NoAnswer(why);
    write_frame(&mut stream, &payload, proto::MAX_MESSAGE)
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        read_frame_within(&mut stream, proto::MAX_MESSAGE, ANSWER_TIMEOUT),
    )
    .await
    .map_err(|_| no_answer("it did not answer in time".into()))?
    .map_err(|e| no_answer(e.to_string()))?
    .ok_or_else(|| no_answer("it closed the stream without an answer".into()))?;
    let response =
        Response::decode(&answer).map_err(|e| NetError::Transport(format!("its answer: {e}")))?;
    if response.id != request.id {
        return Err(NetError::Transport("it answered another request".into()));
    }
    Ok(response)
}

/// A refusal response for `id`.
pub fn refused(id: [u8; 16], why: Refusal, detail: impl Into<String>) -> Response {
    Response {
        id,
        outcome: Outcome::Refused {
            why,
            detail: detail.into(),
        },
    }
}

/// The requests this device sent through a relay, each waiting for its result from the member
/// it was sent to; and what sending through a relay needs.
pub(super) struct Relayed {
    pub identity: Keypair,
    pub relays: Mutex<Vec<RelayTarget>>,
    waiting: Mutex<WaitingMap>,
}

/// Request id → the member it was sent to, and where its result goes.
type WaitingMap = HashMap<[u8; 16], (DeviceId, oneshot::Sender<Response>)>;

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed").finish_non_exhaustive()
    }
}

/// Takes a request's place among the waiting ones out again when its asker stops waiting.
struct Waiting<'a>(&'a Relayed, [u8; 16]);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting().remove(&self.1);
    }
}

impl Relayed {
    pub fn new(identity: Keypair) -> Self {
        Self {
            identity,
            relays: Mutex::new(Vec::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, WaitingMap> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn relays(&self) -> Vec<RelayTarget> {
        self.relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends `request` to member `to` (PeerId `peer`) through the first relay that stores it,
    /// and waits up to `wait` for its result.
    pub async fn ask(
        &self,
        host: &Arc<dyn Host>,
        to: DeviceId,
        peer: PeerId,
        request: &Request,
        wait: Duration,
    ) -> Result<Response, NetError> {
        let deadline = tokio::time::Instant::now() + wait;
        let relays = self.relays();
        if relays.is_empty() {
            return Err(NetError::Unreachable(
                "it is not connected and the vault lists no relay".into(),
            ));
        }
        let payload = request
            .encode()
            .map_err(|e| NetError::Transport(e.to_string()))?;
        let sealed = on_device(host, move |d, _| {
            d.seal_spawn(&to, Kind::SpawnRequest, payload)
        })
        .await?
        .map_err(|e| NetError::Transport(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting();
            if waiting.len() >= WAITING_MAX {
                return Err(NetError::Unreachable(
                    "too many requests are waiting for a relay already".into(),
                ));
            }
            waiting.insert(request.id, (to, tx));
        }
        let _waiting = Waiting(self, request.id);
        let no_answer = || {
            NetError::NoAnswer(format!(
                "no answer through the relay within {}s; it may be offline, and may still \
                 start the session when it takes the request (`session list --on`)",
                wait.as_secs()
            ))
        };
        // One deadline for the deposit and the wait. A deposit cut short may have been
        // stored: that is no answer, not unreachable (asking again could start two).
        let deposited = tokio::time::timeout_at(
            deadline,
            relay::deposit_one(&relays, &self.identity, peer, sealed),
        )
        .await
        .map_err(|_| no_answer())?;
        deposited.map_err(|e| NetError::Unreachable(format!("it is not connected, and {e}")))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(response)) => Ok(response),
            _ => Err(no_answer()),
        }
    }

    /// A result from member `from`: to the request waiting for it (from that member), if any.
    pub fn result(&self, from: DeviceId, body: &[u8]) {
        let Ok(response) = Response::decode(body) else {
            tracing::warn!("a relayed spawn result did not decode");
            return;
        };
        let mut waiting = self.waiting();
        if waiting.get(&response.id).is_some_and(|(to, _)| *to == from)
            && let Some((_, tx)) = waiting.remove(&response.id)
        {
            let _ = tx.send(response);
        }
    }
}

/// Answers a request member `from` (PeerId `peer`) sent through a relay, and leaves the result
/// for it at the first of `relays` that stores it.
pub(super) async fn answer_relayed(
    server: Arc<dyn SpawnServer>,
    host: Arc<dyn Host>,
    relayed: Arc<Relayed>,
    from: DeviceId,
    peer: PeerId,
    body: Vec<u8>,
) {
    let request = Request::decode(&body);
    let Ok(response) =
        tokio::task::spawn_blocking(move || server.answer(from, request, true)).await
    else {
        return;
    };
    let Ok(payload) = response.encode() else {
        tracing::warn!("a spawn response did not encode");
        return;
    };
    let sealed = match on_device(&host, move |d, _| {
        d.seal_spawn(&from, Kind::SpawnResult, payload)
    })
    .await
    {
        Ok(Ok(sealed)) => sealed,
        _ => return,
    };
    let relays = relayed.relays();
    if let Err(e) = relay::deposit_one(&relays, &relayed.identity, peer, sealed).await {
        tracing::warn!(error = %e, "cannot leave a spawn result at a relay");
    }
}
