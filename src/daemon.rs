//! The long-running node: it owns the home (the one-owner lock), the store and the document,
//! keeps the vault key while unlocked, runs the mesh, and serves the control socket.
//!
//! Each connection is checked with SO_PEERCRED (same uid only), then read as frames (see
//! [`crate::control`]). A request on the document runs on the blocking pool under the one
//! mutex the mesh also borrows the device through (`state`), so operations are serialized
//! exactly as if one CLI process ran them; after a request that changed the document the mesh
//! offers the change to connected members. Pairing requests wait on the mesh without holding
//! that mutex. An unlock arms a timer that locks again at its deadline, and the key is dropped
//! (zeroized) then. A malformed or oversized frame closes that connection only.

mod clients;
mod pairing;
mod remote;
mod state;
mod trees;

pub use state::DEFAULT_UNLOCK;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::device::Device;
use crate::entropy::unix_now;
use crate::home::Home;
use crate::net::{Mesh, MeshConfig, OfferRequest};
use crate::ops::Tier;
use crate::ops::views::OfferView;
use crate::ops::{Exit, OpError};
use crate::spawn::tree::Process;
use clients::{Clients, Incoming};
use handoff_protocol::spawn::{Ask, Outcome};
use handoff_relay::descriptors::AcceptBackoff;
use pairing::Pairing;
use state::{State, lock_state};
use trees::Trees;

/// Command-line settings of `daemon start` that override `config.toml`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub listen: Vec<crate::net::Multiaddr>,
    pub no_mdns: bool,
}

fn error_response(e: &OpError) -> Response {
    let text = e.to_string();
    Response::Error {
        exit: e.exit() as u8,
        message: text.split_whitespace().collect::<Vec<_>>().join(" "),
        passphrase: matches!(e, OpError::Locked(_)),
    }
}

/// Whether a peer of `peer_uid` may use a daemon run by `own_uid`.
pub fn peer_allowed(own_uid: u32, peer_uid: u32) -> bool {
    own_uid == peer_uid
}

/// Runs the daemon in this process until `daemon stop`, SIGTERM or SIGINT.
pub fn run(home: Home, options: &Options) -> Result<(), OpError> {
    let config = Config::load(home.root()).map_err(|e| OpError::Usage(e.to_string()))?;
    let mesh_config = config.net.mesh(&options.listen, options.no_mdns)?;
    let device = Device::open(home.clone()).map_err(|e| match e {
        crate::device::DeviceError::Home(crate::home::HomeError::Busy { .. }) => {
            OpError::Busy(format!(
                "a daemon (or another handoff command) already owns {}",
                home.root().display()
            ))
        }
        other => other.into(),
    })?;
    // Every connection, control or mesh, is a descriptor; use all the system allows.
    let files = handoff_relay::descriptors::raise_open_files_limit();
    tracing::debug!(?files, "open files limit");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OpError::Internal(format!("cannot start the runtime: {e}")))?;
    let socket = home.socket_path();
    runtime.block_on(serve(device, &socket, mesh_config))
}

/// What every connection shares.
struct Daemon {
    state: Arc<Mutex<State>>,
    mesh: Mesh,
    pairing: Pairing,
    /// The agent trees whose processes are refused above the open tier.
    trees: Trees,
    /// The home this daemon serves (its supervisors carry a name made from it).
    home: std::path::PathBuf,
    own_uid: u32,
    stop: tokio::sync::watch::Sender<bool>,
    /// The live control connections (numbered, to know which one owns the pairing offer).
    clients: Arc<Clients>,
}

