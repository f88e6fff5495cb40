//! Why an operation failed, and the exit code each failure leaves the process with. They live
//! here, below both the CLI and the daemon: the daemon reports a failure as its exit code and
//! one line, and the CLI leaves with that code whichever path ran the operation.

use crate::device::DeviceError;
use crate::doc::DocError;
use crate::home::HomeError;
use crate::net::{NetError, PairFailure};
use crate::spawn::SpawnError;
use crate::store::StoreError;
use crate::vault::VaultError;

/// Process exit codes (the table in README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Internal = 1,
    Usage = 2,
    Locked = 3,
    WrongSecret = 4,
    NotFound = 5,
    Conflict = 6,
    Network = 7,
    /// Stored or imported data is damaged or tampered with.
    Damaged = 8,
    /// Another process owns the home.
    Busy = 9,
    /// This device's role does not allow what was asked (a `remote` device writing a token).
    Forbidden = 10,
    /// A rotating OAuth token is leased to another session.
    Leased = 11,
    /// `token check`: a token is expired or expires within the window.
    Expiring = 12,
}

impl Exit {
    /// The exit for a code a daemon reported (unknown codes are internal errors).
    pub fn from_code(code: u8) -> Exit {
        [
            Exit::Usage,
            Exit::Locked,
            Exit::WrongSecret,
            Exit::NotFound,
            Exit::Conflict,
            Exit::Network,
            Exit::Damaged,
            Exit::Busy,
            Exit::Forbidden,
            Exit::Leased,
            Exit::Expiring,
        ]
        .into_iter()
        .find(|e| *e as u8 == code)
        .unwrap_or(Exit::Internal)
    }
}

/// An operation's failure: one line for the user, and its exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{0}")]
    Usage(String),
    #[error("the vault is locked: {0}")]
    Locked(String),
    #[error("{0}")]
    Internal(String),
    /// Another process owns something this one needs (the home, the socket).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Net(#[from] NetError),
    /// The client may not ask for this (it runs inside an agent's process tree).
    #[error("refused: {0}")]
    Contained(String),
    #[error(transparent)]
    Policy(#[from] crate::spawn::policy::PolicyError),
    /// Another device refused a request: the class's exit code and its line.
    #[error("{1}")]
    Refused(Exit, String),
}

impl From<VaultError> for OpError {
    fn from(e: VaultError) -> Self {
        OpError::Device(e.into())
    }
}

impl OpError {
    pub fn exit(&self) -> Exit {
        match self {
            OpError::Device(e) => device_exit(e),
            OpError::Spawn(e) => spawn_exit(e),
            OpError::Usage(_) => Exit::Usage,
            OpError::Locked(_) | OpError::Contained(_) => Exit::Locked,
            OpError::Internal(_) => Exit::Internal,
            OpError::Busy(_) => Exit::Busy,
            OpError::Net(e) => net_exit(e),
            OpError::Refused(exit, _) => *exit,
            OpError::Policy(e) => {
                use crate::spawn::policy::PolicyError;
                match e {
                    PolicyError::Tampered(_) => Exit::Damaged,
                    PolicyError::Invalid(_) => Exit::Usage,
                    _ => Exit::Internal,
                }
            }
        }
    }
}

pub fn device_exit(e: &DeviceError) -> Exit {
    match e {
        DeviceError::Home(HomeError::NoHome) => Exit::Usage,
        DeviceError::Home(HomeError::Busy { .. }) => Exit::Busy,
        DeviceError::Home(_) | DeviceError::Io { .. } => Exit::Internal,
        DeviceError::Store(StoreError::NotInitialized) => Exit::NotFound,
        DeviceError::Store(StoreError::Corrupt { .. } | StoreError::TooNew(_)) => Exit::Damaged,
        DeviceError::Store(_) => Exit::Internal,
        DeviceError::Doc(DocError::WrongVault { .. }) => Exit::Conflict,
        DeviceError::Doc(DocError::Automerge(_)) => Exit::Internal,
        DeviceError::Doc(_) => Exit::Damaged,
        DeviceError::Vault(v) => match v {
            VaultError::WrongPassphrase
            | VaultError::WrongRecoveryCode
            | VaultError::MalformedRecoveryCode(_) => Exit::WrongSecret,
            VaultError::TokenTooLarge { .. } => Exit::Usage,
            VaultError::Random(_) | VaultError::Kdf(_) | VaultError::SealFailed => Exit::Internal,
            _ => Exit::Damaged,
        },
        DeviceError::AlreadyInitialized(_)
        | DeviceError::DuplicateLabel { .. }
        | DeviceError::LabelTaken { .. } => Exit::Conflict,
        DeviceError::TokenNotFound(_) => Exit::NotFound,
        DeviceError::AmbiguousToken { .. } | DeviceError::InvalidInput(_) => Exit::Usage,
        DeviceError::NoAccess(_) | DeviceError::KeyNeedsRotation => Exit::Locked,
        DeviceError::RemoteHoldsNoKey => Exit::Forbidden,
        DeviceError::Inconsistent(_) => Exit::Damaged,
        DeviceError::RoleForbids { .. } => Exit::Forbidden,
        DeviceError::Leased { .. } => Exit::Leased,
    }
}

pub fn spawn_exit(e: &SpawnError) -> Exit {
    match e {
        SpawnError::UnknownAgent { .. }
        | SpawnError::ServiceNotAccepted { .. }
        | SpawnError::Config(_) => Exit::Usage,
        SpawnError::NotInstalled { .. }
        | SpawnError::NoCredential { .. }
        | SpawnError::NoProfile { .. } => Exit::NotFound,
        SpawnError::Device(d) => device_exit(d),
        _ => Exit::Internal,
    }
}

pub fn net_exit(e: &NetError) -> Exit {
    match e {
        NetError::BadAddress(_) => Exit::Usage,
        NetError::OfferOpen => Exit::Conflict,
        NetError::Pair(f) => pair_exit(f),
        NetError::Stopped | NetError::HostGone => Exit::Internal,
        NetError::Unreachable(_) | NetError::NoAnswer(_) => Exit::Network,
        _ => Exit::Network,
    }
}

pub fn pair_exit(f: &PairFailure) -> Exit {
    match f {
        PairFailure::WrongCode => Exit::WrongSecret,
        PairFailure::NoOffer | PairFailure::Used | PairFailure::Expired => Exit::NotFound,
        PairFailure::Declined => Exit::Conflict,
        PairFailure::Local(_) => Exit::Internal,
        _ => Exit::Network,
    }
}
