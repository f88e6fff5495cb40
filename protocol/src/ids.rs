//! Identifiers: 16 bytes each, written as 32 lowercase hex digits.
//!
//! Vault, epoch and token ids are random. A device id is derived from the device's Ed25519
//! identity key (see `handoff::vault`), so a peer's transport identity can be checked against
//! the member record it claims.

use std::fmt;
use std::str::FromStr;

use crate::DecodeError;

/// Length in bytes of every identifier.
pub const ID_LEN: usize = 16;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; ID_LEN]);

        impl $name {
            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// Reads an id from exactly [`ID_LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
                <[u8; ID_LEN]>::try_from(bytes)
                    .map(Self)
                    .map_err(|_| DecodeError::Invalid {
                        what: $what,
                        reason: "an id is exactly 16 bytes",
                    })
            }

            /// The 32-digit lowercase hex form.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = DecodeError;

            fn from_str(s: &str) -> Result<Self, DecodeError> {
                from_hex(s, $what).map(Self)
            }
        }
    };
}

define_id!(
    /// A vault: one synced document and the devices that share it.
    VaultId,
    "vault id"
);
define_id!(
    /// A device: one member of a vault.
    DeviceId,
    "device id"
);
define_id!(
    /// A key epoch: one data-encryption key and its wraps.
    EpochId,
    "epoch id"
);
define_id!(
    /// A stored vendor token.
    TokenId,
    "token id"
);

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn from_hex(s: &str, what: &'static str) -> Result<[u8; ID_LEN], DecodeError> {
    let digits = s.as_bytes();
    if digits.len() != ID_LEN * 2 {
        return Err(DecodeError::Invalid {
            what,
            reason: "an id is 32 hex digits",
        });
    }
    let mut out = [0u8; ID_LEN];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0]);
        let lo = hex_value(pair[1]);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out[i] = (hi << 4) | lo,
            _ => {
                return Err(DecodeError::Invalid {
                    what,
                    reason: "an id holds only hex digits",
                });
            }
        }
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hex_round_trips(bytes in any::<[u8; ID_LEN]>()) {
            let id = TokenId::from_bytes(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 32);
            prop_assert_eq!(text.parse::<TokenId>().unwrap(), id);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = s.parse::<VaultId>();
        }
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert!("abcd".parse::<DeviceId>().is_err());
        assert!("g".repeat(32).parse::<DeviceId>().is_err());
        assert!(DeviceId::from_slice(&[0u8; 15]).is_err());
    }
}
