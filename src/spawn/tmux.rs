//! tmux mode: the agent's terminal is the first pane of a tmux server of the session's own
//! (its socket in the home's `sessions/`), and the supervisor starts that server. tmux
//! daemonizes its server, so the server is re-parented to the nearest subreaper, which is the
//! supervisor: the server, the agent and every window in it (one the agent opens with `tmux
//! new-window` included) are inside the supervisor's tree, and the user's own tmux server is
//! never given to the agent.
//!
//! The pane runs `handoff session pane`, which runs the agent, passes signals on, writes its
//! exit code where the supervisor reads it, and stops the server: the session ends with the
//! agent, and the supervisor then ends whatever the agent left, as in any mode.

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::process::{Pid, Signal, WaitOptions};

use super::{CaughtSignals, Ended, Forwarder, Materialized, SpawnError, exit_code, tree};

/// What a tmux-mode supervisor runs: its session, and where its tmux server lives.
#[derive(Debug)]
pub struct TmuxRun<'a> {
    pub session: &'a super::session::Supervise<'a>,
    pub tmux: &'a Path,
    /// The server's socket (`-S`).
    pub socket: &'a Path,
    /// The tmux session's name.
    pub name: &'a str,
    /// Where the pane writes the agent's exit code.
    pub exit_file: &'a Path,
}

/// Starts the session's tmux server with the agent in its first pane, and waits until the
/// server is gone; then ends what is left of the tree, as [`super::run_foreground`] does.
/// The server inherits `env` and the credential (tmux gives a new server's environment to
/// its panes).
pub fn run_in_tmux(
    signals: CaughtSignals,
    t: &TmuxRun<'_>,
    env: Vec<(OsString, OsString)>,
    credential: Materialized,
    starter: super::session::Starter,
) -> Result<Ended, SpawnError> {
    let ready = tree::become_supervisor(t.session.home)
        .map_err(|e| SpawnError::Io(format!("cannot supervise the agent's processes: {e}")))
        .and_then(|()| {
            std::env::current_exe()
                .map_err(|e| SpawnError::Io(format!("cannot find this program: {e}")))
        });
    let exe = match ready {
        Ok(exe) => exe,
        Err(e) => {
            starter.failed(&e.to_string());
            return Err(e);
        }
    };
    let Materialized {
        env: secret_env,
        dir: private,
        watch,
    } = credential;
    let _ = std::fs::remove_file(t.exit_file);
    let mut cmd = Command::new(t.tmux);
    cmd.arg("-S")
        .arg(t.socket)
        // -P -F: the new session's server pid, said by the command that made it (an agent
        // that exits at once may take the server with it before anyone could ask).
        .args([
            "new-session",
            "-d",
            "-P",
            "-F",
            "#{pid}",
            "-s",
            t.name,
            "-c",
        ])
        .arg(t.session.dir)
        .arg("--")
        .arg(&exe)
        .args(["session", "pane", "--exit-file"])
        .arg(t.exit_file)
        .arg("--")
        .arg(t.session.program)
        .args(t.session.args)
        .current_dir(t.session.dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null());
    for (name, value) in &secret_env {
        cmd.env(name, value.as_str());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = crate::home::with_user_umask(|| cmd.output());
    drop(cmd);
    drop(secret_env);
    let server = match started {
        Ok(out) if out.status.success() => server_pid(&out.stdout),
        Ok(out) => Err(SpawnError::Io(format!(
            "tmux could not start the session ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(SpawnError::Io(format!("cannot start tmux: {e}"))),
    };
    let server = match server {
        Ok(server) => {
            starter.started();
            server
        }
        Err(e) => {
            starter.failed(&e.to_string());
            tree::end_tree();
            Materialized::finish(watch, private);
            return Err(e);
        }
    };
    // A signal for the session goes to what runs in its panes (the agent's, first).
    let forwarder = Forwarder::start(signals, move |sig| {
        for pane in tree::children(server.as_raw_pid().unsigned_abs()) {
            if let Some(pid) = i32::try_from(pane).ok().and_then(Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });
    let _ = rustix::process::waitpid(Some(server), WaitOptions::empty());
    forwarder.quiet();
    let tree_empty = tree::end_tree();
    forwarder.finish();
    Materialized::finish(watch, private);
    let _ = std::fs::remove_file(t.socket);
    let code = read_exit_code(t.exit_file)
        // The server went before the pane could say (it was killed): as a hang-up.
        .unwrap_or(128 + Signal::HUP.as_raw());
    let _ = std::fs::remove_file(t.exit_file);
    Ok(Ended { code, tree_empty })
}

/// The pid of the session's server, as `new-session -P` printed it (its last line: the user's
/// tmux.conf may print before it): this supervisor's child by now, as tmux re-parents its
/// server to the subreaper (a server that already exited is a child still, a zombie, until
/// it is waited for).
fn server_pid(printed: &[u8]) -> Result<Pid, SpawnError> {
    let pid = String::from_utf8_lossy(printed)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| SpawnError::Io("tmux did not say which process is its server".into()))?;
    let mine = tree::children(std::process::id()).contains(&pid.as_raw_pid().unsigned_abs());
    if !mine {
        return Err(SpawnError::Io(
            "the tmux server is not in this session's process tree".into(),
        ));
    }
    Ok(pid)
}

/// The code the pane wrote: a short number in a regular file (not followed through a link).
fn read_exit_code(path: &Path) -> Option<i32> {
    use std::io::Read;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(16).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The first pane of a tmux-mode session: runs the agent with this process's environment
/// (the server's, which holds the credential), passes on the signals it catches, writes the
/// agent's exit code to `exit_file` (0600; 127 if the agent could not start), and stops the
/// server, which ends the session. Returns the code.
pub fn pane(exit_file: &Path, program: &Path, args: &[OsString]) -> Result<i32, SpawnError> {
    let ran = run_pane(program, args);
    let code = match &ran {
        Ok(code) => *code,
        Err(e) => {
            eprintln!("handoff: {e}");
            127
        }
    };
    if let Err(e) = write_exit_code(exit_file, code) {
        eprintln!("handoff: cannot record the agent's exit code: {e}");
    }
    // `$TMUX` is "socket,server pid,session": stop the server only if it is this pane's parent.
    let server = std::env::var("TMUX")
        .ok()
        .and_then(|v| v.split(',').nth(1).and_then(|p| p.parse::<i32>().ok()))
        .and_then(Pid::from_raw);
    if let Some(server) = server
        && rustix::process::getppid() == Some(server)
    {
        let _ = rustix::process::kill_process(server, Signal::TERM);
    }
    ran
}

fn run_pane(program: &Path, args: &[OsString]) -> Result<i32, SpawnError> {
    let signals = CaughtSignals::catch()?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let mut child = crate::home::with_user_umask(|| cmd.spawn())
        .map_err(|e| SpawnError::Io(format!("cannot start {}: {e}", program.display())))?;
    let pid = Pid::from_child(&child);
    let forwarder = Forwarder::start(signals, move |sig| {
        let _ = rustix::process::kill_process(pid, sig);
    });
    let status = child.wait();
    forwarder.finish();
    Ok(status.map_or(1, exit_code))
}

/// Writes `code` beside `path` and renames it into place, never through a link.
fn write_exit_code(path: &Path, code: i32) -> std::io::Result<()> {
    let tmp = path.with_extension("exit.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut file, code.to_string().as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}