async fn serve(device: Device, socket: &Path, mesh_config: MeshConfig) -> Result<(), OpError> {
    // We hold the home's lock: a socket file left here is from a daemon that died.
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| OpError::Internal(format!("cannot listen on {}: {e}", socket.display())))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| OpError::Internal(format!("cannot make {} private: {e}", socket.display())))?;
    let home = device.home().root().to_path_buf();
    let state = Arc::new(Mutex::new(State::new(device)));
    let target = Arc::new(remote::Target::new(state.clone(), home.clone()));
    let mesh = Mesh::start_serving(state.clone(), mesh_config, Some(target)).await?;
    let view = mesh.view();
    tracing::info!(peer_id = %view.peer_id, listen = ?view.listen, "mesh listening");
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let daemon = Arc::new(Daemon {
        state,
        mesh,
        pairing: Pairing::default(),
        trees: Trees::default(),
        home,
        own_uid: rustix::process::getuid().as_raw(),
        stop,
        clients: Arc::new(Clients::default()),
    });
    // Agents may be running already (this daemon replaces one that stopped): know their
    // supervisors before the first request is answered.
    let trees = daemon.clone();
    tokio::task::spawn_blocking(move || trees.trees.adopt_running(&trees.home))
        .await
        .map_err(|e| OpError::Internal(format!("cannot look for running agents: {e}")))?;
    tokio::spawn(watch_trees(daemon.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| OpError::Internal(format!("cannot watch signals: {e}")))?;
    tracing::info!(pid = std::process::id(), socket = %socket.display(), "daemon serving");
    let mut connections = tokio::task::JoinSet::new();
    let mut accept_errors = AcceptBackoff::default();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_errors.reset();
                    // Beyond the cap, the longest-waiting connection makes room; if all are
                    // busy answering, the newcomer is closed.
                    let Some(place) = daemon.clients.admit() else { continue };
                    let id = place.id;
                    let abort = connections.spawn(connection(stream, daemon.clone(), place));
                    daemon.clients.set_abort(id, abort);
                }
                Err(e) => accept_errors.wait(&e, "control socket").await,
            },
            _ = stop_rx.changed() => break,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("daemon stopping");
    connections.abort_all();
    daemon.mesh.stop().await;
    let _ = std::fs::remove_file(socket);
    lock_state(&daemon.state).lock();
    Ok(())
}

/// Serves one client until it hangs up or misbehaves; withdraws a pairing offer it opened.
async fn connection(stream: UnixStream, daemon: Arc<Daemon>, place: clients::Place) {
    let id = place.id;
    serve_client(stream, &daemon, id).await;
    if daemon.pairing.client_gone(id) {
        let _ = daemon.mesh.cancel_offer().await;
    }
    drop(place);
}

async fn serve_client(mut stream: UnixStream, daemon: &Arc<Daemon>, id: u64) {
    let own_uid = daemon.own_uid;
    let peer_uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
    if !peer_allowed(own_uid, peer_uid) {
        tracing::warn!(peer_uid, "refused a control client of another user");
        let refusal = Response::Error {
            exit: Exit::Usage as u8,
            message: format!("this daemon serves uid {own_uid} only; refusing uid {peer_uid}"),
            passphrase: false,
        };
        if let Ok(frame) = control::encode(&refusal, control::MAX_RESPONSE) {
            let _ = stream.write_all(&frame).await;
        }
        return;
    }
    // The client process, as the kernel names it at connect time (pid and start time, so a
    // pid reused later is not taken for it).
    let peer = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|pid| u32::try_from(pid).ok())
        .and_then(Process::of);
    loop {
        let mut shutdown = false;
        let mut budget = None;
        let response = match daemon.clients.next_request(id, &mut stream).await {
            Ok(None) => return, // hung up, or idle too long
            Err(e) => {
                tracing::warn!("closed a control connection that sent {e}");
                return;
            }
            Ok(Some(Incoming::OtherVersion(v))) => Response::Error {
                exit: Exit::Usage as u8,
                message: format!(
                    "control protocol version {v} is not supported; this daemon speaks {}: upgrade or restart it",
                    control::VERSION
                ),
                passphrase: false,
            },
            Ok(Some(Incoming::Request(request, permit))) => {
                budget = permit;
                let request = *request;
                shutdown = matches!(request, Request::Shutdown);
                let waits = matches!(request, Request::PairNext);
                let answered = async {
                    admit(daemon, peer, &request).await?;
                    answer(daemon, id, peer, request).await
                };
                if waits {
                    // A client waiting for the next pairing step sends nothing meanwhile:
                    // if its socket turns readable, it hung up (or misbehaves).
                    tokio::select! {
                        answer = answered => answer.unwrap_or_else(|e| error_response(&e)),
                        () = hung_up(&stream) => return,
                    }
                } else {
                    answered.await.unwrap_or_else(|e| error_response(&e))
                }
            }
        };
        let Ok(frame) = control::encode(&response, control::MAX_RESPONSE) else {
            return;
        };
        // A client that stops reading its answer is not waited on for ever, and may be
        // evicted meanwhile.
        daemon.clients.waiting(id);
        let written = tokio::time::timeout(clients::WRITE_TIMEOUT, stream.write_all(&frame))
            .await
            .is_ok_and(|w| w.is_ok());
        drop(frame);
        drop(budget);
        if shutdown {
            let _ = daemon.stop.send(true); // after the answer is out
        }
        if !written {
            return;
        }
    }
}

