//! The vault document: one Automerge document per vault, the single source of truth devices
//! sync (see ARCHITECTURE.md, "How an incoming sync message flows").
//!
//! [`VaultDoc`] is the only code that touches the Automerge API. Reads go through
//! [`VaultDoc::state`], which validates the whole document into a typed [`VaultState`]; writes
//! are typed methods followed by [`VaultDoc::commit`]. Changes from outside (an import, later a
//! peer) go through [`VaultDoc::ingest`]: applied to a fork, validated, kept whole or rejected
//! whole. The store persists what [`VaultDoc::take_unsaved`] hands it.
//!
//! # Layout
//! - [`schema`]: the typed records and their closed value sets.
//! - `read`: typed reads, which are also the validation.
//! - `trust`: what every outside change must pass.

mod chunks;
mod contain;
mod follow;
mod read;
mod records;
pub mod schema;
mod sync;
#[cfg(test)]
mod tests;
mod touched;
mod trust;
mod verified;
mod versions;
pub use verified::MAX_REMEMBERED as MAX_REMEMBERED_SIGNATURES;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue};
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DeviceId, EpochId, VaultId};

pub use schema::{
    AuditEntry, DefaultChoice, Epoch, Lease, Member, Relay, Role, Service, Token, TokenKind,
    TrustAnchors, UnknownName, VaultInfo, VaultState,
};

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::entropy::unix_now;
use crate::vault::SignedWrap;
use follow::Validated;
use trust::Next;

