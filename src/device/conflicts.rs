//! Concurrent edits of one token, settled by the person: the versions that stand, each named by
//! a short code every device computes alike, and `resolve`, which keeps one as the record's next
//! version (so the conflict is gone wherever the change arrives). The replaced versions stay in
//! the document's history (`history`).

use handoff_protocol::VaultId;
use sha2::{Digest, Sha256};

use super::{Device, DeviceError, Unlocked};
use crate::doc::schema::Token;
use crate::entropy::unix_now;
use crate::vault::SecretBytes;

/// A version's code: the first 12 hex digits of the SHA-256 of what its writer signed.
pub fn version_code(vault: &VaultId, t: &Token) -> String {
    let statement = handoff_protocol::binding::token_version_statement(vault, &t.signed_fields());
    let digest = Sha256::digest(statement);
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Device {
    /// A live token and the valid versions its record holds now, newest first.
    pub fn token_versions(&self, query: &str) -> Result<(Token, Vec<Token>), DeviceError> {
        let state = self.state()?;
        let token = self.find_token(&state, query)?.clone();
        let versions = self.doc.token_versions(&state, &token.id)?;
        Ok((token, versions))
    }

    /// A live token and every valid version its record ever held, oldest first.
    pub fn token_history(&mut self, query: &str) -> Result<(Token, Vec<Token>), DeviceError> {
        let state = self.state()?;
        let token = self.find_token(&state, query)?.clone();
        let versions = self.doc.token_history(&state, &token.id)?;
        Ok((token, versions))
    }

    /// The secret a version holds (under whichever epoch it was sealed).
    pub fn open_version(&self, key: &Unlocked, t: &Token) -> Result<SecretBytes, DeviceError> {
        let state = self.state()?;
        let sealed = t
            .ciphertext
            .as_deref()
            .ok_or_else(|| DeviceError::TokenNotFound(t.id.to_hex()))?;
        self.open_sealed(&state, key, t, sealed)
    }

    /// Settles a conflicted token: the version `keep` names (see [`Self::pick_version`])
    /// becomes the record's next version, signed by this device. Returns the token as it now
    /// reads and the version kept.
    pub fn resolve_token(
        &mut self,
        query: &str,
        keep: &str,
    ) -> Result<(Token, Token), DeviceError> {
        let state = self.state()?;
        self.require_token_writer(&state)?;
        let (token, versions) = self.token_versions(query)?;
        if !token.conflicted {
            return Err(DeviceError::InvalidInput(format!(
                "{}/{} has no conflict to resolve",
                token.service, token.label
            )));
        }
        let chosen = self.pick_version(&state, &versions, keep)?;
        super::check_label(&chosen.label)?;
        let label_taken = state
            .live_tokens()
            .any(|t| t.id != token.id && t.service == chosen.service && t.label == chosen.label);
        if label_taken {
            return Err(DeviceError::LabelTaken {
                service: chosen.service,
                label: chosen.label.clone(),
            });
        }
        let mut kept = chosen.clone();
        // The next version after the highest any device wrote, so it supersedes them all.
        kept.version = token.version;
        kept.updated_at = unix_now();
        kept.lease = None;
        self.write_token(&state, &mut kept)?;
        self.audit("token.resolve", &token.id.to_hex())?;
        self.doc.commit("token.resolve", |m| self.keys.sign(m));
        self.persist()?;
        let now = self.state()?;
        let resolved = now
            .tokens
            .get(&token.id)
            .cloned()
            .ok_or(DeviceError::Inconsistent("the resolved token vanished"))?;
        Ok((resolved, chosen.clone()))
    }

    /// The version `keep` names: a code (or a prefix of 6+ hex digits of one) or the device
    /// that wrote it; refused unless exactly one version answers to it. No position in a list:
    /// a member can re-sign its version between the listing and the resolve and so reorder it.
    fn pick_version<'v>(
        &self,
        state: &crate::doc::VaultState,
        versions: &'v [Token],
        keep: &str,
    ) -> Result<&'v Token, DeviceError> {
        let codes: Vec<String> = versions
            .iter()
            .map(|t| version_code(&state.info.id, t))
            .collect();
        let listed = || codes.join(", ");
        let code = keep.to_ascii_lowercase();
        let by_code = code.len() >= 6 && code.chars().all(|c| c.is_ascii_hexdigit());
        let mut found: Vec<&Token> = versions
            .iter()
            .zip(&codes)
            .filter(|(_, c)| by_code && c.starts_with(&code))
            .map(|(t, _)| t)
            .collect();
        if let Ok(writer) = self.find_member(state, keep) {
            let writer = writer.device.to_hex();
            found.extend(versions.iter().filter(|t| t.updated_by == writer));
        }
        found.dedup_by(|a, b| std::ptr::eq(*a, *b));
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(DeviceError::InvalidInput(format!(
                "no version of this token is '{keep}': give one's code ({}) or the device that wrote it",
                listed()
            ))),
            _ => Err(DeviceError::InvalidInput(format!(
                "'{keep}' names several versions: give one's whole code ({})",
                listed()
            ))),
        }
    }
}
