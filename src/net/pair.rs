//! Pairing (`/handoff/pair/1`): a new device joins the vault through an admin device, the user
//! carrying a short code from one screen to the other (protocol/README.md, `/handoff/pair/1`).
//!
//! 1. The joiner sends `Hello` with its SPAKE2 message (side B); the adder answers with its own
//!    (side A). Both identities are the two PeerIds, so the key is bound to this connection.
//! 2. `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s`, the joiner initiating, each side's static key
//!    its mailbox key, psk = the SPAKE2 key, prologue = both PeerIds. A wrong code fails the
//!    third message; the adder says so and that code is void (one attempt per code). The
//!    offer itself goes on under a fresh code, which its owner shows at once, so a stranger
//!    who guesses or reads a nameplate cannot end a `peer add` with one bad try.
//! 3. The adder sends `Ready`; both show the SAS (from the handshake hash) and ask their user
//!    to compare it, unless told to skip that.
//! 4. The joiner sends its keys (`Joined`); the adder checks they are the keys that proved
//!    themselves on the connection and in the handshake, admits the device (signed member
//!    record, and the current DEK wrapped to it unless it is `remote`) and sends the anchors
//!    and the document (`Welcome`). The joiner writes its device from them.
//!
//! The offer, the adder's side and the steps both sides share are here; the joiner's side is
//! in `join`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_protocol::DeviceId;
use handoff_protocol::pairing::{self as proto, PairMessage, PairRefusal, Sealed, WelcomeBody};
use handoff_relay::wire::{read_frame, write_frame};
use libp2p::{PeerId, Stream};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::code::PairCode;
use super::{Host, NetError, on_device};
use crate::device::{DeviceError, Joiner, Unlocked};
use crate::doc::{Member, Role};

mod join;

pub use join::{JoinRequest, join};

/// How long an offer stays open.
pub const OFFER_LIFETIME: Duration = Duration::from_secs(600);
/// How long one protocol step may take (not counting a user reading the SAS).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stranger has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused attempt's stream stays open for its last messages to reach the prober,
/// unless the prober hangs up first.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);
/// A hello's frame payload: tag, version, nameplate, SPAKE2 message.
const HELLO_LEN: usize = 1 + 1 + 2 + proto::SPAKE2_LEN;
/// How long a joiner looks for the adder on the LAN.
const FIND_TIMEOUT: Duration = Duration::from_secs(60);
const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";

/// Why a pairing did not complete; each is one line for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairFailure {
    #[error(
        "pairing failed: the codes did not match (a typo, or someone else tried); that code is void: use the new code `handoff peer add` shows now"
    )]
    WrongCode,
    #[error(
        "pairing failed: no open pairing offer has that number on that device; check the code or run `handoff peer add` again"
    )]
    NoOffer,
    #[error(
        "pairing failed: that code was already tried once and is void; use the new code `handoff peer add` shows, or run it again"
    )]
    Used,
    #[error(
        "pairing failed: that code expired (codes last 10 minutes); run `handoff peer add` again"
    )]
    Expired,
    #[error("pairing was declined: the words did not match on both screens, or a user said no")]
    Declined,
    #[error(
        "pairing failed: the adding device cannot admit anyone now (it must be an admin, unlocked)"
    )]
    Unavailable,
    #[error("pairing failed: the other device runs an incompatible version of handoff")]
    Version,
    #[error("pairing failed: the other device broke the protocol ({0})")]
    Protocol(String),
    #[error("pairing failed: the connection broke ({0})")]
    Connection(String),
    #[error(
        "pairing failed: the adding device closed the connection (its offer may have expired or been used); run `handoff peer add` again"
    )]
    Closed,
    #[error("pairing timed out waiting for the other device")]
    Timeout,
    #[error(
        "could not find the device running `handoff peer add` ({0}); give its address with --addr"
    )]
    NotFound(String),
    /// Addresses were known (given or found) and none answered.
    #[error(
        "could not reach the device running `handoff peer add` ({0}): is it still waiting there? It serves one code until the code expires or a device pairs; run it again for a new code"
    )]
    Unreachable(String),
    #[error("pairing failed: {0}")]
    Local(String),
}

impl PairFailure {
    fn from_refusal(r: PairRefusal) -> Self {
        match r {
            PairRefusal::NoSession => PairFailure::NoOffer,
            PairRefusal::Used => PairFailure::Used,
            PairRefusal::Expired => PairFailure::Expired,
            PairRefusal::WrongCode => PairFailure::WrongCode,
            PairRefusal::Declined => PairFailure::Declined,
            PairRefusal::Version => PairFailure::Version,
            _ => PairFailure::Unavailable,
        }
    }

