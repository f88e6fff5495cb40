//! Descriptor hygiene for the relay and the handoff node alike: strangers can open connections
//! faster than a process can refuse them, so every listener here is bounded before its
//! handshake and survives running out of descriptors.
//!
//! - [`raise_open_files_limit`] at start: the soft limit up to the hard one.
//! - [`connection_limits`] and [`PendingPerAddress`]: swarm behaviours that refuse an incoming
//!   connection beyond the caps *before* its handshake (pending incoming in all and from one
//!   address, established incoming, per peer), so handshakes that never finish pin at most so
//!   many descriptors, each for at most the swarm's connection timeout; and one stranger, from
//!   one address (an IPv6 /64 counts as one), cannot fill the pending slots everyone shares.
//! - [`AcceptBackoff`]: when `accept` fails (EMFILE, ENFILE) the listener stays readable, so a
//!   loop that retries at once spins; it waits instead, longer each time, and logs once per
//!   streak.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Caps on a swarm's incoming connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Incoming connections whose handshake is still under way.
    pub pending_incoming: u32,
    /// Of those, from one address.
    pub pending_per_address: u32,
    /// Established incoming connections.
    pub established_incoming: u32,
    /// Established connections to one peer, either direction.
    pub per_peer: u32,
}

/// The behaviour that enforces `caps` on established connections (the pending ones are
/// [`PendingPerAddress`]'s).
pub fn connection_limits(caps: ConnectionCaps) -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_established_incoming(Some(caps.established_incoming))
            .with_max_established_per_peer(Some(caps.per_peer)),
    )
}

/// Raises this process's soft limit on open files to its hard limit; returns the new soft
/// limit (or the old one, if it could not be raised).
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// Paces an accept loop whose `accept` fails (see the module docs).
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_secs(1);

    /// Waits before the next `accept` after `error` on `what`.
    pub async fn wait(&mut self, error: &std::io::Error, what: &str) {
        if self.failures == 0 {
            tracing::warn!(%error, "cannot accept on the {what}; backing off until it can");
        }
        self.failures = self.failures.saturating_add(1);
        let wait = Self::FIRST
            .saturating_mul(1 << self.failures.min(6))
            .min(Self::MAX);
        tokio::time::sleep(wait).await;
    }

    /// An `accept` succeeded.
    pub fn reset(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting again");
        }
        self.failures = 0;
    }
}

/// Refuses an incoming TCP connection before its handshake while as many handshakes are under
/// way as may be, in all or from its address, or while the established incoming connections
/// are at their cap (see the module docs). QUIC connections are not counted here: they hold
/// no descriptor while pending, and their first packet's source address is not verified, so
/// counting them would let spoofed packets fill the slots TCP clients need.
#[derive(Debug)]
pub struct PendingPerAddress {
    max: u32,
    max_total: u32,
    max_established: u32,
    pending: HashMap<ConnectionId, IpAddr>,
    per_address: HashMap<IpAddr, u32>,
    established: std::collections::HashSet<ConnectionId>,
}

#[derive(Debug, thiserror::Error)]
#[error("too many connections or handshakes under way (in all, or from one address)")]
struct TooManyFromOneAddress;

impl PendingPerAddress {
    pub fn new(caps: ConnectionCaps) -> Self {
        Self {
            max: caps.pending_per_address,
            max_total: caps.pending_incoming,
            max_established: caps.established_incoming,
            pending: HashMap::new(),
            per_address: HashMap::new(),
            established: std::collections::HashSet::new(),
        }
    }

    fn done(&mut self, id: ConnectionId) {
        if let Some(ip) = self.pending.remove(&id)
            && let Some(n) = self.per_address.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
    }
}

/// Where a connection comes from, for counting: its IP, an IPv6 address by its /64.
fn source(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => {
            let prefix = u128::from(ip) & !((1u128 << 64) - 1);
            Some(IpAddr::V6(prefix.into()))
        }
        _ => None,
    })
}

impl NetworkBehaviour for PendingPerAddress {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        if remote
            .iter()
            .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
        {
            return Ok(());
        }
        if self.established.len() >= self.max_established as usize
            || self.pending.len() >= self.max_total as usize
        {
            return Err(ConnectionDenied::new(TooManyFromOneAddress));
        }
        let Some(ip) = source(remote) else {
            return Ok(());
        };
        let n = self.per_address.entry(ip).or_default();
        if *n >= self.max {
            return Err(ConnectionDenied::new(TooManyFromOneAddress));
        }
        *n += 1;
        self.pending.insert(id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.done(id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(failure) => self.done(failure.connection_id),
            FromSwarm::ConnectionEstablished(c) if c.endpoint.is_listener() => {
                self.established.insert(c.connection_id);
            }
            FromSwarm::ConnectionClosed(c) => {
                self.established.remove(&c.connection_id);
            }
            _ => {}
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

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_counts_by_its_64_prefix() {
        let a: Multiaddr = "/ip6/2001:db8:1:2:aaaa::1/tcp/1"
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty());
        let b: Multiaddr = "/ip6/2001:db8:1:2:bbbb::9/tcp/2"
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty());
        let c: Multiaddr = "/ip6/2001:db8:1:3::1/tcp/2"
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty());
        assert_eq!(source(&a), source(&b));
        assert_ne!(source(&a), source(&c));
        let v4: Multiaddr = "/ip4/127.0.0.2/tcp/9"
            .parse()
            .unwrap_or_else(|_| Multiaddr::empty());
        assert_eq!(source(&v4), Some(IpAddr::from([127, 0, 0, 2])));
    }
}
