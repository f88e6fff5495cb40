//! One member's sync session over `/handoff/sync/1`.
//!
//! Each side opens one stream to the other and only writes on it; what the peer writes
//! arrives on the stream it opened to us, which the driver hands to this task. The task
//! offers a message whenever this document changed (a nudge) or the peer's last message was
//! taken, and applies the peer's messages through [`crate::device::Device::sync_receive`]: on
//! a fork, validated, persisted before the next message is read. A message that is refused is
//! answered with a refusal, and the sender pauses until its own document changes.
//!
//! The session ends when the driver drops its stop handle (the connection closed, the peer is
//! no longer a member), when the peer is found not to be a member, or when its stream breaks;
//! it then persists what the two agreed on for next time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use handoff_protocol::DeviceId;
use handoff_protocol::sync::{self as proto, Refusal, SyncFrame};
use handoff_relay::wire::{read_frame, write_frame};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Host, on_device};
use crate::device::SyncRefusal;

/// How long opening the outbound stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one message may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Counters of sync traffic (payload bytes, frame headers included).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub refusals_sent: AtomicU64,
    /// Connections the gate refused (shared with it).
    pub connections_refused: Arc<AtomicU64>,
    /// Envelopes left at relays for members that were offline.
    pub envelopes_deposited: AtomicU64,
    /// Envelopes taken from this device's mailbox and applied.
    pub envelopes_taken: AtomicU64,
}

/// What a session reports to the driver.
#[derive(Debug)]
pub(super) enum Report {
    /// The document took new changes from a peer (other sessions should offer them, and the
    /// member set may have changed).
    Applied,
    /// The session ended; `not_member` if the peer turned out not to be an active member.
    Ended {
        peer: PeerId,
        id: u64,
        not_member: bool,
    },
}

/// Everything a session task needs.
pub(super) struct SyncTask {
    pub id: u64,
    pub host: Arc<dyn Host>,
    pub peer: PeerId,
    pub device: DeviceId,
    pub control: libp2p_stream::Control,
    pub inbound: mpsc::Receiver<Stream>,
    pub nudge: watch::Receiver<u64>,
    pub stop: oneshot::Receiver<()>,
    pub reports: mpsc::UnboundedSender<Report>,
    pub counters: Arc<Counters>,
    pub addr: Option<String>,
    /// The device's token for this session, once opened.
    pub token: Option<u64>,
}

/// A frame the peer sent, or why its stream ended.
type Incoming = Result<SyncFrame, ()>;

async fn read_loop(mut stream: Stream, frames: mpsc::Sender<Incoming>, counters: Arc<Counters>) {
    loop {
        let frame = match read_frame(&mut stream, proto::MAX_FRAME).await {
            Ok(Some(bytes)) => {
                counters.frames_received.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes_received
                    .fetch_add(4 + bytes.len() as u64, Ordering::Relaxed);
                SyncFrame::decode(&bytes).map_err(|e| {
                    tracing::warn!(error = %e, "a peer sent a malformed sync frame");
                })
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "a sync stream broke");
                Err(())
            }
        };
        let failed = frame.is_err();
        if frames.send(frame).await.is_err() || failed {
            return;
        }
    }
}

impl SyncTask {
    pub async fn run(mut self) {
        let peer = self.peer;
        let not_member = match self.serve().await {
            Ok(()) => false,
            Err(End::NotMember) => true,
            Err(End::Broken(why)) => {
                tracing::debug!(%peer, why, "sync session ended");
                false
            }
        };
        let device = self.device;
        if let Some(token) = self.token {
            let _ = on_device(&self.host, move |d, _| d.sync_close(&device, Some(token))).await;
        }
        let _ = self.reports.send(Report::Ended {
            peer,
            id: self.id,
            not_member,
        });
    }

