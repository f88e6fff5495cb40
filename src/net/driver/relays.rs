//! The driver's side of the relays: one subscription per listed relay, and rounds that leave
//! offline members' changes at every relay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use handoff_protocol::DeviceId;
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::super::relay::{self, RelayTarget};
use super::super::sync_task::{Counters, Report};
use super::super::{Host, on_device};
use super::{Driver, Internal};

impl Driver {
    /// Keeps one subscription per listed relay (restarted when its settings change).
    pub(super) fn keep_subscriptions(&mut self, relays: Vec<RelayTarget>) {
        let wanted: HashMap<String, RelayTarget> = relays
            .iter()
            .map(|r| (r.fingerprint(), r.clone()))
            .collect();
        self.subscriptions.retain(|key, task| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, target) in wanted {
            if self.subscriptions.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(keep_subscribed(
                target,
                self.identity.clone(),
                self.host.clone(),
                self.internal_tx.clone(),
                self.shared.counters.clone(),
            ));
            self.subscriptions.insert(key, task);
        }
        *self
            .shared
            .relayed
            .relays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = relays.clone();
        self.relays = relays;
    }

    /// Asks for a relay round `after` from now (an earlier one already asked for stands).
    pub(super) fn schedule_relay(&mut self, after: Duration) {
        if self.relays.is_empty() {
            return;
        }
        if self.relay_running {
            self.relay_again = true;
            return;
        }
        let at = tokio::time::Instant::now() + after;
        if self.relay_due.is_none_or(|due| at < due) {
            self.relay_due = Some(at);
        }
    }

    /// Leaves what offline members lack at every relay.
    pub(super) fn relay_round(&mut self) {
        self.relay_due = None;
        let offline: Vec<(DeviceId, PeerId)> = self
            .members
            .iter()
            .filter(|(peer, _)| !self.swarm.is_connected(peer))
            .map(|(peer, device)| (*device, *peer))
            .collect();
        if offline.is_empty() || self.relays.is_empty() {
            return;
        }
        self.relay_running = true;
        let host = self.host.clone();
        let identity = self.identity.clone();
        let relays = self.relays.clone();
        let counters = self.shared.counters.clone();
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let retry = deposit_round(&host, &identity, &relays, offline, &counters).await;
            let _ = internal.send(Internal::RelayRoundDone { retry });
        });
    }
}

/// Subscribes to this device's mailbox at `target`, again after every break (backing off).
async fn keep_subscribed(
    target: RelayTarget,
    identity: libp2p::identity::Keypair,
    host: Arc<dyn Host>,
    internal: mpsc::UnboundedSender<Internal>,
    counters: Arc<Counters>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        let report = internal.clone();
        let taken = counters.clone();
        let applied = move |_new: usize| {
            taken.envelopes_taken.fetch_add(1, Ordering::Relaxed);
            let _ = report.send(Internal::Sync(Report::Applied));
        };
        let to_driver = internal.clone();
        let spawn = move |from, kind, body| {
            let _ = to_driver.send(Internal::RelayedSpawn(from, kind, body));
        };
        if let Err(e) = relay::subscribe(&target, &identity, &host, &applied, &spawn).await {
            tracing::debug!(relay = %target.id, error = %e, "relay subscription ended");
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// One round of deposits: for each offline member, the changes it lacks, at every relay.
/// Returns whether something should be tried again later.
async fn deposit_round(
    host: &Arc<dyn Host>,
    identity: &libp2p::identity::Keypair,
    relays: &[RelayTarget],
    offline: Vec<(DeviceId, PeerId)>,
    counters: &Counters,
) -> bool {
    let mut retry = false;
    for (device, peer) in offline {
        let outgoing = match on_device(host, move |d, _| d.relay_envelopes(&device)).await {
            Ok(Ok(Some(outgoing))) => outgoing,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot seal envelopes for a member");
                continue;
            }
            Err(_) => return false,
        };
        let batch: Vec<(PeerId, Vec<u8>)> = outgoing
            .envelopes
            .iter()
            .map(|e| (peer, e.clone()))
            .collect();
        let mut stored = false;
        for target in relays {
            match relay::deposit(target, identity, &batch).await {
                Ok(answers) if answers.iter().all(Result::is_ok) => {
                    counters
                        .envelopes_deposited
                        .fetch_add(answers.len() as u64, Ordering::Relaxed);
                    stored = true;
                }
                Ok(answers) => {
                    let refusals: Vec<&'static str> = answers
                        .iter()
                        .filter_map(|a| a.err().map(|r| r.name()))
                        .collect();
                    tracing::warn!(relay = %target.id, ?refusals, "the relay refused envelopes; they stay here");
                    retry |= answers.iter().any(|a| a.is_err_and(|r| r.is_transient()));
                }
                Err(e) => {
                    tracing::info!(relay = %target.id, error = %e, "cannot leave envelopes at a relay now");
                    retry = true;
                }
            }
        }
        if stored {
            let _ = on_device(host, move |d, _| d.note_relayed(&device, &outgoing)).await;
        }
    }
    retry
}