/// Whether `peer` may ask for `request` (ARCHITECTURE.md, "Who the daemon serves"): above
/// the open tier, only a process this daemon can place, outside every agent tree it knows.
async fn admit(
    daemon: &Arc<Daemon>,
    peer: Option<Process>,
    request: &Request,
) -> Result<(), OpError> {
    if request.tier() == Tier::Open {
        return Ok(());
    }
    let Some(peer) = peer.filter(Process::is_running) else {
        return Err(OpError::Contained(
            "cannot tell which process sent this request (it is gone, or in another pid namespace)"
                .into(),
        ));
    };
    // The walk reads /proc: off the runtime thread the mesh and the other clients share.
    let shared = daemon.clone();
    let (placed, escaped) = tokio::task::spawn_blocking(move || {
        // Where the client is first, then whether a supervisor died meanwhile: a supervisor
        // killed during the walk is caught by the second look.
        let placed = shared.trees.check(peer);
        (placed, shared.trees.find_escape())
    })
    .await
    .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))?;
    if let Some(gone) = escaped {
        tracing::warn!(
            supervisor = gone.pid,
            "an agent supervisor stopped without ending its processes; locked, and refusing above the open tier until restarted"
        );
        daemon.lock_all().await;
        return Err(OpError::Contained(daemon.trees.escaped().map_or_else(
            || "an agent session escaped".into(),
            |e| e.to_string(),
        )));
    }
    placed.map_err(|e| OpError::Contained(e.to_string()))
}

impl Daemon {
    /// Drops the vault key and withdraws any open pairing offer (which holds a copy of it).
    async fn lock_all(&self) {
        let shared = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || lock_state(&shared).lock()).await;
        let _ = self.mesh.cancel_offer().await;
    }
}