    /// The refusal to send the other side when this side fails.
    fn refusal(&self) -> PairRefusal {
        match self {
            PairFailure::WrongCode => PairRefusal::WrongCode,
            PairFailure::Declined => PairRefusal::Declined,
            PairFailure::Expired => PairRefusal::Expired,
            PairFailure::Version => PairRefusal::Version,
            _ => PairRefusal::Unavailable,
        }
    }
}

impl From<DeviceError> for PairFailure {
    fn from(e: DeviceError) -> Self {
        PairFailure::Local(e.to_string())
    }
}

/// What the adder's user sees of an offer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairEvent {
    /// The codes matched; compare these words with the other screen, then confirm (unless the
    /// offer confirms by itself).
    Sas { sas: String },
    /// Someone tried a code that did not match (or broke off before proving it): that code is
    /// void, and the offer goes on waiting under this fresh one.
    Renewed {
        code: PairCode,
        /// The `handoff://pair?...` link for a QR code, when the offer has a long code.
        link: Option<String>,
        why: PairFailure,
    },
    /// The device is a member now.
    Paired {
        device: DeviceId,
        name: String,
        role: Role,
    },
    /// The offer ended without a new member.
    Failed(PairFailure),
}

/// An open offer as its owner holds it: the code to show, the events, the confirmation.
#[derive(Debug)]
pub struct PairTicket {
    pub code: PairCode,
    /// Unix time the offer expires.
    pub expires_at: i64,
    pub events: mpsc::UnboundedReceiver<PairEvent>,
    pub confirm: mpsc::UnboundedSender<bool>,
}

/// What an owner asks for when it opens an offer.
#[derive(Debug)]
pub struct OfferRequest {
    pub role: Role,
    /// The name to give the device (default: the name it proposes).
    pub name: Option<String>,
    /// A 128-bit code for a QR code instead of three words.
    pub long_code: bool,
    /// Skip the SAS confirmation on this side.
    pub auto_confirm: bool,
    /// The vault key, to wrap the DEK to the newcomer.
    pub key: Unlocked,
    /// How long the offer stays open ([`OFFER_LIFETIME`] for users).
    pub lifetime: Duration,
}

/// An open offer, held by the mesh.
#[derive(Debug)]
pub(super) struct Offer {
    pub code: PairCode,
    /// A 128-bit code (for a QR code) rather than three words.
    pub long_code: bool,
    pub role: Role,
    pub name: Option<String>,
    pub auto_confirm: bool,
    pub key: Unlocked,
    pub deadline: Instant,
    pub events: mpsc::UnboundedSender<PairEvent>,
    pub confirm: mpsc::UnboundedReceiver<bool>,
}

impl Offer {
    /// Voids this offer's code for a fresh one of the same kind.
    pub fn renew(&mut self) -> Result<(), NetError> {
        self.code = if self.long_code {
            PairCode::generate_long()
        } else {
            PairCode::generate()
        }
        .map_err(|e| NetError::Transport(e.to_string()))?;
        Ok(())
    }

    pub fn open(request: OfferRequest) -> Result<(Self, PairTicket), NetError> {
        let code = if request.long_code {
            PairCode::generate_long()
        } else {
            PairCode::generate()
        }
        .map_err(|e| NetError::Transport(e.to_string()))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (confirm, confirm_rx) = mpsc::unbounded_channel();
        let lifetime = request.lifetime.min(OFFER_LIFETIME);
        let expires_at = crate::entropy::unix_now()
            .saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
        let offer = Offer {
            code: code.clone(),
            long_code: request.long_code,
            role: request.role,
            name: request.name,
            auto_confirm: request.auto_confirm,
            key: request.key,
            deadline: Instant::now() + lifetime,
            events: events_tx,
            confirm: confirm_rx,
        };
        Ok((
            offer,
            PairTicket {
                code,
                expires_at,
                events,
                confirm,
            },
        ))
    }
}

/// The first message of a pairing stream, read before the stream is matched to an offer.
#[derive(Debug)]
pub(super) struct Hello {
    pub version: u8,
    pub nameplate: u16,
    pub spake: [u8; proto::SPAKE2_LEN],
}

