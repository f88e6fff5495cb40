//! Membership: admitting a paired device, removing one with a key rotation, and the upkeep a
//! device does after changes arrive (the rules in protocol/README.md, "Membership").
//!
//! - [`Device::admit`] writes the newcomer's member record, signed by this admin, and wraps
//!   the current DEK to it (not for a `remote` device).
//! - [`Device::remove_member`] signs a removal bounded at the removed device's last change
//!   this device holds, rotates to a new epoch wrapped to everyone else, and re-seals every
//!   token it can open under the new key, all as one change.
//! - [`Device::vouch`] (no unlock needed) raises a removal's bound over changes this device
//!   accepted before it learned of the removal, so every member keeps the same changes.
//! - [`Device::upkeep`] (unlocked) repairs the epoch invariant — rotating again if the current
//!   epoch reaches a removed device, wrapping it to a member that lacks it — and re-seals
//!   tokens still under older epochs.

use std::collections::BTreeMap;

use handoff_protocol::binding::{removal_statement, vouch_statement};
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DeviceId, EpochId};

use super::{Device, DeviceError, Unlocked, check_name, sign_member, signed_wrap};
use crate::doc::DocError;
use crate::doc::schema::Removal;
use crate::doc::schema::{Epoch, Member, Role, Token, VaultState};
use crate::entropy::unix_now;
use crate::vault::epoch::TokenBinding;
use crate::vault::{Dek, random_array};

/// The public keys a joining device presents during pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joiner {
    pub name: String,
    pub role: Role,
    pub identity_pub: [u8; 32],
    pub mailbox_pub: [u8; 32],
    pub vault_pub: [u8; 32],
}

/// What a removal did.
#[derive(Debug)]
pub struct Removed {
    pub member: Member,
    /// Tokens the removed device could read: still known to it, to rotate at the vendor.
    pub exposed: Vec<Token>,
    /// The new epoch every remaining member now uses.
    pub epoch: EpochId,
}

/// What an upkeep pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    pub rotated: bool,
    pub wrapped: usize,
    pub resealed: usize,
    /// Records from before signatures (schema 1) this admin vouched for by signing them.
    pub resigned: usize,
}

impl Upkeep {
    pub fn changed(&self) -> bool {
        self.rotated || self.wrapped > 0 || self.resealed > 0 || self.resigned > 0
    }
}

impl Device {
    pub(super) fn require_admin(&self, state: &VaultState) -> Result<(), DeviceError> {
        match state.members.get(&self.record.device_id) {
            Some(m) if m.is_active() && m.role == Role::Admin => Ok(()),
            _ => Err(DeviceError::InvalidInput(
                "only an admin device can add or remove devices".into(),
            )),
        }
    }

