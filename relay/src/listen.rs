//! Starting a swarm's listeners and waiting until each has an address. The relay and the
//! handoff node both refuse to run on a listen address that did not come up, rather than
//! serve on fewer addresses than they were told.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm};

/// A listener that could not start, or did not report an address in time.
#[derive(Debug)]
pub struct ListenFailure {
    /// The address (or the list of them, when the failure is not tied to one).
    pub addr: String,
    pub reason: String,
}

/// Starts a listener on each of `addrs` and returns once every one has reported an address:
/// all the addresses reported until then, in the order they came (a wildcard listener reports
/// one per interface, and may report more later). Events other than listener events are
/// dropped: call it before the swarm has anything else to do.
pub async fn listen_all<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
    within: Duration,
) -> Result<Vec<Multiaddr>, ListenFailure> {
    let mut waiting = HashSet::new();
    for addr in addrs {
        let id = swarm.listen_on(addr.clone()).map_err(|e| ListenFailure {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        waiting.insert(id);
    }
    let all = || format!("{addrs:?}");
    let mut bound = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !waiting.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| ListenFailure {
                addr: all(),
                reason: "no address came up".into(),
            })?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                waiting.remove(&listener_id);
                bound.push(address);
            }
            SwarmEvent::ListenerClosed { reason: Err(e), .. }
            | SwarmEvent::ListenerError { error: e, .. } => {
                return Err(ListenFailure {
                    addr: all(),
                    reason: e.to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(bound)
}
