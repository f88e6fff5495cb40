//! Keeping the validated state up to date: each commit, and each fork judged to replace the
//! document, updates it from what their changes touched (`touched.rs`, `read::delta`) instead
//! of reading the whole document again. A debug build checks every such update against a
//! whole read, so that every test judges the two the same.

use std::sync::{Arc, OnceLock};

use automerge::{AutoCommit, ChangeHash};

use super::read::{self, Delta};
use super::schema::{TrustAnchors, VaultState};
use super::trust::{Next, Tops, check_fork};
use super::{DocError, VaultDoc, contain, touched, verified};

/// How many incoming messages after a refusal are tried on forks instead of in place.
pub(super) const FORKS_AFTER_REFUSAL: u32 = 64;

/// A validated state and the audit entries it was read from, by object id.
#[derive(Debug)]
pub(super) struct Validated {
    pub(super) state: Arc<VaultState>,
    pub(super) audit: read::AuditCache,
    /// A token record's key is misspelled: every change is read whole.
    pub(super) misspelled: bool,
}

/// What judging a fork gave: how many changes were new and the state they lead to.
pub(super) type Judged = Result<(usize, Next), DocError>;

/// A fork to try outside changes on: the document's heads and how many changes already
/// waited before it, and the fork.
pub(super) struct Trial {
    pub(super) heads: Vec<ChangeHash>,
    pub(super) waiting: usize,
    pub(super) fork: AutoCommit,
}

/// What a fork is judged against: the document it was made from, its validated state, each
/// actor's highest op counter in it, the pinned anchors and the signatures checked so far.
#[derive(Clone, Copy)]
pub(super) struct Bench<'a> {
    current: touched::Before<'a>,
    valid: &'a Validated,
    tops: &'a Tops,
    anchors: &'a TrustAnchors,
    verified: &'a verified::Verified,
}

