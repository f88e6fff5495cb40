//! Agent process trees. Whatever `spawn` starts lives under a supervisor (the foreground
//! `spawn` itself, or a detached session's `session supervise`) that is a child subreaper: a
//! process that double-forks or calls `setsid` is still re-parented to the supervisor, never to
//! init, so walking a process's parents from the kernel's own records (`/proc/PID/stat`)
//! finds the supervisor of every process in the tree. The daemon does that walk for each
//! request above the open tier and refuses one from inside a tree (ARCHITECTURE.md, "Who the
//! daemon serves"); a walk that cannot reach the top is a refusal too, never a pass. When the
//! agent exits, the supervisor ends every process it left, and says whether it could.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

/// How many parents a walk follows at most; a deeper client is not placed (and refused).
const MAX_DEPTH: usize = 256;
/// How long the processes an agent left get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);
/// How long ending them may take in all before the supervisor gives up on its tree.
const END_WITHIN: Duration = Duration::from_secs(10);

/// A process as the kernel identifies it across pid reuse: its pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Process {
    pub pid: u32,
    /// Clock ticks after boot at which it started (`/proc/PID/stat` field 22).
    pub start: u64,
}

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    start: u64,
    /// Exited, waiting to be reaped (or being torn down): no longer runs.
    dead: bool,
}

impl Process {
    /// The process `pid`, if one runs (a zombie does not).
    pub fn of(pid: u32) -> Option<Process> {
        stat(pid).filter(|s| !s.dead).map(|s| Process {
            pid,
            start: s.start,
        })
    }

    /// Whether this very process still runs (not a zombie, not another that reuses its pid).
    pub fn is_running(&self) -> bool {
        Process::of(self.pid) == Some(*self)
    }
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// The fields of a `/proc/PID/stat` line. The command name, in parentheses, may hold any
/// bytes (spaces, parentheses, invalid UTF-8): the fields are counted after its last `)`.
fn parse_stat(line: &[u8]) -> Option<Stat> {
    let close = line.iter().rposition(|&b| b == b')')?;
    let after = std::str::from_utf8(&line[close + 1..]).ok()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state (3), ppid (4), ..., starttime (22).
    let dead = matches!(*fields.first()?, "Z" | "X" | "x");
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some(Stat { ppid, start, dead })
}

/// Why a process could not be placed in the process tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    #[error("process {0} cannot be read in /proc (gone, or hidden)")]
    Unreadable(u32),
    #[error("its ancestry is deeper than {MAX_DEPTH} processes")]
    TooDeep,
}

/// `pid` and every ancestor up to the top of the pid namespace, nearest first. Fails when any
/// step cannot be read or the chain is too long: the caller then knows nothing of where the
/// process runs, and must not take that for "outside every tree".
pub fn lineage(pid: u32) -> Result<Vec<Process>, Unplaced> {
    let mut out = Vec::new();
    let mut next = pid;
    loop {
        if out.len() >= MAX_DEPTH {
            return Err(Unplaced::TooDeep);
        }
        let s = stat(next).ok_or(Unplaced::Unreadable(next))?;
        out.push(Process {
            pid: next,
            start: s.start,
        });
        if s.ppid == 0 {
            return Ok(out);
        }
        next = s.ppid;
    }
}

/// The name (`comm`, at most 15 bytes) a supervisor takes before it starts its agent, so a
/// daemon that starts while agents run finds their supervisors ([`running_supervisors`]):
/// `handoff-` and 7 hex digits of a digest of the home's path, so that the daemon of one home
/// does not take another home's supervisors for its own.
fn supervisor_name(home: &Path) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let digest = Sha256::digest(home.as_os_str().as_encoded_bytes());
    let mut name = b"handoff-".to_vec();
    name.extend_from_slice(&hex::encode(digest).as_bytes()[..7]);
    name
}

