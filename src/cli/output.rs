//! Standard output for commands, a line at a time. When the reader goes away
//! (`handoff session list | head`), output stops quietly: nothing more is written, the command
//! finishes what it was doing (so temporary files and the document are left as they should
//! be), and `main` exits with the status a shell expects of a program stopped by SIGPIPE
//! (141), never a panic and a backtrace. Any other write error is reported once, the same
//! way, as an internal error.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// Nothing went wrong writing.
const FINE: u8 = 0;
/// The reader went away.
const BROKEN_PIPE: u8 = 1;
/// Writing failed otherwise.
const FAILED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(FINE);

/// Writes `args` and a newline to stdout (see the module docs).
pub fn line(args: std::fmt::Arguments<'_>) {
    write(args, true);
}

/// Writes `args` to stdout as they are.
pub fn text(args: std::fmt::Arguments<'_>) {
    write(args, false);
}

fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    if STATE.load(Ordering::Relaxed) != FINE {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = written {
        let state = if e.kind() == std::io::ErrorKind::BrokenPipe {
            BROKEN_PIPE
        } else {
            FAILED
        };
        STATE.store(state, Ordering::Relaxed);
    }
}

/// The exit status output asks for, if writing failed: 141 for a reader that went away, 1
/// for any other failure.
pub fn failure_status() -> Option<u8> {
    match STATE.load(Ordering::Relaxed) {
        BROKEN_PIPE => Some(128 + 13),
        FAILED => Some(1),
        _ => None,
    }
}

/// While a command waits on another device: on a terminal (never with `--json`, never when
/// stderr is not one), a line on stderr saying for whom and for how long so far, from a second
/// on; cleared when dropped.
#[derive(Debug)]
pub struct Waiting {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Waiting {
    /// Key derivation from the passphrase (Argon2id at 64 MiB: a moment here, seconds on a
    /// slow CPU), shown at once.
    pub fn deriving(json: bool) -> Self {
        Self::shown(json, "Unlocking (Argon2id, 64 MiB)".into(), true, None)
    }

    pub fn start(json: bool, what: String) -> Self {
        Self::shown(json, what, false, None)
    }

    /// The same, with the time left until `deadline` (Unix seconds): a pairing code's expiry.
    pub fn until(json: bool, what: String, deadline: i64) -> Self {
        Self::shown(json, what, false, Some(deadline))
    }

    fn shown(json: bool, what: String, at_once: bool, deadline: Option<i64>) -> Self {
        use std::io::IsTerminal;
        if json || !std::io::stderr().is_terminal() {
            return Self {
                done: None,
                thread: None,
            };
        }
        let (done, stop) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut shown = at_once;
            if at_once {
                eprint!("\r{what}...");
            }
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(std::time::Duration::from_secs(1))
            {
                let left = deadline.map_or_else(String::new, |at| {
                    let secs = at.saturating_sub(crate::entropy::unix_now()).max(0);
                    format!(" (the code is valid {}m {:02}s more)", secs / 60, secs % 60)
                });
                eprint!("\r{what}... {}s{left}\x1b[K", started.elapsed().as_secs());
                shown = true;
            }
            if shown {
                eprint!("\r\x1b[2K");
            }
        });
        Self {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