/// Errors of the document layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    #[error("the vault document is damaged: {0}")]
    Damaged(String),
    #[error("document field '{path}' {problem}")]
    Schema { path: String, problem: &'static str },
    #[error("the document uses schema version {0}, which this build of handoff does not know")]
    UnsupportedSchema(u64),
    #[error("the document is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("that document belongs to vault {found}, not this vault ({expected})")]
    WrongVault { expected: VaultId, found: VaultId },
    #[error(
        "the document changes the vault's founder or recovery key, which never change: refusing it"
    )]
    AnchorsMoved,
    #[error("the vault's founder is not vouched for by its recovery key: the document was altered")]
    UnvouchedFounder,
    #[error("the document would undo trusted state ({0}): refusing it")]
    Regression(&'static str),
    /// `owed`: the removed members whose changes this device holds past the bound the refused
    /// document gives them, with the last sequence number held. Vouching for those (see
    /// `Device::vouch_for_refused`) is what lets the other side take this document.
    #[error("a change was written by {actor}, which is not a member allowed to write")]
    ForeignAuthor {
        actor: String,
        owed: Vec<(DeviceId, u64)>,
    },
    /// A change wrote what its author's role does not allow, or a record without a valid
    /// signature by its writer (DESIGN §3, "Who may write what").
    #[error("a change in the document is not allowed: {0}; refusing it")]
    Unauthorized(&'static str),
    /// Changes that depend on changes neither they nor this document hold: not taken until
    /// those come.
    #[error("its changes depend on changes this device does not hold yet")]
    Waiting,
    #[error("document operation failed: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// A sync message failed a check while it left out changes its sender holds (a change
    /// the sender's Bloom filter wrongly took us to have, whose dependents came without it):
    /// judged alone it may be refused for what the missing changes would allow. `refused` is
    /// what the check said.
    #[error("{refused} (in a sync message that left out changes its sender holds)")]
    Incomplete { refused: Box<DocError> },
}

/// The vault document, the anchors it is checked against, and what of it has been persisted.
#[derive(Debug)]
pub struct VaultDoc {
    doc: AutoCommit,
    anchors: TrustAnchors,
    saved_heads: Vec<ChangeHash>,
    /// The validated state of the document as committed, kept up to date by each commit and
    /// each validated fork that replaces the document (reading only what their changes
    /// touched); empty until first read, and after a change it could not follow that way.
    valid: OnceLock<Validated>,
    /// The state with writes pending, not yet committed: read whole, once per write (each
    /// write method starts with [`Self::touched`]).
    pending: OnceLock<Arc<VaultState>>,
    /// Each actor's highest op counter in the committed document (see `trust::judge`), found
    /// when first needed.
    tops: Option<trust::Tops>,
    /// The signatures already checked, shared with the forks incoming changes are tried on.
    verified: std::sync::Arc<verified::Verified>,
    /// How many more incoming messages go to forks, after a refusal taken back in place.
    forks_owed: u32,
    /// Refused changes could not be taken back: the document must be loaded again.
    lost: bool,
}

/// The Automerge actor a device writes with: its device id.
pub fn actor_for(device: &DeviceId) -> ActorId {
    ActorId::from(device.as_bytes().as_slice())
}

impl VaultDoc {
    /// A new document holding the vault, its founding member and first epoch.
    pub fn create(
        info: &VaultInfo,
        founder: &Member,
        epoch: &Epoch,
        sign: impl Fn(&[u8]) -> [u8; 64],
    ) -> Result<Self, DocError> {
        let mut doc = AutoCommit::new().with_actor(actor_for(&founder.device));
        doc.put(automerge::ROOT, "schema", schema::SCHEMA_VERSION)?;
        let vault = doc.put_object(automerge::ROOT, "vault", ObjType::Map)?;
        doc.put(&vault, "id", bytes(info.id.as_bytes()))?;
        doc.put(&vault, "name", info.name.as_str())?;
        doc.put(&vault, "created_at", info.created_at)?;
        doc.put(&vault, "founder", info.founder.to_hex())?;
        doc.put(&vault, "discovery_secret", bytes(&info.discovery_secret))?;
        doc.put(&vault, "recovery_pub", bytes(&info.recovery_pub))?;
        doc.put(&vault, "recovery_sign_pub", bytes(&info.recovery_sign_pub))?;
        doc.put(&vault, "genesis_sig", bytes(&info.genesis_sig))?;
        for key in ["members", "epochs", "tokens", "defaults", "relays"] {
            doc.put_object(automerge::ROOT, key, ObjType::Map)?;
        }
        doc.put_object(automerge::ROOT, "audit", ObjType::List)?;
        let mut this = Self {
            doc,
            anchors: TrustAnchors::of(info),
            saved_heads: Vec::new(),
            valid: OnceLock::new(),
            pending: OnceLock::new(),
            tops: None,
            verified: Default::default(),
            forks_owed: 0,
            lost: false,
        };
        this.put_member(founder)?;
        this.put_epoch(epoch)?;
        this.commit("create vault", sign);
        Ok(this)
    }

    /// Loads a document the user chose to trust (an export to recover from), taking its trust
    /// anchors from the document itself; writes as `device` from now on.
    pub fn load_trusted(data: &[u8], device: &DeviceId) -> Result<Self, DocError> {
        Self::load_parts(data, [], device, None)
    }

    /// As [`Self::load_parts`], trusting the signatures whose digests `known` holds (what
    /// [`Self::take_verified`] gave out earlier, saved by the store).
    pub fn load_known<'a>(
        snapshot: &[u8],
        changes: impl IntoIterator<Item = &'a [u8]>,
        device: &DeviceId,
        anchors: Option<&TrustAnchors>,
        known: impl IntoIterator<Item = [u8; 32]>,
    ) -> Result<Self, DocError> {
        let verified = std::sync::Arc::new(verified::Verified::with(known));
        Self::load_with(snapshot, changes, device, anchors, verified)
    }

    /// The digests of the signatures checked since the last call, for the store to keep.
    pub fn take_verified(&self) -> Vec<[u8; 32]> {
        self.verified.take_unsaved()
    }

    /// Loads a snapshot plus incremental change chunks, as the store keeps them, checked
    /// against the pinned `anchors` (or the document's own, if `None`), validated once.
    pub fn load_parts<'a>(
        snapshot: &[u8],
        changes: impl IntoIterator<Item = &'a [u8]>,
        device: &DeviceId,
        anchors: Option<&TrustAnchors>,
    ) -> Result<Self, DocError> {
        Self::load_with(snapshot, changes, device, anchors, Default::default())
    }

    fn load_with<'a>(
        snapshot: &[u8],
        changes: impl IntoIterator<Item = &'a [u8]>,
        device: &DeviceId,
        anchors: Option<&TrustAnchors>,
        verified: std::sync::Arc<verified::Verified>,
    ) -> Result<Self, DocError> {
        check_size(snapshot.len())?;
        let changes: Vec<&[u8]> = changes.into_iter().collect();
        chunks::check_framing(snapshot)?;
        for chunk in &changes {
            chunks::check_framing(chunk)?;
        }
        let (mut doc, state, audit, misspelled) = contain::contained(|| {
            let mut doc = AutoCommit::load(snapshot)
                .map_err(|e| DocError::Damaged(e.to_string()))?
                .with_actor(actor_for(device));
            // One call for the whole tail: Automerge applies its changes as one batch, where a
            // call per chunk would pay for a pass over the whole document each time.
            if !changes.is_empty() {
                doc.load_incremental(&changes.concat())
                    .map_err(|e| DocError::Damaged(e.to_string()))?;
            }
            let (state, audit, misspelled) = read::read_whole(&doc, anchors, &verified)?;
            Ok((doc, state, audit, misspelled))
        })?;
        let saved_heads = doc.get_heads();
        Ok(Self {
            doc,
            anchors: TrustAnchors::of(&state.info),
            saved_heads,
            valid: OnceLock::from(Validated {
                state: Arc::new(state),
                audit,
                misspelled,
            }),
            pending: OnceLock::new(),
            tops: None,
            verified,
            forks_owed: 0,
            lost: false,
        })
    }

    /// Whether refused changes could not be taken back (see [`follow`]): the document must not
    /// be used, and is loaded again from what was saved.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Refuses every read, write, persist and message of a lost document (what checks
    /// `state` first, as every write does, is refused with it).
    fn usable(&self) -> Result<(), DocError> {
        if self.lost {
            return Err(DocError::Damaged(
                "refused changes could not be taken back; the vault must be loaded again".into(),
            ));
        }
        Ok(())
    }

    /// The anchors this document is checked against.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// The whole document, typed and validated. Shared, not copied: what a write changes is
    /// updated in place once no reader holds the state any more.
    pub fn state(&self) -> Result<Arc<VaultState>, DocError> {
        self.usable()?;
        if self.doc.pending_ops() > 0 {
            if let Some(state) = self.pending.get() {
                return Ok(state.clone());
            }
            let state = Arc::new(read::read_state(
                &self.doc,
                Some(&self.anchors),
                &self.verified,
            )?);
            return Ok(self.pending.get_or_init(|| state).clone());
        }
        Ok(self.validated()?.state.clone())
    }

    /// The validated state of the committed document, read whole if it is not known yet.
    fn validated(&self) -> Result<&Validated, DocError> {
        if let Some(valid) = self.valid.get() {
            return Ok(valid);
        }
        let (state, audit, misspelled) =
            read::read_whole(&self.doc, Some(&self.anchors), &self.verified)?;
        Ok(self.valid.get_or_init(|| Validated {
            state: Arc::new(state),
            audit,
            misspelled,
        }))
    }

    /// The whole document validated from scratch, past the state kept up to date: what load,
    /// import and recovery cost (the vault bench times it beside a write at several sizes).
    pub fn rebuild_state(&self) -> Result<VaultState, DocError> {
        read::read_state(&self.doc, Some(&self.anchors), &self.verified)
    }

    /// Forgets the state read with writes pending: the document is about to change.
    fn touched(&mut self) {
        self.pending.take();
    }

    /// The full document in the standard Automerge binary format.
    pub fn save(&mut self) -> Vec<u8> {
        self.settle();
        self.doc.save()
    }

    /// Changes made since the last call (or load), for the store to append; `None` if none.
    pub fn take_unsaved(&mut self) -> Option<Vec<u8>> {
        if self.lost {
            return None;
        }
        self.settle();
        let heads = self.doc.get_heads();
        if heads == self.saved_heads {
            return None;
        }
        let chunk = self.doc.save_after(&self.saved_heads);
        self.saved_heads = heads;
        Some(chunk)
    }

    /// Marks everything as persisted (after the store wrote a full snapshot).
    pub fn mark_saved(&mut self) {
        self.settle();
        self.saved_heads = self.doc.get_heads();
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.settle();
        self.doc.get_heads()
    }

    /// Applies outside changes (a full document or change chunks) to a fork, validates the
    /// fork against this device's pinned anchors, and keeps it only if the result is a valid
    /// document of this same vault whose new changes all name verified members as authors
    /// (within a removed member's last accepted sequence number). Returns how many changes were
    /// new. Actor ids are claims, not signatures: what an injected change cannot do is make a
    /// member, a wrap or an anchor trusted, because those are checked by signature.
    pub fn ingest(&mut self, data: &[u8]) -> Result<usize, DocError> {
        Ok(self.ingest_if(data, |_| true)?.unwrap_or(0))
    }

    /// As [`ingest`](Self::ingest), but the result is kept only if `admit` accepts the
    /// validated state it leads to; `None` when it did not (the document is unchanged). A
    /// relayed envelope's sender must be a member of the vault its changes make, which may
    /// be one that admits the sender.
    pub fn ingest_if(
        &mut self,
        data: &[u8],
        admit: impl FnOnce(&BTreeMap<DeviceId, Member>) -> bool,
    ) -> Result<Option<usize>, DocError> {
        self.usable()?;
        self.settle();
        check_size(data.len())?;
        chunks::check_framing(data)?;
        let (trial, bench) = self.trial()?;
        let (heads, waiting, mut fork) = (trial.heads, trial.waiting, trial.fork);
        let before = &heads;
        // Parse and validate inside the containment; the fork is dropped on any failure.
        let (fork, judged, whole) = contain::contained(move || {
            fork.load_incremental(data)
                .map_err(|e| DocError::Damaged(e.to_string()))?;
            // Changes waiting for one this document lacks are not kept: unchecked, they would
            // be applied with it later, and one crafted among them could block it for ever.
            if fork.get_missing_deps(&[]).len() > waiting {
                return Err(DocError::Waiting);
            }
            let (judged, whole) = Self::judge_fork(&mut fork, before, &bench);
            Ok((fork, judged, whole))
        })?;
        self.cross_check(&judged, whole.as_ref());
        let (count, next) = judged?;
        let members = match &next {
            Next::Whole(state, ..) => &state.members,
            Next::Delta(_) => &self.validated()?.state.members,
        };
        if !admit(members) {
            return Ok(None);
        }
        self.doc = fork;
        self.take_next(next);
        self.raise_tops(&heads);
        Ok(Some(count))
    }

    /// The entry `by` wrote under `member`'s removals, as this document holds it whether or not
    /// it counts here: its bound, and whether it is a vouch. `None` if there is none (or it is
    /// not one map with a number in it).
    pub fn removal_entry(&self, member: &DeviceId, by: &str) -> Option<(u64, bool)> {
        let entry = self
            .map(&["members", &member.to_hex(), "removals", by])
            .ok()?;
        let scalar = |key: &str| match self.doc.get(&entry, key).ok()? {
            Some((automerge::Value::Scalar(v), _)) => Some(v.into_owned()),
            _ => None,
        };
        let after_seq = match scalar("after_seq")? {
            ScalarValue::Uint(n) => n,
            ScalarValue::Int(n) => u64::try_from(n).ok()?,
            _ => return None,
        };
        let vouch = matches!(scalar("vouch"), Some(ScalarValue::Boolean(true)));
        Some((after_seq, vouch))
    }

    /// The highest change sequence number this document holds from `actor` (0 if none).
    pub fn last_seq(&mut self, actor: &[u8]) -> u64 {
        self.settle();
        self.doc
            .get_changes(&[])
            .iter()
            .filter(|c| c.actor_id().to_bytes() == actor)
            .map(|c| c.seq())
            .max()
            .unwrap_or(0)
    }

    /// Drops writes left pending by an operation that failed half way without rolling back,
    /// before anything would commit them implicitly (Automerge commits pending ops on a save,
    /// a sync or a look at the heads): a change made that way would carry no attestation, and
    /// every peer would refuse it and everything after it.
    fn settle(&mut self) {
        if self.doc.pending_ops() > 0 {
            tracing::warn!("dropped writes an operation left uncommitted");
            self.rollback();
        }
    }

    /// Drops writes not yet committed (an operation that failed half way): they never become
    /// a change.
    pub fn rollback(&mut self) {
        if self.doc.rollback() > 0 {
            self.touched();
        }
    }

    /// Commits pending writes as one change, and vouches for it with `sign` (this device's
    /// identity key): an attestation change right after it, which holds no op, depends on it
    /// alone and carries the signature as its message (`trust::check_attested`). A change no
    /// attestation by its actor's member vouches for is refused by every reader, so nobody
    /// writes under another member's actor id. Both are committed here; nothing else commits.
    pub fn commit(&mut self, message: &str, sign: impl Fn(&[u8]) -> [u8; 64]) {
        self.touched();
        let Some(hash) = self.doc.commit_with(
            CommitOptions::default()
                .with_message(message.to_string())
                .with_time(unix_now()),
        ) else {
            return;
        };
        let Some(change) = self.doc.get_change_by_hash(&hash) else {
            self.valid.take();
            return;
        };
        let attestation = trust::attestation(&self.anchors.vault, &change, sign);
        if let Err(e) = self.doc.apply_changes([attestation]) {
            // Only a bug can get here; the change stays unattested, and peers refuse it.
            tracing::error!(error = %e, "could not attest a change");
        }
        self.raise_top(&change);
        self.follow(&[change]);
    }

    /// The attestation `commit` makes for `change` (for tests that write changes by hand).
    pub fn attestation(
        vault: &VaultId,
        change: &automerge::Change,
        sign: impl Fn(&[u8]) -> [u8; 64],
    ) -> automerge::Change {
        trust::attestation(vault, change, sign)
    }

    fn map(&self, path: &[&str]) -> Result<ObjId, DocError> {
        let mut obj = automerge::ROOT;
        for key in path {
            obj = match self.doc.get(&obj, *key)? {
                Some((automerge::Value::Object(ObjType::Map), id)) => id,
                _ => {
                    return Err(DocError::Schema {
                        path: path.join("."),
                        problem: "is missing",
                    });
                }
            };
        }
        Ok(obj)
    }

    fn child_map(&mut self, parent: &ObjId, key: &str) -> Result<ObjId, DocError> {
        match self.doc.get(parent, key)? {
            Some((automerge::Value::Object(ObjType::Map), id)) => Ok(id),
            _ => Ok(self.doc.put_object(parent, key, ObjType::Map)?),
        }
    }

    /// Writes `value` unless the field already holds exactly it, so re-saving a record does
    /// not create needless concurrent-edit conflicts.
    fn put_changed(&mut self, obj: &ObjId, key: &str, value: ScalarValue) -> Result<(), DocError> {
        let current = self.doc.get_all(obj, key)?;
        let same = current.len() == 1 && current[0].0.as_scalar().is_some_and(|v| *v == value);
        if !same {
            self.doc.put(obj, key, value)?;
        }
        Ok(())
    }

    pub fn put_member(&mut self, m: &Member) -> Result<(), DocError> {
        self.touched();
        let members = self.map(&["members"])?;
        let obj = self.child_map(&members, &m.device.to_hex())?;
        self.put_changed(&obj, "name", m.name.as_str().into())?;
        self.put_changed(&obj, "role", m.role.as_str().into())?;
        self.put_changed(&obj, "identity_pub", bytes(&m.identity_pub))?;
        self.put_changed(&obj, "mailbox_pub", bytes(&m.mailbox_pub))?;
        self.put_changed(&obj, "vault_pub", bytes(&m.vault_pub))?;
        self.put_changed(&obj, "actor", bytes(&m.actor))?;
        self.put_changed(&obj, "added_by", m.added_by.as_str().into())?;
        self.put_changed(&obj, "added_at", m.added_at.into())?;
        self.put_changed(&obj, "sig", bytes(&m.sig))?;
        self.put_changed(&obj, "signer", m.signer.as_str().into())?;
        // Made with the record, by its one writer: two removers creating the map concurrently
        // would make two maps under one key, and one of them would hide the other's entry.
        let removals = self.child_map(&obj, "removals")?;
        for r in &m.removals {
            self.put_removal_in(&removals, r)?;
        }
        Ok(())
    }

    /// Sets a member record's `name`, and nothing else of it: what a member writes of its own.
    pub fn put_member_name(&mut self, member: &DeviceId, name: &str) -> Result<(), DocError> {
        self.touched();
        let record = self.map(&["members", &member.to_hex()])?;
        self.doc.put(&record, "name", name)?;
        Ok(())
    }

    /// Writes one signer's removal or vouch entry under `member`'s record, and nothing else of
    /// the record: what a member that is not an admin may write there.
    pub fn put_removal(&mut self, member: &DeviceId, r: &schema::Removal) -> Result<(), DocError> {
        self.touched();
        let record = self.map(&["members", &member.to_hex()])?;
        let removals = self.child_map(&record, "removals")?;
        self.put_removal_in(&removals, r)
    }

    fn put_removal_in(&mut self, removals: &ObjId, r: &schema::Removal) -> Result<(), DocError> {
        let entry = self.child_map(removals, &r.by)?;
        self.put_changed(&entry, "at", r.at.into())?;
        self.put_changed(&entry, "after_seq", r.after_seq.into())?;
        self.put_changed(&entry, "sig", bytes(&r.sig))?;
        if r.vouch || self.doc.get(&entry, "vouch")?.is_some() {
            self.put_changed(&entry, "vouch", r.vouch.into())?;
        }
        Ok(())
    }

    pub fn put_epoch(&mut self, e: &Epoch) -> Result<(), DocError> {
        self.touched();
        let epochs = self.map(&["epochs"])?;
        let obj = self.child_map(&epochs, &e.id.to_hex())?;
        self.put_changed(&obj, "generation", e.generation.into())?;
        self.put_changed(&obj, "created_by", e.created_by.as_str().into())?;
        self.put_changed(&obj, "created_at", e.created_at.into())?;
        self.child_map(&obj, "wraps")?;
        for (recipient, wrap) in &e.wraps {
            self.put_wrap(&e.id, recipient, wrap)?;
        }
        Ok(())
    }

    pub fn put_wrap(
        &mut self,
        epoch: &EpochId,
        to: &Recipient,
        w: &SignedWrap,
    ) -> Result<(), DocError> {
        self.touched();
        let wraps = self.map(&["epochs", &epoch.to_hex(), "wraps"])?;
        let obj = self.child_map(&wraps, &to.to_string())?;
        self.put_changed(&obj, "wrap", bytes(&w.wrap))?;
        self.put_changed(&obj, "sig", bytes(&w.sig))?;
        self.put_changed(&obj, "signer", w.signer.as_str().into())?;
        Ok(())
    }

    /// Replaces the secret members derive their LAN discovery tags from (after a removal, so
    /// the removed device no longer recognises the others on a network).
    pub fn set_discovery_secret(&mut self, secret: &[u8; 32]) -> Result<(), DocError> {
        self.touched();
        let vault = self.map(&["vault"])?;
        self.doc.put(&vault, "discovery_secret", bytes(secret))?;
        Ok(())
    }

    /// Writes a relay entry (the caller signed it).
    pub fn put_relay(&mut self, r: &schema::Relay) -> Result<(), DocError> {
        self.touched();
        let relays = self.map(&["relays"])?;
        let obj = self.child_map(&relays, &r.id)?;
        self.put_changed(&obj, "addrs", r.addrs.as_str().into())?;
        if let Some(token) = &r.access_token {
            self.put_changed(&obj, "access_token", bytes(token))?;
        }
        self.put_changed(&obj, "added_by", r.added_by.as_str().into())?;
        self.put_changed(&obj, "added_at", r.added_at.into())?;
        self.put_changed(&obj, "sig", bytes(&r.sig))?;
        Ok(())
    }

    /// Removes a relay entry.
    pub fn remove_relay(&mut self, id: &str) -> Result<(), DocError> {
        self.touched();
        let relays = self.map(&["relays"])?;
        if self.doc.get(&relays, id)?.is_some() {
            self.doc.delete(&relays, id)?;
        }
        Ok(())
    }

    /// The raw bytes of every change not in the history of `have` (heads this document may
    /// or may not hold; unknown ones are ignored), oldest first.
    pub fn changes_since(&mut self, have: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.settle();
        let known: Vec<ChangeHash> = have
            .iter()
            .filter(|h| self.doc.get_change_by_hash(h).is_some())
            .copied()
            .collect();
        self.doc
            .get_changes(&known)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// The heads of the change set in `data` (change chunks): the changes no other change in
    /// it depends on. Whoever sent `data` holds at least these.
    pub fn heads_of_changes(data: &[u8]) -> Result<Vec<ChangeHash>, DocError> {
        let (hashes, deps) = change_links(data)?;
        Ok(hashes.into_iter().filter(|h| !deps.contains(h)).collect())
    }

    /// Whether some change in `data` (change chunks) depends on a change that is neither in
    /// `data` nor applied here.
    pub fn lacks_deps_of(&mut self, data: &[u8]) -> Result<bool, DocError> {
        self.settle();
        let (hashes, deps) = change_links(data)?;
        let inside: std::collections::HashSet<ChangeHash> = hashes.into_iter().collect();
        let outside: Vec<ChangeHash> = deps.into_iter().filter(|d| !inside.contains(d)).collect();
        Ok(!self.holds(&outside))
    }

    /// Whether every one of `changes` is applied here (not unknown, nor queued waiting for
    /// a dependency this document lacks).
    pub fn holds(&mut self, changes: &[ChangeHash]) -> bool {
        self.settle();
        changes
            .iter()
            .all(|h| self.doc.get_change_by_hash(h).is_some())
    }
}

