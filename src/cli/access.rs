//! Where an operation runs: in the daemon when one serves this home, else directly on the
//! store under the home's lock. Both run [`ops::apply`](crate::ops::apply) and give the same
//! [`Outcome`], so every command prints the same output either way.
//!
//! An operation that needs the vault key, or is above the open tier, is first checked without
//! it (a token that does not exist is refused before anyone types a passphrase). Through the daemon it is sent without a
//! passphrase; only if the daemon answers that it is locked is the passphrase read (file or
//! terminal) and the operation sent again with it, for that one operation. Directly, the
//! passphrase is read before the home is taken, so nobody holds the lock while typing.

use super::{CliError, Context, input};
use crate::control::{Client, Request, Response};
use crate::device::Device;
use crate::ops::{self, Around, Op, Outcome, Secret, Tier};

/// Runs `op` and takes the outcome it gives, or fails the command if the daemon answered
/// something else: `run_op!(ctx, op, Outcome::Token(t) => t)`.
macro_rules! run_op {
    ($ctx:expr, $op:expr, $pattern:pat => $value:expr) => {
        match $crate::cli::access::run($ctx, $op)? {
            $pattern => $value,
            #[allow(unreachable_patterns)]
            other => return Err($crate::cli::access::unexpected(&other)),
        }
    };
}
pub(crate) use run_op;

/// Runs `op` through the daemon if one answers on this home's socket, else directly.
pub(crate) fn run(ctx: &Context, op: Op) -> Result<Outcome, CliError> {
    match Client::connect(&ctx.home.socket_path()) {
        Some(mut client) => through_daemon(ctx, &mut client, op),
        None => direct(ctx, op),
    }
}

fn direct(ctx: &Context, op: Op) -> Result<Outcome, CliError> {
    // Without a daemon there is no unlock to serve anyone: whatever the daemon would not give
    // an agent (every tier above open) takes the passphrase here.
    let passphrase = if op.needs_key() || op.tier() > Tier::Open {
        op.check(&Device::open(ctx.home.clone())?)?;
        Some(input::passphrase(ctx.passphrase_file.as_deref())?)
    } else {
        None
    };
    let mut device = Device::open(ctx.home.clone())?;
    let key = passphrase
        .map(|p| {
            let _shown = super::output::Waiting::deriving(ctx.json);
            device.unlock(&p)
        })
        .transpose()?;
    // What the daemon does at unlock: a rotation owed, tokens to re-seal, records from before
    // signatures to vouch for.
    if let Some(key) = &key
        && let Err(e) = device.upkeep(key)
    {
        tracing::warn!(error = %e, "upkeep after unlock failed");
    }
    // What sessions refreshed since the last unlock (before a spawn picks its token).
    if let Some(key) = &key {
        device.take_write_backs(key);
    }
    Ok(ops::apply(
        &mut device,
        key.as_ref(),
        op,
        &Around::default(),
    )?)
}

fn through_daemon(ctx: &Context, client: &mut Client, op: Op) -> Result<Outcome, CliError> {
    let mut request = Request::Op {
        passphrase: None,
        op,
    };
    let response = match call(client, &request) {
        Err(CliError::Remote {
            passphrase: true, ..
        }) => {
            let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
            if let Request::Op { passphrase: p, .. } = &mut request {
                *p = Some(passphrase);
            }
            call(client, &request)?
        }
        other => other?,
    };
    match response {
        Response::Outcome(outcome) => Ok(*outcome),
        other => Err(unexpected_response(&other)),
    }
}

/// Sends one request; a failure the daemon reports becomes [`CliError::Remote`].
pub(crate) fn call(client: &mut Client, request: &Request) -> Result<Response, CliError> {
    match client
        .call(request)
        .map_err(|e| CliError::Internal(e.to_string()))?
    {
        Response::Error {
            exit,
            message,
            passphrase,
        } => Err(CliError::Remote {
            exit,
            message,
            passphrase,
        }),
        other => Ok(other),
    }
}

/// Sends `make(None)`; if the daemon is locked, reads the passphrase and sends `make(Some)`.
pub(crate) fn call_unlocking(
    ctx: &Context,
    client: &mut Client,
    make: impl Fn(Option<Secret>) -> Request,
) -> Result<Response, CliError> {
    match call(client, &make(None)) {
        Err(CliError::Remote {
            passphrase: true, ..
        }) => {
            let passphrase = input::passphrase(ctx.passphrase_file.as_deref())?;
            call(client, &make(Some(passphrase)))
        }
        other => other,
    }
}

/// An outcome this command did not ask for: a daemon of another build.
pub(crate) fn unexpected(outcome: &Outcome) -> CliError {
    mismatch(&format!("{outcome:?}"))
}

/// An answer this command did not ask for: a daemon of another build.
pub(crate) fn unexpected_response(response: &Response) -> CliError {
    mismatch(&format!("{response:?}"))
}

fn mismatch(shown: &str) -> CliError {
    let kind = shown.split(['(', ' ', '{']).next().unwrap_or("?");
    CliError::Internal(format!(
        "the daemon answered {kind}, which this command did not expect: restart the daemon"
    ))
}
