//! Typed reads of the document, which are also its validation.
//!
//! [`read_state`] walks the whole document and returns a [`VaultState`] or the first field that
//! is missing, mistyped, oversized or dangling. Incoming changes are applied to a fork and this
//! runs on the fork before anything is kept, so a document that passes here is the only kind
//! the rest of handoff ever sees.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{AutoCommit, ObjId, ObjType, ReadDoc, Value};
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DekWrap, DeviceId, EpochId, TokenId, VaultId};

use super::DocError;
use super::schema::{
    AuditEntry, Epoch, Member, Removal, Role, SCHEMA_OLDEST, SCHEMA_VERSION, Service, Token,
    TrustAnchors, VaultInfo, VaultState, limits,
};
use super::verified::Verified;

mod delta;
mod members;
mod signed;
use crate::vault::SignedWrap;
pub(super) use delta::Delta;
use handoff_protocol::binding::genesis_statement;
pub(super) use signed::{
    Writers, audit_is_valid, default_is_valid, lease_is_valid, signed_version, version_is_valid,
};

use members::{verify_members, verify_removals};
use signed::{read_audit_entry, read_default, read_token};

/// One field of a map: its winning value, its object id, and whether writes conflict there.
struct Entry {
    value: Value<'static>,
    id: ObjId,
    conflict: bool,
}

/// A map's fields, read in one pass; names the path of whatever it rejects.
pub(super) struct Fields<'a> {
    doc: &'a AutoCommit,
    obj: ObjId,
    path: String,
    entries: BTreeMap<String, Entry>,
}

/// The Automerge actor of the op an id names (the creator of an object, the writer of a
/// value); `None` for the root.
pub(super) fn actor_of(id: &ObjId) -> Option<&[u8]> {
    match id {
        ObjId::Id(_, actor, _) => Some(actor.to_bytes()),
        ObjId::Root => None,
    }
}

fn schema(path: &str, problem: &'static str) -> DocError {
    DocError::Schema {
        path: path.to_string(),
        problem,
    }
}

impl<'a> Fields<'a> {
    pub(super) fn new(doc: &'a AutoCommit, obj: ObjId, path: String) -> Self {
        let entries = doc
            .map_range(&obj, ..)
            .map(|item| {
                let id = item.id();
                let entry = Entry {
                    value: item.value.into_value(),
                    id,
                    conflict: item.conflict,
                };
                (item.key.into_owned(), entry)
            })
            .collect();
        Self {
            doc,
            obj,
            path,
            entries,
        }
    }

    /// Every value `key` holds (several after concurrent writes), each with its op's id, the
    /// document's own winner last.
    pub(super) fn all(&self, key: &str) -> Result<Vec<(Value<'static>, ObjId)>, DocError> {
        // Without a conflict the one pass already holds the only value: asking the document
        // again costs a seek per record, which at thousands of records is most of a read.
        let asked = || -> Result<Vec<(Value<'static>, ObjId)>, DocError> {
            Ok(self
                .doc
                .get_all(&self.obj, key)?
                .into_iter()
                .map(|(v, id)| (v.into_owned(), id))
                .collect())
        };
        let all = match self.entries.get(key) {
            None => Vec::new(),
            Some(e) if !e.conflict => vec![(e.value.clone(), e.id.clone())],
            Some(_) => asked()?,
        };
        #[cfg(debug_assertions)]
        assert_eq!(
            all,
            asked()?,
            "{}: the one pass and the document disagree",
            self.sub(key)
        );
        Ok(all)
    }

    /// The id of the value the document shows for `key` (Automerge's winner among conflicting
    /// values).
    pub(super) fn winner(&self, key: &str) -> Option<&ObjId> {
        self.entries.get(key).map(|e| &e.id)
    }

