//! The connection gate: a connection is established only with an active member of the vault.
//!
//! The decision is made when the connection is established, after the transport handshake
//! proved the peer's key and before any stream is opened on it, so a stranger never gets a
//! sync message answered. While a pairing offer is open (or on the joining side of a pairing)
//! strangers are let in as guests, which only the pairing protocol serves; when the offer
//! closes every guest that did not become a member is disconnected.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a member of this vault")]
pub(super) struct NotAMember(PeerId);

/// The gate and its state.
#[derive(Debug, Default)]
pub(super) struct Gate {
    members: HashSet<PeerId>,
    /// Strangers may connect (a pairing offer is open, or this node is joining).
    guests_allowed: bool,
    /// Connected peers let in as guests.
    guests: HashSet<PeerId>,
    close: VecDeque<PeerId>,
    waker: Option<Waker>,
    /// Connections refused so far.
    refused: Arc<AtomicU64>,
}

impl Gate {
    /// A gate that counts what it refuses in `refused`.
    pub fn counting(refused: Arc<AtomicU64>) -> Self {
        Self {
            refused,
            ..Self::default()
        }
    }

    /// A gate that lets everyone in (the joining side of a pairing, which has no vault yet).
    pub fn open() -> Self {
        Self {
            guests_allowed: true,
            ..Self::default()
        }
    }

    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.members.contains(peer)
    }

    /// Replaces the member set; connected peers that are no longer members (and not guests
    /// while guests are allowed) are disconnected.
    pub fn set_members(&mut self, members: HashSet<PeerId>, connected: &[PeerId]) {
        self.members = members;
        for peer in connected {
            let guest = self.guests_allowed && self.guests.contains(peer);
            if !(self.members.contains(peer) || guest) {
                self.close_peer(*peer);
            }
        }
    }

    /// Opens or closes the door to guests; closing it disconnects every guest that is not a
    /// member by now.
    pub fn allow_guests(&mut self, allowed: bool) {
        self.guests_allowed = allowed;
        if !allowed {
            let guests: Vec<PeerId> = self.guests.drain().collect();
            for peer in guests {
                if !self.members.contains(&peer) {
                    self.close_peer(peer);
                }
            }
        }
    }

    /// Disconnects `peer` (every connection).
    pub fn close_peer(&mut self, peer: PeerId) {
        self.close.push_back(peer);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn admit(&mut self, peer: PeerId) -> Result<THandler<Self>, ConnectionDenied> {
        if self.members.contains(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        if self.guests_allowed {
            self.guests.insert(peer);
            return Ok(dummy::ConnectionHandler);
        }
        tracing::debug!(%peer, "refused a connection from a non-member");
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(ConnectionDenied::new(NotAMember(peer)))
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && closed.remaining_established == 0
        {
            self.guests.remove(&closed.peer_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(peer_id) = self.close.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::All,
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
