//! Reading the records every writer signs (DESIGN §3): token versions, defaults and audit
//! entries, each counted only when signed by a member whose role allows it, under its own
//! actor; and the same checks for ingest (`trust.rs`).

use std::collections::BTreeMap;

use automerge::{ObjType, Value};
use handoff_protocol::sealed_token::MAX_ENCODED;
use handoff_protocol::{DeviceId, TokenId, VaultId};

use super::super::DocError;
use super::super::schema::{AuditEntry, Lease, Member, Role, Token, TokenKind, limits};
use super::super::verified::Verified;
use super::{Fields, actor_of, schema};

/// Who may have written a token version, a default or an audit entry: the verified members
/// of the vault, checked against the signature and the Automerge actor that wrote the record.
pub(in crate::doc) struct Writers<'a> {
    pub(in crate::doc) vault: &'a VaultId,
    pub(in crate::doc) members: &'a BTreeMap<DeviceId, Member>,
    pub(in crate::doc) verified: &'a Verified,
}

impl Writers<'_> {
    /// Whether `statement` is signed by `writer` (a device id, hex), a verified member that
    /// `may` write this, whose actor wrote the whole record `f` (so nobody writes under
    /// another member's actor, or edits another member's record in place).
    fn signed(
        &self,
        writer: &str,
        may: impl Fn(Role) -> bool,
        f: &Fields<'_>,
        statement: &[u8],
        sig: &[u8],
    ) -> bool {
        let Some(member) = writer
            .parse::<DeviceId>()
            .ok()
            .and_then(|d| self.members.get(&d))
        else {
            return false;
        };
        may(member.role)
            && actor_of(&f.obj) == Some(member.actor.as_slice())
            && f.written_only_by(&member.actor)
            && self.verified.check(&member.identity_pub, statement, sig)
    }
}