    /// The map under `key` whose object id is `id` (one of [`Self::all`]'s).
    pub(super) fn object_at(&self, key: &str, id: &ObjId) -> Fields<'a> {
        Fields::new(self.doc, id.clone(), self.sub(key))
    }

    /// Whether every field's current value was written by `actor`.
    pub(super) fn written_only_by(&self, actor: &[u8]) -> bool {
        self.entries
            .values()
            .all(|e| actor_of(&e.id) == Some(actor))
    }

    /// Whether some field's current value was written by an op `is_new` names.
    pub(super) fn any_written(&self, is_new: &dyn Fn(&ObjId) -> bool) -> bool {
        self.entries.values().any(|e| is_new(&e.id))
    }

    /// Each field's name and the id of the op that wrote its current value.
    pub(super) fn ids(&self) -> impl Iterator<Item = (&str, &ObjId)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), &e.id))
    }

    /// The map's own object id.
    pub(super) fn id(&self) -> &ObjId {
        &self.obj
    }

    pub(super) fn root(doc: &'a AutoCommit) -> Self {
        Self::new(doc, automerge::ROOT, String::new())
    }

    fn sub(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn value(&self, key: &str) -> Result<Option<&Value<'static>>, DocError> {
        Ok(self.entries.get(key).map(|e| &e.value))
    }

    /// A child object of the given type.
    pub(super) fn object(&self, key: &str, ty: ObjType) -> Result<Fields<'a>, DocError> {
        match self.entries.get(key) {
            Some(Entry {
                value: Value::Object(t),
                id,
                ..
            }) if *t == ty => Ok(Fields::new(self.doc, id.clone(), self.sub(key))),
            Some(_) => Err(schema(&self.sub(key), "has the wrong type")),
            None => Err(schema(&self.sub(key), "is missing")),
        }
    }

    /// The id of a child object of the given type, without reading its fields.
    pub(super) fn object_id(&self, key: &str, ty: ObjType) -> Result<ObjId, DocError> {
        match self.entries.get(key) {
            Some(Entry {
                value: Value::Object(t),
                id,
                ..
            }) if *t == ty => Ok(id.clone()),
            Some(_) => Err(schema(&self.sub(key), "has the wrong type")),
            None => Err(schema(&self.sub(key), "is missing")),
        }
    }

    pub(super) fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Whether concurrent writes left several values in `key`.
    pub(super) fn conflicted(&self, key: &str) -> Result<bool, DocError> {
        Ok(self.entries.get(key).is_some_and(|e| e.conflict))
    }

    pub(super) fn str(&self, key: &str, max: usize) -> Result<String, DocError> {
        match self.value(key)? {
            Some(v) => match v.as_str() {
                Some(s) if s.len() <= max => Ok(s.to_string()),
                Some(_) => Err(schema(&self.sub(key), "is too long")),
                None => Err(schema(&self.sub(key), "is not a string")),
            },
            None => Err(schema(&self.sub(key), "is missing")),
        }
    }

    pub(super) fn bytes(&self, key: &str, max: usize) -> Result<Vec<u8>, DocError> {
        match self.value(key)? {
            Some(v) => match v.as_bytes() {
                Some(b) if b.len() <= max => Ok(b.to_vec()),
                Some(_) => Err(schema(&self.sub(key), "is too long")),
                None => Err(schema(&self.sub(key), "is not bytes")),
            },
            None => Err(schema(&self.sub(key), "is missing")),
        }
    }

    fn opt_bytes(&self, key: &str, max: usize) -> Result<Option<Vec<u8>>, DocError> {
        match self.value(key)? {
            None => Ok(None),
            Some(_) => self.bytes(key, max).map(Some),
        }
    }

    fn bytes32(&self, key: &str) -> Result<[u8; 32], DocError> {
        self.bytes(key, 32)?
            .try_into()
            .map_err(|_| schema(&self.sub(key), "is not 32 bytes"))
    }

    pub(super) fn u64(&self, key: &str) -> Result<u64, DocError> {
        self.value(key)?
            .ok_or_else(|| schema(&self.sub(key), "is missing"))?
            .as_u64()
            .ok_or_else(|| schema(&self.sub(key), "is not an unsigned integer"))
    }

    /// A Unix time in seconds, from 1970 to the end of year 9999 (what people can read).
    fn time(&self, key: &str) -> Result<i64, DocError> {
        const LAST_SECOND_OF_9999: i64 = 253_402_300_799;
        let at = self
            .value(key)?
            .ok_or_else(|| schema(&self.sub(key), "is missing"))?
            .as_i64()
            .ok_or_else(|| schema(&self.sub(key), "is not an integer"))?;
        if !(0..=LAST_SECOND_OF_9999).contains(&at) {
            return Err(schema(
                &self.sub(key),
                "is not a time between 1970 and 9999",
            ));
        }
        Ok(at)
    }

    /// A time that may be absent.
    fn opt_time(&self, key: &str) -> Result<Option<i64>, DocError> {
        match self.value(key)? {
            None => Ok(None),
            Some(_) => self.time(key).map(Some),
        }
    }

    fn bool_or_false(&self, key: &str) -> Result<bool, DocError> {
        match self.value(key)? {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| schema(&self.sub(key), "is not a boolean")),
        }
    }

    fn parsed<T: std::str::FromStr>(&self, key: &str, max: usize) -> Result<T, DocError> {
        self.str(key, max)?
            .parse()
            .map_err(|_| schema(&self.sub(key), "has an unknown value"))
    }

    fn key_as<T: std::str::FromStr>(&self, key: &str) -> Result<T, DocError> {
        key.parse()
            .map_err(|_| schema(&self.sub(key), "is not a valid id"))
    }
}

