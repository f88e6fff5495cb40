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
    Ask, FRESH_DIRECT, FRESH_RELAY, FUTURE_SKEW, Outcome, Refusal, Request, Response, Row,
    RowState, Start,
};

use super::state::{State, lock_state};
use crate::config::Config;
use crate::entropy::unix_now;
use crate::net::{SpawnServer, refused};
use crate::ops::{Exit, Op, OpError};
use crate::spawn::policy::{Policy, one_line};
use crate::spawn::session::{self, SessionRecord};
use crate::spawn::{Agent, resolve_command};

/// Request ids remembered for replay, at most (a flood is refused as busy, never forgotten).
const SEEN_MAX: usize = 4096;
/// Of them, one sender's at most: its whole rate over the longest window, and some.
const SEEN_PER_SENDER: usize = 400;
/// Requests answered per sender and minute; beyond, `busy` and nothing audited (each answer
/// is a document change every member keeps).
const PER_MINUTE: u32 = 20;
/// A sender's refusals audited per minute at most.
const REFUSALS_AUDITED: u32 = 10;
/// A sender's audit entries an hour, besides its starts and copies, at most.
const AUDITED_PER_HOUR: u32 = 30;
/// Stale or replayed copies of a sender's requests audited an hour, at most.
const COPIES_AUDITED: u32 = 6;
/// Sessions running on this device at most, for a remote request to start another.
const SESSIONS_MAX: usize = 16;
/// Longest a started child may take to say which session it started.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);
/// Longest a requested stop waits for the session to end.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// This device, as the target of members' requests.
pub(super) struct Target {
    pub state: Arc<Mutex<State>>,
    pub home: PathBuf,
    /// (sender, request id) → when it was sent, for the freshness window.
    seen: Mutex<HashMap<(DeviceId, [u8; 16]), i64>>,
    /// Per sender and minute, its requests.
    rate: PerSender,
    /// Per sender and minute, its refusals audited.
    refusals: PerSender,
    /// Per sender and hour, its audit entries that no start caused.
    budget: PerSender,
    /// Per sender and hour, the stale or replayed copies of its requests audited.
    copies: PerSender,
}

/// A count per sender within a window of time (a minute, an hour), forgotten when it turns.
struct PerSender(Mutex<HashMap<DeviceId, (i64, u32)>>);

impl PerSender {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    /// Counts one more for `from` in this window of `seconds`; whether it stays within `max`.
    fn count(&self, from: DeviceId, seconds: i64, max: u32) -> bool {
        let window = unix_now() / seconds;
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.retain(|_, (w, _)| *w == window);
        let entry = counts.entry(from).or_insert((window, 0));
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= max
    }
}

/// Whether `from` is an active member of the vault as `state` holds it now.
fn is_active(state: &State, from: &DeviceId) -> bool {
    state
        .device
        .state()
        .is_ok_and(|v| v.members.get(from).is_some_and(|m| m.is_active()))
}

/// Where the request ids seen within the window are kept, so a restart forgets none.
const SEEN_FILE: &str = "spawn-seen";

/// The ids seen within the window, from the file (a line each: sender, id, sent-at).
fn load_seen(home: &std::path::Path) -> HashMap<(DeviceId, [u8; 16]), i64> {
    let now = unix_now();
    let Ok(text) = crate::spawn::session::read_small(&home.join(SEEN_FILE), 128 * SEEN_MAX) else {
        return HashMap::new();
    };
    // Any line that is not one this daemon wrote, or whose time is outside the window (one in
    // the future would never leave), is dropped.
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let sender: DeviceId = parts.next()?.parse().ok()?;
            let id: [u8; 16] = hex::decode(parts.next()?).ok()?.try_into().ok()?;
            let at: i64 = parts.next()?.parse().ok()?;
            let age = now.checked_sub(at)?;
            (-FUTURE_SKEW..=FRESH_RELAY + FUTURE_SKEW)
                .contains(&age)
                .then_some(((sender, id), at))
        })
        .take(SEEN_MAX)
        .collect()
}