impl VaultDoc {
    /// Brings the validated state up to `changes`, just committed here, reading only what
    /// they touched. When they wrote anywhere else, or what they touched does not read, the
    /// state is forgotten: the next read is whole, and reports what is wrong.
    pub(super) fn follow(&mut self, changes: &[automerge::Change]) {
        let Some(mut valid) = self.valid.take().filter(|v| !v.misspelled) else {
            return;
        };
        let Some(touched) = touched::touched_by(&self.doc, None, changes) else {
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
        heads: &[ChangeHash],
        bench: &Bench<'_>,
    ) -> (Judged, Option<Judged>) {
        let Bench {
            current,
            valid,
            tops,
            anchors,
            verified,
        } = *bench;
        let before = (current, &*valid.state, &valid.audit);
        let judged = check_fork(
            fork,
            anchors,
            verified,
            heads,
            before,
            tops,
            valid.misspelled,
        );
        #[cfg(debug_assertions)]
        let whole = Some(check_fork(
            fork, anchors, verified, heads, before, tops, true,
        ));
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
            Next::Whole(state, ..) => (**state).clone(),
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

    /// A fork of the committed document to try outside changes on, and what judging it
    /// needs. Each actor's highest op counter is found from every change's metadata the first
    /// time.
    pub(super) fn trial(&mut self) -> Result<(Trial, Bench<'_>), DocError> {
        self.settle();
        self.ensure_tops();
        let heads = self.doc.get_heads();
        // What was already waiting (a store from before changes stopped being queued).
        let waiting = self.doc.get_missing_deps(&[]).len();
        let actor = self.doc.get_actor().clone();
        let fork = self.doc.fork().with_actor(actor);
        self.validated()?;
        let (Some(valid), Some(tops)) = (self.valid.get(), self.tops.as_ref()) else {
            return Err(DocError::Damaged("the document's state was lost".into()));
        };
        let bench = Bench {
            current: touched::Before::Doc(&self.doc),
            valid,
            tops,
            anchors: &self.anchors,
            verified: &self.verified,
        };
        Ok((
            Trial {
                heads,
                waiting,
                fork,
            },
            bench,
        ))
    }

    /// Each actor's highest op counter, found from every change's metadata the first time.
    fn ensure_tops(&mut self) {
        if self.tops.is_none() {
            let mut tops = Tops::new();
            for change in self.doc.get_changes_meta(&[]) {
                let top = tops.entry(change.actor.to_bytes().to_vec()).or_default();
                *top = (*top).max(change.max_op);
            }
            self.tops = Some(tops);
        }
    }

    /// Whether `chunks` (a sync message's changes) may be tried on the document itself. Not
    /// for the next messages after a refusal made it rebuild itself (each asking counts one),
    /// so that a peer sending refused changes costs a copy per message, not a rebuild; and
    /// only when each new change can be applied at once and starts above every op its writer
    /// made here (what judging refuses anyway), read from the changes' headers: a message
    /// that fails either is judged on a fork, where refusing it costs no rebuild. A document
    /// holding changes that wait for parents keeps using forks (a rebuild would drop them).
    pub(super) fn in_place_allowed<'c>(&mut self, chunks: impl Iterator<Item = &'c [u8]>) -> bool {
        if self.forks_owed > 0 {
            self.forks_owed -= 1;
            return false;
        }
        self.ensure_tops();
        if !self.doc.get_missing_deps(&[]).is_empty() {
            return false;
        }
        let mut changes = Vec::new();
        for chunk in chunks {
            let Ok(parts) = super::chunks::split(chunk) else {
                return false;
            };
            for (kind, part) in parts {
                // A whole document (a large catch-up) is judged on a fork.
                if !super::chunks::is_change(kind) {
                    return false;
                }
                match automerge::Change::try_from(part) {
                    Ok(change) => changes.push(change),
                    Err(_) => return false,
                }
            }
        }
        let batch: std::collections::HashSet<ChangeHash> =
            changes.iter().map(automerge::Change::hash).collect();
        let (doc, Some(tops)) = (&mut self.doc, self.tops.as_ref()) else {
            return false;
        };
        changes.iter().all(|change| {
            if doc.get_change_meta_by_hash(&change.hash()).is_some() {
                return true;
            }
            let parents_here = change
                .deps()
                .iter()
                .all(|d| batch.contains(d) || doc.get_change_meta_by_hash(d).is_some());
            let above = tops
                .get(change.actor_id().to_bytes())
                .is_none_or(|top| change.start_op().get() > *top);
            parents_here && above
        })
    }

    /// Tries `apply`'s changes on the document itself, judged as on a fork against the state
    /// before them (read as of the heads it had): kept if they validate, and otherwise taken
    /// back by rebuilding the document at those heads, since Automerge cannot undo changes.
    /// Copying the whole document for every message is what this saves; a refusal costs a
    /// pass over its history instead, and sends the next [`FORKS_AFTER_REFUSAL`] messages to
    /// forks. `finish` turns the judgement into the result (the sync path names an incomplete
    /// message there). A panic anywhere in the trial takes the changes back before it goes on.
    pub(super) fn try_in_place<T>(
        &mut self,
        apply: impl FnOnce(&mut AutoCommit) -> Result<T, DocError>,
        finish: impl FnOnce(&mut AutoCommit, Judged, &T) -> Judged,
    ) -> Result<(usize, T), DocError> {
        self.settle();
        self.ensure_tops();
        self.validated()?;
        let heads = self.doc.get_heads();
        let actor = self.doc.get_actor().clone();
        let waiting = self.doc.get_missing_deps(&[]).len();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.judge_in_place(&heads, waiting, apply, finish)
        }));
        match outcome {
            Ok(Ok(((count, next), applied))) => {
                self.take_next(next);
                self.raise_tops(&heads);
                Ok((count, applied))
            }
            Ok(Err(e)) => {
                self.rebuild_at(&heads, actor);
                Err(e)
            }
            Err(panic) => {
                self.rebuild_at(&heads, actor);
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// [`Self::try_in_place`]'s trial: the changes applied and judged, the document not yet
    /// taken back on a refusal.
    fn judge_in_place<T>(
        &mut self,
        heads: &[ChangeHash],
        waiting: usize,
        apply: impl FnOnce(&mut AutoCommit) -> Result<T, DocError>,
        finish: impl FnOnce(&mut AutoCommit, Judged, &T) -> Judged,
    ) -> Result<((usize, Next), T), DocError> {
        let doc = &mut self.doc;
        let applied = contain::contained(|| {
            let applied = apply(doc)?;
            // Changes waiting for one this document lacks are not kept: unchecked, they would
            // be applied with it later, and one crafted among them could block it for ever.
            if doc.get_missing_deps(&[]).len() > waiting {
                return Err(DocError::Incomplete {
                    refused: Box::new(DocError::Waiting),
                });
            }
            Ok(applied)
        })?;
        let (Some(valid), Some(tops)) = (self.valid.get(), self.tops.as_ref()) else {
            return Err(DocError::Damaged("the document's state was lost".into()));
        };
        let bench = Bench {
            current: touched::Before::At(heads),
            valid,
            tops,
            anchors: &self.anchors,
            verified: &self.verified,
        };
        let doc = &mut self.doc;
        let (judged, whole) = contain::contained(|| Ok(Self::judge_fork(doc, heads, &bench)))?;
        self.cross_check(&judged, whole.as_ref());
        let doc = &mut self.doc;
        let judged = contain::contained(|| finish(doc, judged, &applied))?;
        Ok((judged, applied))
    }

    /// Takes back every change since `heads` by rebuilding the document from its history up
    /// to them, writing as `actor` again; if even that fails, the document is marked lost for
    /// its owner to load again, and refuses to be used until then.
    fn rebuild_at(&mut self, heads: &[ChangeHash], actor: automerge::ActorId) {
        self.forks_owed = FORKS_AFTER_REFUSAL;
        let doc = &mut self.doc;
        let rebuilt = contain::contained(|| {
            let mut rebuilt = doc
                .fork_at(heads)
                .map_err(|e| DocError::Damaged(e.to_string()))?;
            Ok((rebuilt.get_heads() == heads).then_some(rebuilt))
        });
        match rebuilt {
            Ok(Some(doc)) => self.doc = doc.with_actor(actor),
            _ => {
                tracing::error!(
                    "could not take back refused changes; the vault must be loaded again"
                );
                self.lost = true;
            }
        }
    }

    /// Sends the next `n` incoming messages to forks (a document just loaded again after one
    /// it could not take back).
    pub(crate) fn owe_forks(&mut self, n: u32) {
        self.forks_owed = self.forks_owed.max(n);
    }

    /// Counts the changes this device just committed in the op counters judging needs.
    pub(super) fn raise_top(&mut self, change: &automerge::Change) {
        if let Some(tops) = &mut self.tops {
            let top = tops
                .entry(change.actor_id().to_bytes().to_vec())
                .or_default();
            *top = (*top).max(change.max_op());
        }
    }

    /// Counts the changes since `heads` (just taken, or just made here) in [`Self::ensure_tops`].
    pub(super) fn raise_tops(&mut self, heads: &[ChangeHash]) {
        if self.tops.is_none() {
            return;
        }
        let raised: Vec<(Vec<u8>, u64)> = self
            .doc
            .get_changes_meta(heads)
            .iter()
            .map(|c| (c.actor.to_bytes().to_vec(), c.max_op))
            .collect();
        if let Some(tops) = &mut self.tops {
            for (actor, max_op) in raised {
                let top = tops.entry(actor).or_default();
                *top = (*top).max(max_op);
            }
        }
    }

    /// Takes the state a judged fork leads to, once the fork has replaced the document.
    pub(super) fn take_next(&mut self, next: Next) {
        self.pending.take();
        match next {
            Next::Whole(state, audit, misspelled) => {
                self.valid = OnceLock::from(Validated {
                    state: Arc::new(*state),
                    audit,
                    misspelled,
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
