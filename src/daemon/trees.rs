//! The agent trees this daemon knows of, and who is inside one.
//!
//! Every supervisor (a foreground `spawn`, a detached session's `session supervise`) tells
//! the daemon it runs (`Request::Supervising`, from its own process, so the kernel's
//! SO_PEERCRED names it; repeated every few seconds, so a daemon started later learns of it
//! too) and, once it has ended every process of its tree, that it ended. A request above the
//! open tier is refused when the client's lineage (`/proc`, the kernel's record) holds a known
//! supervisor, or cannot be read to the top. A supervisor that stopped without saying its tree
//! ended was killed, or gave up on processes that would not die: its orphans now run outside
//! any tree. The daemon then locks and refuses everything above the open tier until it is
//! restarted, so nothing that escaped is served by a later unlock. Supervisors also name
//! themselves (`spawn::tree::become_supervisor`), so a daemon that starts while agents run
//! finds them in `/proc` before it serves anything, even one its agent stopped.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::spawn::tree::{self, Process, Unplaced};

/// How many supervisors the daemon tracks at once. A hostile client of this user could
/// register many processes; at the cap the daemon refuses everything above the open tier
/// rather than leave a real supervisor unknown.
pub(super) const MAX_TREES: usize = 256;

#[derive(Debug, Default)]
pub(super) struct Trees {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    known: HashSet<Process>,
    /// Supervisors that said their tree ended, newest last (at most [`MAX_TREES`]): not
    /// adopted again by a scan in the moment before they exit.
    ended: std::collections::VecDeque<Process>,
    /// The first supervisor found gone without ending its tree, and when.
    escaped: Option<(Process, std::time::SystemTime)>,
}

/// Why a client inside (or possibly inside) an agent tree is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Inside {
    #[error(
        "this request comes from inside an agent session (supervisor pid {}); run it from a terminal of your own",
        .0.pid
    )]
    Tree(Process),
    #[error("cannot tell where this request comes from: {0}")]
    Unplaced(Unplaced),
    #[error(
        "an agent supervisor (pid {}) stopped at {} without ending its processes, which may now run outside any session; check them (ps), then restart the daemon (`handoff daemon stop`, `handoff daemon start`)",
        .0.pid, humantime::format_rfc3339_seconds(*.1)
    )]
    Escaped(Process, std::time::SystemTime),
    #[error("this daemon tracks {MAX_TREES} agent supervisors, its most; restart it")]
    Full,
}

impl Trees {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `process` (a client, as named when it connected) supervises an agent tree.
    pub(super) fn register(&self, process: Process) -> Result<(), Inside> {
        Self::register_in(&mut self.lock(), process)
    }

    fn register_in(inner: &mut Inner, process: Process) -> Result<(), Inside> {
        if !process.is_running() {
            return Err(Inside::Unplaced(Unplaced::Unreadable(process.pid)));
        }
        if !inner.known.contains(&process) && inner.known.len() >= MAX_TREES {
            return Err(Inside::Full);
        }
        inner.known.insert(process);
        Ok(())
    }

    /// Takes every supervisor that runs now as known ([`tree::running_supervisors`]): at
    /// start, before anything is served, and on each watch, so that a supervisor stopped
    /// before it could say it runs is known all the same.
    pub(super) fn adopt_running(&self, home: &std::path::Path) {
        for process in tree::running_supervisors(home) {
            // One lock for the look and the adoption: an end said in between is seen.
            let mut inner = self.lock();
            if inner.ended.contains(&process) {
                continue;
            }
            // At the cap `check` refuses everything above the open tier anyway.
            let _ = Self::register_in(&mut inner, process);
        }
    }

    /// Whether `process` is a supervisor this daemon knows runs.
    pub(super) fn is_supervisor(&self, process: &Process) -> bool {
        self.lock().known.contains(process)
    }

    /// Supervisor `process` ended every process of its tree.
    pub(super) fn ended(&self, process: Process) {
        let mut inner = self.lock();
        inner.known.remove(&process);
        if inner.ended.len() >= MAX_TREES {
            inner.ended.pop_front();
        }
        inner.ended.push_back(process);
    }

    /// Looks for known supervisors that stopped without ending their tree; returns the first
    /// one newly found (the caller locks). From then on the daemon stays refused.
    pub(super) fn find_escape(&self) -> Option<Process> {
        let mut inner = self.lock();
        let gone: Vec<Process> = inner
            .known
            .iter()
            .filter(|p| !p.is_running())
            .copied()
            .collect();
        for process in &gone {
            inner.known.remove(process);
        }
        let first = *gone.first()?;
        if inner.escaped.is_none() {
            inner.escaped = Some((first, std::time::SystemTime::now()));
        }
        Some(first)
    }

    /// The refusal every client gets once a tree escaped, if one did.
    pub(super) fn escaped(&self) -> Option<Inside> {
        self.lock()
            .escaped
            .map(|(process, at)| Inside::Escaped(process, at))
    }

    /// Whether `client` may be served above the open tier: its whole lineage is readable
    /// and holds no known supervisor, and nothing has escaped a tree since this daemon started.
    pub(super) fn check(&self, client: Process) -> Result<(), Inside> {
        let line = tree::lineage(client.pid).map_err(Inside::Unplaced)?;
        // The walk began at the client itself, not at a process that took its pid since.
        if line.first() != Some(&client) {
            return Err(Inside::Unplaced(Unplaced::Unreadable(client.pid)));
        }
        let inner = self.lock();
        if let Some(supervisor) = line.iter().find(|p| inner.known.contains(p)) {
            return Err(Inside::Tree(*supervisor));
        }
        if let Some((process, at)) = inner.escaped {
            return Err(Inside::Escaped(process, at));
        }
        if inner.known.len() >= MAX_TREES {
            return Err(Inside::Full);
        }
        Ok(())
    }
}
