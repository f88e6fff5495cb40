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

use std::collections::{BTreeSet, HashMap, HashSet};

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

/// How many values a batch's ops overwrite outside it, found by reading the document as of
/// its old heads, before the batch is read whole instead (an honest write overwrites one or
/// two: a record's current version, a default).
const READS_AT_HEADS_MAX: usize = 64;

/// The document as it was before the changes: a copy of it that they were not applied to,
/// or the document they were applied to, read as of its heads from before them.
#[derive(Clone, Copy)]
pub(super) enum Before<'a> {
    Doc(&'a AutoCommit),
    At(&'a [automerge::ChangeHash]),
}

impl Before<'_> {
    /// The ids of every value at `key` of `obj` before the changes (`doc` holds them).
    fn ids_at(self, doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<Vec<ObjId>> {
        let all = match self {
            Before::Doc(before) => before.get_all(obj, key),
            Before::At(heads) => doc.get_all_at(obj, key, heads),
        };
        Some(all.ok()?.into_iter().map(|(_, id)| id).collect())
    }

    /// The object `obj` was in before the changes. An object's parent is where the op that
    /// made it put it, whatever the heads, so the document the changes were applied to is
    /// asked as it is (a read as of old heads would walk the whole list).
    fn parent(self, doc: &AutoCommit, obj: &ObjId) -> Option<automerge::Parent> {
        match self {
            Before::Doc(before) => before.parents(obj).ok()?.next(),
            Before::At(_) => doc.parents(obj).ok()?.next(),
        }
    }
}

/// Where an op wrote: its object (by the op that made it, and as an id of `doc`), and the
/// path from the root down to it, each object with the key under it.
struct Place {
    op: automerge::legacy::OpId,
    obj: ObjId,
    path: Vec<(ObjId, Prop)>,
}

/// The deepest object an honest write lands in: a token version's or lease's map
/// (`tokens.ID.current`), below the root's section and the record. Deeper objects are read
/// whole, so that no change makes finding its ops' places cost more than its ops.
const DEEPEST: usize = 3;

/// The records `changes` (applied to `doc`) wrote in, or `None` when an op landed outside the
/// records read one by one, or may have changed what it does not land in.
///
/// An op's `pred` names the ops it overwrites, and Automerge takes it at its word wherever
/// those ops are: a put in one record that names another record's ops as its predecessors
/// deletes them. So against `before` (the document the changes were applied to), every
/// predecessor must be a value at the op's own key, or an op of the changes themselves
/// (whose places count as touched already). Without `before` (this device's own commit,
/// whose ops Automerge made from what it saw), predecessors are not checked.
pub(super) fn touched_by(
    doc: &AutoCommit,
    before: Option<Before<'_>>,
    changes: &[automerge::Change],
) -> Option<Touched> {
    use automerge::legacy::{ElementId, Key, ObjectId, OpType};
    // Each actor's op counter ranges the changes use, in order, to look an op up by halving.
    let mut batch: HashMap<&automerge::ActorId, Vec<(u64, u64)>> = HashMap::new();
    for c in changes {
        batch
            .entry(c.actor_id())
            .or_default()
            .push((c.start_op().get(), c.max_op()));
    }
    for ranges in batch.values_mut() {
        ranges.sort_unstable();
    }
    // (Overlapping ranges, which only a crafted batch has, can make an op of the batch look
    // foreign here: then it must be a value at its key, or the batch is read whole.)
    let in_batch = |op: &automerge::legacy::OpId| {
        batch.get(&op.1).is_some_and(|ranges| {
            let after = ranges.partition_point(|(start, _)| *start <= op.0);
            after > 0 && ranges[after - 1].1 >= op.0
        })
    };
    let section = |key: &str| match doc.get(automerge::ROOT, key) {
        Ok(Some((_, id))) => Some(id),
        _ => None,
    };
    let (tokens, defaults, audit) = (section("tokens")?, section("defaults")?, section("audit")?);
    let mut touched = Touched::default();
    let mut reads_at_heads = 0;
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
                let mut path: Vec<(ObjId, Prop)> = doc
                    .parents(&obj)
                    .ok()?
                    .take(DEEPEST + 1)
                    .map(|p| (p.obj, p.prop))
                    .collect();
                if path.len() > DEEPEST {
                    return None;
                }
                path.reverse();
                last = Some(Place {
                    op: target.clone(),
                    obj,
                    path,
                });
            }
            let Place { obj, path, .. } = last.as_ref()?;
            // A list key only on the audit list, a map key everywhere else: Automerge walks a
            // whole map for a key of the other kind, applying predecessors on the way.
            if (*obj == audit) != matches!(op.key, Key::Seq(_)) {
                return None;
            }
            if let Some(before) = before {
                let foreign: Vec<&automerge::legacy::OpId> =
                    op.pred.iter().filter(|p| !in_batch(p)).collect();
                if !foreign.is_empty() {
                    let at_key: Vec<ObjId> = match &op.key {
                        Key::Map(key) => {
                            // Each read as of old heads costs a pass over the change graph:
                            // past a bound, a batch is read whole instead.
                            if matches!(before, Before::At(_)) {
                                reads_at_heads += 1;
                                if reads_at_heads > READS_AT_HEADS_MAX {
                                    return None;
                                }
                            }
                            before.ids_at(doc, obj, key.as_str())?
                        }
                        // A delete on the list removes the entry it names, and only it: one
                        // that is an entry of this list.
                        Key::Seq(ElementId::Id(element)) => {
                            let entry = ObjId::Id(element.0, element.1.clone(), 0);
                            let parent = before.parent(doc, &entry)?;
                            if parent.obj != *obj {
                                return None;
                            }
                            vec![entry]
                        }
                        Key::Seq(ElementId::Head) => return None,
                    };
                    let all_there = foreign.iter().all(|p| {
                        let id = ObjId::Id(p.0, p.1.clone(), 0);
                        at_key.contains(&id)
                    });
                    if !all_there {
                        return None;
                    }
                }
            }
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
