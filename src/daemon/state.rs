//! What the daemon holds (the device, the vault key while unlocked) and the operations it runs
//! on it. One mutex guards it, shared by control connections and the mesh (as its
//! [`Host`](crate::net::Host)), so the document sees one operation at a time exactly as if one
//! CLI process ran them.

use std::sync::Mutex;
use std::time::Duration;

use crate::device::{Device, Unlocked};
use crate::entropy::unix_now;
use crate::net::{Host, NetView, Stats};
use crate::ops::views::SyncView;
use crate::ops::{self, Around, Op, OpError, Outcome, Secret, Tier};

/// Longest an unlock may last.
const MAX_UNLOCK: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default unlock duration.
pub const DEFAULT_UNLOCK: Duration = Duration::from_secs(8 * 3600);

/// The daemon's device and key.
pub(super) struct State {
    pub device: Device,
    key: Option<Unlocked>,
    /// Unix time the unlock lasts until.
    pub until: Option<i64>,
    /// Bumped on every unlock and lock, so a stale timer does not lock a newer unlock.
    pub generation: u64,
}

/// Takes the state even if a request panicked while holding it: a poisoned lock must not
/// leave the vault unlocked with no way to lock it.
pub(super) fn lock_state(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Host for Mutex<State> {
    fn lend(&self, f: &mut dyn FnMut(&mut Device, Option<&Unlocked>)) {
        let mut state = lock_state(self);
        state.expire();
        let State { device, key, .. } = &mut *state;
        f(device, key.as_ref());
    }
}

impl State {
    /// Takes the write-backs waiting in the home when unlocked (they wait for the next unlock
    /// otherwise). Returns how many were taken.
    pub fn take_write_backs(&mut self) -> usize {
        self.expire();
        let State { device, key, .. } = self;
        key.as_ref()
            .map_or(0, |key| device.take_write_backs(key).len())
    }

    /// The vault key, while unlocked.
    pub fn key(&self) -> Option<&Unlocked> {
        self.key.as_ref()
    }

    pub fn new(device: Device) -> Self {
        Self {
            device,
            key: None,
            until: None,
            generation: 0,
        }
    }

    pub fn lock(&mut self) {
        self.key = None; // Unlocked zeroizes on drop
        self.until = None;
        self.generation += 1;
    }

    /// Locks if the deadline has passed (the timer normally does this; this is the backstop).
    pub fn expire(&mut self) {
        if self.until.is_some_and(|until| unix_now() >= until) {
            self.lock();
        }
    }

    /// Runs `f` with the vault key: the unlocked one, or a one-shot unlock with `passphrase`.
    fn with_key<T>(
        &mut self,
        passphrase: Option<Secret>,
        f: impl FnOnce(&mut Device, &Unlocked) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        self.expire();
        if let Some(key) = &self.key {
            return f(&mut self.device, key);
        }
        let Some(passphrase) = passphrase else {
            return Err(OpError::Locked(
                "run `handoff unlock`, or give the passphrase".into(),
            ));
        };
        let key = self.device.unlock(&passphrase)?;
        f(&mut self.device, &key)
    }

    /// The vault key from `passphrase` given now, whether or not the daemon is unlocked: for
    /// what needs the passphrase on every call ([`Tier::Fresh`]).
    pub fn fresh_key(&mut self, passphrase: Option<Secret>) -> Result<Unlocked, OpError> {
        let Some(passphrase) = passphrase else {
            return Err(OpError::Locked(
                "this needs the passphrase every time, even while unlocked".into(),
            ));
        };
        Ok(self.device.unlock(&passphrase)?)
    }

    /// Runs one operation: checked, then with the key if it needs one (the unlocked one, or a
    /// one-shot unlock with `passphrase`). What only the daemon knows is added to the outcome.
    pub fn run(
        &mut self,
        op: Op,
        passphrase: Option<Secret>,
        net: &NetView,
        stats: Stats,
    ) -> Result<Outcome, OpError> {
        self.expire();
        let around = Around {
            online: Some(&net.online),
        };
        let outcome = if op.tier() == Tier::Fresh {
            op.check(&self.device)?;
            let key = self.fresh_key(passphrase)?;
            ops::apply(&mut self.device, Some(&key), op, &around)?
        } else if op.needs_key() {
            op.check(&self.device)?;
            self.with_key(passphrase, |device, key| {
                ops::apply(device, Some(key), op, &around)
            })?
        } else {
            ops::apply(&mut self.device, None, op, &around)?
        };
        Ok(match outcome {
            Outcome::Status(mut view) => {
                view.daemon_pid = Some(std::process::id());
                view.unlocked_until = self.until;
                view.listen = net.listen.iter().map(ToString::to_string).collect();
                view.online = net.online.len();
                view.offer_open = net.offer.is_some();
                view.sync = Some(SyncView {
                    frames_sent: stats.frames_sent,
                    frames_received: stats.frames_received,
                });
                Outcome::Status(view)
            }
            other => other,
        })
    }

    /// Keeps the vault key for `duration` (at most a week), after the upkeep a locked daemon
    /// could not do.
    pub fn unlock(&mut self, passphrase: &[u8], duration: Option<u64>) -> Result<(), OpError> {
        let duration = duration
            .map_or(DEFAULT_UNLOCK, Duration::from_secs)
            .min(MAX_UNLOCK);
        let key = self.device.unlock(passphrase)?;
        // What arrived while locked (a removal to rotate for, tokens to re-seal).
        if let Err(e) = self.device.upkeep(&key) {
            tracing::warn!(error = %e, "upkeep after unlock failed");
        }
        // What sessions refreshed while the daemon was locked.
        self.device.take_write_backs(&key);
        self.lock();
        self.key = Some(key);
        self.until =
            Some(unix_now().saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)));
        tracing::info!(seconds = duration.as_secs(), "vault unlocked");
        Ok(())
    }
}
