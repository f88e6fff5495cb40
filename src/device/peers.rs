//! Sync sessions with peers: one Automerge sync state per connected member, persisted so a
//! reconnect resumes from what the two last agreed on. Transport-agnostic: the network layer
//! (or a test) carries the bytes.

use automerge::ChangeHash;
use automerge::sync::State;
use handoff_protocol::DeviceId;

use super::{Device, DeviceError};
use crate::doc::DocError;
use crate::entropy::unix_now;

/// Why a peer's sync message was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SyncRefusal {
    #[error("{0} is not an active member of this vault")]
    NotAMember(DeviceId),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// What this device remembers of a peer it synced with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSeen {
    pub device: DeviceId,
    /// Unix seconds of the last sync exchange.
    pub seen_at: i64,
    /// The addresses it was last reachable at (space-separated multiaddrs).
    pub addr: Option<String>,
    /// Since when (Unix seconds), and why, the two cannot converge: one refuses a change the
    /// other holds. Cleared once they hold the same heads.
    pub out_of_sync: Option<(i64, String)>,
}

/// One peer's sync session: the sync state the two last agreed on and what a refusal paused.
#[derive(Debug, Default)]
pub(super) struct PeerSync {
    /// Which opening this is: a late close of an older session must not end a newer one.
    token: u64,
    state: State,
    /// Set when the peer refused a message written at our current heads: those heads.
    /// Nothing more is offered until they change, so a refusal that nothing here can fix does
    /// not loop.
    paused_at: Option<Vec<ChangeHash>>,
    /// Whether the store records the two as out of sync (a mirror, so clearing costs a write
    /// only when there is something to clear).
    out_of_sync: bool,
    /// The reason last recorded, so a repeated refusal costs no write.
    out_of_sync_why: Option<String>,
    /// While paused: the last message sent without changes. The same one is not sent twice,
    /// so two devices that cannot converge fall quiet instead of trading heads for ever.
    last_stripped: Option<Vec<u8>>,
    /// Whether this side asks the peer for its whole document (see
    /// [`DocError::Incomplete`]).
    resend: Resend,
}

/// A message the peer sent failed a check while leaving out changes it holds: this side asks
/// for everything, and judges the answer whole. Messages already on their way when the ask
/// went out can be incomplete too, so a few are asked again for; past that the message is
/// refused as it stands, so a peer cannot keep this side asking.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Resend {
    /// The next message this side sends asks for everything.
    ask: bool,
    /// Incomplete messages since the last one taken.
    incomplete: u8,
}

/// How many incomplete messages in a row are answered by asking for everything.
const MAX_ASKS: u8 = 3;

impl PeerSync {
    fn restart(&mut self) {
        self.last_stripped = None;
        let shared = std::mem::take(&mut self.state.shared_heads);
        self.state = State::new();
        self.state.shared_heads = shared;
    }
}

impl Device {
    /// Whether `device` is an active member of this vault (and not this device).
    pub fn is_active_peer(&self, device: &DeviceId) -> bool {
        *device != self.record.device_id
            && self
                .state()
                .is_ok_and(|s| s.members.get(device).is_some_and(|m| m.is_active()))
    }

    /// Starts (or restarts) a sync session with `peer` from its persisted state; returns the
    /// session's token for [`Device::sync_close`].
    pub fn sync_open(&mut self, peer: DeviceId, addr: Option<&str>) -> Result<u64, SyncRefusal> {
        if !self.is_active_peer(&peer) {
            return Err(SyncRefusal::NotAMember(peer));
        }
        let state = self
            .store
            .peer_sync(&peer)
            .map_err(DeviceError::from)?
            .and_then(|(bytes, _, _)| State::decode(&bytes).ok())
            .unwrap_or_default();
        self.store
            .save_peer_sync(&peer, &state.encode(), unix_now(), addr)
            .map_err(DeviceError::from)?;
        let out_of_sync = self
            .store
            .is_out_of_sync(&peer)
            .map_err(DeviceError::from)?;
        self.openings += 1;
        let token = self.openings;
        self.syncing.insert(
            peer,
            PeerSync {
                token,
                state,
                paused_at: None,
                out_of_sync,
                out_of_sync_why: None,
                last_stripped: None,
                resend: Resend::default(),
            },
        );
        Ok(token)
    }

