//! `init`, `status`, `export`, `import` and `recover`: the vault as a whole.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::access::run_op;
use super::{CliError, Context, input, print_json, secret_json, when, write_stdout_line};
use crate::device::{Device, DeviceError, NewDevice};
use crate::ops::{Op, Outcome};
use crate::vault::{KdfParams, RecoveryCode};

/// This machine's host name, the default device name.
fn host_name() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "this-device".into()
    } else {
        name
    }
}

/// `init` and `recover` need an empty home: say so before asking for anything.
pub(super) fn refuse_initialized(ctx: &Context) -> Result<(), CliError> {
    if ctx.home.is_initialized() {
        return Err(DeviceError::AlreadyInitialized(ctx.home.root().to_path_buf()).into());
    }
    Ok(())
}

/// A new device's passphrase (asked twice on a terminal) and name (default: the host name).
pub(super) fn new_device_inputs(
    ctx: &Context,
    name: Option<String>,
) -> Result<(zeroize::Zeroizing<Vec<u8>>, String), CliError> {
    let passphrase = input::new_passphrase(ctx.passphrase_file.as_deref())?;
    Ok((passphrase, name.unwrap_or_else(host_name)))
}

pub(super) fn init(ctx: &Context, name: Option<String>, vault_name: &str) -> Result<(), CliError> {
    refuse_initialized(ctx)?;
    let (passphrase, name) = new_device_inputs(ctx, name)?;
    let new = NewDevice {
        name: &name,
        passphrase: &passphrase,
        kdf: KdfParams::DEFAULT,
    };
    if !ctx.json && std::io::stderr().is_terminal() {
        eprintln!("Deriving keys (Argon2id, 64 MiB)...");
    }
    let (device, code) = Device::init(ctx.home.clone(), &new, vault_name)?;
    let state = device.state()?;
    let shown = code.reveal();
    let output = if ctx.json {
        let out = InitOutput {
            recovery_code: shown.as_str(),
            device_id: device.device_id().to_hex(),
            vault_id: state.info.id.to_hex(),
        };
        secret_json(&out, 256)?
    } else {
        let mut text = zeroize::Zeroizing::new(String::with_capacity(512));
        text.push_str(&format!(
            "Created vault '{}' on device '{}' ({}).\n\n",
            state.info.name,
            name,
            device.device_id()
        ));
        text.push_str("Recovery code (shown only now; write it down and keep it offline):\n\n    ");
        text.push_str(shown.as_str());
        text.push_str(
            "\n\nWith this code and any copy of the vault document (`handoff export`),\n",
        );
        text.push_str("`handoff recover` regains every token if all your devices are lost.");
        zeroize::Zeroizing::new(text.as_bytes().to_vec())
    };
    // The code exists nowhere else: if it cannot be shown, the vault must not stay behind.
    if let Err(e) = write_stdout_line(&output) {
        let db = device.home().db_path();
        drop(device);
        for path in [
            db.clone(),
            db.with_extension("db-wal"),
            db.with_extension("db-shm"),
        ] {
            let _ = std::fs::remove_file(path);
        }
        return Err(CliError::Internal(format!(
            "could not show the recovery code ({e}); the new vault was removed: run init again"
        )));
    }
    Ok(())
}

/// `init --json` output.
#[derive(serde::Serialize)]
struct InitOutput<'a> {
    recovery_code: &'a str,
    device_id: String,
    vault_id: String,
}

