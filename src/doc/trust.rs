//! What every outside change must pass before it is kept: the fork it makes is one valid
//! document of this vault, every new change names a verified member within its removal bound,
//! and nothing trusted is taken away. A refusal for changes by a removed member says what this
//! device could vouch for (see ARCHITECTURE.md, "How an incoming sync message flows").

use automerge::{AutoCommit, ChangeHash, ReadDoc};
use handoff_protocol::DeviceId;

use super::read;
use super::schema::{self, Member, TrustAnchors, VaultState};
use super::{DocError, fork_vault_id};

/// Validates a fork that outside changes were applied to: one vault record, this vault, valid
/// against the pinned anchors, every new change named as written by a verified member (within a
/// removed member's bound). Returns how many changes are new since `before`, and the fork's
/// validated state.
pub(super) fn check_fork(
    fork: &mut AutoCommit,
    anchors: &TrustAnchors,
    heads: &[ChangeHash],
    before: &VaultState,
) -> Result<(usize, VaultState), DocError> {
    let ours = anchors.vault;
    if fork.get_all(automerge::ROOT, "vault")?.len() != 1 {
        return Err(DocError::Schema {
            path: "vault".into(),
            problem: "was written by two different vaults",
        });
    }
    let state =
        read::read_state(fork, Some(anchors)).map_err(|e| match (e, fork_vault_id(fork)) {
            (DocError::AnchorsMoved, Some(found)) if found != ours => DocError::WrongVault {
                expected: ours,
                found,
            },
            (other, _) => other,
        })?;
    check_no_regression(before, &state)?;
    let new_changes = fork.get_changes(heads);
    for change in &new_changes {
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
                owed: held_past_bounds(fork, &state, &new_changes),
            });
        }
    }
    Ok((new_changes.len(), state))
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
