//! The recovery code and the recovery member it derives.
//!
//! At `init` the user is shown 128 random bits plus a 32-bit checksum as 32 Crockford base32
//! characters in eight groups of four (`6R50-KB5T-...`). Parsing forgives case, spaces, and the usual
//! look-alikes (I/L read as 1, O as 0), and the checksum catches a mistyped character before
//! the slow KDF runs. Argon2id(code bits, salt = vault id) seeds the recovery member: an X25519
//! key every epoch's DEK is also wrapped to, and an Ed25519 key that vouches for the wraps a
//! recovering device writes for itself.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use handoff_protocol::VaultId;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::kek::KdfParams;
use super::keys::VaultSecret;
use super::primitives::hkdf32;
use super::{VaultError, random_array};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const ENTROPY_LEN: usize = 16;
const CHECK_LEN: usize = 4;
const CHARS: usize = (ENTROPY_LEN + CHECK_LEN) * 8 / 5;
const GROUP: usize = 4;

/// 128 bits the user writes down. `Debug` is redacted; [`RecoveryCode::reveal`] formats it.
pub struct RecoveryCode(Zeroizing<[u8; ENTROPY_LEN]>);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode([redacted])")
    }
}

fn checksum(entropy: &[u8; ENTROPY_LEN]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(b"handoff/v1/recovery-check")
        .chain_update(entropy)
        .finalize();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

impl RecoveryCode {
    pub fn generate() -> Result<Self, VaultError> {
        Ok(Self(Zeroizing::new(random_array()?)))
    }

    /// The grouped text to show the user once.
    pub fn reveal(&self) -> Zeroizing<String> {
        let mut bits = Zeroizing::new(Vec::with_capacity(ENTROPY_LEN + CHECK_LEN));
        bits.extend_from_slice(&self.0[..]);
        bits.extend_from_slice(&checksum(&self.0));
        let mut out = Zeroizing::new(String::with_capacity(CHARS + CHARS / GROUP));
        for i in 0..CHARS {
            if i > 0 && i % GROUP == 0 {
                out.push('-');
            }
            out.push(char::from(ALPHABET[usize::from(five_bits(&bits, i))]));
        }
        out
    }

    /// Parses what the user typed; the checksum is verified here, before any KDF.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut bits = Zeroizing::new([0u8; ENTROPY_LEN + CHECK_LEN]);
        let mut n = 0usize;
        for c in text.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let value = decode_char(c).ok_or(VaultError::MalformedRecoveryCode(
                "it holds a character that is not in the code's alphabet",
            ))?;
            if n >= CHARS {
                return Err(VaultError::MalformedRecoveryCode(
                    "it is too long: a code has 32 characters in 8 groups",
                ));
            }
            put_five_bits(&mut bits[..], n, value);
            n += 1;
        }
        if n != CHARS {
            return Err(VaultError::MalformedRecoveryCode(
                "it is too short: a code has 32 characters in 8 groups",
            ));
        }
        let mut entropy = Zeroizing::new([0u8; ENTROPY_LEN]);
        entropy.copy_from_slice(&bits[..ENTROPY_LEN]);
        if checksum(&entropy)[..] != bits[ENTROPY_LEN..] {
            return Err(VaultError::MalformedRecoveryCode(
                "its checksum does not match: a character is mistyped",
            ));
        }
        Ok(Self(entropy))
    }
}

fn five_bits(bytes: &[u8], index: usize) -> u8 {
    let mut v = 0u8;
    for b in 0..5 {
        let bit = index * 5 + b;
        let set = (bytes[bit / 8] >> (7 - bit % 8)) & 1;
        v = (v << 1) | set;
    }
    v
}

fn put_five_bits(bytes: &mut [u8], index: usize, value: u8) {
    for b in 0..5 {
        let bit = index * 5 + b;
        if (value >> (4 - b)) & 1 == 1 {
            bytes[bit / 8] |= 1 << (7 - bit % 8);
        }
    }
}

fn decode_char(c: char) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        'I' | 'L' => '1',
        'O' => '0',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|&a| char::from(a) == c)
        .and_then(|p| u8::try_from(p).ok())
}

/// The keys a recovery code derives for one vault.
pub struct RecoveryMember {
    secret: VaultSecret,
    signing: SigningKey,
}

impl fmt::Debug for RecoveryMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryMember([redacted])")
    }
}

impl RecoveryMember {
    /// Runs the slow KDF: Argon2id(code, salt = vault id) with the default parameters.
    pub fn derive(code: &RecoveryCode, vault: &VaultId) -> Result<Self, VaultError> {
        let seed = KdfParams::DEFAULT.derive(&code.0[..], vault.as_bytes())?;
        let x = hkdf32(vault.as_bytes(), &seed[..], b"handoff/v1/recovery-x25519");
        let e = hkdf32(vault.as_bytes(), &seed[..], b"handoff/v1/recovery-ed25519");
        Ok(Self {
            secret: VaultSecret::from_bytes(*x),
            signing: SigningKey::from_bytes(&e),
        })
    }

    /// Opens wraps addressed to the recovery member.
    pub fn secret(&self) -> &VaultSecret {
        &self.secret
    }

    /// X25519 public key that DEKs are wrapped to.
    pub fn public(&self) -> [u8; 32] {
        self.secret.public()
    }

    /// Ed25519 public key that verifies wraps the recovery member signs.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn code_has_eight_groups_and_round_trips() {
        let code = RecoveryCode::generate().unwrap();
        let text = code.reveal();
        assert_eq!(text.split('-').count(), 8);
        assert!(text.split('-').all(|g| g.len() == 4));
        let parsed = RecoveryCode::parse(&text.to_lowercase().replace('-', " ")).unwrap();
        assert_eq!(parsed.0[..], code.0[..]);
    }

    proptest! {
        #[test]
        fn any_single_substitution_is_caught(entropy in any::<[u8; 16]>(), pos in 0usize..32, delta in 1u8..32) {
            let code = RecoveryCode(Zeroizing::new(entropy));
            let text: Vec<char> = code.reveal().chars().filter(|&c| c != '-').collect();
            let mut typo = text.clone();
            let old = ALPHABET.iter().position(|&a| char::from(a) == text[pos]).unwrap() as u8;
            typo[pos] = char::from(ALPHABET[usize::from((old + delta) % 32)]);
            let typed: String = typo.into_iter().collect();
            prop_assert!(RecoveryCode::parse(&typed).is_err());
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,64}") {
            let _ = RecoveryCode::parse(&s);
        }
    }
}
