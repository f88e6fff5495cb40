//! Which records a set of new changes wrote in, found from their ops: what lets a write or an
//! incoming message re-read only those records (`read::delta`) instead of the whole document.
//!
//! Each section of the state is a function of its own part of the document and of sections
//! read before it: members of `members` and the anchors, epochs of `epochs` and the members, a
//! token of its record and the members and epochs, the defaults of `defaults` and the tokens,
//! an audit entry of its map and the members. So changes whose ops all land inside token
//! records, `defaults` or audit entries leave every other section as it was, and each token
//! record or audit entry they did not touch reads as before. An op anywhere else (the root, the
//! vault, members, epochs, relays, or an object that is not under the document's own `tokens`,
//! `defaults` or `audit`) leaves only a whole read sound.

use std::collections::{BTreeSet, HashSet};

use automerge::{AutoCommit, ObjId, Prop, ReadDoc};
use handoff_protocol::TokenId;

/// The records new changes wrote in.
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// Token records, by their key under `tokens` (always a token id in its canonical form).
    pub(super) tokens: BTreeSet<String>,
    /// Audit entries some op made or wrote in, by object id.
    pub(super) audit: HashSet<ObjId>,
    /// Whether any op landed in the audit log (an entry added, trimmed or written in).
    pub(super) audit_changed: bool,
}

/// Where an op wrote: its object (by the op that made it, and as an id of `doc`), and the
/// path from the root down to it, each object with the key under it.
struct Place {
    op: automerge::legacy::OpId,
    obj: ObjId,
    path: Vec<(ObjId, Prop)>,
}

/// The records `changes` (applied to `doc`) wrote in, or `None` when an op landed outside the
/// records read one by one.
pub(super) fn touched_by(doc: &AutoCommit, changes: &[automerge::Change]) -> Option<Touched> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let section = |key: &str| match doc.get(automerge::ROOT, key) {
        Ok(Some((_, id))) => Some(id),
        _ => None,
    };
    let (tokens, defaults, audit) = (section("tokens")?, section("defaults")?, section("audit")?);
    let mut touched = Touched::default();
    for change in changes {
        let actor = change.actor_id();
        let start = change.start_op().get();
        // Consecutive ops mostly write in one object: find its place once.
        let mut last: Option<Place> = None;
        for (i, op) in change.decode().operations.iter().enumerate() {
            let ObjectId::Id(target) = &op.obj else {
                return None; // the root
            };
            if last.as_ref().is_none_or(|place| place.op != *target) {
                let (obj, _) = doc.import(&format!("{}@{}", target.0, target.1)).ok()?;
                let path = doc.parents(&obj).ok()?.path();
                last = Some(Place {
                    op: target.clone(),
                    obj,
                    path,
                });
            }
            let Place { obj, path, .. } = last.as_ref()?;
            // `path` runs from the root down to `obj`: each object with the key under it.
            let top = path.get(1).map_or(obj, |(o, _)| o);
            if *top == tokens {
                let key = match (path.get(1), &op.key) {
                    (Some((_, Prop::Map(key))), _) => key.as_str(),
                    (None, Key::Map(key)) => key.as_str(),
                    _ => return None,
                };
                // A key that is not a token id as this build writes it is read whole, so that
                // two spellings of one id are judged as the whole read judges them.
                let canonical = key.parse::<TokenId>().is_ok_and(|id| id.to_string() == key);
                if !canonical {
                    return None;
                }
                touched.tokens.insert(key.to_string());
            } else if *top == audit {
                touched.audit_changed = true;
                match path.get(2) {
                    Some((entry, _)) => {
                        touched.audit.insert(entry.clone());
                    }
                    None if path.len() == 2 => {
                        touched.audit.insert(obj.clone());
                    }
                    // On the list itself: an insert makes an entry whose id is the op's own.
                    None if matches!(op.action, OpType::Make(_)) => {
                        let counter = start + u64::try_from(i).ok()?;
                        let (made, _) = doc.import(&format!("{counter}@{actor}")).ok()?;
                        touched.audit.insert(made);
                    }
                    None => {}
                }
            } else if *top != defaults {
                return None;
            }
        }
    }
    Some(touched)
}