    /// Ends a session (the one `token` opened, or whichever is open if `None`), keeping what
    /// the two agreed on for next time.
    pub fn sync_close(&mut self, peer: &DeviceId, token: Option<u64>) {
        if token.is_some_and(|t| self.syncing.get(peer).is_none_or(|s| s.token != t)) {
            return;
        }
        if let Some(session) = self.syncing.remove(peer) {
            let _ = self
                .store
                .save_peer_sync(peer, &session.state.encode(), unix_now(), None);
        }
    }

    /// Starts `peer`'s session afresh (a message was lost, or we refused theirs): the next
    /// exchange works out again what each side lacks.
    pub fn sync_reset(&mut self, peer: &DeviceId) {
        if let Some(session) = self.syncing.get_mut(peer) {
            session.restart();
        }
    }

    /// `peer` refused a message of ours written at `refused_at` (empty: unknown, taken as
    /// now). If this document is still there, nothing more is offered until it changes, and
    /// the two are recorded out of sync; if it has moved on since (the refusal crossed a newer
    /// message), the session starts afresh at once and offers everything again. Either way a
    /// refusal never leaves the two silent while this side has something new.
    pub fn sync_refused(&mut self, peer: &DeviceId, refused_at: &[[u8; 32]], why: &str) {
        let heads = self.doc.heads();
        let mut at: Vec<ChangeHash> = refused_at.iter().map(|h| ChangeHash(*h)).collect();
        if at.is_empty() {
            at.clone_from(&heads);
        }
        at.sort();
        let mut now = heads.clone();
        now.sort();
        let Some(session) = self.syncing.get_mut(peer) else {
            return;
        };
        session.restart();
        if at == now {
            session.paused_at = Some(heads);
            self.mark_out_of_sync(peer, Some(why));
        }
    }

    /// Records (or, with `None`, clears) that this device and `peer` cannot converge.
    fn mark_out_of_sync(&mut self, peer: &DeviceId, why: Option<&str>) {
        let Some(session) = self.syncing.get_mut(peer) else {
            return;
        };
        // Peer-influenced text (an error can quote a map key): one line, no control
        // characters, bounded.
        let why: Option<String> = why.map(|w| {
            let mut clean: String = w
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect();
            if w.chars().count() > 200 {
                clean.push('…');
            }
            clean
        });
        if session.out_of_sync == why.is_some() && session.out_of_sync_why == why {
            return;
        }
        if why.is_none() && !session.out_of_sync {
            return;
        }
        session.out_of_sync = why.is_some();
        session.out_of_sync_why.clone_from(&why);
        let out = why.as_deref().map(|w| (unix_now(), w));
        if let Err(e) = self.store.set_out_of_sync(peer, out) {
            tracing::warn!(error = %e, "cannot record a peer's sync standing");
        }
    }

    /// The heads a sync message says its sender was at (empty if it does not parse), to
    /// name in a refusal.
    pub fn sync_message_heads(message: &[u8]) -> Vec<[u8; 32]> {
        automerge::sync::Message::decode(message)
            .map(|m| m.heads.iter().map(|h| h.0).collect())
            .unwrap_or_default()
    }

    /// The next message for `peer`, if it has anything to learn.
    pub fn sync_generate(&mut self, peer: &DeviceId) -> Option<Vec<u8>> {
        // A removal can land between the network noticing and this call: never offer the
        // document to a device that is no longer an active member.
        if !self.is_active_peer(peer) {
            self.syncing.remove(peer);
            return None;
        }
        let heads = self.doc.heads();
        let session = self.syncing.get_mut(peer)?;
        if std::mem::take(&mut session.resend.ask) {
            return Some(self.doc.ask_everything());
        }
        let with_changes = match &session.paused_at {
            // Still where the peer refused us: tell it what we have and need, so it can send
            // us what we lack (that may be what makes our changes acceptable to it), but do
            // not offer again the changes it refused.
            Some(at) if *at == heads => false,
            Some(_) => {
                session.paused_at = None;
                session.restart();
                true
            }
            None => true,
        };
        let message = self.doc.sync_message(&mut session.state, with_changes)?;
        if !with_changes {
            if session.last_stripped.as_ref() == Some(&message) {
                return None;
            }
            session.last_stripped = Some(message.clone());
        }
        Some(message)
    }