/// Reads and validates the whole document against `anchors` (or, if `None`, against the
/// anchors the document states about itself).
pub(super) fn read_state(
    doc: &AutoCommit,
    anchors: Option<&TrustAnchors>,
    verified: &Verified,
) -> Result<VaultState, DocError> {
    read_whole(doc, anchors, verified).map(|(state, ..)| state)
}

/// As [`read_state`], with the audit entries read by object id, for later reads of only what
/// new changes touched (`delta`); and whether a token record's key is an id spelled otherwise
/// than this build writes it (upper-case hex, which only a crafted change writes: two keys can
/// then name one id, and only a whole read judges such a document).
pub(super) fn read_whole(
    doc: &AutoCommit,
    anchors: Option<&TrustAnchors>,
    verified: &Verified,
) -> Result<(VaultState, AuditCache, bool), DocError> {
    let root = Fields::root(doc);
    let schema_version = root.u64("schema")?;
    if !(SCHEMA_OLDEST..=SCHEMA_VERSION).contains(&schema_version) {
        return Err(DocError::UnsupportedSchema(schema_version));
    }
    let info = read_info(&root.object("vault", ObjType::Map)?)?;
    let own = TrustAnchors::of(&info);
    let anchors = anchors.unwrap_or(&own);
    if *anchors != own {
        return Err(DocError::AnchorsMoved);
    }

    let members_obj = root.object("members", ObjType::Map)?;
    let member_keys = members_obj.keys();
    if member_keys.len() > limits::MEMBERS_MAX {
        return Err(schema("members", "has too many entries"));
    }
    let mut records = BTreeMap::new();
    for key in member_keys {
        let device: DeviceId = members_obj.key_as(&key)?;
        let member = read_member(device, &members_obj.object(&key, ObjType::Map)?)?;
        records.insert(device, member);
    }
    let founder_key = records
        .get(&anchors.founder)
        .map(|m| m.identity_pub)
        .ok_or(DocError::UnvouchedFounder)?;
    let genesis = genesis_statement(&anchors.vault, &anchors.founder, &founder_key);
    if !verified.check(&anchors.recovery_sign_pub, &genesis, &info.genesis_sig) {
        return Err(DocError::UnvouchedFounder);
    }
    let (mut members, unverified) = verify_members(&info.id, anchors, records, verified);
    verify_removals(&info.id, anchors, &mut members, verified);

    // A wrap signer's key, and whether it may still make an epoch current: the recovery key
    // always, an admin only while active (its older wraps still open their epochs).
    let signer_pub = |signer: &str| -> Option<WrapSigner> {
        if signer == Recipient::RECOVERY_NAME {
            return Some(WrapSigner {
                key: info.recovery_sign_pub,
                may_make_current: true,
            });
        }
        let id: DeviceId = signer.parse().ok()?;
        members
            .get(&id)
            .filter(|m| m.role == Role::Admin)
            .map(|m| WrapSigner {
                key: m.identity_pub,
                may_make_current: m.is_active(),
            })
    };
    let epochs_obj = root.object("epochs", ObjType::Map)?;
    let epoch_keys = epochs_obj.keys();
    if epoch_keys.len() > limits::EPOCHS_MAX {
        return Err(schema("epochs", "has too many entries"));
    }
    let mut epochs = BTreeMap::new();
    for key in epoch_keys {
        let id: EpochId = epochs_obj.key_as(&key)?;
        let epoch = read_epoch(
            &info.id,
            id,
            &epochs_obj.object(&key, ObjType::Map)?,
            &signer_pub,
            verified,
        )?;
        epochs.insert(id, epoch);
    }

    let writers = Writers {
        vault: &info.id,
        members: &members,
        verified,
    };
    let tokens_obj = root.object("tokens", ObjType::Map)?;
    let token_keys = tokens_obj.keys();
    if token_keys.len() > limits::TOKENS_MAX {
        return Err(schema("tokens", "has too many entries"));
    }
    let mut tokens = BTreeMap::new();
    let mut unverified_tokens = Vec::new();
    let mut misspelled = false;
    for key in token_keys {
        let id: TokenId = tokens_obj.key_as(&key)?;
        misspelled |= id.to_string() != key;
        match read_record(
            id,
            &tokens_obj.object(&key, ObjType::Map)?,
            &writers,
            &epochs,
        )? {
            Slot::Valid(token) => {
                tokens.insert(id, token);
            }
            Slot::Unverified => unverified_tokens.push(id),
            Slot::Absent => {}
        }
    }

    let (defaults, default_versions) = read_defaults(&root, &|id| tokens.get(id), &writers)?;
    let relays = read_relays(
        &info.id,
        &root.object("relays", ObjType::Map)?,
        &members,
        verified,
    )?;
    let audit = read_audit(doc, &root, &writers, &AuditCache::new(), None)?;

    let state = VaultState {
        info,
        members,
        unverified,
        epochs,
        tokens,
        unverified_tokens,
        defaults,
        default_versions,
        schema: schema_version,
        relays,
        audit: audit.entries,
    };
    Ok((state, audit.cache, misspelled))
}