/// The hashes of the changes in `data` (change chunks), in order, and every change they name
/// as a dependency.
fn change_links(
    data: &[u8],
) -> Result<(Vec<ChangeHash>, std::collections::HashSet<ChangeHash>), DocError> {
    let chunks = chunks::split(data)?;
    contain::contained(|| {
        let mut hashes = Vec::new();
        let mut deps = std::collections::HashSet::new();
        for (kind, chunk) in chunks {
            if !chunks::is_change(kind) {
                continue;
            }
            let change =
                automerge::Change::try_from(chunk).map_err(|e| DocError::Damaged(e.to_string()))?;
            deps.extend(change.deps().iter().copied());
            hashes.push(change.hash());
        }
        Ok((hashes, deps))
    })
}

fn fork_vault_id(doc: &AutoCommit) -> Option<VaultId> {
    let (_, vault) = doc.get(automerge::ROOT, "vault").ok()??;
    let (id, _) = doc.get(&vault, "id").ok()??;
    VaultId::from_slice(id.as_bytes()?).ok()
}

fn bytes(b: &[u8]) -> ScalarValue {
    ScalarValue::Bytes(b.to_vec())
}

fn check_size(len: usize) -> Result<(), DocError> {
    if len > schema::limits::DOC_BYTES_MAX {
        return Err(DocError::TooLarge {
            len,
            max: schema::limits::DOC_BYTES_MAX,
        });
    }
    Ok(())
}
