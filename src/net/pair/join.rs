//! The joiner's side of pairing: find the adder (an address, a link, or the nameplate on the
//! LAN), run the protocol from the joiner's end, and write this device from the welcome.

use futures::StreamExt;
use handoff_protocol::pairing::{
    self as proto, JoinedBody, PairMessage, PairRefusal, Sealed, WelcomeBody,
};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::super::code::{LinkHints, PairCode};
use super::super::gate::Gate;
use super::super::{NetError, behaviour, keypair, mdns, peer_id_for};
use super::{
    FIND_TIMEOUT, OFFER_LIFETIME, PairFailure, STEP_TIMEOUT, handshake, recv, recv_noise,
    recv_sealed, send, send_sealed, spake_key, to_spake, unexpected, write_handshake,
};
use crate::device::{Device, DeviceError, PendingJoin};
use crate::doc::Role;

/// What a joiner is told.
pub struct JoinRequest {
    pub code: PairCode,
    /// Where the adder is (a link, or `--addr`); empty to look on the LAN.
    pub hints: LinkHints,
    /// Look for the adder with mDNS when no address is given.
    pub mdns: bool,
    /// Shows the SAS and says whether the user confirms it.
    pub confirm: Box<dyn FnOnce(&str) -> bool + Send>,
    /// Progress lines for the user.
    pub progress: Box<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("code", &self.code)
            .field("hints", &self.hints)
            .field("mdns", &self.mdns)
            .finish_non_exhaustive()
    }
}

/// Joins a vault: finds the adder, pairs, and writes this device from what it sends.
pub async fn join(pending: PendingJoin, request: JoinRequest) -> Result<Device, NetError> {
    let JoinRequest {
        code,
        hints,
        mdns,
        confirm,
        progress,
    } = request;
    let identity = pending.identity_secret();
    let mailbox = pending.mailbox_secret();
    let proposed = pending.joiner(Role::Member);
    let joined = JoinedBody {
        name: proposed.name,
        identity_pub: proposed.identity_pub,
        mailbox_pub: proposed.mailbox_pub,
        vault_pub: proposed.vault_pub,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let mut swarm = behaviour::build(keypair(&identity)?, Gate::open(), &mut registry)?;
    let mut control = swarm.behaviour().streams.new_control();
    let me = *swarm.local_peer_id();

    let addrs = if hints.addrs.is_empty() && mdns {
        progress(&format!(
            "Looking on this network for pairing offer {}...",
            code.nameplate()
        ));
        find_offer(code.nameplate()).await?
    } else {
        hints.addrs.clone()
    };
    if addrs.is_empty() {
        return Err(
            PairFailure::NotFound("no address given and LAN discovery is off".into()).into(),
        );
    }
    // One address at a time, in order: one connection to the adder, not one per address.
    let mut untried = addrs.into_iter();
    let mut last_error = String::from("no address could be dialled");
    let (them, adder_addr) = loop {
        let Some(addr) = untried.next() else {
            return Err(PairFailure::Unreachable(last_error).into());
        };
        let opts = match hints.peer {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        if let Err(e) = swarm.dial(opts) {
            last_error = e.to_string();
            continue;
        }
        if let Some(reached) = connected(&mut swarm, hints.peer, &mut last_error).await {
            break reached;
        }
    };
    progress("Connected; pairing...");
    let protocol = async {
        let mut stream = control
            .open_stream(them, StreamProtocol::new(proto::PROTOCOL))
            .await
            .map_err(|_| PairFailure::Closed)?;
        let result = joiner_side(&mut stream, &code, &mailbox, me, them, joined, confirm).await;
        if let Err(e) = &result
            && matches!(e, PairFailure::Declined)
        {
            let _ = send(&mut stream, &PairMessage::Refused(PairRefusal::Declined)).await;
        }
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
        result
    };
    tokio::pin!(protocol);
    let welcome = loop {
        tokio::select! {
            result = &mut protocol => break result,
            _ = swarm.select_next_some() => {}
        }
    };
    // Close the connection properly: over QUIC a vanished process would look alive to the
    // adder until a timeout, and it shares this device's PeerId with the daemon to come.
    let _ = swarm.disconnect_peer_id(them);
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        while swarm.is_connected(&them) {
            swarm.select_next_some().await;
        }
    })
    .await;
    let welcome = welcome?;
    let anchors = crate::doc::TrustAnchors {
        vault: welcome.vault,
        founder: welcome.founder,
        recovery_pub: welcome.recovery_pub,
        recovery_sign_pub: welcome.recovery_sign_pub,
    };
    progress("Writing this device (deriving the key from the passphrase)...");
    let device = tokio::task::spawn_blocking(move || {
        let mut device = pending.finish(&welcome.document, &anchors)?;
        // The daemon dials the adder where we just reached it.
        let adder = device
            .state()?
            .members
            .values()
            .find_map(|m| (peer_id_for(&m.identity_pub) == Some(them)).then_some(m.device));
        if let Some(adder) = adder {
            device.note_peer_addr(&adder, std::slice::from_ref(&adder_addr))?;
            device.note_holds_all(&adder)?;
        }
        Ok::<_, DeviceError>(device)
    })
    .await
    .map_err(|_| NetError::HostGone)?
    .map_err(|e| PairFailure::Local(e.to_string()))?;
    Ok(device)
}

