//! Sync sessions with peers: one Automerge sync state per connected member, persisted so a
//! reconnect resumes from what the two last agreed on. Transport-agnostic: the network layer
//! (or a test) carries the bytes.

use automerge::ChangeHash;
use automerge::sync::State;
use handoff_protocol::DeviceId;

use super::{Device, DeviceError};
use crate::doc::unix_now;

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
}

/// One peer's sync session.
#[derive(Debug, Default)]
pub(super) struct Session {
    /// Which opening this is: a late close of an older session must not end a newer one.
    token: u64,
    state: State,
    /// Set when the peer refused our last message: our heads then. Nothing more is offered
    /// until they change, so a refusal that nothing here can fix does not loop.
    paused_at: Option<Vec<ChangeHash>>,
}

impl Session {
    fn restart(&mut self) {
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
        self.next_session += 1;
        let token = self.next_session;
        self.sessions.insert(
            peer,
            Session {
                token,
                state,
                paused_at: None,
            },
        );
        Ok(token)
    }

    /// Ends a session (the one `token` opened, or whichever is open if `None`), keeping what
    /// the two agreed on for next time.
    pub fn sync_close(&mut self, peer: &DeviceId, token: Option<u64>) {
        if token.is_some_and(|t| self.sessions.get(peer).is_none_or(|s| s.token != t)) {
            return;
        }
        if let Some(session) = self.sessions.remove(peer) {
            let _ = self
                .store
                .save_peer_sync(peer, &session.state.encode(), unix_now(), None);
        }
    }

    /// Starts `peer`'s session afresh (a message was lost, or we refused theirs): the next
    /// exchange works out again what each side lacks.
    pub fn sync_reset(&mut self, peer: &DeviceId) {
        if let Some(session) = self.sessions.get_mut(peer) {
            session.restart();
        }
    }

    /// `peer` refused our last message: offer nothing more until this document changes, then
    /// offer everything afresh.
    pub fn sync_refused(&mut self, peer: &DeviceId) {
        let heads = self.doc.heads();
        if let Some(session) = self.sessions.get_mut(peer) {
            session.paused_at = Some(heads);
        }
    }

    /// The next message for `peer`, if it has anything to learn.
    pub fn sync_generate(&mut self, peer: &DeviceId) -> Option<Vec<u8>> {
        // A removal can land between the network noticing and this call: never offer the
        // document to a device that is no longer an active member.
        if !self.is_active_peer(peer) {
            self.sessions.remove(peer);
            return None;
        }
        let heads = self.doc.heads();
        let session = self.sessions.get_mut(peer)?;
        match &session.paused_at {
            Some(at) if *at == heads => return None,
            Some(_) => {
                session.paused_at = None;
                session.restart();
            }
            None => {}
        }
        self.doc.sync_message(&mut session.state)
    }

    /// Applies `peer`'s sync message: validated as a whole, persisted before it returns.
    /// Returns how many changes were new.
    pub fn sync_receive(&mut self, peer: &DeviceId, message: &[u8]) -> Result<usize, SyncRefusal> {
        if !self.is_active_peer(peer) {
            self.sessions.remove(peer);
            return Err(SyncRefusal::NotAMember(*peer));
        }
        let session = self.sessions.entry(*peer).or_default();
        let new = self
            .doc
            .receive_sync(&mut session.state, message)
            .map_err(DeviceError::from)?;
        if new > 0 {
            self.persist()?;
            self.vouch()?;
        }
        // The sync state itself is saved when the session closes: losing it to a crash costs
        // only a longer exchange next time, while saving it here would cost a disk flush per
        // message.
        Ok(new)
    }

    /// Every peer this device has synced with.
    pub fn peers_seen(&self) -> Result<Vec<PeerSeen>, DeviceError> {
        Ok(self
            .store
            .peers()?
            .into_iter()
            .map(|(device, seen_at, addr)| PeerSeen {
                device,
                seen_at,
                addr,
            })
            .collect())
    }

    /// Remembers where `peer` can be reached (its listen addresses, space-separated).
    pub fn note_peer_addr(&mut self, peer: &DeviceId, addr: &str) -> Result<(), DeviceError> {
        Ok(self.store.set_peer_addr(peer, addr, unix_now())?)
    }

    /// Whether a sync session with `peer` is open.
    pub fn has_session(&self, peer: &DeviceId) -> bool {
        self.sessions.contains_key(peer)
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

    /// The document's heads, hex, sorted (to compare devices).
    pub fn heads_hex(&mut self) -> Vec<String> {
        let mut heads: Vec<String> = self.doc.heads().iter().map(ToString::to_string).collect();
        heads.sort();
        heads
    }
}
