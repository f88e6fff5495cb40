//! Reading only what new changes touched (`touched.rs` says what), against the validated state
//! from before them: the token records they wrote in, the defaults (a handful, and they depend
//! on the tokens), and the audit entries they made or wrote in. Every other part of the state
//! reads as it did, so a write or an incoming message costs what it changed, not the vault.

use std::collections::BTreeMap;

use automerge::{AutoCommit, ObjType, ReadDoc, Value};
use handoff_protocol::TokenId;

use super::super::DocError;
use super::super::schema::{AuditEntry, Service, Token, VaultState, limits};
use super::super::touched::Touched;
use super::super::verified::Verified;
use super::{
    AuditCache, AuditRead, Fields, Slot, Writers, read_audit, read_defaults, read_record, schema,
};

/// What the touched records read as now.
#[derive(Debug, Clone)]
pub(in crate::doc) struct Delta {
    /// Each touched token record.
    pub(in crate::doc) tokens: BTreeMap<TokenId, Slot<Token>>,
    pub(in crate::doc) defaults: BTreeMap<Service, TokenId>,
    pub(in crate::doc) default_versions: BTreeMap<String, u64>,
    /// The audit log, when the changes touched it.
    pub(in crate::doc) audit: Option<AuditRead>,
}

impl Delta {
    /// Reads what `touched` names in `doc`, whose state before the changes was `before` (its
    /// audit entries in `cache`).
    pub(in crate::doc) fn read(
        doc: &AutoCommit,
        before: &VaultState,
        cache: &AuditCache,
        touched: &Touched,
        verified: &Verified,
    ) -> Result<Self, DocError> {
        let root = Fields::root(doc);
        let writers = Writers {
            vault: &before.info.id,
            members: &before.members,
            verified,
        };
        let tokens_obj = root.object_id("tokens", ObjType::Map)?;
        let mut tokens = BTreeMap::new();
        let mut count = before.tokens.len() + before.unverified_tokens.len();
        for key in &touched.tokens {
            let id = super::token_key(key)?;
            let slot = match doc.get(&tokens_obj, key.as_str())? {
                None => Slot::Absent,
                Some((Value::Object(ObjType::Map), obj)) => {
                    let record = Fields::new(doc, obj, format!("tokens.{key}"));
                    read_record(id, &record, &writers, &before.epochs)?
                }
                Some(_) => return Err(schema(&format!("tokens.{key}"), "has the wrong type")),
            };
            let was = before.tokens.contains_key(&id) || before.unverified_tokens.contains(&id);
            count = count + usize::from(slot != Slot::Absent) - usize::from(was);
            tokens.insert(id, slot);
        }
        if count > limits::TOKENS_MAX {
            return Err(schema("tokens", "has too many entries"));
        }
        let token = |id: &TokenId| match tokens.get(id) {
            Some(Slot::Valid(t)) => Some(t),
            Some(_) => None,
            None => before.tokens.get(id),
        };
        let (defaults, default_versions) = read_defaults(&root, &token, &writers)?;
        let audit = if touched.audit_changed {
            Some(read_audit(
                doc,
                &root,
                &writers,
                cache,
                Some(&touched.audit),
            )?)
        } else {
            None
        };
        Ok(Self {
            tokens,
            defaults,
            default_versions,
            audit,
        })
    }

    /// What token record `id` reads as after the changes, `before` being the state before.
    pub(in crate::doc) fn token<'a>(
        &'a self,
        before: &'a VaultState,
        id: &TokenId,
    ) -> Slot<&'a Token> {
        match self.tokens.get(id) {
            Some(slot) => slot.as_ref(),
            None => super::slot_of(before, id),
        }
    }

    /// The audit log after the changes.
    pub(in crate::doc) fn audit<'a>(&'a self, before: &'a VaultState) -> &'a [AuditEntry] {
        self.audit
            .as_ref()
            .map_or(before.audit.as_slice(), |audit| audit.entries.as_slice())
    }

    /// Makes `state` (the state before the changes) and `cache` what they are after them.
    pub(in crate::doc) fn apply(self, state: &mut VaultState, cache: &mut AuditCache) {
        for (id, slot) in self.tokens {
            if let Ok(at) = state.unverified_tokens.binary_search(&id) {
                state.unverified_tokens.remove(at);
            }
            match slot {
                Slot::Valid(token) => {
                    state.tokens.insert(id, token);
                }
                Slot::Unverified => {
                    state.tokens.remove(&id);
                    if let Err(at) = state.unverified_tokens.binary_search(&id) {
                        state.unverified_tokens.insert(at, id);
                    }
                }
                Slot::Absent => {
                    state.tokens.remove(&id);
                }
            }
        }
        state.defaults = self.defaults;
        state.default_versions = self.default_versions;
        if let Some(audit) = self.audit {
            state.audit = audit.entries;
            *cache = audit.cache;
        }
    }
}
