//! Remote spawn, both ends (DESIGN §7): [`Target`] answers a member's `/handoff/spawn/1`
//! request by this device's own policy; [`spawn_on`] asks another member for a session.
//!
//! The target checks freshness and replay, its lock state, the policy (verified under the vault
//! key) and the request, then starts the session as a local `spawn --detach` does: it runs
//! this very binary as a child (outside every agent tree), so the credential is chosen,
//! leased and materialized on the one path a local spawn takes. Every request, started or
//! refused, goes into the audit, signed by this device.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use handoff_protocol::DeviceId;
use handoff_protocol::spawn::{
    Ask, FRESH_DIRECT, FRESH_RELAY, FUTURE_SKEW, Outcome, Refusal, Request, Response, Start,
};

use super::state::{State, lock_state};
use crate::config::Config;
use crate::entropy::unix_now;
use crate::net::{SpawnServer, refused};
use crate::ops::{Exit, Op, OpError};
use crate::spawn::policy::{Policy, one_line};
use crate::spawn::{Agent, resolve_command};

/// Request ids remembered for replay, at most (a flood is refused as busy, never forgotten).
const SEEN_MAX: usize = 4096;
/// Requests answered per sender and minute; beyond, `busy` and nothing audited (each answer
/// is a document change every member keeps).
const PER_MINUTE: u32 = 20;
/// Sessions running on this device at most, for a remote request to start another.
const SESSIONS_MAX: usize = 16;
/// Longest a started child may take to say which session it started.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

/// This device, as the target of members' requests.
pub(super) struct Target {
    pub state: Arc<Mutex<State>>,
    pub home: PathBuf,
    /// (sender, request id) → when it was sent, for the freshness window.
    seen: Mutex<HashMap<(DeviceId, [u8; 16]), i64>>,
    /// Per sender: the minute counted, and its requests so far.
    rate: Mutex<HashMap<DeviceId, (i64, u32)>>,
    /// Per sender: the minute of its last audited refusal.
    refusals: Mutex<HashMap<DeviceId, i64>>,
}

