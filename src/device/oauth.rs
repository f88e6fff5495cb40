//! Credentials that stay alive (DESIGN §9): the lease that lets one session at a time use a
//! rotating OAuth token, and the write-back that makes what a session refreshed the token's
//! next version.
//!
//! A lease is a signed record beside the token's versions (`tokens.<id>.lease`), written by
//! its holder: acquired by a spawn (a new fence), renewed while the session's supervisor runs,
//! released by the session's last write-back. A write-back (a stash the supervisor left, see
//! `spawn::writeback`) is taken only for the lease it was made under: if the fence moved on
//! (another session took the token with `--take`), what the older session wrote is dropped,
//! so it never overwrites the newer holder's version.

use std::path::Path;

use handoff_protocol::TokenId;
use zeroize::Zeroizing;

use super::{Device, DeviceError, Unlocked, expose};
use crate::doc::schema::{Lease, TokenKind, VaultState};
use crate::entropy::unix_now;
use crate::spawn::writeback::{self, Stash};

/// How long a lease holds without renewal.
pub const LEASE_TTL: i64 = 10 * 60;
/// A running session renews its lease once less than this is left.
const RENEW_WHEN: i64 = LEASE_TTL / 2;
/// How long after a lease lapsed its session's write-back is still taken (if no one took the
/// lease since).
const LEASE_GRACE: i64 = LEASE_TTL;
/// A session's write-backs are at least this far apart (but for its last one).
const WRITE_BACK_EVERY: i64 = 60;
/// Largest bundle written back (real ones are a few KiB).
const WRITE_BACK_MAX: usize = 16 * 1024;

/// What became of a stash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBack {
    /// A new version of the token.
    Written(TokenId),
    /// The file held what the vault holds (or nothing): nothing to write.
    Unchanged,
    /// Refused, and why (the vault keeps its version).
    Refused(String),
    /// Not yet: the token was written back a moment ago (the stash waits for the next call).
    Waiting,
}

impl Device {
    /// Takes `token`'s lease for `session` of this device, now: refused while another session
    /// (of any device) holds it, unless `take`. Returns the new lease (its fence names this
    /// acquisition). Not for tokens that do not rotate.
    pub fn acquire_lease(
        &mut self,
        token: &TokenId,
        session: &str,
        take: bool,
    ) -> Result<Lease, DeviceError> {
        crate::device::check_name(session, "session id")?;
        let state = self.state()?;
        self.require_token_writer(&state)?;
        let current = state
            .tokens
            .get(token)
            .ok_or_else(|| DeviceError::TokenNotFound(token.to_hex()))?;
        let now = unix_now();
        let me = self.record.device_id.to_hex();
        if let Some(held) = current.lease.as_ref().filter(|l| l.live(now))
            && !(held.holder == me && held.session == session)
            && !take
        {
            return Err(DeviceError::Leased {
                token: format!("{}/{}", current.service, current.label),
                holder: holder_name(&state, &held.holder, &me),
                until: held.until,
            });
        }
        let took = current
            .lease
            .as_ref()
            .is_some_and(|l| l.live(now) && l.holder != me);
        let lease = Lease {
            holder: me,
            session: session.to_string(),
            fence: next(current.lease.as_ref().map_or(0, |l| l.fence))?,
            until: now.saturating_add(LEASE_TTL),
            at: now,
            version: next(current.lease.as_ref().map_or(0, |l| l.version))?,
        };
        self.write_lease(&state, token, &lease)?;
        if took {
            self.audit("token.lease-taken", &token.to_hex())?;
        }
        self.doc.commit("token.lease", |m| self.keys.sign(m));
        self.persist()?;
        Ok(lease)
    }

    /// Renews the lease `session` holds on `token` under `fence`, when less than half of it is
    /// left. Returns whether it wrote. Nothing happens to a lease this device does not hold
    /// for that session, or that has ended.
    pub fn renew_lease(
        &mut self,
        token: &TokenId,
        session: &str,
        fence: u64,
    ) -> Result<bool, DeviceError> {
        let state = self.state()?;
        let now = unix_now();
        let Some(held) = self.held(&state, token, session, fence) else {
            return Ok(false);
        };
        if !held.live(now) || held.until - now > RENEW_WHEN {
            return Ok(false);
        }
        let lease = Lease {
            until: now.saturating_add(LEASE_TTL),
            at: now,
            version: next(held.version)?,
            ..held
        };
        self.write_lease(&state, token, &lease)?;
        self.doc.commit("token.lease", |m| self.keys.sign(m));
        self.persist()?;
        Ok(true)
    }

