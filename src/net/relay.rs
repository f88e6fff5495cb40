//! The client side of `/handoff/relay/1`.
//!
//! Each relay connection runs on a small swarm of its own, outside the member gate: a
//! subscription under this device's identity (its mailbox is its PeerId, which the relay
//! checks in the handshake), and deposits under a throwaway identity, so the relay cannot tell
//! who left an envelope (unless the relay only admits listed PeerIds: then this device's own).
//!
//! A subscription takes each delivered envelope to the device, which opens, checks, applies
//! and persists it; only then is it acknowledged, so a crash in between means it is delivered
//! again, never lost. An envelope whose changes wait for others stays at the relay for the
//! next subscription.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use handoff_protocol::DeviceId;
use handoff_protocol::envelope::Kind;
use handoff_protocol::relay::{self as proto, Refusal, Request, Response};
use handoff_relay::wire::{read_frame, write_frame};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use zeroize::Zeroizing;

use super::{Host, behaviour, on_device};
use crate::device::Taken;

/// How long reaching a relay may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one answer from a relay may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Deposits sent ahead of their answers (a relay reads at least 32 ahead per stream).
const DEPOSIT_WINDOW: usize = 16;
/// Most bytes of envelopes held in memory while their changes wait for others.
const WAITING_MAX_BYTES: usize = 16 * 1024 * 1024;