/// The answer to `client`'s request (`peer`, its process, was admitted for it).
async fn answer(
    daemon: &Arc<Daemon>,
    client: u64,
    peer: Option<Process>,
    request: Request,
) -> Result<Response, OpError> {
    match request {
        Request::PairOffer {
            name,
            role,
            qr,
            auto_confirm,
            passphrase,
        } => {
            let offer = OfferRequest {
                role,
                name,
                long_code: qr,
                auto_confirm,
                lifetime: crate::net::OFFER_LIFETIME,
                key: take_offer_key(daemon, passphrase).await?,
            };
            let ticket = daemon.mesh.offer(offer).await?;
            let offered = OfferView::of(&ticket, &daemon.mesh, qr);
            // Only a connection whose offer opened follows it (one at a time): a refused offer
            // takes neither the real one's follower nor a place that is never evicted.
            daemon.pairing.follow(client, ticket);
            daemon.clients.set_owner(client);
            Ok(Response::Offered(offered))
        }
        Request::PairNext => Ok(Response::PairStep(daemon.pairing.next(client).await?)),
        Request::PairConfirm { accept } => {
            daemon.pairing.confirm(client, accept)?;
            Ok(Response::Done)
        }
        Request::Op { passphrase, op } => {
            let net = daemon.mesh.view();
            let stats = daemon.mesh.stats();
            let shared = daemon.state.clone();
            let (outcome, changed) = tokio::task::spawn_blocking(move || {
                let mut guard = lock_state(&shared);
                let before = guard.device.heads_hex();
                let outcome = guard.run(op, passphrase, &net, stats);
                (outcome, guard.device.heads_hex() != before)
            })
            .await
            .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))?;
            if changed {
                daemon.mesh.changed();
            }
            Ok(Response::Outcome(Box::new(outcome?)))
        }
        Request::Unlock {
            passphrase,
            seconds,
        } => {
            let shared = daemon.state.clone();
            let (changed, generation, until) = tokio::task::spawn_blocking(move || {
                let mut guard = lock_state(&shared);
                let before = guard.device.heads_hex();
                guard.unlock(&passphrase, seconds)?;
                let changed = guard.device.heads_hex() != before;
                Ok::<_, OpError>((changed, guard.generation, guard.until))
            })
            .await
            .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))??;
            if let Some(until) = until {
                arm_auto_lock(daemon.clone(), generation, until);
            }
            if changed {
                daemon.mesh.changed();
            }
            Ok(Response::Pong {
                pid: std::process::id(),
                unlocked_until: until,
            })
        }
        // The state's mutex may be held for a while (an Argon2 unlock, a large import): take it
        // off the runtime thread, which serves every other client and the mesh.
        Request::Lock => {
            daemon.lock_all().await;
            tracing::info!("vault locked");
            Ok(Response::Done)
        }
        Request::Supervising => {
            let process = peer.ok_or_else(|| {
                OpError::Usage("cannot tell which process is the supervisor".into())
            })?;
            daemon
                .trees
                .register(process)
                .map_err(|e| OpError::Busy(e.to_string()))?;
            Ok(Response::Done)
        }
        Request::SupervisedEnd => {
            if let Some(process) = peer {
                daemon.trees.ended(process);
            }
            Ok(Response::Done)
        }
        Request::WriteBackReady => {
            on_state(daemon, |state| {
                state.take_write_backs();
                Ok(())
            })
            .await?;
            Ok(Response::Done)
        }
        Request::RenewLease {
            token,
            session,
            fence,
        } => {
            // Only a running supervisor keeps a lease alive, and none once a tree escaped: an
            // agent that left its tree cannot hold its login's lease for ever.
            let supervisor = peer.is_some_and(|p| daemon.trees.is_supervisor(&p));
            if !supervisor || daemon.trees.escaped().is_some() {
                return Err(OpError::Usage(
                    "only a running session's supervisor renews its lease".into(),
                ));
            }
            let token = token
                .parse()
                .map_err(|_| OpError::Usage("not a token id".into()))?;
            on_state(daemon, move |state| {
                state
                    .device
                    .renew_lease(&token, &session, fence)
                    .map(drop)
                    .map_err(OpError::from)
            })
            .await?;
            Ok(Response::Done)
        }
        Request::Ping => {
            let shared = daemon.state.clone();
            let until = tokio::task::spawn_blocking(move || {
                let mut guard = lock_state(&shared);
                guard.expire();
                guard.until
            })
            .await
            .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))?;
            Ok(Response::Pong {
                pid: std::process::id(),
                unlocked_until: until,
            })
        }
        Request::Shutdown => Ok(Response::Done),
        Request::SpawnOn {
            device,
            agent,
            dir,
            profile,
            service,
            args,
        } => {
            let start = handoff_protocol::spawn::Start {
                agent,
                dir,
                profile,
                service,
                args,
            };
            let (outcome, route) = remote::ask_on(daemon, device, Ask::Start(start)).await?;
            match outcome {
                // The target's words: only a session id's shape is shown (and pasted).
                Outcome::Started { session } if crate::spawn::session::is_id(&session) => {
                    Ok(Response::Spawned {
                        session,
                        relayed: route == crate::net::Route::Relay,
                    })
                }
                Outcome::Started { .. } => Err(OpError::Internal(
                    "the target started a session but named it with something else".into(),
                )),
                _ => Err(answered_else()),
            }
        }
        Request::SessionsOn { device } => match remote::ask_on(daemon, device, Ask::List).await? {
            (Outcome::Sessions(rows), _) => Ok(Response::RemoteSessions {
                rows: rows.iter().map(crate::control::RemoteSession::of).collect(),
            }),
            _ => Err(answered_else()),
        },
        Request::StopOn { device, session } => {
            match remote::ask_on(daemon, device, Ask::Stop { session }).await? {
                (Outcome::Stopped, _) => Ok(Response::Done),
                _ => Err(answered_else()),
            }
        }
    }
}

