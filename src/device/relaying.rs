//! Relaying: the relays a vault lists, what this device leaves at them for members that are
//! offline, and what it takes from its own mailbox.
//!
//! For an offline member, the changes it lacks — by what this device knows: the heads the two
//! last synced to, and heads it is otherwise known to hold (left at a relay for it, received
//! from it in an envelope, handed over at pairing) — are sealed to its mailbox key in envelopes
//! of at most a megabyte. An envelope taken from this device's mailbox is opened
//! with its own mailbox key, checked to come from an active member of this vault (the key the
//! Noise handshake authenticated must be that member's), and applied like a sync message: on a
//! fork, validated, persisted before the caller acknowledges it to the relay.

use std::collections::BTreeMap;

use automerge::ChangeHash;
use handoff_protocol::DeviceId;
use handoff_protocol::envelope::{Inner, Kind};

use super::{Device, DeviceError};
use crate::addr::Multiaddr;
use crate::doc::schema::{Member, Relay};
use crate::entropy::unix_now;
use crate::vault::{envelope, random_array};

/// Most heads remembered per peer besides the synced ones (the newest are kept).
const KNOWN_HEADS_MAX: usize = 32;

const NOT_A_MEMBER: &str = "it is not from an active member of this vault";

/// Most body bytes in one envelope (its sealing and framing stay under the relay's megabyte).
const BODY_MAX: usize = handoff_protocol::envelope::MAX_ENVELOPE - 16 * 1024;

/// Envelopes for one offline member, and the heads they bring it to.
#[derive(Debug)]
pub struct Outgoing {
    pub envelopes: Vec<Vec<u8>>,
    pub heads: Vec<ChangeHash>,
    /// The last sequence number used.
    pub seq: u64,
}

/// What became of an envelope taken from this device's mailbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Applied and persisted (how many changes were new): acknowledge it.
    Applied(usize),
    /// Not applied yet, or not wholly: some of its changes wait for changes this device has
    /// not seen yet. Keep it at the relay and take it again once something new applied.
    Waiting,
    /// It can never apply here (not sealed to this device, not from an active member of this
    /// vault, changes every member refuses): acknowledge it so it is not offered again.
    Rejected(String),
    /// A spawn request or result (`kind`) from active member `from`, whose mailbox key sealed
    /// it: for the owner to answer, or for the request waiting for it. Nothing was applied.
    Spawn {
        from: DeviceId,
        kind: Kind,
        body: Vec<u8>,
    },
}

fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn decode_heads(bytes: &[u8]) -> Vec<ChangeHash> {
    bytes
        .chunks_exact(32)
        .filter_map(|c| ChangeHash::try_from(c).ok())
        .collect()
}

impl Device {
    /// The relays this vault lists (signed by an admin).
    pub fn relays(&self) -> Result<Vec<Relay>, DeviceError> {
        Ok(self.state()?.relays.values().cloned().collect())
    }

    /// Lists a relay for every member (admins only: members will leave envelopes there).
    pub fn add_relay(
        &mut self,
        addrs: &[Multiaddr],
        token: Option<&[u8]>,
    ) -> Result<Relay, DeviceError> {
        let state = self.state()?;
        self.require_admin(&state)?;
        let text = crate::addr::to_text(addrs);
        if addrs.is_empty() || text.len() > crate::doc::schema::limits::RELAY_ADDRS_MAX {
            return Err(DeviceError::InvalidInput(
                "give the relay's address (a multiaddr, as `handoff-relay serve` prints it)".into(),
            ));
        }
        // Each address must name the relay (`/p2p/<PeerId>`): otherwise whoever answers there
        // would be handed the access token and the envelopes.
        if let Some(bad) = addrs.iter().find(|a| !crate::addr::names_peer(a)) {
            return Err(DeviceError::InvalidInput(format!(
                "'{bad}' does not name the relay: give the address ending in /p2p/<PeerId> that `handoff-relay serve` prints"
            )));
        }
        if token
            .is_some_and(|t| t.is_empty() || t.len() > crate::doc::schema::limits::RELAY_TOKEN_MAX)
        {
            return Err(DeviceError::InvalidInput(
                "a relay access token is 1 to 255 bytes".into(),
            ));
        }
        if state.relays.len() >= crate::doc::schema::limits::RELAYS_MAX {
            return Err(DeviceError::InvalidInput(
                "this vault lists as many relays as it may; remove one first".into(),
            ));
        }
        let mut relay = Relay {
            id: hex::encode(random_array::<8>()?),
            addrs: text,
            access_token: token.map(<[u8]>::to_vec),
            added_by: self.record.device_id.to_hex(),
            added_at: unix_now(),
            sig: Vec::new(),
        };
        relay.sig = self
            .keys
            .sign(&handoff_protocol::binding::relay_statement(
                &state.info.id,
                &relay.id,
                &relay.addrs,
                relay.access_token.as_deref().unwrap_or_default(),
                &relay.added_by,
                relay.added_at,
            ))
            .to_vec();
        self.doc.put_relay(&relay)?;
        self.doc
            .audit(&self.record.device_id, "relay.add", &relay.id, |m| {
                self.keys.sign(m)
            })?;
        self.doc.commit("relay.add", |m| self.keys.sign(m));
        self.persist()?;
        Ok(relay)
    }