    /// The member `query` names, if this device may remove it: this device is an admin, and
    /// the member is another device, still active.
    pub fn removable<'s>(
        &self,
        state: &'s VaultState,
        query: &str,
    ) -> Result<&'s Member, DeviceError> {
        self.require_admin(state)?;
        let member = self.find_member(state, query)?;
        if member.device == self.record.device_id {
            return Err(DeviceError::InvalidInput(
                "a device cannot remove itself; remove it from another admin device".into(),
            ));
        }
        if !member.is_active() {
            return Err(DeviceError::InvalidInput(format!(
                "'{}' is already removed",
                member.name
            )));
        }
        Ok(member)
    }

    /// Finds a member by name or device id prefix (8+ hex digits).
    pub fn find_member<'s>(
        &self,
        state: &'s VaultState,
        query: &str,
    ) -> Result<&'s Member, DeviceError> {
        let q = query.to_ascii_lowercase();
        let by_id = q.len() >= 8 && q.chars().all(|c| c.is_ascii_hexdigit());
        let found: Vec<&Member> = state
            .members
            .values()
            .filter(|m| m.name == query || (by_id && m.device.to_hex().starts_with(&q)))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(DeviceError::InvalidInput(format!(
                "no device named '{query}' (see `handoff peer list`)"
            ))),
            _ => Err(DeviceError::InvalidInput(format!(
                "several devices are named '{query}'; give its device id instead"
            ))),
        }
    }

    /// Admits a paired device: its signed member record, and (unless `remote`) the current DEK
    /// wrapped to it. Returns the record written.
    pub fn admit(&mut self, key: &Unlocked, joiner: &Joiner) -> Result<Member, DeviceError> {
        check_name(&joiner.name, "the device name")?;
        let state = self.state()?;
        self.require_admin(&state)?;
        let device = crate::vault::device_id_for(&joiner.identity_pub);
        if state.members.contains_key(&device) {
            return Err(DeviceError::InvalidInput(
                "that device is already a member of this vault (or was removed from it)".into(),
            ));
        }
        let me = self.record.device_id.to_hex();
        let mut member = Member::from_public_keys(
            [joiner.identity_pub, joiner.mailbox_pub, joiner.vault_pub],
            &joiner.name,
            joiner.role,
            &me,
            unix_now(),
        );
        sign_member(&mut member, &state.info.id, &me, |m| self.keys.sign(m));
        self.doc.put_member(&member)?;
        if member.receives_dek() {
            let epoch = current(&state)?;
            let dek = self.dek(&state, &epoch.id, key)?;
            let wrap = self.sign_wrap(
                &dek,
                &state,
                epoch,
                Recipient::Device(device),
                &member.vault_pub,
            )?;
            self.doc
                .put_wrap(&epoch.id, &Recipient::Device(device), &wrap)?;
        }
        self.doc.audit(
            &self.record.device_id,
            "member.add",
            &device.to_hex(),
            |m| self.keys.sign(m),
        )?;
        self.doc.commit("member.add", |m| self.keys.sign(m));
        self.persist()?;
        Ok(member)
    }

    /// Removes a member: signed removal, new epoch to the remaining members, every token this
    /// device can open re-sealed under it.
    pub fn remove_member(&mut self, key: &Unlocked, query: &str) -> Result<Removed, DeviceError> {
        let state = self.state()?;
        let mut member = self.removable(&state, query)?.clone();
        let exposed: Vec<Token> = if member.receives_dek() {
            state.live_tokens().cloned().collect()
        } else {
            Vec::new()
        };
        let after_seq = self.doc.last_seq(&member.actor);
        member
            .removals
            .push(self.sign_removal(&state, &member.device, after_seq));
        self.doc.put_member(&member)?;
        // Rotate as if the removal were already read: the new epoch excludes the device.
        let mut after = (*state).clone();
        after.members.insert(member.device, member.clone());
        let (epoch, resealed) = self.rotate(key, &after)?;
        // The removed device knew how members find each other on a LAN: no longer.
        self.doc.set_discovery_secret(&random_array()?)?;
        self.doc.audit(
            &self.record.device_id,
            "member.remove",
            &member.device.to_hex(),
            |m| self.keys.sign(m),
        )?;
        self.doc.commit("member.remove", |m| self.keys.sign(m));
        self.persist()?;
        tracing::info!(resealed, "removed a member and rotated the vault key");
        Ok(Removed {
            member,
            exposed,
            epoch,
        })
    }

    fn sign_removal(&self, state: &VaultState, device: &DeviceId, after_seq: u64) -> Removal {
        self.sign_entry(state, device, after_seq, false)
    }

    /// This device's entry under `device`'s removals: a removal, or with `vouch` a vouch for
    /// the changes it holds from `device` up to `after_seq`.
    fn sign_entry(
        &self,
        state: &VaultState,
        device: &DeviceId,
        after_seq: u64,
        vouch: bool,
    ) -> Removal {
        let by = self.record.device_id.to_hex();
        let at = unix_now();
        let statement = if vouch {
            vouch_statement
        } else {
            removal_statement
        };
        let sig = self
            .keys
            .sign(&statement(&state.info.id, device, &by, at, after_seq))
            .to_vec();
        Removal {
            by,
            at,
            after_seq,
            sig,
            vouch,
        }
    }

    /// Vouches for the changes this device holds from members its document shows removed,
    /// past their bound (taken before it learned of the removal). Needs no unlock. Returns
    /// whether it wrote anything.
    pub fn vouch(&mut self) -> Result<bool, DeviceError> {
        let state = self.state()?;
        let owed: Vec<(DeviceId, u64)> = state
            .members
            .values()
            .filter_map(|m| {
                // Only removed members have a bound; finding what is held reads every change.
                let bound = m.write_bound()?;
                let held = self.doc.last_seq(&m.actor);
                (held > bound).then_some((m.device, held))
            })
            .collect();
        self.vouch_for(&owed)
    }

    /// Signs this device's vouch for each `(member, last sequence number held)`: from
    /// [`vouch`](Self::vouch), or from a document this device refused because it lacked them
    /// ([`DocError::ForeignAuthor`]). There the member may
    /// not be removed in this document yet; the vouch does nothing here until a removal does,
    /// and lets the side that removed it take this document. A removal this device signed
    /// stays a removal, re-signed with the higher bound. Needs no unlock; returns whether it
    /// wrote anything.
    fn vouch_for(&mut self, owed: &[(DeviceId, u64)]) -> Result<bool, DeviceError> {
        let state = self.state()?;
        let me = self.record.device_id;
        if !state.members.get(&me).is_some_and(Member::is_active) {
            return Ok(false);
        }
        let mine = me.to_hex();
        let mut wrote = false;
        for &(device, held) in owed {
            let Some(member) = state.members.get(&device).filter(|_| device != me) else {
                continue;
            };
            // As written here, not as it counts: until a removal decides, this document's
            // state shows no entries at all, and a peer's document may have dropped ours.
            let own = self.doc.removal_entry(&device, &mine);
            if own.is_some_and(|(bound, _)| bound >= held) {
                continue;
            }
            let vouch = own.is_none_or(|(_, vouch)| vouch);
            let entry = self.sign_entry(&state, &member.device, held, vouch);
            self.doc.put_removal(&device, &entry)?;
            wrote = true;
        }
        if wrote {
            self.doc.commit("member.vouch", |m| self.keys.sign(m));
            self.persist()?;
        }
        Ok(wrote)
    }

    /// After refusing an active member's document for changes by a removed member: vouches
    /// for what this device holds of the members it shows removed, so that its own document
    /// becomes one the other side can take (and then the refused one becomes acceptable too).
    /// A failure here is logged; the refusal stands either way.
    pub(super) fn vouch_for_refused(&mut self, refusal: &DocError) {
        let DocError::ForeignAuthor { owed, .. } = refusal else {
            return;
        };
        if owed.is_empty() {
            return;
        }
        if let Err(e) = self.vouch_for(owed) {
            tracing::warn!(error = %e, "could not vouch after refusing a document");
        }
    }

    /// Repairs the epoch invariant and re-seals tokens under older epochs. Needs the unlocked
    /// key; what this device may not do (an epoch change when it is not an admin) it leaves.
    pub fn upkeep(&mut self, key: &Unlocked) -> Result<Upkeep, DeviceError> {
        let state = self.state()?;
        let mut done = Upkeep::default();
        let admin = self.require_admin(&state).is_ok();
        let epoch = current(&state)?.clone();
        let reaches_outsider = state.reaches_outsider(&epoch);
        if admin && reaches_outsider {
            let (_, resealed) = self.rotate(key, &state)?;
            done.rotated = true;
            done.resealed = resealed;
        } else {
            // An admin that cannot open the current epoch itself (admitted concurrently with
            // the rotation) leaves the wrapping to one that can.
            let current_dek = self.dek(&state, &epoch.id, key).ok();
            if admin && let Some(dek) = &current_dek {
                for (recipient, public) in recipients(&state) {
                    if !epoch.wraps.contains_key(&recipient) {
                        let wrap = self.sign_wrap(dek, &state, &epoch, recipient, &public)?;
                        self.doc.put_wrap(&epoch.id, &recipient, &wrap)?;
                        done.wrapped += 1;
                    }
                }
            }
            // Never re-seal into an epoch a removed device may hold (the current one moved
            // back to it when the admins of a newer one were removed): an admin rotates first.
            if let Some(dek) = current_dek.as_ref().filter(|_| !reaches_outsider) {
                done.resealed = self.reseal_all(key, &state, &epoch, dek)?;
            }
        }
        if admin {
            done.resigned = self.resign_legacy(key)?;
        }
        if done.changed() {
            self.doc.commit("upkeep", |m| self.keys.sign(m));
            self.persist()?;
        }
        Ok(done)
    }

    /// Migrates a document from before signatures: signs, as this admin, every unsigned token
    /// version it can vouch for (its secret opens, or it is a deletion mark) and every unsigned
    /// default, then marks the document as the current schema. A token it cannot open stays
    /// unverified until someone adds it again. Returns how many records it signed. Not
    /// committed.
    fn resign_legacy(&mut self, key: &Unlocked) -> Result<usize, DeviceError> {
        let state = self.state()?;
        let mut count = 0;
        // Once: a vault already in the current schema holds no unsigned record this device
        // should vouch for (one left over stays unverified; one from elsewhere is suspect).
        if state.schema >= crate::doc::schema::SCHEMA_VERSION {
            return Ok(0);
        }
        let legacy: Vec<Token> = state
            .tokens
            .values()
            .filter(|t| !t.verified)
            .cloned()
            .collect();
        for mut token in legacy {
            // A deletion mark is not re-signed: nothing shows it, and nothing can vouch for it.
            let opens = match &token.ciphertext {
                None => false,
                Some(sealed) => self.dek(&state, &token.epoch, key).is_ok_and(|dek| {
                    let binding = TokenBinding {
                        vault: &state.info.id,
                        token: &token.id,
                        epoch: &token.epoch,
                        service: token.service.as_str(),
                    };
                    dek.open_token(binding, sealed).is_ok()
                }),
            };
            if opens {
                self.write_token(&state, &mut token)?;
                count += 1;
            }
        }
        for (service, token) in &state.defaults {
            if state.default_versions.get(service.as_str()) == Some(&0) {
                self.write_default(&state, *service, Some(token))?;
                count += 1;
            }
        }
        self.doc.set_schema_current()?;
        Ok(count + 1)
    }

    /// Writes a new epoch (generation above every existing one) wrapped to every DEK-receiving
    /// active member and the recovery key, and re-seals the tokens under it. Not committed.
    fn rotate(
        &mut self,
        key: &Unlocked,
        state: &VaultState,
    ) -> Result<(EpochId, usize), DeviceError> {
        let generation = state
            .epochs
            .values()
            .map(|e| e.generation)
            .max()
            .unwrap_or(0)
            + 1;
        let mut epoch = Epoch {
            id: EpochId::from_bytes(random_array()?),
            generation,
            created_by: self.record.device_id.to_hex(),
            created_at: unix_now(),
            wraps: BTreeMap::new(),
            untrusted: Vec::new(),
            current_eligible: true,
        };
        let dek = Dek::generate()?;
        for (recipient, public) in recipients(state) {
            let wrap = self.sign_wrap(&dek, state, &epoch, recipient, &public)?;
            epoch.wraps.insert(recipient, wrap);
        }
        self.doc.put_epoch(&epoch)?;
        let resealed = self.reseal_all(key, state, &epoch, &dek)?;
        Ok((epoch.id, resealed))
    }

    /// Re-seals every live token not under `epoch` whose DEK this device can open.
    fn reseal_all(
        &mut self,
        key: &Unlocked,
        state: &VaultState,
        epoch: &Epoch,
        dek: &Dek,
    ) -> Result<usize, DeviceError> {
        let mut count = 0;
        for token in state.live_tokens().filter(|t| t.epoch != epoch.id) {
            let (Some(sealed), Ok(old)) = (&token.ciphertext, self.dek(state, &token.epoch, key))
            else {
                continue;
            };
            let binding = |epoch| TokenBinding {
                vault: &state.info.id,
                token: &token.id,
                epoch,
                service: token.service.as_str(),
            };
            let Ok(secret) = old.open_token(binding(&token.epoch), sealed) else {
                continue; // a damaged record stays as it is, visible to `token show`
            };
            let mut moved = token.clone();
            moved.epoch = epoch.id;
            moved.ciphertext =
                Some(dek.seal_token(binding(&epoch.id), crate::device::expose(&secret))?);
            self.write_token(state, &mut moved)?;
            count += 1;
        }
        Ok(count)
    }

    fn sign_wrap(
        &self,
        dek: &Dek,
        state: &VaultState,
        epoch: &Epoch,
        recipient: Recipient,
        public: &[u8; 32],
    ) -> Result<crate::vault::SignedWrap, DeviceError> {
        signed_wrap(
            dek,
            &state.info.id,
            epoch,
            recipient,
            public,
            &self.record.device_id.to_hex(),
            |m| self.keys.sign(m),
        )
    }
}