impl Target {
    pub fn new(state: Arc<Mutex<State>>, home: PathBuf) -> Self {
        Self {
            state,
            home,
            seen: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request from `from`; false when it is over this minute's share.
    fn within_rate(&self, from: DeviceId) -> bool {
        let minute = unix_now() / 60;
        let mut rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        rate.retain(|_, (m, _)| *m == minute);
        let entry = rate.entry(from).or_insert((minute, 0));
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= PER_MINUTE
    }

    /// Refuses a stale, future or replayed request; remembers a fresh one.
    fn fresh(&self, from: DeviceId, request: &Request, relayed: bool) -> Result<(), Refusal> {
        let window = if relayed { FRESH_RELAY } else { FRESH_DIRECT };
        let now = unix_now();
        let age = now.checked_sub(request.sent_at).ok_or(Refusal::Stale)?;
        if age > window || age < -FUTURE_SKEW {
            return Err(Refusal::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, at| now.saturating_sub(*at) <= FRESH_RELAY + FUTURE_SKEW);
        if seen.contains_key(&(from, request.id)) {
            return Err(Refusal::Replayed);
        }
        if seen.len() >= SEEN_MAX {
            return Err(Refusal::Busy);
        }
        seen.insert((from, request.id), request.sent_at);
        Ok(())
    }

    fn start(&self, from: DeviceId, id: [u8; 16], start: &Start) -> Response {
        let refuse = |why, detail: &str| refused(id, why, detail);
        // Under the state's lock only what needs it: the lock state, a copy of the key, the
        // sender's membership now (it may have been removed since its stream opened).
        let key = {
            let mut state = lock_state(&self.state);
            state.expire();
            let active = state
                .device
                .state()
                .is_ok_and(|v| v.members.get(&from).is_some_and(|m| m.is_active()));
            if !active {
                return refuse(
                    Refusal::NotAMember,
                    "your device is not a member of this vault",
                );
            }
            let Some(key) = state.key() else {
                return refuse(
                    Refusal::Locked,
                    "the target's vault is locked; unlock it there",
                );
            };
            key.duplicate()
        };
        // The file system work outside it: a directory on a hung mount stalls this request
        // only, never the daemon.
        let policy = match Policy::load(&self.home, Some(&key)) {
            Ok((policy, _)) => policy,
            Err(e) => {
                tracing::warn!(error = %e, "the spawn policy cannot be used");
                return refuse(Refusal::Policy, "the target's spawn policy cannot be used");
            }
        };
        drop(key);
        let dir = match policy.judge(&from, start) {
            Ok(dir) => dir,
            Err((why, line)) => return refuse(why, &line),
        };
        let Ok(config) = Config::load(&self.home) else {
            return refuse(Refusal::Failed, "the target's configuration does not load");
        };
        let Ok(agent) = Agent::find(&start.agent, &config) else {
            return refuse(
                Refusal::UnknownAgent,
                "the target knows no agent of that name",
            );
        };
        // The program from this device's own PATH and configuration, never the asker's.
        if resolve_command(
            &agent.name,
            &agent.command,
            std::env::var_os("PATH").as_deref(),
        )
        .is_err()
        {
            return refuse(
                Refusal::NotInstalled,
                "the agent is not installed on the target",
            );
        }
        let Ok(service) = start.service.as_deref().map(str::parse).transpose() else {
            return refuse(Refusal::NoSuchProfile, "no such service");
        };
        let running = crate::spawn::session::list(&self.home)
            .iter()
            .filter(|r| r.is_running())
            .count();
        if running >= SESSIONS_MAX {
            return refuse(
                Refusal::Busy,
                "the target runs as many sessions as it takes",
            );
        }
        let credential = Op::Credential {
            agent: agent.name.clone(),
            service,
            profile: start.profile.clone(),
            session: String::new(),
            take: false,
        };
        if credential.check(&lock_state(&self.state).device).is_err() {
            return refuse(
                Refusal::NoSuchProfile,
                "the target has no token of that profile for the agent",
            );
        }
        match run_detached(&self.home, &agent.name, start, &dir) {
            Ok(session) => Response {
                id,
                outcome: Outcome::Started { session },
            },
            Err(line) => {
                tracing::warn!(why = %line, "a requested session did not start");
                refuse(
                    Refusal::Failed,
                    "the session did not start on the target (its daemon log says why)",
                )
            }
        }
    }

    /// Writes one audit entry for a request: what, from whom, and how it ended. Every start;
    /// of a sender's refusals, the first of each minute (the log has the rest), so no member
    /// can flush the audit with requests it knows will be refused.
    fn audit(&self, from: DeviceId, ask: Option<&Ask>, outcome: &Outcome) {
        if matches!(outcome, Outcome::Refused { .. }) {
            let minute = unix_now() / 60;
            let mut last = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
            last.retain(|_, m| *m == minute);
            if last.insert(from, minute).is_some() {
                return;
            }
        }
        let what = match outcome {
            Outcome::Started { .. } => "spawn.remote.started".to_string(),
            Outcome::Refused { why, .. } => format!("spawn.remote.refused.{}", refusal_name(*why)),
            Outcome::Sessions(_) => "spawn.remote.listed".to_string(),
            Outcome::Stopped => "spawn.remote.stopped".to_string(),
        };
        let mut subject = format!("from {}", &from.to_hex()[..12]);
        if let Some(Ask::Start(s)) = ask {
            subject.push_str(&format!(
                " {} {} in {}",
                s.agent,
                s.profile.as_deref().unwrap_or("(default)"),
                s.dir
            ));
        }
        if let Outcome::Started { session } = outcome {
            subject.push_str(&format!(" as {session}"));
        }
        let subject = one_line(&subject, crate::doc::schema::limits::NAME_MAX);
        let mut state = lock_state(&self.state);
        if let Err(e) = state.device.audit_event(&what, &subject) {
            tracing::warn!(error = %e, "could not audit a spawn request");
        }
    }
}

impl SpawnServer for Target {
    fn answer(
        &self,
        from: DeviceId,
        request: Result<Request, handoff_protocol::DecodeError>,
        relayed: bool,
    ) -> Response {
        if !self.within_rate(from) {
            let id = request.as_ref().map_or([0; 16], |r| r.id);
            return refused(id, Refusal::Busy, refusal_line(Refusal::Busy));
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let response = refused([0; 16], Refusal::Malformed, one_line(&e.to_string(), 256));
                self.audit(from, None, &response.outcome);
                return response;
            }
        };
        let response = match self.fresh(from, &request, relayed) {
            Err(why) => refused(request.id, why, refusal_line(why)),
            Ok(()) => match &request.ask {
                Ask::Start(start) => self.start(from, request.id, start),
                // Sessions started for others are not the asker's to see or stop yet.
                Ask::List | Ask::Stop { .. } => refused(
                    request.id,
                    Refusal::Policy,
                    "this target does not list or stop sessions for other devices yet",
                ),
            },
        };
        self.audit(from, Some(&request.ask), &response.outcome);
        tracing::info!(from = %from.to_hex(), outcome = outcome_name(&response.outcome), "a spawn request was answered");
        response
    }
}

/// Runs `handoff spawn AGENT --detach` for `start` in `dir`; the session id it printed.
fn run_detached(
    home: &std::path::Path,
    agent: &str,
    start: &Start,
    dir: &std::path::Path,
) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find handoff itself: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home")
        .arg(home)
        .args(["--json", "spawn", agent, "--detach"])
        .arg({
            let mut arg = std::ffi::OsString::from("--dir=");
            arg.push(dir.as_os_str());
            arg
        });
    // `--x=VALUE`: a value that starts with `-` stays a value.
    if let Some(p) = &start.profile {
        cmd.arg(format!("--profile={p}"));
    }
    if let Some(s) = &start.service {
        cmd.arg(format!("--service={s}"));
    }
    if !start.args.is_empty() {
        cmd.arg("--").args(&start.args);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its passphrase, if it needed one, could come from nowhere but this daemon.
        .env_remove("HANDOFF_PASSPHRASE_FILE");
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start handoff: {e}"))?;
    let pid = child.id();
    // Read on a thread of its own, so a child that writes a lot never stalls on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("cannot wait for handoff: {e}")),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            return Err("the session took too long to start".into());
        }
    };
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let line = err.lines().last().unwrap_or("the session did not start");
        return Err(one_line(line, 256));
    }
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|_| "the session's start said nothing readable".to_string())?;
    value["session"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the session's start named no session".into())
}

