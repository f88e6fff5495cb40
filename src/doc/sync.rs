//! Automerge's sync protocol on the vault document: the messages this device sends, and a
//! peer's messages, whose changes are kept only if they validate, as `ingest` does.

use super::{DocError, VaultDoc, check_size, chunks, contain};

impl VaultDoc {
    /// The next Automerge sync message for a peer, or `None` when it has nothing to learn.
    /// Without `with_changes`, the message says only what this document has and needs (its
    /// heads, a summary, requests), so a peer that refuses our changes can still send us its
    /// own. The peer's side of the state comes from its messages, so the engine runs contained
    /// here too: on a failure the session starts afresh instead of the process going down.
    pub fn sync_message(
        &mut self,
        state: &mut automerge::sync::State,
        with_changes: bool,
    ) -> Option<Vec<u8>> {
        use automerge::sync::SyncDoc;
        if self.is_lost() {
            return None;
        }
        self.settle();
        let doc = &mut self.doc;
        let generated = contain::contained(|| {
            Ok(doc.sync().generate_sync_message(state).map(|mut message| {
                if !with_changes {
                    message.changes = Vec::<Vec<u8>>::new().into();
                }
                message.encode()
            }))
        });
        generated.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not build a sync message; starting the session afresh");
            *state = automerge::sync::State::new();
            None
        })
    }

    /// A sync message that asks the peer for every change it holds, and to forget which it
    /// sent already: after [`DocError::Incomplete`], so that the next message is judged on
    /// the peer's whole document. (An empty `have` is how Automerge itself asks for
    /// everything when it has lost track.)
    pub fn ask_everything(&mut self) -> Vec<u8> {
        self.settle();
        let mut flags = automerge::sync::MessageFlags::new();
        flags.set(automerge::sync::MessageFlags::SUPPORTS_SYNC_RESET);
        flags.set(automerge::sync::MessageFlags::SYNC_RESET);
        automerge::sync::Message {
            heads: self.doc.get_heads(),
            need: Vec::new(),
            have: vec![automerge::sync::Have::default()],
            changes: Vec::<Vec<u8>>::new().into(),
            flags: Some(flags),
            version: automerge::sync::MessageVersion::V1,
        }
        .encode()
    }

    /// Receives a peer's sync message and keeps its changes only if they validate as
    /// [`ingest`](Self::ingest) does; on any error neither the document nor `state` changes.
    /// Tried on the document itself, or on a fork for a while after a refusal (see
    /// [`Self::try_in_place`]). Returns how many changes were new.
    pub fn receive_sync(
        &mut self,
        state: &mut automerge::sync::State,
        message: &[u8],
    ) -> Result<usize, DocError> {
        use automerge::sync::SyncDoc;
        self.usable()?;
        self.settle();
        check_size(message.len())?;
        let message = contain::contained(|| {
            automerge::sync::Message::decode(message)
                .map_err(|e| DocError::Damaged(format!("unreadable sync message ({e})")))
        })?;
        if message.changes.is_empty() {
            // Heads, needs and bloom filters only: the document cannot change, so there is
            // nothing to validate and no fork to make. The state changes only on success.
            let doc = &mut self.doc;
            let mut next = state.clone();
            contain::contained(|| {
                doc.sync()
                    .receive_sync_message(&mut next, message)
                    .map_err(|e| DocError::Damaged(e.to_string()))
            })?;
            *state = next;
            return Ok(0);
        }
        for chunk in message.changes.iter() {
            chunks::check_framing(chunk)?;
        }
        if self.in_place_allowed(message.changes.iter()) {
            let mut next = state.clone();
            let theirs = message.heads.clone();
            let (count, ()) = self.try_in_place(
                |doc| {
                    doc.sync()
                        .receive_sync_message(&mut next, message)
                        .map_err(|e| DocError::Damaged(e.to_string()))
                },
                |doc, judged, ()| {
                    judged.map_err(|refused| incomplete_unless(doc, &theirs, refused))
                },
            )?;
            *state = next;
            return Ok(count);
        }
        let mut next = state.clone();
        let (trial, bench) = self.trial()?;
        let (heads, waiting, mut fork) = (trial.heads, trial.waiting, trial.fork);
        let before = &heads;
        let (fork, next, judged, whole) = contain::contained(move || {
            let theirs = message.heads.clone();
            fork.sync()
                .receive_sync_message(&mut next, message)
                .map_err(|e| DocError::Damaged(e.to_string()))?;
            if fork.get_missing_deps(&[]).len() > waiting {
                return Err(DocError::Incomplete {
                    refused: Box::new(DocError::Waiting),
                });
            }
            let (judged, whole) = Self::judge_fork(&mut fork, before, &bench);
            let judged = judged.map_err(|refused| incomplete_unless(&mut fork, &theirs, refused));
            Ok((fork, next, judged, whole))
        })?;
        self.cross_check(&judged, whole.as_ref());
        let (count, valid) = judged?;
        self.doc = fork;
        self.take_next(valid);
        self.raise_tops(&heads);
        *state = next;
        Ok(count)
    }
}

/// A refusal of a message whose sender's heads are not all in `doc` now says the message was
/// incomplete: only the sender's heads count, since changes queued earlier for parents that
/// never came say nothing of this message.
fn incomplete_unless(
    doc: &mut automerge::AutoCommit,
    theirs: &[automerge::ChangeHash],
    refused: DocError,
) -> DocError {
    if theirs
        .iter()
        .all(|h| doc.get_change_meta_by_hash(h).is_some())
    {
        refused
    } else {
        DocError::Incomplete {
            refused: Box::new(refused),
        }
    }
}
