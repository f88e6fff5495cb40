//! Signatures this device has already checked, so that a document is not verified again from
//! scratch on every read: every write and every incoming message rebuilds the typed state, and
//! at a thousand tokens a thousand Ed25519 verifications would dominate it.
//!
//! Only successes are kept, as a digest of the key, the statement and the signature: a hit
//! means exactly this key signed exactly this statement, which no later change can make false.
//! The device saves them in its store with each change (`Store::append_change`), as trusted as
//! the pinned anchors beside them, so that opening the vault costs no verification either.

use std::collections::HashSet;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::vault::keys::verify_signature;

/// Domain of the digest a checked signature is remembered by.
const DOMAIN: &[u8] = b"handoff/v1/verified-signature";

/// Past this many remembered signatures the set starts over (a document holds far fewer that
/// still count; superseded versions' signatures pile up otherwise).
pub const MAX_REMEMBERED: usize = 200_000;

/// The signatures checked so far, and the ones not yet saved.
#[derive(Debug, Default)]
pub struct Verified {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    known: HashSet<[u8; 32]>,
    unsaved: Vec<[u8; 32]>,
}

impl Verified {
    /// Starts from digests saved earlier.
    pub fn with(known: impl IntoIterator<Item = [u8; 32]>) -> Self {
        let known: HashSet<[u8; 32]> = known.into_iter().take(MAX_REMEMBERED).collect();
        Self {
            inner: Mutex::new(Inner {
                known,
                unsaved: Vec::new(),
            }),
        }
    }

    /// Whether `signature` by `public` over `statement` verifies (strictly), remembering a
    /// success.
    pub fn check(&self, public: &[u8; 32], statement: &[u8], signature: &[u8]) -> bool {
        let digest = digest(public, statement, signature);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.known.contains(&digest) {
            return true;
        }
        if !verify_signature(public, statement, signature) {
            return false;
        }
        if inner.known.len() >= MAX_REMEMBERED {
            inner.known.clear();
        }
        if inner.unsaved.len() >= MAX_REMEMBERED {
            inner.unsaved.clear(); // signatures of refused messages, never saved
        }
        inner.known.insert(digest);
        inner.unsaved.push(digest);
        true
    }

    /// The digests remembered since the last call, to save.
    pub fn take_unsaved(&self) -> Vec<[u8; 32]> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut inner.unsaved)
    }
}

fn digest(public: &[u8; 32], statement: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(public);
    h.update(
        u64::try_from(signature.len())
            .unwrap_or(u64::MAX)
            .to_be_bytes(),
    );
    h.update(signature);
    h.update(statement);
    h.finalize().into()
}