    /// Applies `peer`'s sync message: validated as a whole, persisted before it returns.
    /// Returns how many changes were new.
    pub fn sync_receive(&mut self, peer: &DeviceId, message: &[u8]) -> Result<usize, SyncRefusal> {
        if !self.is_active_peer(peer) {
            self.syncing.remove(peer);
            return Err(SyncRefusal::NotAMember(*peer));
        }
        let session = self.syncing.entry(*peer).or_default();
        let received = self.doc.receive_sync(&mut session.state, message);
        self.reload_if_lost()?;
        let session = self.syncing.entry(*peer).or_default();
        let new = match received {
            Ok(new) => {
                // Only new changes end a run of incomplete messages: a peer cannot reset the
                // count with messages that carry none.
                if new > 0 {
                    session.resend = Resend::default();
                }
                new
            }
            Err(DocError::Incomplete { .. }) if session.resend.incomplete < MAX_ASKS => {
                session.resend.incomplete += 1;
                session.resend.ask = true;
                return Ok(0);
            }
            Err(e) => {
                session.resend = Resend::default();
                let e = match e {
                    DocError::Incomplete { refused } => *refused,
                    e => e,
                };
                let reason = format!("this device refuses its changes ({e})");
                self.mark_out_of_sync(peer, Some(&reason));
                self.vouch_for_refused(&e);
                return Err(DeviceError::from(e).into());
            }
        };
        if new > 0 {
            self.persist()?;
            self.vouch()?;
        }
        self.clear_if_in_sync(peer);
        // The sync state itself is saved when the session closes: losing it to a crash costs
        // only a longer exchange next time, while saving it here would cost a disk flush per
        // message.
        Ok(new)
    }

    /// Clears the out-of-sync mark once this device and `peer` hold the same heads.
    fn clear_if_in_sync(&mut self, peer: &DeviceId) {
        let Some(session) = self.syncing.get(peer) else {
            return;
        };
        if !session.out_of_sync {
            return;
        }
        let mut ours = self.doc.heads();
        ours.sort();
        let theirs = session.state.their_heads.clone().map(|mut h| {
            h.sort();
            h
        });
        if theirs.as_ref() == Some(&ours) {
            self.mark_out_of_sync(peer, None);
        }
    }

    /// Every peer this device has synced with.
    pub fn peers_seen(&self) -> Result<Vec<PeerSeen>, DeviceError> {
        Ok(self
            .store
            .peers()?
            .into_iter()
            .map(|(device, seen_at, addr, out_of_sync)| PeerSeen {
                device,
                seen_at,
                addr,
                out_of_sync,
            })
            .collect())
    }

    /// Remembers where `peer` can be reached (its listen addresses).
    pub fn note_peer_addr(
        &mut self,
        peer: &DeviceId,
        addrs: &[crate::addr::Multiaddr],
    ) -> Result<(), DeviceError> {
        let text = crate::addr::to_text(addrs);
        Ok(self.store.set_peer_addr(peer, &text, unix_now())?)
    }

    /// Whether a sync session with `peer` is open.
    pub fn is_syncing_with(&self, peer: &DeviceId) -> bool {
        self.syncing.contains_key(peer)
    }

    /// Whether this device is an active admin.
    pub fn is_admin(&self) -> bool {
        self.state().is_ok_and(|s| {
            s.members
                .get(&self.record.device_id)
                .is_some_and(|m| m.is_active() && m.role == crate::doc::Role::Admin)
        })
    }

    /// The trust anchors this device pinned.
    pub fn anchors(&self) -> &crate::doc::TrustAnchors {
        &self.record.anchors
    }

    /// A short name for what this document holds (a digest of its heads): two devices that
    /// show the same one hold the same document.
    pub fn document_version(&mut self) -> String {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for head in self.heads_hex() {
            digest.update(head.as_bytes());
        }
        hex::encode(&digest.finalize()[..8])
    }

    /// The document's heads, hex, sorted (to compare devices).
    pub fn heads_hex(&mut self) -> Vec<String> {
        let mut heads: Vec<String> = self.doc.heads().iter().map(ToString::to_string).collect();
        heads.sort();
        heads
    }
}
