//! The primitives every construction in the vault calls: XChaCha20-Poly1305 (tokens, device
//! key), ChaCha20-Poly1305 (DEK wraps), X25519 with the contributory check, HKDF-SHA256.
//!
//! Keeping them in one small place means the Wycheproof vectors in `tests/wycheproof.rs` test
//! exactly the code paths the vault uses, not the crates beneath it.

use chacha20poly1305::aead::{self, Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};

/// The AEAD refused: wrong key, nonce, AD or a modified ciphertext (or, sealing, an input past
/// the cipher's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD authentication failed")]
pub struct AeadFailure;

/// X25519 produced an all-zero (non-contributory) shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("non-contributory X25519 result")]
pub struct NonContributory;

/// Encrypts with AEAD `C`; output is ciphertext || tag.
fn seal<C: Aead + KeyInit>(
    key: &[u8; 32],
    nonce: &aead::Nonce<C>,
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    // Fails only for inputs beyond the cipher's limit (2^38 bytes); callers cap far below.
    C::new_from_slice(key)
        .map_err(|_| AeadFailure)?
        .encrypt(
            nonce,
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .map_err(|_| AeadFailure)
}

/// Decrypts ciphertext || tag with AEAD `C`.
fn open<C: Aead + KeyInit>(
    key: &[u8; 32],
    nonce: &aead::Nonce<C>,
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    C::new_from_slice(key)
        .map_err(|_| AeadFailure)?
        .decrypt(
            nonce,
            Payload {
                msg: ciphertext,
                aad: ad,
            },
        )
        .map_err(|_| AeadFailure)
}

/// XChaCha20-Poly1305 encrypt; output is ciphertext || tag.
pub fn xchacha_seal(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    seal::<XChaCha20Poly1305>(key, &(*nonce).into(), ad, plaintext)
}

/// XChaCha20-Poly1305 decrypt of ciphertext || tag.
pub fn xchacha_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    open::<XChaCha20Poly1305>(key, &(*nonce).into(), ad, ciphertext)
}

/// ChaCha20-Poly1305 (IETF, 12-byte nonce) encrypt; output is ciphertext || tag.
pub fn chacha_seal(
    key: &[u8; 32],
    nonce: &[u8; 12],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    seal::<ChaCha20Poly1305>(key, &(*nonce).into(), ad, plaintext)
}

/// ChaCha20-Poly1305 decrypt of ciphertext || tag.
pub fn chacha_open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    open::<ChaCha20Poly1305>(key, &(*nonce).into(), ad, ciphertext)
}

/// X25519 agreement that refuses a low-order peer key (all-zero shared secret).
pub fn x25519_agree(
    secret: &StaticSecret,
    their_public: &[u8; 32],
) -> Result<SharedSecret, NonContributory> {
    let shared = secret.diffie_hellman(&PublicKey::from(*their_public));
    if shared.was_contributory() {
        Ok(shared)
    } else {
        Err(NonContributory)
    }
}

/// HKDF-SHA256 to a 32-byte key.
pub fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hkdf::Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, out.as_mut());
    out
}