pub(super) fn status(ctx: &Context) -> Result<(), CliError> {
    let v = run_op!(ctx, Op::Status, Outcome::Status(v) => v);
    let active = v.members.iter().filter(|m| m.active).count();
    let daemon = v.daemon_pid.map_or_else(
        || "not running".to_string(),
        |pid| format!("running (pid {pid})"),
    );
    if ctx.json {
        print_json(&json!({
            "vault": {"id": v.vault_id, "name": v.vault_name, "created_at": v.vault_created_at},
            "device": {"id": v.device_id, "name": v.device_name, "role": v.role, "identity_pub": v.identity_pub},
            "locked": v.unlocked_until.is_none(),
            "unlocked_until": v.unlocked_until,
            "daemon": daemon,
            "daemon_pid": v.daemon_pid,
            "tokens": v.tokens,
            "epoch_generation": v.epoch_generation,
            "members": v.members,
            "peer_id": v.peer_id,
            "listen": v.listen,
            "online": v.online,
            "pairing_offer_open": v.offer_open,
            "out_of_sync": v.out_of_sync,
            "document": v.document,
            "sync": v.sync,
            "home": ctx.home.root().display().to_string(),
        }));
    } else {
        let lock = match v.unlocked_until {
            Some(until) => format!("unlocked until {}", when(until)),
            None => "locked: commands that read or add a token ask for the passphrase".into(),
        };
        say!("vault    {} ({})", v.vault_name, v.vault_id);
        say!("device   {} ({}), {}", v.device_name, v.device_id, v.role);
        say!("lock     {lock}");
        say!("daemon   {daemon}");
        say!("tokens   {}", v.tokens);
        say!("members  {active} active, {} online", v.online);
        say!("peer id  {}", v.peer_id);
        if !v.listen.is_empty() {
            say!("listen   {}", v.listen.join(" "));
        }
        say!("epoch    generation {}", v.epoch_generation);
        say!("document {}", v.document);
        for out in &v.out_of_sync {
            say!("sync     {}", out.line(when));
        }
        say!("home     {}", ctx.home.root().display());
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let file_err = |source| CliError::File {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // create_new: never follow or reuse whatever already sits at the temporary name.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| CliError::File {
            what: "cannot create (remove it if an earlier export was interrupted)",
            path: tmp.clone(),
            source,
        })?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(source));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err)
}

pub(super) fn export(ctx: &Context, out: Option<PathBuf>) -> Result<(), CliError> {
    let bytes = run_op!(ctx, Op::Export, Outcome::Exported(bytes) => bytes);
    match out {
        Some(path) => {
            write_private(&path, &bytes)?;
            if ctx.json {
                print_json(&json!({"path": path.display().to_string(), "bytes": bytes.len()}));
            } else {
                eprintln!(
                    "Exported the vault document ({} bytes) to {}.",
                    bytes.len(),
                    path.display()
                );
            }
        }
        None if std::io::stdout().is_terminal() => {
            return Err(CliError::Usage(
                "refusing to write binary to a terminal: use --out F or redirect stdout".into(),
            ));
        }
        None => std::io::stdout()
            .write_all(&bytes)
            .map_err(|e| CliError::Internal(format!("cannot write to stdout: {e}")))?,
    }
    Ok(())
}

fn read_export(path: &Path) -> Result<Vec<u8>, CliError> {
    let len = std::fs::metadata(path)
        .map_err(|source| CliError::File {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let max = crate::doc::schema::limits::DOC_BYTES_MAX;
    if len > max as u64 {
        return Err(CliError::Usage(format!(
            "{} is {len} bytes; a vault document is at most {max}",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|source| CliError::File {
        what: "cannot read",
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn import(ctx: &Context, file: &Path) -> Result<(), CliError> {
    let data = read_export(file)?;
    let new = run_op!(ctx, Op::Import { data }, Outcome::Imported(new) => new);
    if ctx.json {
        print_json(&json!({"new_changes": new}));
    } else {
        say!("Merged {new} new change(s) from {}.", file.display());
    }
    Ok(())
}

pub(super) fn recover(
    ctx: &Context,
    from: &Path,
    code_file: Option<PathBuf>,
    name: Option<String>,
) -> Result<(), CliError> {
    refuse_initialized(ctx)?;
    let data = read_export(from)?;
    // The checksum catches a typo here, before either slow key derivation.
    let code = RecoveryCode::parse(&input::recovery_code(code_file.as_deref())?)?;
    let (passphrase, name) = new_device_inputs(ctx, name)?;
    let new = NewDevice {
        name: &name,
        passphrase: &passphrase,
        kdf: KdfParams::DEFAULT,
    };
    let device = Device::recover(ctx.home.clone(), &new, &data, &code)?;
    let state = device.state()?;
    // Count what this device can open: tokens under an epoch it now holds a wrap for.
    let me = handoff_protocol::dek_wrap::Recipient::Device(device.device_id());
    let tokens = state
        .live_tokens()
        .filter(|t| {
            state
                .epochs
                .get(&t.epoch)
                .is_some_and(|e| e.wraps.contains_key(&me))
        })
        .count();
    if ctx.json {
        print_json(
            &json!({"device_id": device.device_id().to_hex(), "vault_id": state.info.id.to_hex(), "tokens": tokens}),
        );
    } else {
        say!(
            "Recovered vault '{}' on new device '{}' ({}); {tokens} token(s) readable.",
            state.info.name,
            name,
            device.device_id()
        );
    }
    Ok(())
}
