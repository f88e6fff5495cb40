//! Which member records and removals count: those signed along a chain from the anchors.

use std::collections::BTreeMap;

use handoff_protocol::binding::member_statement;
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DeviceId, VaultId};

use crate::doc::schema::{Member, Removal, Role, TrustAnchors};
use crate::doc::verified::Verified;

/// Keeps the members whose record is signed along a chain from the anchors: the founder's
/// self-signed record, records signed by the recovery key, and records signed by an already
/// verified admin. Runs to a fixpoint (at most one pass per member).
pub(super) fn verify_members(
    vault: &VaultId,
    anchors: &TrustAnchors,
    mut pending: BTreeMap<DeviceId, Member>,
    checker: &Verified,
) -> (BTreeMap<DeviceId, Member>, Vec<DeviceId>) {
    let mut verified: BTreeMap<DeviceId, Member> = BTreeMap::new();
    loop {
        let admitted: Vec<DeviceId> = pending
            .values()
            .filter(|m| {
                let signer_pub = if m.signer == Recipient::RECOVERY_NAME {
                    Some(anchors.recovery_sign_pub)
                } else if m.device == anchors.founder && m.signer == m.device.to_hex() {
                    Some(m.identity_pub)
                } else {
                    m.signer
                        .parse::<DeviceId>()
                        .ok()
                        .and_then(|id| verified.get(&id))
                        // A since-removed admin's admissions stay valid history. (Bounding
                        // them by its removal point comes with `peer remove`.)
                        .filter(|admin| admin.role == Role::Admin)
                        .map(|admin| admin.identity_pub)
                };
                let statement = member_statement(vault, &m.signed_fields());
                signer_pub.is_some_and(|public| checker.check(&public, &statement, &m.sig))
            })
            .map(|m| m.device)
            .collect();
        if admitted.is_empty() {
            break;
        }
        for id in admitted {
            if let Some(m) = pending.remove(&id) {
                verified.insert(id, m);
            }
        }
    }
    (verified, pending.into_keys().collect())
}

/// Keeps the removal entries that verify. A removal takes effect only with a removal entry
/// signed by the recovery key or a verified admin. Vouches, and removal entries by members that
/// are not admins, count only to raise the bound: a member that accepted the removed device's
/// changes before it learned of the removal vouches for them, so that every device converges on
/// the same changes. Nobody signs for itself; forged or foreign entries have no effect.
pub(super) fn verify_removals(
    vault: &VaultId,
    anchors: &TrustAnchors,
    members: &mut BTreeMap<DeviceId, Member>,
    verified: &Verified,
) {
    let keys: BTreeMap<String, ([u8; 32], bool)> = members
        .values()
        .map(|m| (m.device.to_hex(), (m.identity_pub, m.role == Role::Admin)))
        .collect();
    for member in members.values_mut() {
        let own = member.device.to_hex();
        member.removals.retain(|r| {
            let key = if r.by == Recipient::RECOVERY_NAME {
                Some(&anchors.recovery_sign_pub)
            } else if r.by == own {
                None
            } else {
                keys.get(&r.by).map(|(k, _)| k)
            };
            let statement = if r.vouch {
                handoff_protocol::binding::vouch_statement
            } else {
                handoff_protocol::binding::removal_statement
            };
            let statement = statement(vault, &member.device, &r.by, r.at, r.after_seq);
            key.is_some_and(|k| verified.check(k, &statement, &r.sig))
        });
        let decided = member.removals.iter().any(|r| deciding(r, &keys));
        if !decided {
            member.removals.clear();
        }
    }
}

/// Whether a verified entry removes its member: a removal by the recovery key or an admin.
fn deciding(r: &Removal, keys: &BTreeMap<String, ([u8; 32], bool)>) -> bool {
    !r.vouch
        && (r.by == Recipient::RECOVERY_NAME || keys.get(&r.by).is_some_and(|(_, admin)| *admin))
}