/// A touched token record's key as its id: the 32 lowercase hex digits this build writes
/// (`touched.rs` names no other), so that one id has one record.
pub(super) fn token_key(key: &str) -> Result<TokenId, DocError> {
    key.parse::<TokenId>()
        .ok()
        .filter(|id| id.to_string() == key)
        .ok_or_else(|| schema(&format!("tokens.{key}"), "is not a valid id"))
}

/// What a token record reads as: absent, present with no valid version, or a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::doc) enum Slot<T> {
    Absent,
    Unverified,
    Valid(T),
}

impl<T> Slot<T> {
    pub(in crate::doc) fn as_ref(&self) -> Slot<&T> {
        match self {
            Slot::Absent => Slot::Absent,
            Slot::Unverified => Slot::Unverified,
            Slot::Valid(t) => Slot::Valid(t),
        }
    }
}

/// What token record `id` reads as in `state`.
pub(in crate::doc) fn slot_of<'a>(state: &'a VaultState, id: &TokenId) -> Slot<&'a Token> {
    match state.tokens.get(id) {
        Some(token) => Slot::Valid(token),
        None if state.unverified_tokens.contains(id) => Slot::Unverified,
        None => Slot::Absent,
    }
}

/// One token record, read against the members and epochs.
pub(super) fn read_record(
    id: TokenId,
    record: &Fields<'_>,
    writers: &Writers<'_>,
    epochs: &BTreeMap<EpochId, Epoch>,
) -> Result<Slot<Token>, DocError> {
    let Some(token) = read_token(id, record, writers)? else {
        return Ok(Slot::Unverified);
    };
    if !epochs.contains_key(&token.epoch) {
        return Err(schema(&record.path, "names an epoch that does not exist"));
    }
    Ok(Slot::Valid(token))
}

/// The defaults, by service, and each default record's version, against the tokens `token`
/// finds.
pub(super) fn read_defaults<'t>(
    root: &Fields<'_>,
    token: &dyn Fn(&TokenId) -> Option<&'t Token>,
    writers: &Writers<'_>,
) -> Result<Defaults, DocError> {
    let defaults_obj = root.object("defaults", ObjType::Map)?;
    if defaults_obj.keys().len() > limits::DEFAULTS_MAX {
        return Err(schema("defaults", "has too many entries"));
    }
    let mut defaults = BTreeMap::new();
    let mut default_versions = BTreeMap::new();
    for key in defaults_obj.keys() {
        let Some((id, version)) = read_default(&key, &defaults_obj, writers)? else {
            continue;
        };
        default_versions.insert(key.clone(), version);
        let Ok(service) = key.parse::<Service>() else {
            continue; // a service from a newer version: keep it, do not use it
        };
        // A concurrent delete can leave a default pointing at a deleted token: not an error.
        if let Some(id) = id
            && token(&id).is_some_and(|t| !t.deleted && t.service == service)
        {
            defaults.insert(service, id);
        }
    }
    Ok((defaults, default_versions))
}