/// Makes this process the subreaper of everything it starts from now on, and names it a
/// supervisor for `home`. Call it from the main thread: its name is the process's. Only a
/// process itself can set its name, so an agent cannot rename its supervisor to hide it; a
/// process that takes the name (anyone of this uid can) is adopted, and when it exits without
/// saying its tree ended the daemon locks: no worse than an agent killing its own supervisor.
pub fn become_supervisor(home: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
        set_own_name(&supervisor_name(home))?;
    }
    Ok(())
}

/// Gives up the supervisor's name, once its tree is verified empty and before it says so: a
/// daemon that looks in between must not adopt a supervisor that is about to exit.
pub fn stop_being_supervisor() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = set_own_name(b"handoff") {
        tracing::warn!(error = %e, "cannot give up the supervisor's name");
    }
}

/// Names this process (`PR_SET_NAME` on the main thread; `/proc/self/comm` is not writable
/// once the process is not dumpable, and every handoff process makes itself so).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_own_name(name: &[u8]) -> std::io::Result<()> {
    if rustix::thread::gettid() != rustix::process::getpid() {
        return Err(std::io::Error::other(
            "only the main thread can name the process",
        ));
    }
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    Ok(rustix::thread::set_name(&name)?)
}

/// The supervisors for `home` of this user that run now, found by name in `/proc`: a daemon
/// started (or restarted) while agents run learns of their trees before it serves anything,
/// including a supervisor its agent stopped (SIGSTOP) so that it cannot say it runs. A process
/// that forked from a supervisor and has not yet exec'd carries the name too: one whose parent
/// is a supervisor is left out (it is inside that supervisor's tree anyway).
pub fn running_supervisors(home: &Path) -> Vec<Process> {
    let wanted = supervisor_name(home);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let uid = rustix::process::getuid().as_raw();
    let me = std::process::id();
    let named = |pid: u32| -> Option<Stat> {
        let line = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        let open = line.iter().position(|&b| b == b'(')?;
        let close = line.iter().rposition(|&b| b == b')')?;
        let s = parse_stat(&line)?;
        (line.get(open + 1..close)? == wanted.as_slice() && !s.dead).then_some(s)
    };
    entries
        .flatten()
        .filter_map(|entry| {
            use std::os::unix::fs::MetadataExt;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me || entry.metadata().ok()?.uid() != uid {
                return None;
            }
            let s = named(pid)?;
            if named(s.ppid).is_some() {
                return None;
            }
            Some(Process {
                pid,
                start: s.start,
            })
        })
        .collect()
}

