//! Agent process trees. Whatever `spawn` starts lives under a supervisor (the foreground
//! `spawn` itself, or a detached session's `session supervise`) that is a child subreaper: a
//! process that double-forks or calls `setsid` is still re-parented to the supervisor, never to
//! init, so walking a process's parents from the kernel's own records (`/proc/PID/stat`)
//! finds the supervisor of every process in the tree. The daemon does that walk for each
//! request above the open tier and refuses one from inside a tree (ARCHITECTURE.md, "Who the
//! daemon serves"). When the agent exits, the supervisor ends whatever it left running, so no
//! process of the tree outlives its supervisor.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

/// How many parents a walk follows at most (a pid namespace is far shallower).
const MAX_DEPTH: usize = 1024;
/// How long leftovers get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// A process as the kernel identifies it across pid reuse: its pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Process {
    pub pid: u32,
    /// Clock ticks after boot at which it started (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl Process {
    /// The running process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<Process> {
        stat(pid).map(|(_, start)| Process { pid, start })
    }

    /// Whether this very process still runs (not another that reuses its pid).
    pub fn is_running(&self) -> bool {
        Process::of(self.pid) == Some(*self)
    }
}

/// `pid`'s parent and start time, from `/proc/PID/stat`. The command name, in parentheses,
/// may hold anything (spaces, parentheses): the fields are counted after its last `)`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state (3), ppid (4), ..., starttime (22).
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// `pid` and its ancestors, nearest first, as far as the kernel records them (at most
/// [`MAX_DEPTH`]); empty if `pid` is gone.
pub fn lineage(pid: u32) -> Vec<Process> {
    let mut out = Vec::new();
    let mut next = pid;
    while next > 0 && out.len() < MAX_DEPTH {
        let Some((parent, start)) = stat(next) else {
            break;
        };
        out.push(Process { pid: next, start });
        next = parent;
    }
    out
}

/// Makes this process the subreaper of everything it starts from now on.
pub fn become_subreaper() -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Ends what the agent left running in the tree: SIGTERM to every child this supervisor still
/// has (descendants re-parented here included), SIGKILL after [`GRACE`], each reaped, until
/// none is left. Bounded: it gives up after a few seconds more.
pub fn end_tree() {
    let started = Instant::now();
    loop {
        while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
        let left = children();
        if left.is_empty() || started.elapsed() > GRACE * 3 {
            return;
        }
        let signal = if started.elapsed() < GRACE {
            Signal::TERM
        } else {
            Signal::KILL
        };
        for pid in left {
            let _ = rustix::process::kill_process(pid, signal);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process's children (every thread's), as `/proc` lists them.
fn children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .filter_map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lineage_of_this_process_starts_with_it_and_climbs_to_its_parent() {
        let me = std::process::id();
        let line = lineage(me);
        assert_eq!(line.first().map(|p| p.pid), Some(me));
        assert_eq!(
            line.get(1).map(|p| p.pid),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32))
        );
        assert!(Process::of(me).unwrap().is_running());
        assert!(lineage(0).is_empty());
    }

    #[test]
    fn a_name_with_parentheses_and_spaces_does_not_shift_the_fields() {
        // What /proc shows for a process that named itself ") 1 2 3 (".
        let text = "4242 () 1 2 3 () S 17 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(text), Some((17, 987_654)));
        assert_eq!(parse_stat("4242 (cut) S 17"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }
}
