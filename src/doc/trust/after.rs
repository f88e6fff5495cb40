//! The state new changes lead to, as the checks see it: read whole, or as the records the
//! changes touched beside the state before them.

use std::collections::{BTreeSet, HashMap};

use handoff_protocol::TokenId;

use super::super::read::{self, AuditCache, Delta, Slot};
use super::super::schema::{self, Token, VaultState};
use super::super::touched::Touched;

/// The state a fork's changes lead to: read whole, or as the records they touched beside the
/// state before them.
#[derive(Debug)]
pub(in crate::doc) enum Next {
    /// With whether a token key is misspelled (`read::read_whole`).
    Whole(Box<VaultState>, AuditCache, bool),
    Delta(Delta),
}

/// Each actor's highest op counter in a document.
pub(in crate::doc) type Tops = HashMap<Vec<u8>, u64>;

/// The state after new changes, as the checks see it.
pub(super) enum After<'a> {
    Whole(&'a VaultState),
    /// Everything but what `touched` names is as it was in `before`.
    Delta {
        before: &'a VaultState,
        delta: &'a Delta,
        touched: &'a Touched,
    },
}

impl After<'_> {
    /// The sections new changes leave as they were when they touch only records: the members,
    /// the epochs, the vault and the schema.
    pub(super) fn base(&self) -> &VaultState {
        match self {
            After::Whole(state) => state,
            After::Delta { before, .. } => before,
        }
    }

    /// Which token records and audit entries to look at: all (`None`), or the touched ones.
    pub(super) fn scope(&self) -> Option<&Touched> {
        match self {
            After::Whole(_) => None,
            After::Delta { touched, .. } => Some(touched),
        }
    }

    pub(super) fn token(&self, id: &TokenId) -> Slot<&Token> {
        match self {
            After::Whole(state) => read::slot_of(state, id),
            After::Delta { before, delta, .. } => delta.token(before, id),
        }
    }

    pub(super) fn default_versions(&self) -> &std::collections::BTreeMap<String, u64> {
        match self {
            After::Whole(state) => &state.default_versions,
            After::Delta { delta, .. } => &delta.default_versions,
        }
    }

    pub(super) fn audit(&self) -> &[schema::AuditEntry] {
        match self {
            After::Whole(state) => &state.audit,
            After::Delta { before, delta, .. } => delta.audit(before),
        }
    }

    /// The token records whose standing may differ from `before`'s.
    pub(super) fn compared(&self, before: &VaultState) -> BTreeSet<TokenId> {
        match self {
            After::Whole(state) => before
                .tokens
                .keys()
                .chain(&before.unverified_tokens)
                .chain(&state.unverified_tokens)
                .copied()
                .collect(),
            After::Delta { delta, .. } => delta.tokens.keys().copied().collect(),
        }
    }
}