/// Writes the ids seen (0600, replaced whole); a failure is logged, the set in memory stays.
fn save_seen(home: &std::path::Path, seen: &HashMap<(DeviceId, [u8; 16]), i64>) {
    let text: String = seen
        .iter()
        .map(|((sender, id), at)| format!("{} {} {at}\n", sender.to_hex(), hex::encode(id)))
        .collect();
    if let Err(e) = crate::home::write_private(&home.join(SEEN_FILE), text.as_bytes()) {
        tracing::warn!(error = %e, "cannot keep the spawn request ids seen");
    }
}

impl Target {
    pub fn new(state: Arc<Mutex<State>>, home: PathBuf) -> Self {
        let seen = load_seen(&home);
        Self {
            state,
            home,
            seen: Mutex::new(seen),
            rate: PerSender::new(),
            refusals: PerSender::new(),
            budget: PerSender::new(),
            copies: PerSender::new(),
        }
    }

    /// Counts an audit entry of `from`'s that no start caused; false when its hour's budget
    /// is spent (or, for a refusal, its minute's).
    fn within_audit_budget(&self, from: DeviceId, refusal: bool, copy: bool) -> bool {
        if copy {
            // A stale or replayed copy may come from whoever holds the envelope (a relay):
            // its own small bucket, so it never spends the sender's.
            return self.copies.count(from, 3600, COPIES_AUDITED);
        }
        if refusal && !self.refusals.count(from, 60, REFUSALS_AUDITED) {
            return false;
        }
        self.budget.count(from, 3600, AUDITED_PER_HOUR)
    }

    /// Counts a request from `from`; false when it is over this minute's share.
    fn within_rate(&self, from: DeviceId) -> bool {
        self.rate.count(from, 60, PER_MINUTE)
    }

    /// Refuses a stale, future or replayed request (remembers nothing: see [`Self::remember`]).
    fn fresh(&self, from: DeviceId, request: &Request, relayed: bool) -> Result<(), Refusal> {
        let mut window = if relayed { FRESH_RELAY } else { FRESH_DIRECT };
        // The person may narrow it, never widen it.
        if let Ok(Some(narrower)) =
            Config::load(&self.home).map(|c| c.spawn.request_window.map(i64::from))
        {
            window = window.min(narrower);
        }
        let now = unix_now();
        let age = now.checked_sub(request.sent_at).ok_or(Refusal::Stale)?;
        if age > window || age < -FUTURE_SKEW {
            return Err(Refusal::Stale);
        }
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains_key(&(from, request.id)) {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }

    /// Remembers a fresh request's id, on disk too, for as long as a copy of it could be
    /// fresh; `Busy` when the sender holds its share of the set already (or the set is full).
    fn remember(&self, from: DeviceId, request: &Request) -> Result<(), Refusal> {
        let now = unix_now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, at| now.saturating_sub(*at) <= FRESH_RELAY + FUTURE_SKEW);
        if seen.contains_key(&(from, request.id)) {
            return Err(Refusal::Replayed);
        }
        let theirs = seen.keys().filter(|(sender, _)| *sender == from).count();
        if theirs >= SEEN_PER_SENDER || seen.len() >= SEEN_MAX {
            return Err(Refusal::Busy);
        }
        seen.insert((from, request.id), request.sent_at);
        save_seen(&self.home, &seen);
        Ok(())
    }

