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
use crate::spawn::policy::Policy;
use crate::spawn::{Agent, resolve_command};

/// Request ids remembered for replay, at most (a flood is refused as busy, never forgotten).
const SEEN_MAX: usize = 4096;
/// Requests answered per sender and minute; beyond, `busy` and nothing audited (each answer
/// is a document change every member keeps).
const PER_MINUTE: u32 = 20;
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
}

impl Target {
    pub fn new(state: Arc<Mutex<State>>, home: PathBuf) -> Self {
        Self {
            state,
            home,
            seen: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
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
        let refuse = |why, detail: String| refused(id, why, detail);
        // The policy, verified, and the request checked against it and this device, under the
        // state's lock; the child runs after it is released (it asks this daemon for the
        // credential).
        let dir = {
            let mut state = lock_state(&self.state);
            state.expire();
            let Some(key) = state.key() else {
                return refuse(
                    Refusal::Locked,
                    "the target's vault is locked; unlock it there".into(),
                );
            };
            let policy = match Policy::load(&self.home, Some(key)) {
                Ok((policy, _)) => policy,
                Err(e) => return refuse(Refusal::Policy, format!("the target's policy: {e}")),
            };
            let dir = match policy.judge(&from, start) {
                Ok(dir) => dir,
                Err((why, line)) => return refuse(why, line),
            };
            let config = match Config::load(&self.home) {
                Ok(c) => c,
                Err(e) => return refuse(Refusal::Failed, e.to_string()),
            };
            let agent = match Agent::find(&start.agent, &config) {
                Ok(agent) => agent,
                Err(e) => return refuse(Refusal::UnknownAgent, e.to_string()),
            };
            // The program from this device's own PATH and configuration, never the asker's.
            if let Err(e) = resolve_command(
                &agent.name,
                &agent.command,
                std::env::var_os("PATH").as_deref(),
            ) {
                return refuse(Refusal::NotInstalled, e.to_string());
            }
            let service = match start.service.as_deref().map(str::parse).transpose() {
                Ok(s) => s,
                Err(e) => return refuse(Refusal::NoSuchProfile, format!("{e}")),
            };
            let credential = Op::Credential {
                agent: agent.name.clone(),
                service,
                profile: start.profile.clone(),
                session: String::new(),
                take: false,
            };
            if let Err(e) = credential.check(&state.device) {
                return refuse(Refusal::NoSuchProfile, e.to_string());
            }
            dir
        };
        match run_detached(&self.home, start, &dir) {
            Ok(session) => Response {
                id,
                outcome: Outcome::Started { session },
            },
            Err(line) => refuse(Refusal::Failed, line),
        }
    }

    /// Writes one audit entry for a request: what, from whom, and how it ended.
    fn audit(&self, from: DeviceId, ask: Option<&Ask>, outcome: &Outcome) {
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
        let subject = cut(&subject, crate::doc::schema::limits::NAME_MAX);
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
                let response = refused([0; 16], Refusal::Malformed, cut(&e.to_string(), 256));
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
    start: &Start,
    dir: &std::path::Path,
) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find handoff itself: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home")
        .arg(home)
        .args(["--json", "spawn", &start.agent, "--detach", "--dir"])
        .arg(dir);
    if let Some(p) = &start.profile {
        cmd.args(["--profile", p]);
    }
    if let Some(s) = &start.service {
        cmd.args(["--service", s]);
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
    let output = wait_bounded(child, START_TIMEOUT)?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let line = err.lines().last().unwrap_or("the session did not start");
        return Err(cut(line, 256));
    }
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|_| "the session's start said nothing readable".to_string())?;
    value["session"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the session's start named no session".into())
}

/// Waits for `child` at most `limit`, killing it past that.
fn wait_bounded(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut stdout = Vec::new();
                let mut stderr = Vec::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_end(&mut stdout);
                }
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_end(&mut stderr);
                }
                return Ok(std::process::Output {
                    status,
                    stdout,
                    stderr,
                });
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the session took too long to start".into());
            }
        }
    }
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

/// At most `max` bytes of `line`, on a character boundary.
fn cut(line: &str, max: usize) -> String {
    let mut end = line.len().min(max);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
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
        Outcome::Started { session } => Ok(session),
        Outcome::Refused { why, detail } => Err(OpError::Refused(
            refusal_exit(why),
            format!("the target refused: {detail}"),
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
