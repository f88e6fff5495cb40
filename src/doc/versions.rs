//! A token record's versions: the valid ones it holds now (what `token resolve` offers after
//! concurrent writes) and every valid one it ever held (`token history`). Both are read with
//! the same checks as the state: a version counts only when its writer, a member whose role
//! writes tokens, signed it under its own actor.

use automerge::legacy::{Key, ObjectId, OpId};
use automerge::{ObjType, ReadDoc, Value};
use handoff_protocol::TokenId;

use super::read::{Fields, Writers, signed_version};
use super::{DocError, Token, VaultDoc, VaultState};

impl VaultDoc {
    /// The valid versions `tokens.<id>.current` holds now, newest first (highest version, then
    /// time, then writer: the order the state picks by, so the first is the one it shows,
    /// unless a deletion stands among them). More than one only after concurrent writes.
    pub fn token_versions(&self, state: &VaultState, id: &TokenId) -> Result<Vec<Token>, DocError> {
        let Some(record) = self.record(id)? else {
            return Ok(Vec::new());
        };
        let writers = writers(state, self);
        let mut versions = Vec::new();
        for (value, obj) in record.all("current")? {
            if matches!(value, Value::Object(ObjType::Map))
                && let Some(t) = signed_version(*id, &record.object_at("current", &obj), &writers)?
            {
                versions.push(t);
            }
        }
        versions.sort_by(newest_first);
        Ok(versions)
    }

    /// Every valid version the record ever held, oldest first: the ones later writes replaced
    /// stay in the document's history, and are read from there.
    pub fn token_history(
        &mut self,
        state: &VaultState,
        id: &TokenId,
    ) -> Result<Vec<Token>, DocError> {
        let Some(automerge::ObjId::Id(counter, actor, _)) =
            self.record(id)?.map(|r| r.id().clone())
        else {
            return Ok(Vec::new());
        };
        let parent = ObjectId::Id(OpId(counter, actor));
        // Reading the changes commits pending ops implicitly: drop any first, as every path
        // that reads changes does (such a change would carry no attestation).
        self.settle();
        let current = Key::Map("current".into());
        // Each version is a map made under `current`; its id is the op that made it.
        let mut made = Vec::new();
        for change in self.doc.get_changes(&[]) {
            let start = change.start_op().get();
            let actor = change.actor_id().to_hex_string();
            for (i, op) in change.decode().operations.iter().enumerate() {
                if op.obj == parent
                    && op.key == current
                    && op.action == automerge::legacy::OpType::Make(ObjType::Map)
                {
                    made.push(format!("{}@{actor}", start + i as u64));
                }
            }
        }
        let Some(record) = self.record(id)? else {
            return Ok(Vec::new());
        };
        let writers = writers(state, self);
        let mut versions = Vec::new();
        for op in made {
            // A version later replaced was never judged by ingest (only what stands is): one
            // that does not even read is skipped, like one whose signature fails.
            let Ok((obj, ObjType::Map)) = self.doc.import(&op) else {
                continue;
            };
            if let Ok(Some(t)) = signed_version(*id, &record.object_at("current", &obj), &writers) {
                versions.push(t);
            }
        }
        versions.sort_by(|a, b| newest_first(b, a));
        Ok(versions)
    }

    /// `tokens.<id>`, if the document has it.
    fn record(&self, id: &TokenId) -> Result<Option<Fields<'_>>, DocError> {
        let Some((Value::Object(ObjType::Map), tokens)) =
            self.doc.get(automerge::ROOT, "tokens")?
        else {
            return Ok(None);
        };
        let key = id.to_hex();
        let Some((Value::Object(ObjType::Map), record)) = self.doc.get(&tokens, key.as_str())?
        else {
            return Ok(None);
        };
        Ok(Some(Fields::new(
            &self.doc,
            record,
            format!("tokens.{key}"),
        )))
    }
}

fn writers<'a>(state: &'a VaultState, doc: &'a VaultDoc) -> Writers<'a> {
    Writers {
        vault: &state.info.id,
        members: &state.members,
        verified: &doc.verified,
    }
}

/// Newest first: the higher version, then the later time, then the greater writer.
fn newest_first(a: &Token, b: &Token) -> std::cmp::Ordering {
    (b.version, b.updated_at, &b.updated_by).cmp(&(a.version, a.updated_at, &a.updated_by))
}
