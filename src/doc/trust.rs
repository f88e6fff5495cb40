//! What every outside change must pass before it is kept: the fork it makes is one valid
//! document of this vault, every new change names a verified member within its removal bound,
//! and nothing trusted is taken away. A refusal for changes by a removed member says what this
//! device could vouch for (see ARCHITECTURE.md, "How an incoming sync message flows").

use std::collections::HashMap;

use automerge::{AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, Value};
use handoff_protocol::DeviceId;
use handoff_protocol::dek_wrap::Recipient;

use super::read::{self, AuditCache, Delta, Fields, Slot, Writers};
use super::schema::{self, Member, Role, TrustAnchors, VaultState};
use super::touched::{Before, Touched, touched_by};
use super::{DocError, fork_vault_id};

mod after;
use after::After;
pub(in crate::doc) use after::{Next, Tops};

/// Validates a fork that outside changes were applied to: one vault record, this vault, valid
/// against the pinned anchors, every new change named as written by a verified member (within a
/// removed member's bound). Returns how many changes are new since `before` (whose audit
/// entries `cache` holds; `current` is the document before the changes: the one the fork was
/// made from, or the fork itself as of `heads`), and the state the fork's changes lead to.
/// `tops` holds each actor's highest op counter before them. Changes that wrote only in
/// token records, defaults and audit entries are judged on those records alone, unless `whole`
/// asks for the whole document to be read.
pub(super) fn check_fork(
    fork: &mut AutoCommit,
    anchors: &TrustAnchors,
    verified: &super::verified::Verified,
    heads: &[ChangeHash],
    (current, before, cache): (Before<'_>, &VaultState, &AuditCache),
    tops: &Tops,
    whole: bool,
) -> Result<(usize, Next), DocError> {
    let ours = anchors.vault;
    if fork.get_all(automerge::ROOT, "vault")?.len() != 1 {
        return Err(DocError::Schema {
            path: "vault".into(),
            problem: "was written by two different vaults",
        });
    }
    let new_changes = fork.get_changes(heads);
    let touched = if whole {
        None
    } else {
        touched_by(fork, Some(current), &new_changes)
    };
    let next =
        if let Some(touched) = touched {
            let delta = Delta::read(fork, before, cache, &touched, verified)?;
            let after = After::Delta {
                before,
                delta: &delta,
                touched: &touched,
            };
            judge(fork, before, &after, &new_changes, tops, verified)?;
            Next::Delta(delta)
        } else {
            let (state, cache, misspelled) = read::read_whole(fork, Some(anchors), verified)
                .map_err(|e| match (e, fork_vault_id(fork)) {
                    (DocError::AnchorsMoved, Some(found)) if found != ours => {
                        DocError::WrongVault {
                            expected: ours,
                            found,
                        }
                    }
                    (other, _) => other,
                })?;
            check_no_regression(before, &state)?;
            judge(
                fork,
                before,
                &After::Whole(&state),
                &new_changes,
                tops,
                verified,
            )?;
            Next::Whole(Box::new(state), cache, misspelled)
        };
    Ok((new_changes.len(), next))
}

/// The checks on each new change and on what it wrote, against the state it leads to.
fn judge(
    fork: &mut AutoCommit,
    before: &VaultState,
    after: &After<'_>,
    new_changes: &[automerge::Change],
    tops: &Tops,
    verified: &super::verified::Verified,
) -> Result<(), DocError> {
    let state = after.base();
    let mut new_ops = NewOps::default();
    let mut batch_tops: HashMap<&[u8], u64> = HashMap::new();
    for change in new_changes {
        let author = state
            .members
            .values()
            .find(|m| m.actor == change.actor_id().to_bytes());
        // Removals are signed and can only be added (see check_no_regression), so the fork's
        // bound is one every reader that sees the same removals computes.
        let allowed =
            author.is_some_and(|m| m.write_bound().is_none_or(|bound| change.seq() <= bound));
        if !allowed {
            return Err(DocError::ForeignAuthor {
                actor: change.actor_id().to_hex_string(),
                owed: held_past_bounds(fork, state, new_changes),
            });
        }
        // An honest change's ops count on from the last op it saw: a change that starts
        // anywhere else could only have been crafted (one starting near the counter's limit
        // would stop every device from committing again).
        let after = change
            .deps()
            .iter()
            .filter_map(|d| fork.get_change_meta_by_hash(d).map(|c| c.max_op))
            .max()
            .unwrap_or(0);
        if change.start_op().get() != after.saturating_add(1) {
            return Err(refuse(
                "a change's op counter does not follow its dependencies",
            ));
        }
        // And from above every op its writer made before (its own earlier changes are among
        // what an honest change saw): a change that skips them could reuse their op ids.
        let actor = change.actor_id().to_bytes();
        let top = batch_tops.get(actor).or_else(|| tops.get(actor)).copied();
        if top.is_some_and(|top| change.start_op().get() <= top) {
            return Err(refuse(
                "a change's op counter does not follow its writer's earlier changes",
            ));
        }
        let top = batch_tops.entry(actor).or_default();
        *top = (*top).max(change.max_op());
        new_ops.add(change);
    }
    check_attested(state, before, new_changes, verified)?;
    check_writes(fork, before, after, &new_ops, verified)?;
    check_authority(fork, state, after.scope(), new_changes, &new_ops)
}

/// The attestation of `change`, which its writer signs with `sign` (see `VaultDoc::commit`):
/// the change after it in its actor's sequence, without ops, depending on it alone, with time
/// 0 and the signature (hex) as its message, so that it is the same bytes whoever builds it.
pub(super) fn attestation(
    vault: &handoff_protocol::VaultId,
    change: &automerge::Change,
    sign: impl Fn(&[u8]) -> [u8; 64],
) -> automerge::Change {
    let sig = sign(&handoff_protocol::binding::change_statement(
        vault,
        &change.hash().0,
    ));
    automerge::Change::from(automerge::ExpandedChange {
        operations: Vec::new(),
        actor_id: change.actor_id().clone(),
        hash: None,
        seq: change.seq() + 1,
        start_op: std::num::NonZeroU64::new(change.max_op() + 1)
            .unwrap_or(std::num::NonZeroU64::MIN),
        time: 0,
        message: Some(hex::encode(sig)),
        deps: vec![change.hash()],
        extra_bytes: Vec::new(),
        author: None,
    })
}

/// Every new change with ops must be vouched for by an attestation among the new changes,
/// signed by the member its actor names (and every change without ops must be such an
/// attestation), so that no change written under another member's actor id is taken. A vault
/// still in schema 1, written before attestations, is not held to it.
fn check_attested(
    state: &VaultState,
    before: &VaultState,
    new_changes: &[automerge::Change],
    verified: &super::verified::Verified,
) -> Result<(), DocError> {
    // Judged by the vault as it was: a change that sets the schema back cannot exempt itself.
    if before.schema < schema::SCHEMA_VERSION {
        return Ok(());
    }
    let mut attested = std::collections::HashSet::new();
    let by_hash: HashMap<ChangeHash, &automerge::Change> =
        new_changes.iter().map(|c| (c.hash(), c)).collect();
    for change in new_changes.iter().filter(|c| c.is_empty()) {
        let member = state
            .members
            .values()
            .find(|m| m.actor == change.actor_id().to_bytes());
        let sig = change.message().and_then(|m| hex::decode(m).ok());
        let attests = match (change.deps(), member, sig) {
            ([dep], Some(member), Some(sig)) if change.timestamp() == 0 => {
                let statement = handoff_protocol::binding::change_statement(&state.info.id, &dep.0);
                // The change it vouches for comes with it, by the same actor, just before it:
                // an old attestation copied under another change's header vouches for nothing.
                let own = by_hash.get(dep).is_some_and(|d| {
                    !d.is_empty()
                        && d.actor_id() == change.actor_id()
                        && d.seq() + 1 == change.seq()
                });
                (own && verified.check(&member.identity_pub, &statement, &sig)).then_some(*dep)
            }
            _ => None,
        };
        match attests {
            Some(dep) => {
                attested.insert(dep);
            }
            None => {
                return Err(refuse(
                    "a change is not vouched for by the member that wrote it",
                ));
            }
        }
    }
    if new_changes
        .iter()
        .any(|c| !c.is_empty() && !attested.contains(&c.hash()))
    {
        return Err(refuse(
            "a change is not vouched for by the member that wrote it",
        ));
    }
    Ok(())
}

/// The ops the new changes made, as the ranges of op counters each actor used.
#[derive(Default)]
struct NewOps(HashMap<Vec<u8>, Vec<(u64, u64)>>);

impl NewOps {
    fn add(&mut self, change: &automerge::Change) {
        let range = (change.start_op().get(), change.max_op());
        self.0
            .entry(change.actor_id().to_bytes().to_vec())
            .or_default()
            .push(range);
    }

    /// Whether the op `id` names (an object's creation, a value's write) is a new one.
    fn contains(&self, id: &ObjId) -> bool {
        let ObjId::Id(counter, actor, _) = id else {
            return false;
        };
        self.0.get(actor.to_bytes()).is_some_and(|ranges| {
            ranges
                .iter()
                .any(|(start, end)| (*start..=*end).contains(counter))
        })
    }
}

fn refuse(problem: &'static str) -> DocError {
    DocError::Unauthorized(problem)
}

/// Token versions, defaults and audit entries that new changes wrote must be signed by a member
/// whose role allows the write, under its own actor (`read` checks each signature and actor);
/// none is edited in place or taken away. The state alone cannot show these: a reader falls
/// back to an older valid version where the newest is not valid, so ingest refuses the change
/// that wrote it instead.
fn check_writes(
    fork: &AutoCommit,
    before: &VaultState,
    after: &After<'_>,
    new: &NewOps,
    verified: &super::verified::Verified,
) -> Result<(), DocError> {
    let is_new = |id: &ObjId| new.contains(id);
    let root = Fields::root(fork);
    let state = after.base();
    let writers = Writers {
        vault: &state.info.id,
        members: &state.members,
        verified,
    };
    let records: Vec<(String, ObjId)> = match after.scope() {
        None => root
            .object("tokens", ObjType::Map)?
            .ids()
            .map(|(key, id)| (key.to_string(), id.clone()))
            .collect(),
        Some(touched) => {
            let tokens = root.object_id("tokens", ObjType::Map)?;
            let mut records = Vec::new();
            for key in &touched.tokens {
                if let Some((_, id)) = fork.get(&tokens, key.as_str())? {
                    records.push((key.clone(), id));
                }
            }
            records
        }
    };
    // Every record is a map: the read that made `after` refused anything else.
    for (key, record_id) in &records {
        let record = Fields::new(fork, record_id.clone(), format!("tokens.{key}"));
        let existed = key
            .parse()
            .is_ok_and(|id| read::slot_of(before, &id) != Slot::Absent);
        if existed && is_new(record_id) {
            return Err(refuse("a token record was replaced"));
        }
        for (field, field_id) in record.ids() {
            if !matches!(field, "current" | "lease") && is_new(field_id) {
                return Err(refuse("a token was written without a signature"));
            }
        }
        for (value, obj) in record.all("lease")? {
            let lease = record.object_at("lease", &obj);
            let touched = is_new(&obj) || lease.any_written(&is_new);
            if touched
                && (!matches!(value, Value::Object(ObjType::Map))
                    || !read::lease_is_valid(key, &lease, &writers)?)
            {
                return Err(refuse("a lease is not signed by the member holding it"));
            }
        }
        for (value, obj) in record.all("current")? {
            let version = record.object_at("current", &obj);
            let touched = is_new(&obj) || version.any_written(&is_new);
            if touched && !matches!(value, Value::Object(ObjType::Map)) {
                return Err(refuse("a token version is not a signed record"));
            }
            if touched && !read::version_is_valid(key, &version, &writers)? {
                return Err(refuse(
                    "a token version is not signed by a member allowed to write it",
                ));
            }
        }
    }
    for id in after.compared(before) {
        let (was, now) = (read::slot_of(before, &id), after.token(&id));
        if was != Slot::Absent && now == Slot::Absent {
            return Err(refuse("a token record was removed"));
        }
        if let Slot::Valid(token) = was {
            let now = match now {
                Slot::Valid(now) => Some(now),
                _ => None,
            };
            if token.verified && !now.is_some_and(|t| t.verified) {
                return Err(refuse("a token lost its signed versions"));
            }
            if token.deleted && !now.is_some_and(|t| t.deleted) {
                return Err(refuse("a deleted token was written again"));
            }
        }
        if now == Slot::Unverified && was != Slot::Unverified {
            return Err(refuse(
                "a token version is not signed by a member allowed to write it",
            ));
        }
    }
    let defaults = root.object("defaults", ObjType::Map)?;
    for key in before.default_versions.keys() {
        if !after.default_versions().contains_key(key) {
            return Err(refuse("a default lost its signed versions"));
        }
    }
    for key in defaults.keys() {
        for (value, obj) in defaults.all(&key)? {
            let touched = is_new(&obj)
                || (matches!(value, Value::Object(_))
                    && defaults.object_at(&key, &obj).any_written(&is_new));
            if !touched {
                continue;
            }
            let valid = matches!(value, Value::Object(ObjType::Map))
                && read::default_is_valid(&key, &defaults.object_at(&key, &obj), &writers)?;
            if !valid {
                return Err(refuse(
                    "a default is not signed by a member allowed to set it",
                ));
            }
        }
    }
    let audit = fork
        .get(automerge::ROOT, "audit")?
        .map(|(_, id)| id)
        .ok_or_else(|| refuse("the audit log was removed"))?;
    // The entries new changes can have written in: all, or those the read of `after` re-read
    // (which include every entry an op landed in).
    let entries: Vec<(usize, ObjId)> = match after {
        After::Whole(_) => fork
            .list_range(&audit, ..)
            .filter(|item| matches!(item.value, automerge::ValueRef::Object(ObjType::Map)))
            .map(|item| (item.index, item.id()))
            .collect(),
        After::Delta { delta, .. } => delta
            .audit
            .as_ref()
            .map(|audit| audit.read.clone())
            .unwrap_or_default(),
    };
    for (i, id) in entries {
        let entry = Fields::new(fork, id.clone(), format!("audit.{i}"));
        if (is_new(&id) || entry.any_written(&is_new)) && !read::audit_is_valid(&entry, &writers)? {
            return Err(refuse(
                "an audit entry is not signed by the member it names",
            ));
        }
    }
    // Entries leave only to keep the log at its bound, oldest first (each writer trims the
    // front): every entry that went was older than every entry that stayed.
    let mut left: HashMap<&schema::AuditEntry, usize> = HashMap::new();
    for entry in after.audit() {
        *left.entry(entry).or_default() += 1;
    }
    let (mut kept_one, mut removed) = (false, false);
    for entry in &before.audit {
        match left.get_mut(entry) {
            Some(n) if *n > 0 => {
                *n -= 1;
                kept_one = true;
            }
            _ if kept_one => return Err(refuse("audit entries were removed out of order")),
            _ => removed = true,
        }
    }
    if removed && after.audit().len() < schema::limits::AUDIT_MAX {
        return Err(refuse("audit entries were removed"));
    }
    if state.schema < before.schema {
        return Err(refuse("the document's schema was set back"));
    }
    Ok(())
}

/// What each op of each new change may do, by the author its actor names (DESIGN §3): a
/// whitelist of the writes honest code makes, so that nothing is deleted, replaced or edited in
/// place where a signature could not show it. Ops on an object the same change created are
/// allowed (its creation was checked); on any other object, only what its place allows:
///
/// - the root, `vault`, `epochs` (epochs, wraps) and `relays`: an admin;
/// - `members`: an admin, or a device creating its own record (a recovery);
/// - a member record: an admin, or the member itself setting its `name`;
/// - a record's `removals`: a new entry under the author's own id (or `recovery`, by an
///   admin), and re-signing that entry;
/// - `tokens` and `defaults` (admins and members only): a new record, a new version in a
///   record's place (never a delete) that supersedes the versions its writer saw, with a
///   `version` above each of them, so a writer's old signed version cannot be put back; the
///   same for a token's `lease`;
/// - `audit`: appending an entry (any member) and trimming (checked by `check_writes`).
fn check_authority(
    fork: &AutoCommit,
    state: &VaultState,
    scope: Option<&Touched>,
    new_changes: &[automerge::Change],
    new: &NewOps,
) -> Result<(), DocError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let places = Places::of(fork, scope)?;
    for change in new_changes {
        let actor = change.actor_id();
        let Some(author) = state.members.values().find(|m| m.actor == actor.to_bytes()) else {
            continue; // check_fork refused it already
        };
        let admin = author.role == Role::Admin;
        let writer = author.role.writes_tokens();
        let me = author.device.to_hex();
        let start = change.start_op().get();
        let made_here = |id: &automerge::legacy::OpId| {
            id.1 == *actor && (start..=change.max_op()).contains(&id.0)
        };
        let refused = || {
            refuse(if author.role == Role::Remote {
                "a remote device wrote what only a member or admin may"
            } else {
                "a change writes what its author may not"
            })
        };
        for (i, op) in change.decode().operations.iter().enumerate() {
            let ObjectId::Id(obj) = &op.obj else {
                if !admin {
                    return Err(refuse("only an admin may change the document's root"));
                }
                continue;
            };
            let key = match &op.key {
                Key::Map(k) => k.as_str(),
                Key::Seq(_) => "",
            };
            let make = matches!(op.action, OpType::Make(_));
            let put = matches!(op.action, OpType::Put(_));
            let fresh = op.pred.is_empty();
            let place = places.0.get(&(obj.0, obj.1.to_bytes().to_vec()));
            let allowed = match place {
                _ if made_here(obj) && !matches!(place, Some(Place::TokenRecord)) => true,
                None => false,
                Some(Place::AdminOnly) => admin,
                Some(Place::Members) => admin || (make && fresh && key == me),
                Some(Place::Member(device)) => {
                    admin || (put && *device == author.device && key == "name")
                }
                Some(Place::Removals) => {
                    make && fresh && (key == me || (admin && key == Recipient::RECOVERY_NAME))
                }
                Some(Place::RemovalEntry(by)) => {
                    put && (*by == me || (admin && by == Recipient::RECOVERY_NAME))
                }
                Some(Place::Tokens) => writer && make && fresh,
                Some(Place::TokenRecord) => {
                    // A new version supersedes what its writer saw; one beside the current
                    // version (superseding nothing) could only put an old one back. A record
                    // from before signatures gets its first one (an admin's migration).
                    writer
                        && make
                        && match key {
                            "current" => made_here(obj) || !fresh || !holds_older(fork, obj, new)?,
                            "lease" => true,
                            _ => false,
                        }
                        && counts_on(fork, change, i, op.pred.iter())?
                }
                Some(Place::Defaults) => {
                    writer && make && counts_on(fork, change, i, op.pred.iter())?
                }
                Some(Place::Audit) => (op.insert && make) || matches!(op.action, OpType::Delete),
            };
            if !allowed {
                return Err(refused());
            }
        }
    }
    Ok(())
}