fn current(state: &VaultState) -> Result<&Epoch, DeviceError> {
    state
        .current_epoch()
        .ok_or(DeviceError::Inconsistent("the vault has no key epoch"))
}

/// Who the current epoch must be wrapped to: every active member that receives DEKs, and the
/// recovery key.
fn recipients(state: &VaultState) -> Vec<(Recipient, [u8; 32])> {
    state
        .members
        .values()
        .filter(|m| m.receives_dek())
        .map(|m| (Recipient::Device(m.device), m.vault_pub))
        .chain([(Recipient::Recovery, state.info.recovery_pub)])
        .collect()
}

/// A new device on an empty home, holding its keys while an admin admits it (pairing). The
/// home stays locked by it until [`PendingJoin::finish`] writes the device or it is dropped.
#[derive(Debug)]
pub struct PendingJoin {
    home: crate::home::Home,
    lock: crate::home::OwnerLock,
    keys: crate::vault::DeviceKeys,
    secret: crate::vault::VaultSecret,
    name: String,
    passphrase: zeroize::Zeroizing<Vec<u8>>,
    kdf: crate::vault::KdfParams,
}

impl PendingJoin {
    /// Claims an empty home and makes the new device's keys.
    pub fn prepare(
        home: crate::home::Home,
        new: &super::NewDevice<'_>,
    ) -> Result<Self, DeviceError> {
        let (lock, keys, secret) = super::claim_empty(&home, new)?;
        Ok(Self {
            home,
            lock,
            keys,
            secret,
            name: new.name.to_string(),
            passphrase: zeroize::Zeroizing::new(new.passphrase.to_vec()),
            kdf: new.kdf,
        })
    }