/// Reads the `Hello` a joiner opens with.
pub(super) async fn read_hello(stream: &mut Stream) -> Result<Hello, PairFailure> {
    // Exactly a hello's size: a stranger's stream costs no more than that before it is matched.
    match recv_at_most(stream, HELLO_TIMEOUT, HELLO_LEN).await? {
        PairMessage::Hello {
            version,
            nameplate,
            spake,
        } => Ok(Hello {
            version,
            nameplate,
            spake,
        }),
        other => Err(unexpected(&other)),
    }
}

/// Refuses a pairing stream and closes it.
pub(super) async fn refuse(mut stream: Stream, why: PairRefusal) {
    let _ = send(&mut stream, &PairMessage::Refused(why)).await;
    let _ = futures::AsyncWriteExt::close(&mut stream).await;
}

async fn send(stream: &mut Stream, message: &PairMessage) -> Result<(), PairFailure> {
    write_frame(stream, &message.encode(), proto::MAX_FRAME)
        .await
        .map_err(|e| PairFailure::Connection(e.to_string()))
}

/// The next message; a refusal from the other side becomes its failure.
async fn recv(stream: &mut Stream, timeout: Duration) -> Result<PairMessage, PairFailure> {
    recv_at_most(stream, timeout, proto::MAX_FRAME).await
}

async fn recv_at_most(
    stream: &mut Stream,
    timeout: Duration,
    max: usize,
) -> Result<PairMessage, PairFailure> {
    let bytes = tokio::time::timeout(timeout, read_frame(stream, max))
        .await
        .map_err(|_| PairFailure::Timeout)?
        .map_err(|e| PairFailure::Connection(e.to_string()))?
        .ok_or_else(|| PairFailure::Connection("the other device hung up".into()))?;
    match PairMessage::decode(&bytes) {
        Ok(PairMessage::Refused(r)) => Err(PairFailure::from_refusal(r)),
        Ok(message) => Ok(message),
        Err(e) => Err(PairFailure::Protocol(e.to_string())),
    }
}

async fn recv_noise(stream: &mut Stream, timeout: Duration) -> Result<Vec<u8>, PairFailure> {
    match recv(stream, timeout).await? {
        PairMessage::Noise(bytes) => Ok(bytes),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(message: &PairMessage) -> PairFailure {
    let what = match message {
        PairMessage::Hello { .. } => "a hello",
        PairMessage::Spake(_) => "a SPAKE2 message",
        PairMessage::Noise(_) => "a Noise message",
        PairMessage::Refused(_) => "a refusal",
    };
    PairFailure::Protocol(format!("{what} out of turn"))
}

fn noise_failed(e: snow::Error) -> PairFailure {
    PairFailure::Local(format!("the pairing handshake could not start: {e}"))
}

/// A Noise handshake for one side.
fn handshake(
    initiator: bool,
    static_secret: &[u8; 32],
    psk: &[u8; 32],
    prologue: &[u8],
) -> Result<snow::HandshakeState, PairFailure> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| noise_failed(e))?;
    let builder = snow::Builder::new(params)
        .local_private_key(static_secret)
        .and_then(|b| b.psk(3, psk))
        .and_then(|b| b.prologue(prologue))
        .map_err(noise_failed)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(noise_failed)
}

fn write_handshake(hs: &mut snow::HandshakeState) -> Result<PairMessage, PairFailure> {
    let mut buf = vec![0u8; proto::NOISE_MAX];
    let len = hs.write_message(&[], &mut buf).map_err(noise_failed)?;
    buf.truncate(len);
    Ok(PairMessage::Noise(buf))
}

fn spake_key(key: Result<Vec<u8>, spake2::Error>) -> Result<Zeroizing<[u8; 32]>, PairFailure> {
    let key = Zeroizing::new(key.map_err(|_| PairFailure::WrongCode)?);
    let mut out = Zeroizing::new([0u8; 32]);
    if key.len() != 32 {
        return Err(PairFailure::Protocol(
            "a SPAKE2 key of the wrong size".into(),
        ));
    }
    out.copy_from_slice(&key);
    Ok(out)
}

/// Sends a sealed message as Noise transport messages.
async fn send_sealed(
    stream: &mut Stream,
    noise: &mut snow::TransportState,
    message: &Sealed,
) -> Result<(), PairFailure> {
    for piece in message.pieces() {
        let mut buf = vec![0u8; piece.len() + 16];
        let len = noise
            .write_message(&piece, &mut buf)
            .map_err(|e| PairFailure::Local(e.to_string()))?;
        buf.truncate(len);
        send(stream, &PairMessage::Noise(buf)).await?;
    }
    Ok(())
}

