//! What the daemon holds (the device, the vault key while unlocked) and the requests it answers
//! on it. One mutex guards it, shared by control connections and the mesh (as its
//! [`Host`](crate::net::Host)), so the document sees one operation at a time exactly as if one
//! CLI process ran them.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::cli::CliError;
use crate::config::Config;
use crate::control::{PeerView, RelayView, RemovedView, Request, Response, StatusView, TokenView};
use crate::device::{Device, Unlocked, expose};
use crate::doc::Service;
use crate::net::{Host, NetView};
use crate::spawn::{Agent, choose_token, delivery_for};

/// Longest an unlock may last.
const MAX_UNLOCK: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default unlock duration.
pub const DEFAULT_UNLOCK: Duration = Duration::from_secs(8 * 3600);

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

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

/// Whether answering `request` may have changed the document (the mesh then offers it).
pub(super) fn changes_document(request: &Request) -> bool {
    matches!(
        request,
        Request::AddToken { .. }
            | Request::RemoveToken { .. }
            | Request::SetDefault { .. }
            | Request::Import { .. }
            | Request::PeerRemove { .. }
            | Request::RelayAdd { .. }
            | Request::RelayRemove { .. }
            | Request::Unlock { .. }
    )
}

impl State {
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
        passphrase: Option<Vec<u8>>,
        f: impl FnOnce(&mut Device, &Unlocked) -> Result<T, CliError>,
    ) -> Result<T, CliError> {
        self.expire();
        if let Some(key) = &self.key {
            return f(&mut self.device, key);
        }
        let Some(passphrase) = passphrase.map(Zeroizing::new) else {
            return Err(CliError::Locked(
                "run `handoff unlock`, or give the passphrase".into(),
            ));
        };
        let key = self.device.unlock(&passphrase)?;
        f(&mut self.device, &key)
    }

    /// A handle on the vault key for work that outlives this request (a pairing offer).
    pub fn key_copy(&mut self, passphrase: Option<Vec<u8>>) -> Result<Unlocked, CliError> {
        self.with_key(passphrase, |_, key| Ok(key.duplicate()))
    }

    pub fn handle(&mut self, request: Request, net: &NetView) -> Result<Response, CliError> {
        self.expire();
        Ok(match request {
            Request::Ping => Response::Pong {
                pid: std::process::id(),
                unlocked_until: self.until,
            },
            Request::Status => {
                let mut view = StatusView::of(&self.device, &self.device.state()?);
                view.daemon_pid = Some(std::process::id());
                view.unlocked_until = self.until;
                view.listen.clone_from(&net.listen);
                view.online = net.online.len();
                view.offer_open = net.offer_open;
                Response::Status(view)
            }
            Request::ListTokens => Response::Tokens(TokenView::all(&self.device.state()?)),
            Request::ShowToken { query } => {
                let state = self.device.state()?;
                Response::Token(TokenView::of(
                    &state,
                    self.device.find_token(&state, &query)?,
                ))
            }
            Request::AddToken {
                service,
                label,
                secret,
                default,
                replace,
                passphrase,
            } => {
                let secret = Zeroizing::new(secret);
                let service: Service = service.parse().map_err(|()| {
                    CliError::Usage(format!(
                        "unknown service '{service}'; known: {}",
                        Service::names()
                    ))
                })?;
                let id = self.with_key(passphrase, |device, key| {
                    Ok(device.add_token(key, service, &label, &secret, default, replace)?)
                })?;
                let state = self.device.state()?;
                let token = state
                    .tokens
                    .get(&id)
                    .ok_or_else(|| CliError::Internal("the new token vanished".into()))?;
                Response::Token(TokenView::of(&state, token))
            }
            Request::Reveal { query, passphrase } => {
                let (token, secret) =
                    self.with_key(passphrase, |device, key| Ok(device.reveal(key, &query)?))?;
                let state = self.device.state()?;
                Response::Secret {
                    token: TokenView::of(&state, &token),
                    secret: expose(&secret).to_vec(),
                }
            }
            Request::RemoveToken { query } => {
                let token = self.device.remove_token(&query)?;
                Response::Token(TokenView::of(&self.device.state()?, &token))
            }
            Request::SetDefault { query } => {
                let token = self.device.set_default(&query)?;
                Response::Token(TokenView::of(&self.device.state()?, &token))
            }
            Request::Export => Response::Exported(self.device.export()),
            Request::Import { data } => Response::Imported(self.device.import(&data)?),
            Request::Unlock {
                passphrase,
                seconds,
            } => {
                let passphrase = Zeroizing::new(passphrase);
                let duration = seconds
                    .map_or(DEFAULT_UNLOCK, Duration::from_secs)
                    .min(MAX_UNLOCK);
                let key = self.device.unlock(&passphrase)?;
                // What arrived while locked (a removal to rotate for, tokens to re-seal).
                if let Err(e) = self.device.upkeep(&key) {
                    tracing::warn!(error = %e, "upkeep after unlock failed");
                }
                self.lock();
                self.key = Some(key);
                self.until = Some(
                    unix_now()
                        .saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)),
                );
                tracing::info!(seconds = duration.as_secs(), "vault unlocked");
                Response::Pong {
                    pid: std::process::id(),
                    unlocked_until: self.until,
                }
            }
            Request::Lock => {
                self.lock();
                tracing::info!("vault locked");
                Response::Done
            }
            Request::Credential {
                agent,
                service,
                profile,
                passphrase,
            } => {
                let config = Config::load(self.device.home().root())
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                let agent = Agent::find(&agent, &config)?;
                let service = service
                    .map(|s| {
                        s.parse::<Service>()
                            .map_err(|()| CliError::Usage(format!("unknown service '{s}'")))
                    })
                    .transpose()?;
                let state = self.device.state()?;
                let token = choose_token(&state, &agent, service, profile.as_deref())?;
                let delivery = delivery_for(&agent, token)?;
                let id = token.id.to_hex();
                let (_, secret) =
                    self.with_key(passphrase, |device, key| Ok(device.reveal(key, &id)?))?;
                tracing::info!(agent = %agent.name, service = %service.map_or("default", |s| s.as_str()), "credential handed to a local spawn");
                Response::Credential {
                    delivery,
                    secret: expose(&secret).to_vec(),
                }
            }
            Request::PeerList => Response::Peers(PeerView::all(
                &self.device,
                &self.device.state()?,
                Some(&net.online),
            )?),
            Request::PeerRemove { query, passphrase } => {
                let removed = self.with_key(passphrase, |device, key| {
                    Ok(device.remove_member(key, &query)?)
                })?;
                Response::Removed(RemovedView::of(&self.device.state()?, &removed))
            }
            Request::RelayAdd { addrs, token } => {
                let token = token.map(Zeroizing::new);
                let relay = self
                    .device
                    .add_relay(&addrs, token.as_deref().map(Vec::as_slice))?;
                Response::Relay(RelayView::of(&relay))
            }
            Request::RelayList => {
                Response::Relays(self.device.relays()?.iter().map(RelayView::of).collect())
            }
            Request::RelayRemove { query } => {
                Response::Relay(RelayView::of(&self.device.remove_relay(&query)?))
            }
            Request::PairOffer { .. }
            | Request::PairNext
            | Request::PairConfirm { .. }
            | Request::Shutdown => Response::Done,
        })
    }
}