/// Whether the version the `i`th op of `change` makes has a `version` above that of every
/// version it supersedes (its `pred`): honest writers count up from what they saw.
/// Whether the record `obj` (a token record, by the op that made it) holds a version that
/// no new change wrote.
fn holds_older(
    fork: &AutoCommit,
    obj: &automerge::legacy::OpId,
    new: &NewOps,
) -> Result<bool, DocError> {
    let Ok((record, _)) = fork.import(&format!("{}@{}", obj.0, obj.1)) else {
        return Ok(true);
    };
    Ok(fork
        .get_all(&record, "current")?
        .iter()
        .any(|(_, id)| !new.contains(id)))
}

/// Whether the version the `i`th op of `change` makes counts on from what it supersedes (its
/// `pred`): `version` is one more than the highest superseded version (1 over none), as an
/// honest writer makes it. Neither an old version put back nor a counter run up to its limit
/// (which would leave no next version for a rotation to re-seal into) passes.
fn counts_on<'a>(
    fork: &AutoCommit,
    change: &automerge::Change,
    i: usize,
    pred: impl Iterator<Item = &'a automerge::legacy::OpId>,
) -> Result<bool, DocError> {
    let id = |counter: u64, actor: &automerge::ActorId| format!("{counter}@{actor}");
    let version = |name: String| -> Option<u64> {
        let (obj, _) = fork.import(&name).ok()?;
        let (value, _) = fork.get(&obj, "version").ok()??;
        value.as_u64()
    };
    let counter = change.start_op().get() + u64::try_from(i).unwrap_or(u64::MAX);
    let Some(new) = version(id(counter, change.actor_id())) else {
        return Ok(false); // read_state refused a version without one already
    };
    let highest = pred
        .map(|p| version(id(p.0, &p.1)).unwrap_or(0))
        .max()
        .unwrap_or(0);
    Ok(highest.checked_add(1) == Some(new))
}