/// Receives one sealed message.
async fn recv_sealed(
    stream: &mut Stream,
    noise: &mut snow::TransportState,
    timeout: Duration,
) -> Result<Sealed, PairFailure> {
    let mut whole: Vec<u8> = Vec::new();
    let mut total = None;
    loop {
        let wait = if whole.is_empty() {
            timeout
        } else {
            STEP_TIMEOUT
        };
        let ciphertext = recv_noise(stream, wait).await?;
        let mut plain = vec![0u8; ciphertext.len()];
        let len = noise
            .read_message(&ciphertext, &mut plain)
            .map_err(|_| PairFailure::Protocol("a sealed message failed to open".into()))?;
        whole.extend_from_slice(&plain[..len]);
        if total.is_none() && whole.len() >= 4 {
            total = Some(
                4 + Sealed::announced_len(&whole)
                    .map_err(|e| PairFailure::Protocol(e.to_string()))?,
            );
        }
        match total {
            Some(t) if whole.len() == t => {
                return Sealed::decode(&whole[4..])
                    .map_err(|e| PairFailure::Protocol(e.to_string()));
            }
            Some(t) if whole.len() > t => {
                return Err(PairFailure::Protocol("a sealed message ran long".into()));
            }
            _ => {}
        }
    }
}

/// How an attempt on an offer ended.
#[derive(Debug)]
pub(super) enum Attempt {
    /// The device is a member now.
    Paired,
    /// The offer is over: the joiner proved the code, then the pairing failed (declined,
    /// expired, broken after the handshake).
    Failed,
    /// The joiner never proved the code (a wrong code, a stranger's probe, a broken-off
    /// handshake): that code is void, and the offer comes back to wait under a fresh one.
    Void(Box<Offer>, PairFailure),
}

/// The adder's side, on a stream whose `Hello` matched this offer.
pub(super) async fn serve(
    mut stream: Stream,
    hello: Hello,
    mut offer: Offer,
    host: Arc<dyn Host>,
    me: PeerId,
    them: PeerId,
) -> Attempt {
    let mut proved = false;
    let result = serve_inner(&mut stream, hello, &mut offer, host, me, them, &mut proved).await;
    if let Err(e) = &result
        && !matches!(e, PairFailure::Connection(_))
    {
        // Tell the joiner, unless it is the one that hung up.
        let _ = send(&mut stream, &PairMessage::Refused(e.refusal())).await;
    }
    let _ = futures::AsyncWriteExt::close(&mut stream).await;
    if result.is_err() {
        // The prober is disconnected next: let what was written reach it first, until it
        // hangs up (as a joiner does on a refusal) or for a moment at most. Closing the
        // connection at once can drop frames still queued in it.
        let mut byte = [0u8; 1];
        let _ = tokio::time::timeout(
            REFUSAL_GRACE,
            futures::AsyncReadExt::read(&mut stream, &mut byte),
        )
        .await;
    }
    match result {
        Ok(member) => {
            let _ = offer.events.send(PairEvent::Paired {
                device: member.device,
                name: member.name.clone(),
                role: member.role,
            });
            Attempt::Paired
        }
        Err(e) if !proved && Instant::now() < offer.deadline => Attempt::Void(Box::new(offer), e),
        Err(e) => {
            let _ = offer.events.send(PairEvent::Failed(e));
            Attempt::Failed
        }
    }
}