    /// The lease of `token` when this device holds it for `session` under `fence`.
    fn held(
        &self,
        state: &VaultState,
        token: &TokenId,
        session: &str,
        fence: u64,
    ) -> Option<Lease> {
        let me = self.record.device_id.to_hex();
        state
            .tokens
            .get(token)?
            .lease
            .clone()
            .filter(|l| l.holder == me && l.session == session && l.fence == fence)
    }

    /// Writes `lease` as `token`'s lease, signed by this device. Not committed.
    fn write_lease(
        &mut self,
        state: &VaultState,
        token: &TokenId,
        lease: &Lease,
    ) -> Result<(), DeviceError> {
        let statement =
            handoff_protocol::binding::lease_statement(&state.info.id, &lease.signed_fields(token));
        let sig = self.keys.sign(&statement);
        self.doc.put_lease(token, lease, &sig)?;
        Ok(())
    }

    /// Opens and judges the stashes waiting in this home (at most [`writeback::STASHES_MAX`]
    /// per call, oldest first), and removes each it is done with; what each became, for the
    /// log. Of several stashes of one session, only the newest is judged (the file as the agent
    /// last left it); a stash that does not open with this device's key is dropped.
    pub fn take_write_backs(&mut self, key: &Unlocked) -> Vec<WriteBack> {
        let dir = self.home().root().join(writeback::DIR);
        // Bounded per call: a flood of files (an agent can write there) is worked off over
        // several calls.
        let batch: Vec<_> = writeback::waiting(&dir)
            .into_iter()
            .take(writeback::STASHES_MAX)
            .map(|path| {
                let stash = open_stash(key, &path);
                (path, stash)
            })
            .collect();
        let newest_of = |i: usize, stash: &Stash| {
            !batch[i + 1..].iter().any(|(_, later)| {
                later.as_ref().is_ok_and(|l| {
                    l.token == stash.token && l.session == stash.session && l.fence == stash.fence
                })
            })
        };
        let mut done = Vec::new();
        for (i, (path, stash)) in batch.iter().enumerate() {
            let outcome = match stash {
                Err(why) => WriteBack::Refused(why.clone()),
                Ok(stash) if !newest_of(i, stash) => WriteBack::Unchanged,
                Ok(stash) => self.take_one(key, stash),
            };
            match &outcome {
                WriteBack::Written(id) => {
                    tracing::info!(token = %id.to_hex(), "a refreshed credential was written back");
                }
                WriteBack::Refused(why) => {
                    tracing::warn!(why = %why, "a write-back was refused; the vault keeps its version");
                }
                WriteBack::Unchanged | WriteBack::Waiting => {}
            }
            if outcome != WriteBack::Waiting {
                let _ = std::fs::remove_file(path);
            }
            done.push(outcome);
        }
        done
    }

    fn take_one(&mut self, key: &Unlocked, stash: &Stash) -> WriteBack {
        let Ok(token) = stash.token.parse::<TokenId>() else {
            return WriteBack::Refused("the stash names no token".into());
        };
        let outcome = self.write_back(key, &token, stash).unwrap_or_else(|e| {
            self.rollback();
            WriteBack::Refused(e.to_string())
        });
        if stash.last
            && let Err(e) = self.release_lease(&token, &stash.session, stash.fence)
        {
            self.rollback();
            tracing::warn!(error = %e, "could not release a lease");
        }
        outcome
    }

