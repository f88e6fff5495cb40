//! `daemon start|stop|status|logs|install|uninstall`, `unlock`, `lock`.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{CliError, Context, input, print_json, when};
use crate::control::{Client, Request, Response};

/// How long `daemon start` and `daemon stop` wait for the daemon to come or go.
const WAIT: Duration = Duration::from_secs(10);

fn ping(ctx: &Context) -> Option<(Client, u32, Option<i64>)> {
    let mut client = Client::connect(&ctx.home.socket_path())?;
    match client.call(&Request::Ping).ok()? {
        Response::Pong {
            pid,
            unlocked_until,
        } => Some((client, pid, unlocked_until)),
        _ => None,
    }
}

fn log_path(ctx: &Context) -> PathBuf {
    ctx.home.root().join("daemon.log")
}

// `daemon start`'s options (the variant's doc comment is its help).
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Run in this process instead (for systemd, launchd, or debugging).
    #[arg(long)]
    foreground: bool,
    /// Listen on this multiaddr instead of config.toml's (repeatable).
    #[arg(long, value_name = "MULTIADDR", value_parser = crate::addr::parse)]
    listen: Vec<crate::net::Multiaddr>,
    /// Do not advertise or look for members on the LAN (mDNS).
    #[arg(long)]
    no_mdns: bool,
}

