//! The one error type of every decoder in this crate.
//!
//! `Incomplete` (more bytes could make the input valid) is kept apart from `Invalid` (no
//! continuation can): a stream reader waits on the first and drops the peer on the second.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends early; `needed` more bytes at least.
    #[error("{what}: input ends early ({needed} more bytes needed)")]
    Incomplete { what: &'static str, needed: usize },
    /// The version byte names a format this build does not know.
    #[error("{what}: unsupported format version {version}")]
    UnsupportedVersion { what: &'static str, version: u8 },
    /// The input is longer than the format allows.
    #[error("{what}: {len} bytes is over the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// The input can never be valid.
    #[error("{what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
}
