//! A spawn's supervisor telling the daemon that it runs, and then that its tree ended (see
//! `daemon/trees.rs`): once before the agent starts, then every [`HEARTBEAT`] from a thread,
//! so a daemon started or restarted meanwhile learns of it within seconds.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use super::{CliError, Context};
use crate::control::{Client, Request, Response};

/// How often a running supervisor tells the daemon again.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// While alive, this process is a known agent supervisor; dropped once its tree is reaped.
/// Once told of its session's lease, the heartbeat also renews it.
pub(super) struct Supervising {
    socket: PathBuf,
    lease: Arc<Mutex<Option<Request>>>,
    stop: Option<mpsc::Sender<()>>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Supervising {
    /// Tells a running daemon now (a daemon that refuses fails the spawn: its agents would go
    /// unwatched), and keeps telling it.
    pub(super) fn start(ctx: &Context) -> Result<Self, CliError> {
        let socket = ctx.home.socket_path();
        if let Some(mut client) = Client::connect(&socket) {
            tell(&mut client, &Request::Supervising).map_err(|why| {
                CliError::Busy(format!("the daemon will not watch this agent: {why}"))
            })?;
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let beat_socket = socket.clone();
        let lease = Arc::new(Mutex::new(None::<Request>));
        let renew = lease.clone();
        let beat = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                if let Some(mut client) = Client::connect(&beat_socket) {
                    let _ = tell(&mut client, &Request::Supervising);
                    let renewal = renew.lock().unwrap_or_else(PoisonError::into_inner).take();
                    if let Some(request) = renewal {
                        let _ = tell(&mut client, &request);
                        *renew.lock().unwrap_or_else(PoisonError::into_inner) = Some(request);
                    }
                }
            }
        });
        Ok(Self {
            socket,
            lease,
            stop: Some(stop),
            beat: Some(beat),
        })
    }
}

impl Supervising {
    /// The session holds `ticket`'s lease: renew it while the agent runs.
    pub(super) fn renewing(&self, ticket: &crate::spawn::writeback::Ticket) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = Some(Request::RenewLease {
            token: ticket.token.clone(),
            session: ticket.session.clone(),
            fence: ticket.fence,
        });
    }

    /// The agent's run ended: if every process of the tree is gone, says so to the daemon;
    /// if not (some would not die, or the run failed with the tree in an unknown state), says
    /// nothing, and the daemon takes the tree as escaped once this process is gone. Gives back
    /// the agent's exit code.
    pub(super) fn ended_with(
        mut self,
        ended: Result<crate::spawn::Ended, crate::spawn::SpawnError>,
    ) -> Result<i32, crate::spawn::SpawnError> {
        // No heartbeat may register this process again after its end.
        self.stop_beating();
        let empty = match &ended {
            Ok(e) => e.tree_empty,
            // Nothing may have started, or the agent may still run: find out.
            Err(_) => crate::spawn::tree::end_tree(),
        };
        if empty {
            crate::spawn::tree::stop_being_supervisor();
            if let Some(mut client) = Client::connect(&self.socket) {
                let _ = tell(&mut client, &Request::SupervisedEnd);
            }
        }
        ended.map(|e| e.code)
    }
}

/// Stops the heartbeat. Dropping says nothing of the tree (see [`Supervising::ended_with`]):
/// a supervisor that unwinds from a panic with its agent alive must not report a clean end.
impl Drop for Supervising {
    fn drop(&mut self) {
        self.stop_beating();
    }
}

impl Supervising {
    fn stop_beating(&mut self) {
        drop(self.stop.take());
        if let Some(beat) = self.beat.take() {
            let _ = beat.join();
        }
    }
}

fn tell(client: &mut Client, request: &Request) -> Result<(), String> {
    match client.call(request) {
        Ok(Response::Done) => Ok(()),
        Ok(Response::Error { message, .. }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {}", other.name())),
        Err(e) => Err(e.to_string()),
    }
}