pub(super) fn start(ctx: &Context, args: StartArgs) -> Result<(), CliError> {
    let options = crate::daemon::Options {
        listen: args.listen,
        no_mdns: args.no_mdns,
    };
    if let Some((_, pid, _)) = ping(ctx) {
        return Err(CliError::Busy(format!(
            "a daemon already runs for {} (pid {pid})",
            ctx.home.root().display()
        )));
    }
    if !ctx.home.is_initialized() {
        return Err(
            crate::device::DeviceError::from(crate::store::StoreError::NotInitialized).into(),
        );
    }
    if args.foreground {
        return Ok(crate::daemon::run(ctx.home.clone(), &options)?);
    }
    // The vault is loaded once, by the daemon: a damaged store or a busy home fails there, and
    // its exit code and last line come back from the log as this command's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path(ctx))
        .map_err(|source| CliError::File {
            what: "cannot open",
            path: log_path(ctx),
            source,
        })?;
    let logged_before = log.metadata().map_or(0, |m| m.len());
    let err_log = log.try_clone().map_err(|source| CliError::File {
        what: "cannot open",
        path: log_path(ctx),
        source,
    })?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Internal(format!("cannot find this program: {e}")))?;
    let mut child = Command::new(exe)
        .arg("--home")
        .arg(ctx.home.root())
        .args(["daemon", "start", "--foreground"])
        .args(
            options
                .listen
                .iter()
                .flat_map(|a| ["--listen".to_string(), a.to_string()]),
        )
        .args(options.no_mdns.then_some("--no-mdns"))
        .env_remove("HANDOFF_PASSPHRASE_FILE")
        .env(
            "HANDOFF_LOG",
            std::env::var("HANDOFF_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0) // not in the terminal's group: Ctrl-C here does not stop it
        .spawn()
        .map_err(|e| CliError::Internal(format!("cannot start the daemon: {e}")))?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((_, pid, _)) = ping(ctx) {
            if ctx.json {
                print_json(&json!({"pid": pid, "log": log_path(ctx).display().to_string()}));
            } else {
                say!(
                    "Daemon started (pid {pid}). Logs: {}",
                    log_path(ctx).display()
                );
            }
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(exited(ctx, status, logged_before));
        }
        if Instant::now() > deadline {
            return Err(CliError::Internal(format!(
                "the daemon did not answer within {WAIT:?}; see {}",
                log_path(ctx).display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why the daemon that was just started exited: its own exit code and the error line it
/// logged in this run (what the log held before it started is not this run's).
fn exited(ctx: &Context, status: std::process::ExitStatus, logged_before: u64) -> CliError {
    let log = std::fs::read(log_path(ctx)).unwrap_or_default();
    let run = log
        .get(usize::try_from(logged_before).unwrap_or(usize::MAX)..)
        .unwrap_or_default();
    let run = String::from_utf8_lossy(run);
    // The log is this user's, so anything running as them can write to it: one plain line.
    let last = run
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(|l| crate::spawn::policy::one_line(l, 400));
    match (status.code().and_then(|c| u8::try_from(c).ok()), &last) {
        (Some(exit), Some(line)) if exit != 0 => CliError::Remote {
            exit,
            message: format!("the daemon could not start: {line}"),
            passphrase: false,
        },
        _ => CliError::Internal(format!(
            "the daemon exited ({status}): {}",
            last.as_deref().unwrap_or("see the log")
        )),
    }
}

pub(super) fn stop(ctx: &Context) -> Result<(), CliError> {
    let Some((mut client, pid, _)) = ping(ctx) else {
        say!("No daemon is running.");
        return Ok(());
    };
    client
        .call(&Request::Shutdown)
        .map_err(|e| CliError::Internal(e.to_string()))?;
    let deadline = Instant::now() + WAIT;
    while ping(ctx).is_some() || ctx.home.socket_path().exists() {
        if Instant::now() > deadline {
            return Err(CliError::Internal(format!(
                "the daemon (pid {pid}) did not stop within {WAIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The socket is gone once it stops serving; wait for it to release the home too.
    let _lock = ctx
        .home
        .lock(WAIT)
        .map_err(crate::device::DeviceError::from)?;
    say!("Daemon stopped.");
    Ok(())
}

pub(super) fn status(ctx: &Context) -> Result<(), CliError> {
    let Some((_, pid, until)) = ping(ctx) else {
        return Err(CliError::NotRunning(format!(
            "no daemon is running for {}",
            ctx.home.root().display()
        )));
    };
    if ctx.json {
        print_json(&json!({"pid": pid, "locked": until.is_none(), "unlocked_until": until}));
    } else {
        let lock = until.map_or_else(
            || "locked".to_string(),
            |t| format!("unlocked until {}", when(t)),
        );
        say!("running (pid {pid}), {lock}");
    }
    Ok(())
}

pub(super) fn logs(ctx: &Context) -> Result<(), CliError> {
    let text = std::fs::read_to_string(log_path(ctx)).map_err(|source| CliError::File {
        what: "cannot read",
        path: log_path(ctx),
        source,
    })?;
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(200)..] {
        say!("{line}");
    }
    Ok(())
}

/// Where the service definition goes, and its text.
fn service_unit(ctx: &Context) -> Result<(PathBuf, String), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Internal(format!("cannot find this program: {e}")))?;
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| CliError::Usage("HOME is not set".into()))?;
    if cfg!(target_os = "macos") {
        let path = home.join("Library/LaunchAgents/dev.handoff.daemon.plist");
        let text = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>dev.handoff.daemon</string>
  <key>ProgramArguments</key>
  <array><string>{}</string><string>--home</string><string>{}</string><string>daemon</string><string>start</string><string>--foreground</string></array>
  <key>EnvironmentVariables</key><dict><key>HANDOFF_LOG</key><string>info</string></dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><true/>
  <key>StandardErrorPath</key><string>{}</string>
</dict>
</plist>
"#,
            exe.display(),
            ctx.home.root().display(),
            log_path(ctx).display()
        );
        return Ok((path, text));
    }
    let config =
        std::env::var_os("XDG_CONFIG_HOME").map_or_else(|| home.join(".config"), PathBuf::from);
    let path = config.join("systemd/user/handoff.service");
    let text = format!(
        "[Unit]\nDescription=handoff daemon (vendor credentials and agent sessions)\n\n[Service]\nExecStart={} --home {} daemon start --foreground\nEnvironment=HANDOFF_LOG=info\nRestart=on-failure\n\n[Install]\nWantedBy=default.target\n",
        exe.display(),
        ctx.home.root().display()
    );
    Ok((path, text))
}

pub(super) fn install(ctx: &Context, print: bool) -> Result<(), CliError> {
    let (path, text) = service_unit(ctx)?;
    if print {
        crate::cli::output::text(format_args!("{text}"));
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CliError::File {
            what: "cannot create",
            path: dir.into(),
            source,
        })?;
    }
    std::fs::write(&path, text).map_err(|source| CliError::File {
        what: "cannot write",
        path: path.clone(),
        source,
    })?;
    say!("Wrote {}.", path.display());
    if cfg!(target_os = "macos") {
        say!("Start it now: launchctl load {}", path.display());
    } else {
        say!(
            "Start it now and at login: systemctl --user daemon-reload && systemctl --user enable --now handoff"
        );
    }
    Ok(())
}

pub(super) fn uninstall(ctx: &Context) -> Result<(), CliError> {
    let (path, _) = service_unit(ctx)?;
    match std::fs::remove_file(&path) {
        Ok(()) => say!(
            "Removed {}. Stop a running daemon with `handoff daemon stop`.",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say!("Nothing to remove: {} does not exist.", path.display())
        }
        Err(source) => {
            return Err(CliError::File {
                what: "cannot remove",
                path,
                source,
            });
        }
    }
    Ok(())
}

pub(super) fn unlock(ctx: &Context, duration: Option<String>) -> Result<(), CliError> {
    let seconds = duration
        .map(|d| {
            humantime::parse_duration(&d)
                .map(|d| d.as_secs().max(1))
                .map_err(|e| CliError::Usage(format!("--for {d}: {e} (e.g. 30m, 8h)")))
        })
        .transpose()?;
    let Some((mut client, _, _)) = ping(ctx) else {
        return Err(CliError::Usage(
            "unlock keeps the key in the daemon, and none is running: `handoff daemon start`"
                .into(),
        ));
    };
    let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
    let deriving = super::output::Waiting::deriving(ctx.json);
    let response = super::access::call(
        &mut client,
        &Request::Unlock {
            passphrase,
            seconds,
        },
    );
    drop(deriving);
    let response = response?;
    match response {
        Response::Pong {
            unlocked_until: Some(until),
            ..
        } => {
            if ctx.json {
                print_json(&json!({"unlocked_until": until}));
            } else {
                say!("Unlocked until {}.", when(until));
            }
            Ok(())
        }
        _ => Err(CliError::Internal(
            "the daemon did not confirm the unlock".into(),
        )),
    }
}

pub(super) fn lock(ctx: &Context) -> Result<(), CliError> {
    match ping(ctx) {
        Some((mut client, _, _)) => match super::access::call(&mut client, &Request::Lock)? {
            Response::Done => say!("Locked."),
            _ => {
                return Err(CliError::Internal(
                    "the daemon did not confirm the lock".into(),
                ));
            }
        },
        None => say!("No daemon is running; the vault key is not held anywhere."),
    }
    Ok(())
}