/// Each audit entry read so far, by its object id: `None` for one whose signature does not
/// verify. Valid for as long as the members are.
pub(in crate::doc) type AuditCache = HashMap<ObjId, Option<AuditEntry>>;

/// The audit log as read: its valid entries in order, the cache of every entry it holds now,
/// and the position and id of each entry that was read (not taken from a cache).
#[derive(Debug, Clone)]
pub(in crate::doc) struct AuditRead {
    pub(in crate::doc) entries: Vec<AuditEntry>,
    pub(in crate::doc) cache: AuditCache,
    pub(in crate::doc) read: Vec<(usize, ObjId)>,
}

/// The defaults, by service, and each default record's version counter, by service name.
pub(super) type Defaults = (BTreeMap<Service, TokenId>, BTreeMap<String, u64>);

/// The audit log, in order, re-reading only the entries `cache` lacks or `stale` names (all of
/// them when `stale` is `None`).
pub(super) fn read_audit(
    doc: &AutoCommit,
    root: &Fields<'_>,
    writers: &Writers<'_>,
    cache: &AuditCache,
    stale: Option<&HashSet<ObjId>>,
) -> Result<AuditRead, DocError> {
    let audit_obj = root.object_id("audit", ObjType::List)?;
    let audit_len = doc.length(&audit_obj);
    // Concurrent appends can briefly exceed the bound by what each side appended.
    if audit_len > limits::AUDIT_MAX * 2 {
        return Err(schema("audit", "has too many entries"));
    }
    let mut audit = Vec::with_capacity(audit_len);
    let mut now = AuditCache::with_capacity(audit_len);
    let mut read = Vec::new();
    for item in doc.list_range(&audit_obj, ..) {
        let i = item.index;
        if !matches!(item.value, automerge::ValueRef::Object(ObjType::Map)) {
            return Err(schema(&format!("audit.{i}"), "is not a map"));
        }
        let id = item.id();
        let known = stale
            .is_some_and(|stale| !stale.contains(&id))
            .then(|| cache.get(&id))
            .flatten();
        let entry = match known {
            Some(entry) => entry.clone(),
            None => {
                read.push((i, id.clone()));
                read_audit_entry(&Fields::new(doc, id.clone(), format!("audit.{i}")), writers)?
            }
        };
        audit.extend(entry.clone());
        now.insert(id, entry);
    }
    Ok(AuditRead {
        entries: audit,
        cache: now,
        read,
    })
}

/// Relay entries signed by an active admin; anything else under `relays` is ignored.
fn read_relays(
    vault: &VaultId,
    f: &Fields<'_>,
    members: &BTreeMap<DeviceId, Member>,
    verified: &Verified,
) -> Result<BTreeMap<String, super::schema::Relay>, DocError> {
    let keys = f.keys();
    if keys.len() > limits::RELAYS_MAX {
        return Err(schema("relays", "has too many entries"));
    }
    let mut relays = BTreeMap::new();
    for id in keys {
        let entry = f.object(&id, ObjType::Map)?;
        let relay = super::schema::Relay {
            id: id.clone(),
            addrs: entry.str("addrs", limits::RELAY_ADDRS_MAX)?,
            access_token: entry.opt_bytes("access_token", limits::RELAY_TOKEN_MAX)?,
            added_by: entry.str("added_by", 32)?,
            added_at: entry.time("added_at")?,
            sig: entry.bytes("sig", 64)?,
        };
        let signer = relay
            .added_by
            .parse::<DeviceId>()
            .ok()
            .and_then(|d| members.get(&d))
            .filter(|m| m.is_active() && m.role == Role::Admin);
        let statement = handoff_protocol::binding::relay_statement(
            vault,
            &relay.id,
            &relay.addrs,
            relay.access_token.as_deref().unwrap_or_default(),
            &relay.added_by,
            relay.added_at,
        );
        if signer.is_some_and(|m| verified.check(&m.identity_pub, &statement, &relay.sig)) {
            relays.insert(id, relay);
        }
    }
    Ok(relays)
}