    /// The stash's bundle as the token's next version, if it may be: the session still holds
    /// the lease it was made under, the bundle is of the same kind with a refresh token, names
    /// the same account as the version it replaces (when that one names an account), and
    /// differs from what the vault holds.
    fn write_back(
        &mut self,
        key: &Unlocked,
        id: &TokenId,
        stash: &Stash,
    ) -> Result<WriteBack, DeviceError> {
        let refused = |why: &str| Ok(WriteBack::Refused(why.to_string()));
        let Some(content) = stash.content.as_ref().filter(|c| !c.is_empty()) else {
            return Ok(WriteBack::Unchanged);
        };
        if content.len() > WRITE_BACK_MAX {
            return refused("the file is larger than any login bundle");
        }
        let state = self.state()?;
        let now = unix_now();
        // The lease must still be the session's: live, or lapsed a short while ago with no
        // one else holding it since (the session's supervisor was killed, or the daemon was
        // locked when it ended). A released lease takes nothing more.
        let Some(lease) = self.held(&state, id, &stash.session, stash.fence) else {
            return refused("its session no longer holds the token's lease");
        };
        if lease.until == 0 || now > lease.until.saturating_add(LEASE_GRACE) {
            return refused("its session's lease has ended");
        }
        let Some(token) = state.tokens.get(id).filter(|t| !t.deleted).cloned() else {
            return refused("the token is gone");
        };
        // One write-back a minute per session, however often the file changes: a change a
        // moment after the session's own last write-back (the token written since the lease
        // was taken or renewed) waits; the first is taken at once, and so is the last stash.
        let recent = (0..WRITE_BACK_EVERY).contains(&now.saturating_sub(token.updated_at));
        if !stash.last && recent && token.updated_at > lease.at {
            return Ok(WriteBack::Waiting);
        }
        if token.service.kind_of(content) != token.kind || token.kind != TokenKind::OauthJson {
            return refused("the file is not a bundle of the token's kind");
        }
        let Ok(new) = crate::oauth::read(token.service, content) else {
            return refused("the file is not a bundle of the token's kind");
        };
        if !new.rotates() {
            return refused("the file has no refresh token");
        }
        let (_, old_secret) = self.reveal(key, &id.to_hex())?;
        let old_secret = expose(&old_secret);
        if old_secret == content.as_slice() {
            return Ok(WriteBack::Unchanged);
        }
        // A login that names its account must keep naming the same one: an agent cannot swap
        // in a login of its own that later sessions would use.
        let old = crate::oauth::read(token.service, old_secret).unwrap_or_default();
        if old.account.is_some() && new.account != old.account {
            return refused("the file is not for the login's account");
        }
        // Nothing a later session needs changed (the agent rewrote the file with the same
        // refresh token and no later expiry): no new version.
        if new.refresh == old.refresh && new.expires_at <= old.expires_at {
            return Ok(WriteBack::Unchanged);
        }
        let epoch = state
            .current_epoch()
            .filter(|e| !state.reaches_outsider(e))
            .ok_or(DeviceError::KeyNeedsRotation)?;
        let dek = self.dek(&state, &epoch.id, key)?;
        let mut token = token;
        Self::seal_secret(&state, &dek, epoch.id, &mut token, content, now)?;
        if new.refresh != old.refresh || token.refreshed_at.is_none() {
            token.refreshed_at = Some(now);
        }
        self.write_token(&state, &mut token)?;
        self.audit("token.refresh", &id.to_hex())?;
        self.doc.commit("token.refresh", |m| self.keys.sign(m));
        self.persist()?;
        Ok(WriteBack::Written(*id))
    }

    /// Ends the lease `session` holds on `token` under `fence` (nothing if it holds none).
    fn release_lease(
        &mut self,
        token: &TokenId,
        session: &str,
        fence: u64,
    ) -> Result<(), DeviceError> {
        let state = self.state()?;
        let Some(held) = self.held(&state, token, session, fence) else {
            return Ok(());
        };
        if held.until == 0 {
            return Ok(());
        }
        let lease = Lease {
            until: 0,
            at: unix_now(),
            version: next(held.version)?,
            ..held
        };
        self.write_lease(&state, token, &lease)?;
        self.doc.commit("token.lease", |m| self.keys.sign(m));
        self.persist()
    }
}

/// A lease holder as the user knows it: its device name, or "this device".
fn holder_name(state: &VaultState, holder: &str, me: &str) -> String {
    if holder == me {
        return "another session on this device".into();
    }
    holder
        .parse()
        .ok()
        .and_then(|d| state.members.get(&d))
        .map_or_else(|| format!("device {holder}"), |m| m.name.clone())
}

fn next(seen: u64) -> Result<u64, DeviceError> {
    seen.checked_add(1).ok_or(DeviceError::InvalidInput(
        "this lease's counter is spent".into(),
    ))
}

/// Reads and opens the stash at `path`, or why not.
fn open_stash(key: &Unlocked, path: &Path) -> Result<Stash, String> {
    let sealed = writeback::read_stash(path).ok_or("the stash cannot be read, or is too large")?;
    let (_, plain) = crate::vault::envelope::open(&key.0.to_bytes(), &sealed)
        .map_err(|_| "the stash does not open with this device's key")?;
    let plain = Zeroizing::new(plain);
    ciborium::from_reader::<Stash, _>(plain.as_slice())
        .map_err(|_| "the stash does not decode".to_string())
}