/// A relay as the vault lists it.
#[derive(Clone)]
pub(crate) struct RelayTarget {
    pub id: String,
    pub addrs: Vec<Multiaddr>,
    pub token: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for RelayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTarget")
            .field("id", &self.id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl RelayTarget {
    pub fn of(relay: &crate::doc::Relay) -> Self {
        Self {
            id: relay.id.clone(),
            // Only addresses that name the relay: the token and envelopes go to no one else.
            addrs: crate::addr::from_text(&relay.addrs)
                .into_iter()
                .filter(crate::addr::names_peer)
                .collect(),
            token: relay.access_token.clone().map(Zeroizing::new),
        }
    }

    /// What identifies this target's settings (a change restarts its subscription).
    pub fn fingerprint(&self) -> String {
        let token = self
            .token
            .as_ref()
            .map_or(String::new(), |t| hex::encode(sha2_digest(t)));
        format!("{}|{:?}|{token}", self.id, self.addrs)
    }
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Why talking to a relay failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RelayFailure {
    #[error("cannot reach the relay: {0}")]
    Unreachable(String),
    #[error("the relay refused: {}", .0.name())]
    Refused(Refusal),
    #[error("the relay connection broke: {0}")]
    Broken(String),
}

/// A connection to a relay: its stream control, and the task driving the client swarm.
struct Link {
    control: libp2p_stream::Control,
    relay: PeerId,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn connect(keypair: Keypair, target: &RelayTarget) -> Result<Link, RelayFailure> {
    let mut swarm =
        behaviour::build_client(keypair).map_err(|e| RelayFailure::Unreachable(e.to_string()))?;
    let mut last = String::from("no address");
    for addr in &target.addrs {
        let expected = addr.iter().find_map(|p| match p {
            Protocol::P2p(peer) => Some(peer),
            _ => None,
        });
        let opts = match expected {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        if let Err(e) = swarm.dial(opts) {
            last = e.to_string();
            continue;
        }
        let reached = tokio::time::timeout(CONNECT_TIMEOUT, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("no answer".into()));
        match reached {
            Ok(relay) => {
                let control = swarm.behaviour().streams.new_control();
                let driver = tokio::spawn(async move {
                    loop {
                        swarm.select_next_some().await;
                    }
                });
                return Ok(Link {
                    control,
                    relay,
                    driver,
                });
            }
            Err(e) => last = e,
        }
    }
    Err(RelayFailure::Unreachable(last))
}

async fn send(stream: &mut Stream, request: &Request) -> Result<(), RelayFailure> {
    // A relay that stops reading must not hold the node's relay work for ever.
    tokio::time::timeout(
        ANSWER_TIMEOUT,
        write_frame(stream, &request.encode(), proto::MAX_FRAME),
    )
    .await
    .map_err(|_| RelayFailure::Broken("the relay stopped reading".into()))?
    .map_err(|e| RelayFailure::Broken(e.to_string()))
}

/// The next response; `None` when the relay closed the stream.
async fn recv(
    stream: &mut Stream,
    timeout: Option<Duration>,
) -> Result<Option<Response>, RelayFailure> {
    let read = read_frame(stream, proto::MAX_FRAME);
    let frame = match timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| RelayFailure::Broken("no answer".into()))?,
        None => read.await,
    }
    .map_err(|e| RelayFailure::Broken(e.to_string()))?;
    frame
        .map(|bytes| Response::decode(&bytes).map_err(|e| RelayFailure::Broken(e.to_string())))
        .transpose()
}

/// Opens a stream to the relay and says hello.
async fn open(link: &mut Link, target: &RelayTarget) -> Result<Stream, RelayFailure> {
    let mut stream = tokio::time::timeout(
        ANSWER_TIMEOUT,
        link.control
            .open_stream(link.relay, StreamProtocol::new(proto::PROTOCOL)),
    )
    .await
    .map_err(|_| RelayFailure::Broken("no answer".into()))?
    .map_err(|e| RelayFailure::Broken(e.to_string()))?;
    let token = target
        .token
        .as_ref()
        .map(|t| t.to_vec())
        .unwrap_or_default();
    send(
        &mut stream,
        &Request::Hello {
            version: proto::VERSION,
            token,
        },
    )
    .await?;
    match recv(&mut stream, Some(ANSWER_TIMEOUT)).await? {
        Some(Response::Welcome) => Ok(stream),
        Some(Response::Refused(why)) => Err(RelayFailure::Refused(why)),
        _ => Err(RelayFailure::Broken(
            "the relay did not answer the hello".into(),
        )),
    }
}

/// Leaves envelopes at `target`: each `(recipient, envelope)` is answered with its id or the
/// relay's reason. Connects under a throwaway identity, unless the relay admits only listed
/// PeerIds (then under `identity`).
pub(crate) async fn deposit(
    target: &RelayTarget,
    identity: &Keypair,
    batch: &[(PeerId, Vec<u8>)],
) -> Result<Vec<Result<u64, Refusal>>, RelayFailure> {
    let mut link = connect(Keypair::generate_ed25519(), target).await?;
    let mut stream = match open(&mut link, target).await {
        Err(RelayFailure::Refused(Refusal::NotAllowed)) => {
            link = connect(identity.clone(), target).await?;
            open(&mut link, target).await?
        }
        other => other?,
    };
    // Up to DEPOSIT_WINDOW deposits go ahead of their answers (which come in order), so a
    // member's envelopes share the relay's commits instead of waiting out one each.
    let mut answers = Vec::with_capacity(batch.len());
    for (sent, (to, envelope)) in batch.iter().enumerate() {
        if sent >= answers.len() + DEPOSIT_WINDOW {
            answers.push(deposit_answer(&mut stream).await?);
        }
        send(
            &mut stream,
            &Request::Deposit {
                to: to.to_bytes(),
                envelope: envelope.clone(),
            },
        )
        .await?;
    }
    while answers.len() < batch.len() {
        answers.push(deposit_answer(&mut stream).await?);
    }
    let _ = futures::AsyncWriteExt::close(&mut stream).await;
    Ok(answers)
}

/// The relay's answer to the oldest deposit not yet answered.
async fn deposit_answer(stream: &mut Stream) -> Result<Result<u64, Refusal>, RelayFailure> {
    match recv(stream, Some(ANSWER_TIMEOUT)).await? {
        Some(Response::Stored { id }) => Ok(Ok(id)),
        Some(Response::Refused(why)) => Ok(Err(why)),
        _ => Err(RelayFailure::Broken(
            "the relay did not answer a deposit".into(),
        )),
    }
}

/// Leaves one envelope for `to` at the first of `relays` that stores it.
pub(crate) async fn deposit_one(
    relays: &[RelayTarget],
    identity: &Keypair,
    to: PeerId,
    envelope: Vec<u8>,
) -> Result<(), RelayFailure> {
    let mut last = RelayFailure::Unreachable("the vault lists no relay".into());
    let batch = [(to, envelope)];
    for target in relays {
        match deposit(target, identity, &batch).await {
            Ok(answers) => match answers.first() {
                Some(Ok(_)) => return Ok(()),
                Some(Err(why)) => last = RelayFailure::Refused(*why),
                None => last = RelayFailure::Broken("no answer".into()),
            },
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// What to do with a delivered envelope once this device has tried to take it.
enum Outcome {
    /// Acknowledge it: applied (bringing `new` changes), or never applicable here.
    Ack { new: usize },
    /// Its changes wait for others: take it again once something new applies.
    Wait,
    /// Not taken (the store failed): leave it at the relay for next time.
    Keep,
    /// A spawn request or result from a member: acknowledged before it is acted on (at most
    /// once: a target that fails meanwhile never starts a session twice), then handed over.
    Spawn(DeviceId, Kind, Vec<u8>),
}

async fn take(
    host: &Arc<dyn Host>,
    target: &RelayTarget,
    envelope: &[u8],
) -> Result<Outcome, RelayFailure> {
    let envelope = envelope.to_vec();
    let taken = on_device(host, move |d, _| d.take_envelope(&envelope))
        .await
        .map_err(|e| RelayFailure::Broken(e.to_string()))?;
    Ok(match taken {
        Ok(Taken::Applied(new)) => Outcome::Ack { new },
        Ok(Taken::Waiting) => Outcome::Wait,
        Ok(Taken::Spawn { from, kind, body }) => Outcome::Spawn(from, kind, body),
        Ok(Taken::Rejected(why)) => {
            tracing::warn!(relay = %target.id, why, "dropped an envelope that cannot apply");
            Outcome::Ack { new: 0 }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not take an envelope");
            Outcome::Keep
        }
    })
}

/// Drains this device's mailbox at `target` and stays subscribed, applying what arrives,
/// until the connection breaks. `applied` is called for each envelope that brought new changes,
/// `spawn` with each spawn request or result from a member, once acknowledged.
pub(crate) async fn subscribe(
    target: &RelayTarget,
    identity: &Keypair,
    host: &Arc<dyn Host>,
    applied: &(dyn Fn(usize) + Send + Sync),
    spawn: &(dyn Fn(DeviceId, Kind, Vec<u8>) + Send + Sync),
) -> Result<(), RelayFailure> {
    let mut link = connect(identity.clone(), target).await?;
    let mut stream = open(&mut link, target).await?;
    send(&mut stream, &Request::Subscribe).await?;
    tracing::info!(relay = %target.id, "subscribed to this device's mailbox");
    // Envelopes whose changes wait for others, taken again whenever something new applies
    // (the relay delivers each once per subscription). Past the bound they wait for the
    // next subscription instead.
    let mut waiting: Vec<(u64, Vec<u8>)> = Vec::new();
    while let Some(response) = recv(&mut stream, None).await? {
        let Response::Deliver { id, envelope } = response else {
            continue;
        };
        let mut progress = match take(host, target, &envelope).await? {
            Outcome::Ack { new } => {
                send(&mut stream, &Request::Ack { ids: vec![id] }).await?;
                if new > 0 {
                    applied(new);
                }
                new > 0
            }
            Outcome::Spawn(from, kind, body) => {
                send(&mut stream, &Request::Ack { ids: vec![id] }).await?;
                spawn(from, kind, body);
                false
            }
            Outcome::Wait => {
                let held: usize = waiting.iter().map(|(_, e)| e.len()).sum();
                if held + envelope.len() <= WAITING_MAX_BYTES {
                    waiting.push((id, envelope));
                }
                false
            }
            Outcome::Keep => false,
        };
        while progress {
            progress = false;
            let mut still = Vec::new();
            for (id, envelope) in std::mem::take(&mut waiting) {
                match take(host, target, &envelope).await? {
                    Outcome::Ack { new } => {
                        send(&mut stream, &Request::Ack { ids: vec![id] }).await?;
                        if new > 0 {
                            applied(new);
                            progress = true;
                        }
                    }
                    Outcome::Spawn(..) | Outcome::Wait | Outcome::Keep => {
                        still.push((id, envelope));
                    }
                }
            }
            waiting = still;
        }
    }
    Err(RelayFailure::Broken(
        "the relay closed the subscription".into(),
    ))
}
