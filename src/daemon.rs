//! The long-running node: it owns the home (the one-owner lock), the store and the document,
//! keeps the vault key while unlocked, and serves the control socket.
//!
//! Each connection is checked with SO_PEERCRED (same uid only), then read as frames (see
//! [`crate::control`]); each request runs on the blocking pool under one mutex, so operations
//! on the document are serialized exactly as if one CLI process ran them. An unlock arms a
//! timer that locks again at its deadline, and the key is dropped (zeroized) then. A malformed or
//! oversized frame closes that connection only.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use crate::cli::{CliError, Exit};
use crate::config::Config;
use crate::control::{self, Request, Response, StatusView, TokenView};
use crate::device::{Device, Unlocked, expose};
use crate::doc::Service;
use crate::home::Home;
use crate::spawn::{Agent, choose_token, delivery_for};

/// Longest an unlock may last.
const MAX_UNLOCK: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default unlock duration.
pub const DEFAULT_UNLOCK: Duration = Duration::from_secs(8 * 3600);

/// What the daemon holds.
struct State {
    device: Device,
    key: Option<Unlocked>,
    /// Unix time the unlock lasts until.
    until: Option<i64>,
    /// Bumped on every unlock and lock, so a stale timer does not lock a newer unlock.
    generation: u64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl State {
    fn lock(&mut self) {
        self.key = None; // Unlocked zeroizes on drop
        self.until = None;
        self.generation += 1;
    }

    /// Locks if the deadline has passed (the timer normally does this; this is the backstop).
    fn expire(&mut self) {
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

    fn handle(&mut self, request: Request) -> Result<Response, CliError> {
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
            Request::Shutdown => Response::Done,
        })
    }
}

fn error_response(e: &CliError) -> Response {
    let text = e.to_string();
    Response::Error {
        exit: e.exit() as u8,
        message: text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Whether a peer of `peer_uid` may use a daemon run by `own_uid`.
pub fn peer_allowed(own_uid: u32, peer_uid: u32) -> bool {
    own_uid == peer_uid
}

/// Runs the daemon in this process until `daemon stop`, SIGTERM or SIGINT.
pub fn run(home: Home) -> Result<(), CliError> {
    let device = Device::open(home.clone()).map_err(|e| match e {
        crate::device::DeviceError::Home(crate::home::HomeError::Busy { .. }) => {
            CliError::Busy(format!(
                "a daemon (or another handoff command) already owns {}",
                home.root().display()
            ))
        }
        other => other.into(),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the runtime: {e}")))?;
    let socket = home.socket_path();
    runtime.block_on(serve(device, &socket))
}

async fn serve(device: Device, socket: &Path) -> Result<(), CliError> {
    // We hold the home's lock: a socket file left here is from a daemon that died.
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| CliError::Internal(format!("cannot listen on {}: {e}", socket.display())))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(
        |e| CliError::Internal(format!("cannot make {} private: {e}", socket.display())),
    )?;
    let state = Arc::new(Mutex::new(State {
        device,
        key: None,
        until: None,
        generation: 0,
    }));
    let own_uid = rustix::process::getuid().as_raw();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Internal(format!("cannot watch signals: {e}")))?;
    tracing::info!(pid = std::process::id(), socket = %socket.display(), "daemon serving");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(connection(stream, state.clone(), own_uid, stop_tx.clone()));
            }
            _ = stop_rx.changed() => break,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("daemon stopping");
    connections.abort_all();
    let _ = std::fs::remove_file(socket);
    lock_state(&state).lock();
    Ok(())
}

/// Serves one client until it hangs up or misbehaves.
async fn connection(
    mut stream: UnixStream,
    state: Arc<Mutex<State>>,
    own_uid: u32,
    stop: tokio::sync::watch::Sender<bool>,
) {
    let peer_uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    if !peer_allowed(own_uid, peer_uid) {
        tracing::warn!(peer_uid, "refused a control client of another user");
        let refusal = Response::Error {
            exit: Exit::Usage as u8,
            message: format!("this daemon serves uid {own_uid} only; refusing uid {peer_uid}"),
        };
        if let Ok(frame) = control::encode(&refusal) {
            let _ = stream.write_all(&frame).await;
        }
        return;
    }
    loop {
        let mut shutdown = false;
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return; // hung up
        }
        let Ok(len) = control::check_len(len) else {
            tracing::warn!("closed a control connection that sent an oversized frame");
            return;
        };
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        let response = match control::decode_envelope(&payload) {
            Err(_) => {
                tracing::warn!("closed a control connection that sent an undecodable frame");
                return;
            }
            Ok(env) if env.v != control::VERSION => Response::Error {
                exit: Exit::Usage as u8,
                message: format!(
                    "control protocol version {} is not supported; this daemon speaks {}: upgrade or restart it",
                    env.v,
                    control::VERSION
                ),
            },
            Ok(env) => match env.body.deserialized::<Request>() {
                Err(e) => Response::Error {
                    exit: Exit::Usage as u8,
                    message: format!("unknown control request: {e}"),
                },
                Ok(request) => {
                    shutdown = matches!(request, Request::Shutdown);
                    let shared = state.clone();
                    let handled = tokio::task::spawn_blocking(move || {
                        let mut guard = lock_state(&shared);
                        let before = guard.generation;
                        let response = guard.handle(request)?;
                        Ok::<_, CliError>((
                            response,
                            before != guard.generation,
                            guard.generation,
                            guard.until,
                        ))
                    })
                    .await;
                    match handled {
                        Ok(Ok((response, relocked, generation, until))) => {
                            if relocked && let Some(until) = until {
                                arm_auto_lock(state.clone(), generation, until);
                            }
                            response
                        }
                        Ok(Err(e)) => error_response(&e),
                        Err(_) => error_response(&CliError::Internal(
                            "the request failed inside the daemon".into(),
                        )),
                    }
                }
            },
        };
        let Ok(frame) = control::encode(&response) else {
            return;
        };
        let written = stream.write_all(&frame).await.is_ok();
        if shutdown {
            let _ = stop.send(true); // after the answer is out
        }
        if !written {
            return;
        }
    }
}

/// Takes the state even if a request panicked while holding it: a poisoned lock must not
/// leave the vault unlocked with no way to lock it.
fn lock_state(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often the auto-lock timer compares the wall clock with the deadline. Monotonic sleeps
/// stop while a machine is suspended; the wall clock does not.
const AUTO_LOCK_TICK: Duration = Duration::from_secs(30);

/// Locks at `until` (wall clock) unless another unlock or lock happened meanwhile.
fn arm_auto_lock(state: Arc<Mutex<State>>, generation: u64, until: i64) {
    tokio::spawn(async move {
        loop {
            let left = u64::try_from(until.saturating_sub(unix_now())).unwrap_or(0);
            if left > 0 {
                tokio::time::sleep(Duration::from_secs(left).min(AUTO_LOCK_TICK)).await;
                continue;
            }
            let state = state.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut s = lock_state(&state);
                if s.generation == generation {
                    s.lock();
                    tracing::info!("vault locked at the end of its unlock");
                }
            })
            .await;
            return;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_uid_is_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1000, 0));
        assert!(!peer_allowed(0, 65534));
    }
}