    async fn serve(&mut self) -> Result<(), End> {
        let device = self.device;
        let addr = self.addr.clone();
        let opened = on_device(&self.host, move |d, _| d.sync_open(device, addr.as_deref()))
            .await
            .map_err(|_| End::Broken("the device is gone"))?;
        match opened {
            Ok(token) => self.token = Some(token),
            Err(SyncRefusal::NotAMember(_)) => return Err(End::NotMember),
            Err(SyncRefusal::Device(e)) => {
                tracing::warn!(error = %e, "cannot open a sync session");
                return Err(End::Broken("this device could not open the session"));
            }
        }
        let protocol = StreamProtocol::new(proto::PROTOCOL);
        let mut out =
            tokio::time::timeout(OPEN_TIMEOUT, self.control.open_stream(self.peer, protocol))
                .await
                .map_err(|_| End::Broken("opening the sync stream timed out"))?
                .map_err(|_| End::Broken("the peer refused the sync stream"))?;
        let (frames_tx, mut frames) = mpsc::channel::<Incoming>(4);
        let mut readers = tokio::task::JoinSet::new();
        let mut offer = true;
        loop {
            if offer {
                offer = false;
                let msg = on_device(&self.host, move |d, _| d.sync_generate(&device))
                    .await
                    .map_err(|_| End::Broken("the device is gone"))?;
                if let Some(msg) = msg {
                    self.send(&mut out, &SyncFrame::Sync(msg)).await?;
                }
            }
            tokio::select! {
                _ = &mut self.stop => return Ok(()),
                changed = self.nudge.changed() => {
                    changed.map_err(|_| End::Broken("the node stopped"))?;
                    offer = true;
                }
                Some(stream) = self.inbound.recv() => {
                    // The peer (re)started its side: only its new stream counts, and ours
                    // starts afresh too.
                    readers.abort_all();
                    let _ = on_device(&self.host, move |d, _| d.sync_reset(&device)).await;
                    readers.spawn(read_loop(stream, frames_tx.clone(), self.counters.clone()));
                    offer = true;
                }
                Some(frame) = frames.recv() => match frame {
                    Ok(SyncFrame::Sync(message)) => offer = self.receive(&mut out, message).await?,
                    Ok(SyncFrame::Refused { why, heads }) => {
                        tracing::info!(peer = %self.peer, ?why, "a peer refused our changes");
                        let reason = refusal_text(why);
                        let _ = on_device(&self.host, move |d, _| {
                            d.sync_refused(&device, &heads, reason);
                        })
                        .await;
                        // Paused if our document is where the refused message was written;
                        // otherwise the session started afresh and has something to offer.
                        offer = true;
                    }
                    Err(()) => {
                        let malformed = SyncFrame::Refused { why: Refusal::Malformed, heads: Vec::new() };
                        let _ = self.send(&mut out, &malformed).await;
                        return Err(End::Broken("the peer's stream failed"));
                    }
                },
                Some(_) = readers.join_next(), if !readers.is_empty() => {}
            }
        }
    }

    /// Applies one message; returns whether to offer one back.
    async fn receive(&mut self, out: &mut Stream, message: Vec<u8>) -> Result<bool, End> {
        let device = self.device;
        let heads = crate::device::Device::sync_message_heads(&message);
        let result = on_device(&self.host, move |d, key| {
            let received = d.sync_receive(&device, &message);
            if let (Ok(new), Some(key)) = (&received, key)
                && *new > 0
                && let Err(e) = d.upkeep(key)
            {
                tracing::warn!(error = %e, "upkeep after a sync failed");
            }
            received
        })
        .await
        .map_err(|_| End::Broken("the device is gone"))?;
        match result {
            Ok(new) => {
                if new > 0 {
                    tracing::debug!(peer = %self.peer, new, "applied changes from a peer");
                    let _ = self.reports.send(Report::Applied);
                }
                Ok(true)
            }
            Err(SyncRefusal::NotAMember(_)) => {
                let refused = SyncFrame::Refused {
                    why: Refusal::NotAMember,
                    heads,
                };
                let _ = self.send(out, &refused).await;
                Err(End::NotMember)
            }
            Err(SyncRefusal::Device(e)) => {
                tracing::warn!(peer = %self.peer, error = %e, "refused a peer's changes");
                let _ = on_device(&self.host, move |d, _| d.sync_reset(&device)).await;
                self.counters.refusals_sent.fetch_add(1, Ordering::Relaxed);
                let refused = SyncFrame::Refused {
                    why: Refusal::ChangesRefused,
                    heads,
                };
                self.send(out, &refused).await?;
                // Our side starts afresh: offering now tells the peer what we hold, so if its
                // document has moved on it sends what we lack instead of falling silent.
                Ok(true)
            }
        }
    }

    async fn send(&self, out: &mut Stream, frame: &SyncFrame) -> Result<(), End> {
        let bytes = frame.encode();
        // A peer that stops reading must not wedge the session (and this device's view of it).
        tokio::time::timeout(WRITE_TIMEOUT, write_frame(out, &bytes, proto::MAX_FRAME))
            .await
            .map_err(|_| End::Broken("the peer stopped reading"))?
            .map_err(|_| End::Broken("writing to the peer failed"))?;
        self.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_sent
            .fetch_add(4 + bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Why a session ended early.
enum End {
    NotMember,
    Broken(&'static str),
}

/// What a peer's refusal says, for `status` and `peer list`.
fn refusal_text(why: Refusal) -> &'static str {
    match why {
        Refusal::NotAMember => "it does not count this device as a member",
        Refusal::ChangesRefused => "it refuses changes this device holds",
        _ => "it could not read a message from this device",
    }
}