/// Waits for the dial just made: the peer and address reached, or `None` (with the reason in
/// `error`) if it failed.
async fn connected(
    swarm: &mut libp2p::Swarm<behaviour::Behaviour>,
    expected: Option<PeerId>,
    error: &mut String,
) -> Option<(PeerId, Multiaddr)> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
            *error = "no answer".into();
            return None;
        };
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if expected.is_none_or(|p| p == peer_id) => {
                return Some((peer_id, endpoint.get_remote_address().clone()));
            }
            SwarmEvent::OutgoingConnectionError { error: e, .. } => {
                *error = e.to_string();
                return None;
            }
            _ => {}
        }
    }
}

async fn joiner_side(
    stream: &mut Stream,
    code: &PairCode,
    mailbox: &[u8; 32],
    me: PeerId,
    them: PeerId,
    joined: JoinedBody,
    confirm: Box<dyn FnOnce(&str) -> bool + Send>,
) -> Result<WelcomeBody, PairFailure> {
    let password = code.password();
    let (spake, ours) = Spake2::<Ed25519Group>::start_b(
        &Password::new(&password[..]),
        &Identity::new(&them.to_bytes()),
        &Identity::new(&me.to_bytes()),
    );
    send(
        stream,
        &PairMessage::Hello {
            version: proto::VERSION,
            nameplate: code.nameplate(),
            spake: to_spake(&ours)?,
        },
    )
    .await?;
    let theirs = match recv(stream, STEP_TIMEOUT).await? {
        PairMessage::Spake(bytes) => bytes,
        other => return Err(unexpected(&other)),
    };
    // Our own message reflected back has our side byte: refused here.
    let psk = spake_key(spake.finish(&theirs))?;
    let prologue = handoff_protocol::binding::pair_prologue(&them.to_bytes(), &me.to_bytes());
    let mut hs = handshake(true, mailbox, &psk, &prologue)?;
    send(stream, &write_handshake(&mut hs)?).await?;
    let second = recv_noise(stream, STEP_TIMEOUT).await?;
    let mut scratch = vec![0u8; proto::NOISE_MAX];
    hs.read_message(&second, &mut scratch)
        .map_err(|_| PairFailure::Protocol("a bad second handshake message".into()))?;
    send(stream, &write_handshake(&mut hs)?).await?;
    let sas = super::super::code::sas(hs.get_handshake_hash());
    let mut noise = hs
        .into_transport_mode()
        .map_err(|e| PairFailure::Local(e.to_string()))?;
    match recv_sealed(stream, &mut noise, STEP_TIMEOUT).await? {
        Sealed::Ready => {}
        _ => {
            return Err(PairFailure::Protocol(
                "expected the adder's confirmation".into(),
            ));
        }
    }
    let confirmed = tokio::task::spawn_blocking(move || confirm(&sas))
        .await
        .unwrap_or(false);
    if !confirmed {
        return Err(PairFailure::Declined);
    }
    send_sealed(stream, &mut noise, &Sealed::Joined(joined)).await?;
    match recv_sealed(stream, &mut noise, OFFER_LIFETIME).await? {
        Sealed::Welcome(welcome) => Ok(welcome),
        _ => Err(PairFailure::Protocol("expected the vault".into())),
    }
}

/// Looks on the LAN for a pairing offer with `nameplate`.
async fn find_offer(nameplate: u16) -> Result<Vec<Multiaddr>, NetError> {
    let discovery = mdns::Discovery::start()?;
    let events = discovery.browse()?;
    let found = tokio::time::timeout(FIND_TIMEOUT, async {
        while let Ok(event) = events.recv_async().await {
            if let Some(mdns::Found::Pairing {
                nameplate: n,
                addrs,
            }) = mdns::found(&event)
                && n == nameplate
                && !addrs.is_empty()
            {
                return Some(addrs);
            }
        }
        None
    })
    .await;
    discovery.shutdown();
    match found {
        Ok(Some(addrs)) => Ok(addrs),
        _ => Err(PairFailure::NotFound(format!(
            "no offer {nameplate} answered on this network within {}s",
            FIND_TIMEOUT.as_secs()
        ))
        .into()),
    }
}