    /// Removes a listed relay, by id or id prefix.
    pub fn remove_relay(&mut self, query: &str) -> Result<Relay, DeviceError> {
        let state = self.state()?;
        self.require_admin(&state)?;
        let q = query.to_ascii_lowercase();
        let found: Vec<&Relay> = state
            .relays
            .values()
            .filter(|r| !q.is_empty() && r.id.starts_with(&q))
            .collect();
        let relay = match found.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(DeviceError::InvalidInput(format!(
                    "no relay '{query}' (see `handoff relay list`)"
                )));
            }
            _ => {
                return Err(DeviceError::InvalidInput(format!(
                    "'{query}' matches several relays; give more of the id"
                )));
            }
        };
        self.doc.remove_relay(&relay.id)?;
        self.doc
            .audit(&self.record.device_id, "relay.rm", &relay.id, |m| {
                self.keys.sign(m)
            })?;
        self.doc.commit("relay.rm", |m| self.keys.sign(m));
        self.persist()?;
        Ok(relay)
    }

    fn relay_recipient(&self, peer: &DeviceId) -> Result<Option<Member>, DeviceError> {
        Ok(self
            .state()?
            .members
            .get(peer)
            .filter(|m| m.is_active() && *peer != self.record.device_id)
            .cloned())
    }

    /// Envelopes of the changes `peer` lacks by what this device knows, or `None` if it lacks
    /// nothing (or is not an active member).
    pub fn relay_envelopes(&mut self, peer: &DeviceId) -> Result<Option<Outgoing>, DeviceError> {
        let Some(member) = self.relay_recipient(peer)? else {
            return Ok(None);
        };
        let mut have = self
            .store
            .peer_sync(peer)?
            .and_then(|(bytes, _, _)| automerge::sync::State::decode(&bytes).ok())
            .map(|s| s.shared_heads)
            .unwrap_or_default();
        let (known, mut seq) = self.store.known_heads(peer)?;
        have.extend(decode_heads(&known));
        let changes = self.doc.changes_since(&have);
        if changes.is_empty() {
            return Ok(None);
        }
        let vault = self.state()?.info.id;
        let mailbox = self.keys.secrets().1;
        // In causal order, up to the first change too large for an envelope: it, and what
        // comes after it, wait for a direct sync (the recipient could apply none of what
        // depends on it), and the peer is noted as holding only what was sealed.
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for change in changes {
            if change.len() > BODY_MAX {
                tracing::warn!("a change too large for a relay envelope waits for a direct sync");
                break;
            }
            match bodies.last_mut() {
                Some(body) if body.len() + change.len() <= BODY_MAX => body.extend(change),
                _ => bodies.push(change),
            }
        }
        if bodies.is_empty() {
            return Ok(None);
        }
        let heads = crate::doc::VaultDoc::heads_of_changes(&bodies.concat())?;
        let mut envelopes = Vec::with_capacity(bodies.len());
        for body in bodies {
            seq += 1;
            let inner = Inner {
                vault,
                sender: self.record.device_id,
                seq,
                kind: Kind::DocChanges,
                body,
            };
            envelopes.push(envelope::seal(
                &mailbox,
                &member.mailbox_pub,
                &inner.encode(),
            )?);
        }
        Ok(Some(Outgoing {
            envelopes,
            heads,
            seq,
        }))
    }

    /// Records that the relays hold everything up to `outgoing.heads` for `peer`.
    pub fn note_relayed(
        &mut self,
        peer: &DeviceId,
        outgoing: &Outgoing,
    ) -> Result<(), DeviceError> {
        self.note_known(peer, &outgoing.heads, Some(outgoing.seq))
    }

    /// Records that `peer` holds everything this device holds now (the two just exchanged the
    /// whole document, as at pairing).
    pub fn note_holds_all(&mut self, peer: &DeviceId) -> Result<(), DeviceError> {
        let heads = self.doc.heads();
        self.note_known(peer, &heads, None)
    }

    /// Records that `peer` holds (at least) `heads`, beside what is known already.
    pub fn note_known(
        &mut self,
        peer: &DeviceId,
        heads: &[ChangeHash],
        seq: Option<u64>,
    ) -> Result<(), DeviceError> {
        let (known, old_seq) = self.store.known_heads(peer)?;
        let mut all = decode_heads(&known);
        for head in heads {
            if !all.contains(head) {
                all.push(*head);
            }
        }
        let keep = all.len().saturating_sub(KNOWN_HEADS_MAX);
        Ok(self
            .store
            .set_known_heads(peer, &encode_heads(&all[keep..]), seq.unwrap_or(old_seq))?)
    }

    /// Seals a spawn request or result (`kind`, `body`) to member `to`'s mailbox, for a relay.
    pub fn seal_spawn(
        &self,
        to: &DeviceId,
        kind: Kind,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, DeviceError> {
        let state = self.state()?;
        let member = state
            .members
            .get(to)
            .filter(|m| m.is_active())
            .ok_or_else(|| DeviceError::InvalidInput("that device is not a member".into()))?;
        let inner = Inner {
            vault: state.info.id,
            sender: self.record.device_id,
            // Spawn messages carry their own id and time; the sequence is for changes.
            seq: 0,
            kind,
            body,
        };
        let mailbox = self.keys.secrets().1;
        Ok(envelope::seal(
            &mailbox,
            &member.mailbox_pub,
            &inner.encode(),
        )?)
    }

    /// Takes an envelope from this device's mailbox: opens, checks and applies it, persisting
    /// what it brought before returning.
    pub fn take_envelope(&mut self, sealed: &[u8]) -> Result<Taken, DeviceError> {
        let mailbox = self.keys.secrets().1;
        let Ok((sender_key, inner)) = envelope::open(&mailbox, sealed) else {
            return Ok(Taken::Rejected(
                "it does not open with this device's key".into(),
            ));
        };
        let Ok(inner) = Inner::decode(&inner) else {
            return Ok(Taken::Rejected("its contents are malformed".into()));
        };
        let state = self.state()?;
        if inner.vault != state.info.id {
            return Ok(Taken::Rejected("it belongs to another vault".into()));
        }
        let me = self.record.device_id;
        if matches!(inner.kind, Kind::SpawnRequest | Kind::SpawnResult) {
            // Only from a member this document knows, active now, whose key sealed it.
            let sender = state
                .members
                .get(&inner.sender)
                .filter(|m| m.is_active() && m.mailbox_pub == sender_key && m.device != me);
            return Ok(match sender {
                Some(_) => Taken::Spawn {
                    from: inner.sender,
                    kind: inner.kind,
                    body: inner.body,
                },
                None => Taken::Rejected(NOT_A_MEMBER.into()),
            });
        }
        if inner.kind != Kind::DocChanges {
            return Ok(Taken::Rejected(
                "this version of handoff does not take that kind of envelope".into(),
            ));
        }
        // The sender must be an active member whose mailbox key sealed the envelope: of this
        // document, or, for a sender this device has not heard of, of the document the
        // envelope's own changes make (a member added while this device was away sends the
        // changes that admit it). A removed or impostor sender is refused either way.
        let is_sender = |members: &BTreeMap<DeviceId, Member>| {
            members
                .get(&inner.sender)
                .is_some_and(|m| m.is_active() && m.mailbox_pub == sender_key && m.device != me)
        };
        if state.members.contains_key(&inner.sender) && !is_sender(&state.members) {
            return Ok(Taken::Rejected(NOT_A_MEMBER.into()));
        }
        let new = match self.doc.ingest_if(&inner.body, is_sender) {
            Ok(Some(new)) => new,
            // A sender this device has not heard of, whose admission may be among changes
            // still to come (a newer envelope delivered first): wait for them.
            Ok(None) if self.doc.lacks_deps_of(&inner.body).unwrap_or(false) => {
                return Ok(Taken::Waiting);
            }
            Ok(None) => return Ok(Taken::Rejected(NOT_A_MEMBER.into())),
            // Changes that wait for others still to come: the envelope stays at the relay.
            Err(crate::doc::DocError::Waiting) => return Ok(Taken::Waiting),
            Err(e) => {
                if is_sender(&state.members) {
                    self.vouch_for_refused(&e);
                }
                return Ok(Taken::Rejected(e.to_string()));
            }
        };
        if new > 0 {
            self.persist()?;
            self.vouch()?;
        }
        let Ok(heads) = crate::doc::VaultDoc::heads_of_changes(&inner.body) else {
            return Ok(Taken::Rejected("its changes are malformed".into()));
        };
        // The sender holds what it sent: never send it back.
        self.note_known(&inner.sender, &heads, None)?;
        // Changes that wait for a dependency are held in memory only: the envelope stays at
        // the relay until they apply (it is taken again, at no cost, when it comes back).
        if !self.doc.holds(&heads) {
            return Ok(Taken::Waiting);
        }
        Ok(Taken::Applied(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_through_their_stored_form() {
        let heads = vec![ChangeHash([1; 32]), ChangeHash([2; 32])];
        assert_eq!(decode_heads(&encode_heads(&heads)), heads);
        assert!(decode_heads(&[0; 31]).is_empty());
    }
}