/// The objects whose writers `check_authority` restricts, by the id of the op that made them.
struct Places(HashMap<(u64, Vec<u8>), Place>);

enum Place {
    AdminOnly,
    Members,
    Member(DeviceId),
    Removals,
    RemovalEntry(String),
    Tokens,
    TokenRecord,
    Defaults,
    Audit,
}

impl Places {
    /// The places of the objects new changes can have written in: every token record, or only
    /// the touched ones (an op in any other record would have touched it).
    fn of(fork: &AutoCommit, scope: Option<&Touched>) -> Result<Self, DocError> {
        let mut places = HashMap::new();
        let mut put = |id: &ObjId, place| {
            if let ObjId::Id(counter, actor, _) = id {
                places.insert((*counter, actor.to_bytes().to_vec()), place);
            }
        };
        let root = Fields::root(fork);
        for (key, id) in root.ids() {
            match key {
                "vault" | "epochs" | "relays" => put(id, Place::AdminOnly),
                "members" => put(id, Place::Members),
                "tokens" => put(id, Place::Tokens),
                "defaults" => put(id, Place::Defaults),
                "audit" => put(id, Place::Audit),
                _ => {}
            }
        }
        let members = root.object("members", ObjType::Map)?;
        for (key, id) in members.ids() {
            let Ok(device) = key.parse::<DeviceId>() else {
                continue;
            };
            put(id, Place::Member(device));
            let record = members.object(key, ObjType::Map)?;
            if let Some((_, removals)) = record.ids().find(|(k, _)| *k == "removals") {
                put(removals, Place::Removals);
                let removals = record.object("removals", ObjType::Map)?;
                for (by, entry) in removals.ids() {
                    put(entry, Place::RemovalEntry(by.to_string()));
                }
            }
        }
        let epochs = root.object("epochs", ObjType::Map)?;
        for (key, id) in epochs.ids() {
            put(id, Place::AdminOnly);
            let epoch = epochs.object(key, ObjType::Map)?;
            for (field, id) in epoch.ids() {
                if field == "wraps" {
                    put(id, Place::AdminOnly);
                    for (_, wrap) in epoch.object("wraps", ObjType::Map)?.ids() {
                        put(wrap, Place::AdminOnly);
                    }
                }
            }
        }
        for (_, id) in root.object("relays", ObjType::Map)?.ids() {
            put(id, Place::AdminOnly);
        }
        match scope {
            None => {
                for (_, id) in root.object("tokens", ObjType::Map)?.ids() {
                    put(id, Place::TokenRecord);
                }
            }
            Some(touched) => {
                let tokens = root.object_id("tokens", ObjType::Map)?;
                for key in &touched.tokens {
                    if let Some((_, id)) = fork.get(&tokens, key.as_str())? {
                        put(&id, Place::TokenRecord);
                    }
                }
            }
        }
        Ok(Places(places))
    }
}

