//! Keeping the validated state up to date: each commit, and each fork judged to replace the
//! document, updates it from what their changes touched (`touched.rs`, `read::delta`) instead
//! of reading the whole document again. A debug build checks every such update against a
//! whole read, so that every test judges the two the same.

use std::sync::{Arc, OnceLock};

use automerge::{AutoCommit, ChangeHash};

use super::read::{self, Delta};
use super::schema::{TrustAnchors, VaultState};
use super::trust::{Next, check_fork};
use super::{DocError, VaultDoc, touched, verified};

/// A validated state and the audit entries it was read from, by object id.
#[derive(Debug)]
pub(super) struct Validated {
    pub(super) state: Arc<VaultState>,
    pub(super) audit: read::AuditCache,
}

/// What judging a fork gave: how many changes were new and the state they lead to.
pub(super) type Judged = Result<(usize, Next), DocError>;

impl VaultDoc {
    /// Brings the validated state up to `changes`, just committed here, reading only what
    /// they touched. When they wrote anywhere else, or what they touched does not read, the
    /// state is forgotten: the next read is whole, and reports what is wrong.
    pub(super) fn follow(&mut self, changes: &[automerge::Change]) {
        let Some(mut valid) = self.valid.take() else {
            return;
        };
        let Some(touched) = touched::touched_by(&self.doc, changes) else {
            return;
        };
        let Ok(delta) = Delta::read(
            &self.doc,
            &valid.state,
            &valid.audit,
            &touched,
            &self.verified,
        ) else {
            return;
        };
        delta.apply(Arc::make_mut(&mut valid.state), &mut valid.audit);
        #[cfg(debug_assertions)]
        self.assert_whole_agrees(&valid.state);
        let _ = self.valid.set(valid);
    }

    /// Judges a fork that outside changes were applied to, against the validated state from
    /// before them (see [`check_fork`]). A debug build judges it a second time by reading it
    /// whole; [`Self::cross_check`] compares the two outside the containment, so that a
    /// disagreement fails loudly instead of passing for a refusal.
    pub(super) fn judge_fork(
        fork: &mut AutoCommit,
        anchors: &TrustAnchors,
        verified: &verified::Verified,
        heads: &[ChangeHash],
        valid: &Validated,
    ) -> (Judged, Option<Judged>) {
        let before = (&*valid.state, &valid.audit);
        let judged = check_fork(fork, anchors, verified, heads, before, false);
        #[cfg(debug_assertions)]
        let whole = Some(check_fork(fork, anchors, verified, heads, before, true));
        #[cfg(not(debug_assertions))]
        let whole = None;
        (judged, whole)
    }

    /// Panics when a fork judged on what its changes touched and the same fork read whole
    /// (in a debug build) disagree: on whether to take it, or on the state it leads to.
    pub(super) fn cross_check(&self, judged: &Judged, whole: Option<&Judged>) {
        let Some(whole) = whole else {
            return;
        };
        let Ok(valid) = self.validated() else {
            return;
        };
        let after = |next: &Next| match next {
            Next::Whole(state, _) => (**state).clone(),
            Next::Delta(delta) => {
                let mut state = (*valid.state).clone();
                let mut audit = valid.audit.clone();
                delta.clone().apply(&mut state, &mut audit);
                state
            }
        };
        match (judged, whole) {
            (Ok((n, next)), Ok((whole_n, whole_next))) => {
                assert_eq!(n, whole_n, "the two judgements count different changes");
                agree(&after(next), &after(whole_next));
            }
            (Err(_), Err(_)) => {}
            (judged, whole) => panic!(
                "judged on what the changes touched: {:?}; read whole: {:?}",
                judged.as_ref().map(|_| ()),
                whole.as_ref().map(|_| ())
            ),
        }
    }

    /// Panics unless the whole document reads as `state` (a debug build's check of
    /// [`Self::follow`]).
    #[cfg(debug_assertions)]
    fn assert_whole_agrees(&self, state: &VaultState) {
        match read::read_state(&self.doc, Some(&self.anchors), &self.verified) {
            Ok(whole) => agree(state, &whole),
            Err(e) => panic!(
                "a change read from what it touched, but the whole document does not read: {e}"
            ),
        }
    }

    /// Takes the state a judged fork leads to, once the fork has replaced the document.
    pub(super) fn take_next(&mut self, next: Next) {
        self.pending.take();
        match next {
            Next::Whole(state, audit) => {
                self.valid = OnceLock::from(Validated {
                    state: Arc::new(*state),
                    audit,
                });
            }
            // Judged against the state kept here, so it is there to update.
            Next::Delta(delta) => {
                if let Some(valid) = self.valid.get_mut() {
                    delta.apply(Arc::make_mut(&mut valid.state), &mut valid.audit);
                }
            }
        }
    }
}

/// Panics naming the first part of the state on which an incremental read and a whole read
/// disagree (a debug build's check; the state itself is not printed, it holds sealed tokens).
fn agree(incremental: &VaultState, whole: &VaultState) {
    let parts = [
        ("info", incremental.info == whole.info),
        ("members", incremental.members == whole.members),
        ("unverified", incremental.unverified == whole.unverified),
        ("epochs", incremental.epochs == whole.epochs),
        ("tokens", incremental.tokens == whole.tokens),
        (
            "unverified_tokens",
            incremental.unverified_tokens == whole.unverified_tokens,
        ),
        ("defaults", incremental.defaults == whole.defaults),
        (
            "default_versions",
            incremental.default_versions == whole.default_versions,
        ),
        ("schema", incremental.schema == whole.schema),
        ("relays", incremental.relays == whole.relays),
        ("audit", incremental.audit == whole.audit),
    ];
    if let Some((part, _)) = parts.iter().find(|(_, same)| !same) {
        panic!("the state read from what changes touched differs from a whole read in its {part}");
    }
}
