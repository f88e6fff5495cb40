//! The agent trees this daemon knows of, and who is inside one.
//!
//! Every supervisor (a foreground `spawn`, a detached session's `session supervise`) tells
//! the daemon it runs (`Request::Supervising`, from its own process, so the kernel's SO_PEERCRED
//! names it; repeated every few seconds, so a daemon started later learns of it too) and, once
//! its whole tree is reaped, that it ended. A request above the open tier is refused when the
//! client's lineage (`/proc`, the kernel's record) holds a known supervisor. A supervisor that
//! stopped without saying it ended was killed, perhaps by its own agent to leave the tree
//! (its orphans would be re-parented outside it): the daemon then locks, so what escaped finds
//! a vault that needs the passphrase.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::spawn::tree::{self, Process};

/// How many supervisors the daemon tracks at once (a hostile client of this user could
/// register many processes; beyond this, registration is refused).
const MAX_TREES: usize = 256;

#[derive(Debug, Default)]
pub(super) struct Trees {
    known: Mutex<HashSet<Process>>,
}

/// Why a registration was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum TreeRefusal {
    #[error("the control client's process is gone")]
    Gone,
    #[error("this daemon already tracks {MAX_TREES} agent supervisors")]
    Full,
}

impl Trees {
    fn lock(&self) -> MutexGuard<'_, HashSet<Process>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client process `pid` supervises an agent tree.
    pub(super) fn register(&self, pid: u32) -> Result<(), TreeRefusal> {
        let process = Process::of(pid).ok_or(TreeRefusal::Gone)?;
        let mut known = self.lock();
        if !known.contains(&process) && known.len() >= MAX_TREES {
            return Err(TreeRefusal::Full);
        }
        known.insert(process);
        Ok(())
    }

    /// Supervisor `pid`'s tree ended: every process in it is gone.
    pub(super) fn ended(&self, pid: u32) {
        if let Some(process) = Process::of(pid) {
            self.lock().remove(&process);
        }
    }

    /// Forgets supervisors that stopped without ending their tree, and returns them.
    pub(super) fn take_broken(&self) -> Vec<Process> {
        let mut known = self.lock();
        let broken: Vec<Process> = known.iter().filter(|p| !p.is_running()).copied().collect();
        for process in &broken {
            known.remove(process);
        }
        broken
    }

    /// The supervisor whose tree holds client `pid`, if any.
    pub(super) fn holding(&self, pid: u32) -> Option<Process> {
        let known = self.lock();
        if known.is_empty() {
            return None;
        }
        tree::lineage(pid).into_iter().find(|p| known.contains(p))
    }
}