/// The members `state` shows removed whose changes the document held before `new` arrived
/// past their bound in `state`, each with the last sequence number held. Two sides that each
/// took changes from a device the other removed refuse each other until both vouch for what
/// they hold: this says what to vouch for, from a document that was refused.
fn held_past_bounds(
    fork: &mut AutoCommit,
    state: &VaultState,
    new: &[automerge::Change],
) -> Vec<(DeviceId, u64)> {
    let new: std::collections::HashSet<ChangeHash> = new.iter().map(|c| c.hash()).collect();
    let removed: Vec<(&Member, u64)> = state
        .members
        .values()
        .filter_map(|m| Some((m, m.write_bound()?)))
        .collect();
    if removed.is_empty() {
        return Vec::new();
    }
    let mut held = vec![0u64; removed.len()];
    for change in fork.get_changes_meta(&[]) {
        if new.contains(&change.hash) {
            continue;
        }
        let actor = change.actor.to_bytes();
        if let Some(i) = removed.iter().position(|(m, _)| m.actor == actor) {
            held[i] = held[i].max(change.seq);
        }
    }
    removed
        .iter()
        .zip(held)
        .filter(|((_, bound), held)| held > bound)
        .map(|((m, _), held)| (m.device, held))
        .collect()
}

/// Outside changes may add to trusted state but never take from it: every verified member
/// stays verified, a removal stays, and every epoch keeps its generation and its trusted wraps.
/// Otherwise one crafted change could make every token unreadable or bring back an epoch a
/// removed device knows.
fn check_no_regression(before: &VaultState, after: &VaultState) -> Result<(), DocError> {
    for (id, member) in &before.members {
        let Some(now) = after.members.get(id) else {
            return Err(DocError::Regression("a verified member lost its standing"));
        };
        // An entry may be re-signed with a higher bound by its own signer, never lowered, and a
        // removal never becomes a vouch.
        let kept = |r: &schema::Removal| {
            now.removals
                .iter()
                .any(|n| n.by == r.by && n.after_seq >= r.after_seq && (r.vouch || !n.vouch))
        };
        if !member.removals.iter().all(kept) {
            return Err(DocError::Regression("a removal was undone or lowered"));
        }
    }
    for (id, epoch) in &before.epochs {
        let Some(now) = after.epochs.get(id) else {
            return Err(DocError::Regression("a key epoch vanished"));
        };
        if now.generation != epoch.generation {
            return Err(DocError::Regression("a key epoch's generation changed"));
        }
        if epoch.wraps.keys().any(|r| !now.wraps.contains_key(r)) {
            return Err(DocError::Regression("a trusted key wrap was broken"));
        }
        // An epoch may stop being one that can be current only because every admin that
        // wrapped it has been removed: an admin removed concurrently with a rotation it made.
        // Not by a wrap rewritten under another signer's name, or anything else.
        let signers_removed = || {
            epoch.wraps.values().all(|w| {
                w.signer
                    .parse::<DeviceId>()
                    .ok()
                    .and_then(|d| after.members.get(&d))
                    .is_some_and(|m| !m.is_active())
            })
        };
        if epoch.current_eligible && !now.current_eligible && !signers_removed() {
            return Err(DocError::Regression("a key epoch lost its standing"));
        }
    }
    // So the current epoch (the newest that can be current) moves back only when the admins of
    // a newer one were removed. That is no regression: their epoch is one a removed device
    // knows, and refusing it would leave the devices that took the rotation unable ever to take
    // the removal. The epoch that takes over may reach a removed device too; nothing is sealed
    // under such an epoch, and an admin's upkeep rotates past it.
    Ok(())
}
