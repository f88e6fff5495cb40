//! The swarm: transports (TCP with Noise and Yamux; QUIC, whose TLS 1.3 handshake proves the
//! same PeerId), and the behaviours every handoff node runs: connection caps counted before
//! the handshake, the gate, identify (peers learn
//! each other's listen addresses), ping (dead connections are noticed) and plain streams for
//! handoff's own protocols.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, SwarmBuilder, identify, noise, ping, tcp, yamux};
use prometheus_client::registry::Registry;

use super::NetError;
use super::gate::Gate;

/// The identify protocol version handoff nodes announce.
const IDENTIFY_VERSION: &str = "/handoff/1";
/// How often a connection is pinged (a dead one is closed after a failed ping).
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a connection with no stream open stays up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Caps on incoming connections, counted before the handshake: strangers that connect and
/// never finish one pin at most `pending_incoming` descriptors, each for the swarm's
/// connection timeout, and one address at most `pending_per_address`. A vault has at most
/// 256 members.
const CAPS: handoff_relay::descriptors::ConnectionCaps =
    handoff_relay::descriptors::ConnectionCaps {
        pending_incoming: 32,
        pending_per_address: 4,
        established_incoming: 512,
        per_peer: 8,
    };

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub limits: libp2p::connection_limits::Behaviour,
    pub per_address: handoff_relay::descriptors::PendingPerAddress,
    pub gate: Gate,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub streams: libp2p_stream::Behaviour,
}

/// A swarm for `keypair` behind `gate`, with its transport byte counters in `registry`.
pub(super) fn build(
    keypair: Keypair,
    gate: Gate,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, NetError> {
    let transport = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| Behaviour {
            limits: handoff_relay::descriptors::connection_limits(CAPS),
            per_address: handoff_relay::descriptors::PendingPerAddress::new(CAPS),
            gate,
            // Identify only on connect and when our addresses change: an idle mesh is quiet.
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                    .with_interval(Duration::from_secs(24 * 3600))
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_EVERY)),
            streams: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

/// What a relay client needs: streams, and pings to notice a dead relay.
#[derive(NetworkBehaviour)]
pub(super) struct ClientBehaviour {
    pub ping: ping::Behaviour,
    pub streams: libp2p_stream::Behaviour,
}

/// A small swarm for talking to a relay under `keypair` (this device's identity, or a
/// throwaway one when it should not be known who deposits).
pub(super) fn build_client(keypair: Keypair) -> Result<Swarm<ClientBehaviour>, NetError> {
    let transport = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_behaviour(|_| ClientBehaviour {
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_EVERY)),
            streams: libp2p_stream::Behaviour::new(),
        })
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build())
}