    fn start(&self, from: DeviceId, id: [u8; 16], start: &Start) -> Response {
        let refuse = |why, detail: &str| refused(id, why, detail);
        // Under the state's lock only what needs it: the lock state, a copy of the key, the
        // sender's membership now (it may have been removed since its stream opened).
        let key = {
            let mut state = lock_state(&self.state);
            state.expire();
            if !is_active(&state, &from) {
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
        let running = session::list(&self.home)
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
            Ok(session) => {
                // The asker may list and stop it (and no other member).
                if let Err(e) = session::note_asker(&self.home, &session, &from.to_hex()) {
                    tracing::warn!(error = %e, "cannot record who asked for a session");
                }
                Response {
                    id,
                    outcome: Outcome::Started { session },
                }
            }
            Err(line) => {
                tracing::warn!(why = %line, "a requested session did not start");
                refuse(
                    Refusal::Failed,
                    "the session did not start on the target (its daemon log says why)",
                )
            }
        }
    }

    /// Lists, or stops one of, the sessions `from` asked for: a member sees and stops only its
    /// own (another's is "no such session", never "not yours").
    fn theirs(&self, from: DeviceId, id: [u8; 16], ask: &Ask) -> (Response, bool) {
        if !is_active(&lock_state(&self.state), &from) {
            return (
                refused(
                    id,
                    Refusal::NotAMember,
                    "your device is not a member of this vault",
                ),
                true,
            );
        }
        let asker = from.to_hex();
        let mine: Vec<SessionRecord> = session::list(&self.home)
            .into_iter()
            .filter(|r| session::asker(&self.home, &r.id).as_deref() == Some(asker.as_str()))
            .collect();
        let outcome = match ask {
            Ask::Stop { session: wanted } => {
                let Some(record) = mine.iter().find(|r| &r.id == wanted) else {
                    let why = "the target has no session of yours with that id";
                    return (refused(id, Refusal::NoSuchSession, why), true);
                };
                match session::stop(&self.home, record, STOP_WAIT) {
                    // Stopping one that had ended changed nothing: not audited.
                    Ok(stopped) => {
                        return (
                            Response {
                                id,
                                outcome: Outcome::Stopped,
                            },
                            stopped,
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a requested stop failed");
                        let why = "the session did not stop";
                        return (refused(id, Refusal::Failed, why), true);
                    }
                }
            }
            _ => Outcome::Sessions(
                mine.iter()
                    .take(handoff_protocol::spawn::ROWS_MAX)
                    .map(row)
                    .collect(),
            ),
        };
        // A listing changes nothing: it is logged, not audited.
        (Response { id, outcome }, false)
    }

    /// Writes one audit entry for a request: what, from whom, and how it ended. Every start
    /// (at most [`SESSIONS_MAX`] run at once); of a sender's stops and refusals, at most
    /// [`AUDITED_PER_HOUR`] an hour and [`REFUSALS_AUDITED`] refusals a minute (the log has
    /// the rest), so no member, and no relay replaying its envelopes, can flush the audit.
    fn audit(&self, from: DeviceId, ask: Option<&Ask>, outcome: &Outcome) {
        let refusal = matches!(outcome, Outcome::Refused { .. });
        let copy = matches!(
            outcome,
            Outcome::Refused {
                why: Refusal::Stale | Refusal::Replayed,
                ..
            }
        );
        if !matches!(outcome, Outcome::Started { .. })
            && !self.within_audit_budget(from, refusal, copy)
        {
            return;
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
        if let Some(Ask::Stop { session }) = ask {
            subject.push_str(&format!(" session {session}"));
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
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                if !self.within_rate(from) {
                    return refused([0; 16], Refusal::Busy, refusal_line(Refusal::Busy));
                }
                let response = refused([0; 16], Refusal::Malformed, one_line(&e.to_string(), 256));
                self.audit(from, None, &response.outcome);
                return response;
            }
        };
        // Freshness before the rate: a stale or replayed copy (which whoever holds the
        // envelope can send) never spends the sender's share.
        let checked = self.fresh(from, &request, relayed).and_then(|()| {
            if !self.within_rate(from) {
                return Err(Refusal::Busy);
            }
            self.remember(from, &request)
        });
        let (response, audited) = match checked {
            Err(Refusal::Busy) => {
                return refused(request.id, Refusal::Busy, refusal_line(Refusal::Busy));
            }
            Err(why) => (refused(request.id, why, refusal_line(why)), true),
            Ok(()) => match &request.ask {
                Ask::Start(start) => (self.start(from, request.id, start), true),
                Ask::List | Ask::Stop { .. } => self.theirs(from, request.id, &request.ask),
            },
        };
        if audited {
            self.audit(from, Some(&request.ask), &response.outcome);
        }
        let why = match &response.outcome {
            Outcome::Refused { why, .. } => refusal_name(*why),
            _ => "",
        };
        tracing::info!(from = %from.to_hex(), outcome = outcome_name(&response.outcome), why, relayed, "a spawn request was answered");
        response
    }
}

/// A session as a listing for its asker shows it.
fn row(r: &SessionRecord) -> Row {
    let state = if r.is_running() {
        RowState::Running
    } else if r.failure.is_some() {
        RowState::Failed
    } else {
        RowState::Exited
    };
    let text = |s: &str| one_line(s, handoff_protocol::spawn::TEXT_MAX);
    Row {
        session: text(&r.id),
        agent: text(&r.agent),
        dir: text(&r.dir),
        started_at: r.started_at,
        state,
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

/// How long the asking side waits for a result that travels through a relay, the deposit
/// included (with the direct try before it, well inside the control client's 120 s).
pub(crate) const RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// The asking side: `spawn --on`, `session list --on`, `session stop --on` through this
/// device's daemon. What the target did and how the request reached it, or its refusal as an
/// error with the class's exit code.
pub(super) async fn ask_on(
    daemon: &Arc<super::Daemon>,
    device: String,
    ask: Ask,
) -> Result<(Outcome, crate::net::Route), OpError> {
    let shared = daemon.state.clone();
    let (to, peer) = tokio::task::spawn_blocking(move || {
        let state = lock_state(&shared);
        let vault = state.device.state()?;
        let member = state.device.find_member(&vault, &device)?;
        if member.device == state.device.device_id() {
            return Err(OpError::Usage("that is this device; leave out --on".into()));
        }
        if !member.is_active() {
            return Err(OpError::Usage(format!(
                "{device} was removed from the vault"
            )));
        }
        let peer = crate::net::peer_id_for(&member.identity_pub)
            .ok_or_else(|| OpError::Internal("that device's identity key is not valid".into()))?;
        Ok((member.device, peer))
    })
    .await
    .map_err(|_| OpError::Internal("the request failed inside the daemon".into()))??;
    let request = Request {
        id: crate::vault::random_array()?,
        sent_at: unix_now(),
        ask,
    };
    let (response, route) = daemon
        .mesh
        .ask(to, peer, &request, RELAY_WAIT)
        .await
        .map_err(|e| match e {
            crate::net::NetError::Unreachable(why) => {
                OpError::Net(crate::net::NetError::Unreachable(format!(
                    "{why}; is its daemon running and connected? (`handoff peer list`)"
                )))
            }
            other => OpError::Net(other),
        })?;
    match response.outcome {
        Outcome::Refused { why, detail } => Err(OpError::Refused(
            refusal_exit(why),
            // What a target says is shown to the person: no control characters, bounded.
            format!("the target refused: {}", one_line(&detail, 512)),
        )),
        outcome => Ok((outcome, route)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seen_ids_come_back_from_disk_and_nothing_else_does() {
        let home = tempfile::tempdir().unwrap();
        let (a, b) = (DeviceId::from_bytes([1; 16]), DeviceId::from_bytes([2; 16]));
        let now = unix_now();
        let mut seen = HashMap::new();
        seen.insert((a, [7; 16]), now - 10);
        seen.insert((b, [8; 16]), now);
        save_seen(home.path(), &seen);
        assert_eq!(load_seen(home.path()), seen);

        // What another process of the user's may have put there instead: garbage, a time in
        // the future (it would never leave), one long gone, bytes that are not UTF-8.
        let mut hostile = format!(
            "{} {} {}\nnot a line\n{} {} {}\n{} {} {}\n",
            a.to_hex(),
            hex::encode([7u8; 16]),
            now - 10,
            a.to_hex(),
            hex::encode([9u8; 16]),
            now + 100_000,
            b.to_hex(),
            hex::encode([8u8; 16]),
            now - 100_000,
        )
        .into_bytes();
        hostile.extend_from_slice(b"\xff\xfe\n");
        std::fs::write(home.path().join(SEEN_FILE), hostile).unwrap();
        let loaded = load_seen(home.path());
        assert_eq!(loaded.len(), 1, "{loaded:?}");
        assert!(loaded.contains_key(&(a, [7; 16])));
    }
}