fn answered_else() -> OpError {
    OpError::Internal("the target answered something else".into())
}

/// Runs `f` on the daemon's state off the runtime thread, and offers what it changed to the
/// mesh.
async fn on_state(
    daemon: &Arc<Daemon>,
    f: impl FnOnce(&mut State) -> Result<(), OpError> + Send + 'static,
) -> Result<(), OpError> {
    let shared = daemon.state.clone();
    let changed = tokio::task::spawn_blocking(move || {
        let mut guard = lock_state(&shared);
        let before = guard.device.heads_hex();
        f(&mut guard).map(|()| guard.device.heads_hex() != before)
    })
    .await
    .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))??;
    if changed {
        daemon.mesh.changed();
    }
    Ok(())
}

/// A copy of the vault key for a pairing offer, from an admin-capable device that is unlocked
/// (or unlocks with `passphrase`).
async fn take_offer_key(
    daemon: &Arc<Daemon>,
    passphrase: Option<crate::ops::Secret>,
) -> Result<crate::device::Unlocked, OpError> {
    let shared = daemon.state.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = lock_state(&shared);
        crate::ops::require_adder(&state.device)?;
        state.fresh_key(passphrase)
    })
    .await
    .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))?
}

/// Resolves when the client at the other end of `stream` closed it (or sent something while
/// it should be waiting).
async fn hung_up(stream: &UnixStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut byte = [0u8; 1];
        match stream.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {} // a stale wake-up
            _ => return,
        }
    }
}

/// How often the daemon sweeps credential directories whose supervisor is gone, and looks
/// for supervisors killed with their tree alive.
const WATCH_EVERY: Duration = Duration::from_secs(3);

/// From start-up on: sweeps what killed supervisors left (`spawn::materialize::sweep_stale`)
/// takes supervisors that run as known, and locks when a known supervisor stopped without
/// ending its tree (see `trees.rs`).
async fn watch_trees(daemon: Arc<Daemon>) {
    loop {
        if let Ok(swept) = tokio::task::spawn_blocking(crate::spawn::materialize::sweep_stale).await
            && swept > 0
        {
            tracing::info!(
                swept,
                "removed credential directories of killed supervisors"
            );
        }
        // What the sweep left for killed supervisors, and what waits from any other session.
        let waiting =
            !crate::spawn::writeback::waiting(&daemon.home.join(crate::spawn::writeback::DIR))
                .is_empty();
        if waiting {
            let _ = on_state(&daemon, |state| {
                state.take_write_backs();
                Ok(())
            })
            .await;
        }
        let trees = daemon.clone();
        let found = tokio::task::spawn_blocking(move || {
            trees.trees.adopt_running(&trees.home);
            trees.trees.find_escape()
        });
        if let Ok(Some(gone)) = found.await {
            tracing::warn!(
                supervisor = gone.pid,
                "an agent supervisor stopped without ending its processes; locked, and refusing above the open tier until restarted"
            );
            daemon.lock_all().await;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// How often the auto-lock timer compares the wall clock with the deadline. Monotonic sleeps
/// stop while a machine is suspended; the wall clock does not.
const AUTO_LOCK_TICK: Duration = Duration::from_secs(30);

/// Locks at `until` (wall clock) unless another unlock or lock happened meanwhile.
fn arm_auto_lock(daemon: Arc<Daemon>, generation: u64, until: i64) {
    tokio::spawn(async move {
        loop {
            let left = u64::try_from(until.saturating_sub(unix_now())).unwrap_or(0);
            if left > 0 {
                tokio::time::sleep(Duration::from_secs(left).min(AUTO_LOCK_TICK)).await;
                continue;
            }
            let state = daemon.state.clone();
            let locked = tokio::task::spawn_blocking(move || {
                let mut s = lock_state(&state);
                let ours = s.generation == generation;
                if ours {
                    s.lock();
                    tracing::info!("vault locked at the end of its unlock");
                }
                ours
            })
            .await;
            // An offer made under this unlock does not outlive it.
            if locked.unwrap_or(false) {
                let _ = daemon.mesh.cancel_offer().await;
            }
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