    pub fn device_id(&self) -> DeviceId {
        self.keys.device_id()
    }

    /// The identity secret, for the libp2p keypair the pairing connection uses.
    pub fn identity_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.keys.secrets().0
    }

    /// The mailbox secret, the static key of the pairing handshake.
    pub fn mailbox_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.keys.secrets().1
    }

    /// What this device presents to the admin admitting it.
    pub fn joiner(&self, role: Role) -> Joiner {
        Joiner {
            name: self.name.clone(),
            role,
            identity_pub: self.keys.identity_public(),
            mailbox_pub: self.keys.mailbox_public(),
            vault_pub: self.secret.public(),
        }
    }

    /// Writes the device from the document the admin sent, pinning `anchors` (received over
    /// the code-authenticated channel). The document must hold this device as an active
    /// member vouched for along the chain from those anchors.
    pub fn finish(
        self,
        document: &[u8],
        anchors: &crate::doc::TrustAnchors,
    ) -> Result<Device, DeviceError> {
        let me = self.keys.device_id();
        let doc = crate::doc::VaultDoc::load_parts(document, [], &me, Some(anchors))?;
        let state = doc.state()?;
        let admitted = state
            .members
            .get(&me)
            .is_some_and(|m| m.is_active() && m.identity_pub == self.keys.identity_public());
        if !admitted {
            return Err(DeviceError::InvalidInput(
                "the admin's document does not admit this device".into(),
            ));
        }
        let new = super::NewDevice {
            name: &self.name,
            passphrase: &self.passphrase,
            kdf: self.kdf,
        };
        Device::write_new(self.home, self.lock, doc, self.keys, &self.secret, &new)
    }
}
