//! `/handoff/spawn/1` on the mesh: a member's request to start, list or stop agent sessions
//! here, answered by the owner's [`SpawnServer`]; and [`ask`], this device's own request to
//! another. One request and one response per stream.

use std::sync::Arc;
use std::time::Duration;

use handoff_protocol::DeviceId;
use handoff_protocol::spawn::{self as proto, Outcome, Refusal, Request, Response};
use handoff_relay::wire::{read_frame_within, write_frame};
use libp2p::{PeerId, Stream, StreamProtocol};

use super::NetError;

/// How long a request may take to arrive once its stream is open.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a stream to the target may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
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

/// Sends `request` to `peer` over a new stream and reads its answer.
pub(super) async fn ask(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    request: &Request,
) -> Result<Response, NetError> {
    let payload = request
        .encode()
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let unreachable = |why: String| NetError::Unreachable(why);
    let mut stream = tokio::time::timeout(
        OPEN_TIMEOUT,
        control.open_stream(peer, StreamProtocol::new(proto::PROTOCOL)),
    )
    .await
    .map_err(|_| unreachable("it did not answer in time".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    write_frame(&mut stream, &payload, proto::MAX_MESSAGE)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        read_frame_within(&mut stream, proto::MAX_MESSAGE, ANSWER_TIMEOUT),
    )
    .await
    .map_err(|_| unreachable("it did not answer in time".into()))?
    .map_err(|e| unreachable(e.to_string()))?
    .ok_or_else(|| unreachable("it closed the stream without an answer".into()))?;
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