/// What the asking side does with a target's refusal: its exit code.
pub(crate) fn refusal_exit(why: Refusal) -> Exit {
    match why {
        Refusal::Policy
        | Refusal::ArgsNotAllowed
        | Refusal::DirNotAllowed
        | Refusal::NotAMember => Exit::Forbidden,
        Refusal::Locked => Exit::Locked,
        Refusal::UnknownAgent
        | Refusal::NoSuchProfile
        | Refusal::NotInstalled
        | Refusal::NoSuchSession => Exit::NotFound,
        Refusal::Stale | Refusal::Replayed => Exit::Conflict,
        Refusal::Busy => Exit::Busy,
        _ => Exit::Internal,
    }
}

fn refusal_name(why: Refusal) -> &'static str {
    match why {
        Refusal::Policy => "policy",
        Refusal::UnknownAgent => "unknown-agent",
        Refusal::NoSuchProfile => "no-profile",
        Refusal::NotInstalled => "not-installed",
        Refusal::DirNotAllowed => "dir",
        Refusal::Locked => "locked",
        Refusal::Stale => "stale",
        Refusal::Replayed => "replayed",
        Refusal::Busy => "busy",
        Refusal::ArgsNotAllowed => "args",
        Refusal::NotAMember => "not-member",
        Refusal::NoSuchSession => "no-session",
        Refusal::Malformed => "malformed",
        _ => "failed",
    }
}

fn refusal_line(why: Refusal) -> String {
    match why {
        Refusal::Stale => {
            "the request is older than the target accepts (or from the future); check both clocks"
                .into()
        }
        Refusal::Replayed => "the target has seen this request before".into(),
        Refusal::Busy => "the target is busy; try again shortly".into(),
        other => refusal_name(other).into(),
    }
}

/// The asking side: `spawn AGENT --on DEVICE` through this device's daemon. The session id the
/// target started, or its refusal as an error with the class's exit code.
pub(super) async fn spawn_on(
    daemon: &Arc<super::Daemon>,
    device: String,
    start: Start,
) -> Result<String, OpError> {
    let shared = daemon.state.clone();
    let peer = tokio::task::spawn_blocking(move || {
        let state = lock_state(&shared);
        let vault = state.device.state()?;
        let member = state.device.find_member(&vault, &device)?;
        if member.device == state.device.device_id() {
            return Err(OpError::Usage(
                "that is this device; run `handoff spawn` without --on".into(),
            ));
        }
        if !member.is_active() {
            return Err(OpError::Usage(format!(
                "{device} was removed from the vault"
            )));
        }
        crate::net::peer_id_for(&member.identity_pub)
            .ok_or_else(|| OpError::Internal("that device's identity key is not valid".into()))
    })
    .await
    .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))??;
    let request = Request {
        id: crate::vault::random_array()?,
        sent_at: unix_now(),
        ask: Ask::Start(start),
    };
    let response = daemon.mesh.ask(peer, &request).await.map_err(|e| {
        OpError::Net(crate::net::NetError::Unreachable(format!(
            "{e}; is its daemon running and connected? (`handoff peer list`)"
        )))
    })?;
    match response.outcome {
        // What a target says is shown to the person: no control characters, bounded.
        Outcome::Started { session } => Ok(one_line(&session, 64)),
        Outcome::Refused { why, detail } => Err(OpError::Refused(
            refusal_exit(why),
            format!("the target refused: {}", one_line(&detail, 512)),
        )),
        _ => Err(OpError::Internal(
            "the target answered something else".into(),
        )),
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Started { .. } => "started",
        Outcome::Refused { .. } => "refused",
        Outcome::Sessions(_) => "sessions",
        Outcome::Stopped => "stopped",
    }
}