async fn serve_inner(
    stream: &mut Stream,
    hello: Hello,
    offer: &mut Offer,
    host: Arc<dyn Host>,
    me: PeerId,
    them: PeerId,
    proved: &mut bool,
) -> Result<Member, PairFailure> {
    if hello.version != proto::VERSION {
        return Err(PairFailure::Version);
    }
    let password = offer.code.password();
    let (spake, ours) = Spake2::<Ed25519Group>::start_a(
        &Password::new(&password[..]),
        &Identity::new(&me.to_bytes()),
        &Identity::new(&them.to_bytes()),
    );
    send(stream, &PairMessage::Spake(to_spake(&ours)?)).await?;
    // A bad side byte (a message reflected back to us) fails here, and counts as the attempt.
    let psk = spake_key(spake.finish(&hello.spake))?;
    let mailbox = on_device(&host, |d, _| d.mailbox_secret())
        .await
        .map_err(|e| PairFailure::Local(e.to_string()))?;
    let prologue = handoff_protocol::binding::pair_prologue(&me.to_bytes(), &them.to_bytes());
    let mut hs = handshake(false, &mailbox, &psk, &prologue)?;
    let mut scratch = vec![0u8; proto::NOISE_MAX];
    let first = recv_noise(stream, STEP_TIMEOUT).await?;
    hs.read_message(&first, &mut scratch)
        .map_err(|_| PairFailure::Protocol("a bad first handshake message".into()))?;
    send(stream, &write_handshake(&mut hs)?).await?;
    let third = recv_noise(stream, STEP_TIMEOUT).await?;
    // The psk enters here: a different code fails this message's authentication.
    hs.read_message(&third, &mut scratch)
        .map_err(|_| PairFailure::WrongCode)?;
    // From here on the joiner knows the code: a failure ends the offer instead of voiding
    // the code.
    *proved = true;
    let remote_static = hs
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| PairFailure::Protocol("no static key in the handshake".into()))?;
    let sas = super::code::sas(hs.get_handshake_hash());
    let mut noise = hs
        .into_transport_mode()
        .map_err(|e| PairFailure::Local(e.to_string()))?;
    send_sealed(stream, &mut noise, &Sealed::Ready).await?;
    // Both users compare the words now; the joiner's keys arrive once its user confirmed.
    let _ = offer.events.send(PairEvent::Sas { sas });
    if !offer.auto_confirm {
        let left = offer.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, offer.confirm.recv()).await {
            Ok(Some(true)) => {}
            Ok(_) => return Err(PairFailure::Declined),
            Err(_) => return Err(PairFailure::Expired),
        }
    }
    let left = offer.deadline.saturating_duration_since(Instant::now());
    let joined = match recv_sealed(stream, &mut noise, left).await? {
        Sealed::Joined(body) => body,
        _ => return Err(PairFailure::Protocol("expected the joiner's keys".into())),
    };
    // The keys the joiner claims must be the ones it proved: its PeerId on this connection,
    // its mailbox key in the handshake.
    if super::peer_id_for(&joined.identity_pub) != Some(them) {
        return Err(PairFailure::Protocol(
            "its identity key is not the one it connected with".into(),
        ));
    }
    if joined.mailbox_pub != remote_static {
        return Err(PairFailure::Protocol(
            "its mailbox key is not the one it shook hands with".into(),
        ));
    }
    let proposed = offer.name.clone().unwrap_or_else(|| joined.name.clone());
    let joiner = Joiner {
        name: String::new(),
        role: offer.role,
        identity_pub: joined.identity_pub,
        mailbox_pub: joined.mailbox_pub,
        vault_pub: joined.vault_pub,
    };
    let key = offer.key.duplicate();
    let (member, welcome) = on_device(&host, move |d, _| {
        let mut joiner = joiner;
        joiner.name = unique_name(&*d.state()?, &proposed);
        let member = d.admit(&key, &joiner)?;
        d.note_holds_all(&member.device)?;
        let anchors = d.anchors().clone();
        let welcome = WelcomeBody {
            vault: anchors.vault,
            founder: anchors.founder,
            recovery_pub: anchors.recovery_pub,
            recovery_sign_pub: anchors.recovery_sign_pub,
            document: d.export(),
        };
        Ok::<_, DeviceError>((member, welcome))
    })
    .await
    .map_err(|e| PairFailure::Local(e.to_string()))?
    .map_err(|e| match e {
        DeviceError::InvalidInput(_) | DeviceError::NoAccess(_) => PairFailure::Unavailable,
        other => PairFailure::from(other),
    })?;
    send_sealed(stream, &mut noise, &Sealed::Welcome(welcome)).await?;
    tracing::info!(device = %member.device, role = member.role.as_str(), "paired a new device");
    Ok(member)
}

/// `name`, or `name-2`, `name-3`... if an active member is called that already, so every
/// device stays nameable in `peer remove`.
fn unique_name(state: &crate::doc::VaultState, name: &str) -> String {
    let taken = |n: &str| state.members.values().any(|m| m.is_active() && m.name == n);
    if !taken(name) {
        return name.to_string();
    }
    (2..)
        .map(|i| format!("{name}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| name.to_string())
}

fn to_spake(bytes: &[u8]) -> Result<[u8; proto::SPAKE2_LEN], PairFailure> {
    bytes
        .try_into()
        .map_err(|_| PairFailure::Local("a SPAKE2 message of the wrong size".into()))
}