/// A token record's version to use: the newest valid one (highest version, then time, then
/// writer), a deletion first; the record shows as conflicted when valid versions disagree or
/// the document's own winner is not valid; `None` when no version is valid
/// and the record is not one from before signatures. A version that is not even well formed
/// is a schema error: it could only have come from a crafted change.
pub(super) fn read_token(
    id: TokenId,
    record: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<Option<Token>, DocError> {
    let candidates = record.all("current")?;
    if candidates.is_empty() {
        // From before signatures, or emptied (which ingest refuses).
        if record.value("service")?.is_none() {
            return Ok(None);
        }
        return read_legacy_token(id, record).map(Some);
    }
    // Each valid version, and whether it is the document's own winner.
    let mut valid: Vec<(bool, Token)> = Vec::with_capacity(candidates.len());
    let winner = record.winner("current");
    for (value, obj) in &candidates {
        if !matches!(value, Value::Object(ObjType::Map)) {
            return Err(schema(&record.sub("current"), "is not a map"));
        }
        if let Some(token) = signed_version(id, &record.object_at("current", obj), writers)? {
            valid.push((Some(obj) == winner, token));
        }
    }
    let highest = valid.iter().map(|(_, t)| t.version).max();
    // Versions that say the same (two admins re-signing one record from before signatures)
    // are no conflict for the user to settle.
    let same = |a: &Token, b: &Token| {
        (
            a.service,
            &a.label,
            a.kind,
            a.epoch,
            &a.ciphertext,
            a.deleted,
        ) == (
            b.service,
            &b.label,
            b.kind,
            b.epoch,
            &b.ciphertext,
            b.deleted,
        )
    };
    let differ = valid.windows(2).any(|w| !same(&w[0].1, &w[1].1));
    let conflicted = differ || !valid.iter().any(|(winner, _)| *winner);
    // A deletion is final: one that stands beside concurrent edits wins over them.
    if valid.iter().any(|(_, t)| t.deleted) {
        valid.retain(|(_, t)| t.deleted);
    }
    // The newest valid version, not Automerge's winner: a writer's old signed version put
    // back beside the current one (under its actor, by whoever claims it) must not win.
    let chosen = valid.into_iter().max_by(|(_, a), (_, b)| {
        (a.version, a.updated_at, &a.updated_by).cmp(&(b.version, b.updated_at, &b.updated_by))
    });
    let lease = read_lease(id, record, writers)?;
    Ok(chosen.map(|(_, mut t)| {
        t.version = highest.unwrap_or(t.version);
        t.conflicted = conflicted;
        t.lease = lease;
        t
    }))
}

/// A token's lease: the newest valid version (highest version, then time, then holder),
/// each signed by its holder, a member that may write tokens; its version the highest valid.
fn read_lease(
    id: TokenId,
    record: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<Option<Lease>, DocError> {
    let mut valid = Vec::new();
    for (value, obj) in record.all("lease")? {
        if !matches!(value, Value::Object(ObjType::Map)) {
            return Err(schema(&record.sub("lease"), "is not a map"));
        }
        if let Some(lease) = signed_lease(id, &record.object_at("lease", &obj), writers)? {
            valid.push(lease);
        }
    }
    let highest = valid.iter().map(|l| l.version).max();
    let chosen = valid
        .into_iter()
        .max_by(|a, b| (a.version, a.at, &a.holder).cmp(&(b.version, b.at, &b.holder)));
    Ok(chosen.map(|mut l| {
        l.version = highest.unwrap_or(l.version);
        l
    }))
}

/// A lease version, if its holder signed it and may write tokens.
fn signed_lease(
    id: TokenId,
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<Option<Lease>, DocError> {
    let lease = Lease {
        holder: f.str("holder", 64)?,
        session: f.str("session", limits::SESSION_MAX)?,
        fence: f.u64("fence")?,
        until: f.time("until")?,
        at: f.time("at")?,
        version: f.u64("version")?,
    };
    let sig = f.bytes("sig", 64)?;
    let statement =
        handoff_protocol::binding::lease_statement(writers.vault, &lease.signed_fields(&id));
    // A lease no honest holder writes is refused like a bad signature, so no member can pin
    // a token for ever: each new fence comes with a new version (so fence <= version, which
    // ingest lets grow by one a write), and a lease runs at most LEASE_SPAN_MAX from its write.
    let sane = lease.fence <= lease.version
        && (lease.until == 0 || lease.until.saturating_sub(lease.at) <= limits::LEASE_SPAN_MAX);
    let valid = sane && writers.signed(&lease.holder, Role::writes_tokens, f, &statement, &sig);
    Ok(valid.then_some(lease))
}

/// Whether the lease version `f` of the record `key` is validly signed (for ingest's checks).
pub(in crate::doc) fn lease_is_valid(
    key: &str,
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<bool, DocError> {
    Ok(signed_lease(token_key(key, f)?, f, writers)?.is_some())
}

/// A token version, if it is signed by a member that may write tokens, under its own actor.
pub(in crate::doc) fn signed_version(
    id: TokenId,
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<Option<Token>, DocError> {
    let (token, sig) = read_version(id, f)?;
    let statement =
        handoff_protocol::binding::token_version_statement(writers.vault, &token.signed_fields());
    let valid = writers.signed(&token.updated_by, Role::writes_tokens, f, &statement, &sig);
    Ok(valid.then_some(token))
}

/// Whether the version `f` of the record `key` is validly signed (for ingest's checks).
pub(in crate::doc) fn version_is_valid(
    key: &str,
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<bool, DocError> {
    Ok(signed_version(token_key(key, f)?, f, writers)?.is_some())
}

/// The token id a record's key names.
fn token_key(key: &str, f: &Fields<'_>) -> Result<TokenId, DocError> {
    key.parse()
        .map_err(|_| schema(&f.path, "is not under a token id"))
}

/// One signed version of a token record, and its signature.
fn read_version(id: TokenId, f: &Fields<'_>) -> Result<(Token, Vec<u8>), DocError> {
    let mut token = read_token_fields(id, f)?;
    if token.deleted && token.ciphertext.is_some() {
        return Err(schema(&f.path, "holds a ciphertext but is deleted"));
    }
    token.version = f.u64("version")?;
    token.verified = true;
    Ok((token, f.bytes("sig", 64)?))
}

/// A record from before signatures (schema 1): fields directly in the record, unverified.
fn read_legacy_token(id: TokenId, f: &Fields<'_>) -> Result<Token, DocError> {
    let mut token = read_token_fields(id, f)?;
    for field in ["service", "label", "ciphertext", "epoch", "deleted"] {
        token.conflicted |= f.conflicted(field)?;
    }
    Ok(token)
}

/// The fields a token version holds (in a version map, or directly in a schema-1 record), as
/// an unverified version 0.
fn read_token_fields(id: TokenId, f: &Fields<'_>) -> Result<Token, DocError> {
    let deleted = f.bool_or_false("deleted")?;
    let ciphertext = f.opt_bytes("ciphertext", MAX_ENCODED)?;
    if !deleted && ciphertext.is_none() {
        return Err(schema(&f.path, "has no ciphertext"));
    }
    Ok(Token {
        id,
        service: f.parsed("service", 32)?,
        label: f.str("label", limits::LABEL_MAX)?,
        kind: f.parsed::<TokenKind>("kind", 16)?,
        epoch: f
            .str("epoch", 32)?
            .parse()
            .map_err(|_| schema(&f.sub("epoch"), "is not an epoch id"))?,
        ciphertext,
        created_at: f.time("created_at")?,
        created_by: f.str("created_by", 64)?,
        updated_at: f.time("updated_at")?,
        updated_by: f.str("updated_by", 64)?,
        deleted,
        version: 0,
        verified: false,
        conflicted: false,
        expires_at: f.opt_time("expires_at")?,
        refreshed_at: f.opt_time("refreshed_at")?,
        lease: None,
    })
}

/// A service's default: the token it names (`None`: cleared) and the record's highest valid
/// version; `None` when no version is valid. The newest valid version counts (the document's
/// own winner breaks a tie). A plain token id is a default from before signatures.
pub(super) fn read_default(
    key: &str,
    defaults: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<Option<(Option<TokenId>, u64)>, DocError> {
    let mut best: Option<(u64, i64, String, bool, Option<TokenId>)> = None;
    let mut highest = 0;
    let candidates = defaults.all(key)?;
    let winner = defaults.winner(key);
    for (value, obj) in &candidates {
        let path = defaults.sub(key);
        let choice = match value {
            Value::Scalar(s) => {
                let id = s
                    .as_str()
                    .and_then(|t| t.parse::<TokenId>().ok())
                    .ok_or_else(|| schema(&path, "is not a token id"))?;
                (0, 0, String::new(), false, Some(id))
            }
            Value::Object(ObjType::Map) => {
                let Some((token, version, at, writer)) =
                    signed_default(key, &defaults.object_at(key, obj), writers)?
                else {
                    continue;
                };
                highest = highest.max(version);
                // The newest valid version wins, as for tokens; the document's own winner only
                // breaks a tie.
                (version, at, writer, Some(obj) == winner, token)
            }
            Value::Object(_) => return Err(schema(&path, "has the wrong type")),
        };
        if best.as_ref().is_none_or(|b| choice > *b) {
            best = Some(choice);
        }
    }
    Ok(best.map(|(_, _, _, _, token)| (token, highest)))
}

/// A version of a default (token, version, at, writer), if signed by a member that may set it,
/// under its own actor.
#[allow(clippy::type_complexity)]
fn signed_default(
    service: &str,
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<Option<(Option<TokenId>, u64, i64, String)>, DocError> {
    let token = match f.str("token", 32)?.as_str() {
        "" => None,
        hex => Some(
            hex.parse()
                .map_err(|_| schema(&f.sub("token"), "is not a token id"))?,
        ),
    };
    let version = f.u64("version")?;
    let at = f.time("at")?;
    let writer = f.str("writer", 64)?;
    let sig = f.bytes("sig", 64)?;
    let statement = handoff_protocol::binding::default_statement(
        writers.vault,
        service,
        &token.map(|t: TokenId| t.to_hex()).unwrap_or_default(),
        version,
        at,
        &writer,
    );
    let valid = writers.signed(&writer, Role::writes_tokens, f, &statement, &sig);
    Ok(valid.then_some((token, version, at, writer)))
}

/// Whether the default version `f` of `service` is validly signed (for ingest's checks).
pub(in crate::doc) fn default_is_valid(
    service: &str,
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<bool, DocError> {
    Ok(signed_default(service, f, writers)?.is_some())
}

/// Whether the audit entry `f` is signed by the member it names (for ingest's checks).
pub(in crate::doc) fn audit_is_valid(
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<bool, DocError> {
    Ok(read_audit_entry(f, writers)?.is_some_and(|e| e.verified))
}

/// An audit entry: signed by its device, a member (any role), or from before signatures
/// (no `sig`: unverified); `None` for one whose signature does not verify.
pub(super) fn read_audit_entry(
    f: &Fields<'_>,
    writers: &Writers<'_>,
) -> Result<Option<AuditEntry>, DocError> {
    let mut entry = AuditEntry {
        at: f.time("at")?,
        device: f.str("device", limits::NAME_MAX)?,
        action: f.str("action", limits::NAME_MAX)?,
        subject: f.str("subject", limits::NAME_MAX)?,
        verified: false,
    };
    if f.value("sig")?.is_none() {
        return Ok(Some(entry));
    }
    let sig = f.bytes("sig", 64)?;
    let statement = entry.statement(writers.vault);
    if !writers.signed(&entry.device, |_| true, f, &statement, &sig) {
        return Ok(None);
    }
    entry.verified = true;
    Ok(Some(entry))
}