/// Ends every process the agent left in the tree (descendants of this supervisor at any
/// depth, found from `/proc`): each pass stops them all, then signals them (SIGTERM, SIGKILL
/// after [`GRACE`]) and reaps what died. Returns whether the tree is empty: `false` when some
/// survived [`END_WITHIN`] or the tree could not be read, and then its processes may outlive
/// this supervisor.
pub fn end_tree() -> bool {
    let me = std::process::id();
    let started = Instant::now();
    loop {
        while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
        let Some(left) = descendants(me) else {
            return false;
        };
        if left.is_empty() {
            return true;
        }
        if started.elapsed() > END_WITHIN {
            return false;
        }
        let signal = if started.elapsed() < GRACE {
            Signal::TERM
        } else {
            Signal::KILL
        };
        // Stopped first, so none can fork another while the others are signalled.
        for pid in &left {
            let _ = rustix::process::kill_process(*pid, Signal::STOP);
        }
        for pid in &left {
            let _ = rustix::process::kill_process(*pid, signal);
            let _ = rustix::process::kill_process(*pid, Signal::CONT);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every live descendant of `root`: from the kernel's per-task `children` lists, one level at
/// a time (cheap: an agent that left nothing costs one read), or, where the kernel has no such
/// lists, from one pass over all of `/proc`. `None` if neither can be read.
fn descendants(root: u32) -> Option<Vec<Pid>> {
    let mut found: Vec<u32> = Vec::new();
    let mut seen: HashSet<u32> = HashSet::from([root]);
    let mut level = vec![root];
    while !level.is_empty() {
        let mut next = Vec::new();
        for pid in level {
            let Some(children) = children_of(pid) else {
                // The root's lists missing means this kernel has none: scan instead.
                if pid == root {
                    return scan_descendants(root);
                }
                continue; // it exited meanwhile; its children went to the root
            };
            for child in children {
                if seen.insert(child) {
                    found.push(child);
                    next.push(child);
                }
            }
        }
        level = next;
    }
    Some(
        found
            .into_iter()
            .filter_map(|p| i32::try_from(p).ok().and_then(Pid::from_raw))
            .collect(),
    )
}

/// The children of `pid` (none if they cannot be read).
pub fn children(pid: u32) -> Vec<u32> {
    children_of(pid).unwrap_or_default()
}

/// The children of every thread of `pid` (`/proc/PID/task/*/children`).
fn children_of(pid: u32) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).ok()?;
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    Some(out)
}

/// Every live descendant of `root`, from one pass over `/proc`.
fn scan_descendants(root: u32) -> Option<Vec<Pid>> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = stat(pid).filter(|s| !s.dead) {
            parent_of.insert(pid, s.ppid);
        }
    }
    let mut inside: HashSet<u32> = HashSet::from([root]);
    // Parents before children is not guaranteed by /proc's order: settle in rounds.
    loop {
        let before = inside.len();
        for (pid, ppid) in &parent_of {
            if inside.contains(ppid) {
                inside.insert(*pid);
            }
        }
        if inside.len() == before {
            break;
        }
    }
    inside.remove(&root);
    Some(
        inside
            .into_iter()
            .filter_map(|p| i32::try_from(p).ok().and_then(Pid::from_raw))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lineage_of_this_process_starts_with_it_and_reaches_the_top() {
        let me = std::process::id();
        let line = lineage(me).unwrap();
        assert_eq!(line.first().map(|p| p.pid), Some(me));
        assert_eq!(
            line.get(1).map(|p| p.pid),
            rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32)
        );
        assert!(Process::of(me).unwrap().is_running());
        assert_eq!(lineage(0), Err(Unplaced::Unreadable(0)));
    }

    #[test]
    fn any_name_leaves_the_fields_in_place_and_a_zombie_does_not_run() {
        // What /proc shows for a process that named itself ") 1 2 3 (" and one that took an
        // invalid UTF-8 name.
        let text = b"4242 () 1 2 3 () S 17 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        let s = parse_stat(text).unwrap();
        assert_eq!((s.ppid, s.start, s.dead), (17, 987_654, false));
        let mut odd = b"4242 (\xff\xfe) ".to_vec();
        odd.extend_from_slice(b"Z 17 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 55 1 1");
        let s = parse_stat(&odd).unwrap();
        assert_eq!((s.ppid, s.start, s.dead), (17, 55, true));
        assert_eq!(parse_stat(b"4242 (cut) S 17"), None);
        assert_eq!(parse_stat(b"no parenthesis"), None);
    }

    #[test]
    fn descendants_are_found_at_any_depth() {
        // sh -> sh -> sleep: the sleep is two levels below the first sh.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sh -c 'sleep 30' & wait"])
            .spawn()
            .unwrap();
        let root = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut below = Vec::new();
        while below.len() < 2 {
            assert!(Instant::now() < deadline, "the chain never appeared");
            below = descendants(root).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let raw = |v: Vec<Pid>| {
            let mut v: Vec<i32> = v
                .into_iter()
                .map(Pid::as_raw_nonzero)
                .map(|p| p.get())
                .collect();
            v.sort_unstable();
            v
        };
        let (scanned, listed) = (raw(scan_descendants(root).unwrap()), raw(below.clone()));
        assert_eq!(scanned, listed, "the two ways of finding them agree");
        for pid in below {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