fn read_info(f: &Fields<'_>) -> Result<VaultInfo, DocError> {
    Ok(VaultInfo {
        id: VaultId::from_slice(&f.bytes("id", 16)?)
            .map_err(|_| schema("vault.id", "is not 16 bytes"))?,
        name: f.str("name", limits::NAME_MAX)?,
        created_at: f.time("created_at")?,
        founder: f.parsed("founder", 32)?,
        discovery_secret: f.bytes32("discovery_secret")?,
        recovery_pub: f.bytes32("recovery_pub")?,
        recovery_sign_pub: f.bytes32("recovery_sign_pub")?,
        genesis_sig: f.bytes("genesis_sig", 64)?,
    })
}

fn read_member(device: DeviceId, f: &Fields<'_>) -> Result<Member, DocError> {
    let identity_pub = f.bytes32("identity_pub")?;
    if crate::vault::device_id_for(&identity_pub) != device {
        return Err(schema(
            &f.path,
            "has an identity key that does not match its device id",
        ));
    }
    // Read as written; `verify_removals` keeps only the signed ones.
    let mut removals = Vec::new();
    if f.value("removals")?.is_some() {
        let obj = f.object("removals", ObjType::Map)?;
        let keys = obj.keys();
        if keys.len() > limits::MEMBERS_MAX {
            return Err(schema(&obj.path, "has too many entries"));
        }
        for by in keys {
            let entry = obj.object(&by, ObjType::Map)?;
            removals.push(Removal {
                at: entry.time("at")?,
                after_seq: entry.u64("after_seq")?,
                sig: entry.bytes("sig", 64)?,
                vouch: entry.bool_or_false("vouch")?,
                by,
            });
        }
    }
    Ok(Member {
        device,
        name: f.str("name", limits::NAME_MAX)?,
        role: f.parsed("role", 16)?,
        identity_pub,
        mailbox_pub: f.bytes32("mailbox_pub")?,
        vault_pub: f.bytes32("vault_pub")?,
        actor: f.bytes("actor", 64)?,
        added_by: f.str("added_by", 64)?,
        added_at: f.time("added_at")?,
        sig: f.bytes("sig", 64)?,
        signer: f.str("signer", 64)?,
        removals,
    })
}

/// Who may sign a DEK wrap: the key to verify with, and whether its wraps can make an epoch
/// current (the recovery key always; an admin only while active).
struct WrapSigner {
    key: [u8; 32],
    may_make_current: bool,
}

fn read_epoch(
    vault: &VaultId,
    id: EpochId,
    f: &Fields<'_>,
    signer_pub: &dyn Fn(&str) -> Option<WrapSigner>,
    verified: &Verified,
) -> Result<Epoch, DocError> {
    let generation = f.u64("generation")?;
    let wraps_obj = f.object("wraps", ObjType::Map)?;
    let mut wraps = BTreeMap::new();
    let mut untrusted = Vec::new();
    let mut current_eligible = false;
    for key in wraps_obj.keys() {
        let recipient = Recipient::parse(&key)
            .map_err(|_| schema(&wraps_obj.sub(&key), "is not a device id or 'recovery'"))?;
        let w = wraps_obj.object(&key, ObjType::Map)?;
        let signed = SignedWrap {
            wrap: w.bytes("wrap", handoff_protocol::dek_wrap::ENCODED_LEN)?,
            sig: w.bytes("sig", 64)?,
            signer: w.str("signer", 64)?,
        };
        if DekWrap::decode(&signed.wrap).is_err() {
            return Err(schema(&w.path, "holds a malformed wrap"));
        }
        // A wrap whose signer is not an admin (or the recovery key) is ignored, not fatal: the
        // signer may have been demoted concurrently. It simply cannot be used.
        let statement =
            crate::vault::epoch::wrap_statement(vault, &id, generation, &recipient, &signed.wrap);
        let verdict = signer_pub(&signed.signer)
            .filter(|signer| verified.check(&signer.key, &statement, &signed.sig));
        if let Some(signer) = verdict {
            current_eligible |= signer.may_make_current;
            wraps.insert(recipient, signed);
        } else {
            untrusted.push(recipient);
        }
    }
    Ok(Epoch {
        id,
        generation,
        created_by: f.str("created_by", 64)?,
        created_at: f.time("created_at")?,
        wraps,
        untrusted,
        current_eligible,
    })
}
