//! Token records: finding one, adding, sealing, revealing, removing, renaming and choosing a
//! service's default. Each write is one signed document change, persisted before it returns.

use handoff_protocol::{EpochId, TokenId};

use super::{Device, DeviceError, Unlocked, check_label};
use crate::doc::schema::{Service, Token, VaultState};
use crate::entropy::unix_now;
use crate::vault::epoch::TokenBinding;
use crate::vault::{Dek, SecretBytes, VaultError, random_array};

impl Device {
    /// Finds a live token by full id, unique id prefix (4+ hex digits) or `SERVICE/LABEL`.
    pub fn find_token<'s>(
        &self,
        state: &'s VaultState,
        query: &str,
    ) -> Result<&'s Token, DeviceError> {
        let matches: Vec<&Token> = if let Some((service, label)) = query.split_once('/') {
            // Two devices can add (or rename to) one label at once: then the label names
            // neither, and the id must be given.
            state
                .live_tokens()
                .filter(|t| t.service.as_str() == service && t.label == label)
                .collect()
        } else {
            let q = query.to_ascii_lowercase();
            if q.len() < 4 || !q.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(DeviceError::TokenNotFound(query.to_string()));
            }
            state
                .live_tokens()
                .filter(|t| t.id.to_hex().starts_with(&q))
                .collect()
        };
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(DeviceError::TokenNotFound(query.to_string())),
            many => Err(DeviceError::AmbiguousToken {
                query: query.to_string(),
                matches: many
                    .iter()
                    .map(|t| t.id.to_hex()[..12].to_string())
                    .collect(),
            }),
        }
    }

    /// Refuses a label another live token of `service` already holds.
    pub fn check_label_free(
        state: &VaultState,
        service: Service,
        label: &str,
    ) -> Result<(), DeviceError> {
        if state
            .live_tokens()
            .any(|t| t.service == service && t.label == label)
        {
            return Err(DeviceError::DuplicateLabel {
                service,
                label: label.to_string(),
            });
        }
        Ok(())
    }

    /// Adds a token (or, with `replace`, changes the secret of an existing SERVICE/LABEL).
    pub fn add_token(
        &mut self,
        key: &Unlocked,
        service: Service,
        label: &str,
        secret: &[u8],
        make_default: bool,
        replace: bool,
    ) -> Result<TokenId, DeviceError> {
        check_label(label)?;
        check_secret(service, secret)?;
        let mut state = self.state()?;
        self.require_token_writer(&state)?;
        let reaches_outsider = |state: &VaultState| {
            state
                .current_epoch()
                .is_some_and(|e| state.reaches_outsider(e))
        };
        if reaches_outsider(&state) {
            // An admin rotates past it now; anyone else must wait for one.
            self.require_admin(&state)
                .map_err(|_| DeviceError::KeyNeedsRotation)?;
            self.upkeep(key)?;
            state = self.state()?;
            if reaches_outsider(&state) {
                return Err(DeviceError::KeyNeedsRotation);
            }
        }
        let epoch = state
            .current_epoch()
            .ok_or(DeviceError::Inconsistent("the vault has no key epoch"))?;
        let dek = self.dek(&state, &epoch.id, key)?;
        let me = self.record.device_id.to_hex();
        let now = unix_now();
        // One pass over the tokens: the one this label names, which only `replace` may reuse.
        let existing = state
            .live_tokens()
            .find(|t| t.service == service && t.label == label);
        if existing.is_some() && !replace {
            return Err(DeviceError::DuplicateLabel {
                service,
                label: label.to_string(),
            });
        }
        let mut token = match existing {
            Some(t) => t.clone(),
            None => Token {
                id: TokenId::from_bytes(random_array()?),
                service,
                label: label.to_string(),
                kind: service.kind_of(secret),
                epoch: epoch.id,
                ciphertext: None,
                created_at: now,
                created_by: me.clone(),
                updated_at: now,
                updated_by: me.clone(),
                deleted: false,
                version: 0,
                verified: true,
                conflicted: false,
                expires_at: None,
                refreshed_at: None,
                lease: None,
            },
        };
        Self::seal_secret(&state, &dek, epoch.id, &mut token, secret, now)?;
        let facts = crate::oauth::facts_of(service, token.kind, secret);
        token.refreshed_at = facts
            .rotates()
            .then(|| facts.refreshed_at.unwrap_or(now).min(now));
        let action = if existing.is_some() {
            "token.edit"
        } else {
            "token.add"
        };
        self.write_token(&state, &mut token)?;
        if make_default || !state.defaults.contains_key(&service) {
            self.write_default(&state, service, Some(&token.id))?;
        }
        self.audit(action, &token.id.to_hex())?;
        // Let go of the state first, so the commit updates it in place instead of copying it.
        drop(state);
        self.doc.commit(action, |m| self.keys.sign(m));
        self.persist()?;
        Ok(token.id)
    }

    /// Seals `secret` into `token` under `epoch` (whose key is `dek`), as written `now`: its
    /// ciphertext, kind, epoch, time and (an OAuth bundle's) access-token expiry.
    pub(super) fn seal_secret(
        state: &VaultState,
        dek: &Dek,
        epoch: EpochId,
        token: &mut Token,
        secret: &[u8],
        now: i64,
    ) -> Result<(), DeviceError> {
        let binding = TokenBinding {
            vault: &state.info.id,
            token: &token.id,
            epoch: &epoch,
            service: token.service.as_str(),
        };
        token.ciphertext = Some(dek.seal_token(binding, secret)?);
        token.kind = token.service.kind_of(secret);
        token.epoch = epoch;
        token.updated_at = now;
        token.expires_at = crate::oauth::facts_of(token.service, token.kind, secret).expires_at;
        Ok(())
    }

    /// Decrypts a token.
    pub fn reveal(&self, key: &Unlocked, query: &str) -> Result<(Token, SecretBytes), DeviceError> {
        let state = self.state()?;
        let token = self.find_token(&state, query)?.clone();
        let sealed = token
            .ciphertext
            .as_deref()
            .ok_or_else(|| DeviceError::TokenNotFound(query.to_string()))?;
        let secret = self.open_sealed(&state, key, &token, sealed)?;
        Ok((token, secret))
    }

    /// Opens `sealed`, the ciphertext of (a version of) `token`.
    pub(super) fn open_sealed(
        &self,
        state: &VaultState,
        key: &Unlocked,
        token: &Token,
        sealed: &[u8],
    ) -> Result<SecretBytes, DeviceError> {
        let dek = self.dek(state, &token.epoch, key)?;
        let binding = TokenBinding {
            vault: &state.info.id,
            token: &token.id,
            epoch: &token.epoch,
            service: token.service.as_str(),
        };
        Ok(dek.open_token(binding, sealed)?)
    }

    /// Deletes a token: the record stays as a tombstone, its ciphertext is dropped. If it was
    /// its service's default and exactly one other token of that service remains, that one
    /// becomes the default.
    pub fn remove_token(&mut self, query: &str) -> Result<Token, DeviceError> {
        let state = self.state()?;
        self.require_token_writer(&state)?;
        let mut token = self.find_token(&state, query)?.clone();
        token.deleted = true;
        token.ciphertext = None;
        token.updated_at = unix_now();
        self.write_token(&state, &mut token)?;
        if state.is_default(&token) {
            let others: Vec<&Token> = state
                .live_tokens()
                .filter(|t| t.service == token.service && t.id != token.id)
                .collect();
            let next = match others.as_slice() {
                [only] => Some(&only.id),
                _ => None,
            };
            self.write_default(&state, token.service, next)?;
        }
        self.audit("token.rm", &token.id.to_hex())?;
        self.doc.commit("token.rm", |m| self.keys.sign(m));
        self.persist()?;
        Ok(token)
    }

    /// Makes a token its service's default.
    pub fn set_default(&mut self, query: &str) -> Result<Token, DeviceError> {
        let state = self.state()?;
        self.require_token_writer(&state)?;
        let token = self.find_token(&state, query)?.clone();
        self.write_default(&state, token.service, Some(&token.id))?;
        self.audit("token.default", &token.id.to_hex())?;
        self.doc.commit("token.default", |m| self.keys.sign(m));
        self.persist()?;
        Ok(token)
    }

    /// Gives a token another label (unique within its service, like a new one's). Its secret
    /// is not touched: no key is needed.
    pub fn rename_token(&mut self, query: &str, label: &str) -> Result<Token, DeviceError> {
        check_label(label)?;
        let state = self.state()?;
        self.require_token_writer(&state)?;
        let mut token = self.find_token(&state, query)?.clone();
        let taken = state
            .live_tokens()
            .any(|t| t.id != token.id && t.service == token.service && t.label == label);
        if taken {
            return Err(DeviceError::LabelTaken {
                service: token.service,
                label: label.to_string(),
            });
        }
        if token.label == label {
            return Ok(token);
        }
        token.label = label.to_string();
        token.updated_at = unix_now();
        self.write_token(&state, &mut token)?;
        self.audit("token.rename", &token.id.to_hex())?;
        self.doc.commit("token.rename", |m| self.keys.sign(m));
        self.persist()?;
        Ok(token)
    }
}

/// Refuses secrets that cannot be what the service expects.
fn check_secret(service: Service, secret: &[u8]) -> Result<(), DeviceError> {
    use crate::doc::TokenKind;
    if secret.is_empty() {
        return Err(DeviceError::InvalidInput(
            "the token is empty (type it at the prompt, pipe it in, or give --from-file F)".into(),
        ));
    }
    let max = handoff_protocol::sealed_token::MAX_PLAINTEXT;
    if secret.len() > max {
        return Err(VaultError::TokenTooLarge {
            len: secret.len(),
            max,
        }
        .into());
    }
    if service.kind_of(secret) == TokenKind::OauthJson {
        // Checks the shape without copying any value into a non-zeroizing String.
        crate::oauth::read(service, secret).map_err(|e| DeviceError::InvalidInput(e.0))?;
    } else if std::str::from_utf8(secret).is_err() || secret.iter().any(|b| b.is_ascii_control()) {
        return Err(DeviceError::InvalidInput(format!(
            "a {service} token is one line of printable text; this input has control characters or invalid UTF-8"
        )));
    }
    Ok(())
}
