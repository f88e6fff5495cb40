//! DEK epochs: the data-encryption key, token sealing, and signed wraps of the DEK to members.
//!
//! A token is sealed under HKDF(DEK, `handoff/v1/token`) with AD binding vault, token id,
//! epoch and service (see `handoff_protocol::binding`). A DEK reaches a member as a
//! [`DekWrap`] to its vault key, signed by the admin who wrote it; the reader checks the
//! signature before trusting the wrap and the wrap's exact length before any key agreement.

use handoff_protocol::binding::{
    DEK_WRAP_DOMAIN, TOKEN_DOMAIN, dek_wrap_ad, dek_wrap_statement, token_ad,
};
use handoff_protocol::dek_wrap::{CIPHERTEXT_LEN, Recipient};
use handoff_protocol::sealed_token::MAX_PLAINTEXT;
use handoff_protocol::{DekWrap, EpochId, SealedToken, TokenId, VaultId};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::keys::VaultSecret;
use super::primitives::{
    chacha_open, chacha_seal, hkdf32, x25519_agree, xchacha_open, xchacha_seal,
};
use super::{Key32, SecretBytes, VaultError, random_array, random_key};

/// One epoch's data-encryption key.
#[derive(Debug)]
pub struct Dek(Key32);

/// Where a token ciphertext belongs; every field is bound into its AD.
#[derive(Debug, Clone, Copy)]
pub struct TokenBinding<'a> {
    pub vault: &'a VaultId,
    pub token: &'a TokenId,
    pub epoch: &'a EpochId,
    pub service: &'a str,
}

impl TokenBinding<'_> {
    fn ad(&self) -> Vec<u8> {
        token_ad(self.vault, self.token, self.epoch, self.service)
    }
}

impl Dek {
    pub fn generate() -> Result<Self, VaultError> {
        random_key().map(Self)
    }

    /// A DEK from known bytes (test vectors, and a DEK received over a channel).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// A second copy of the same key, zeroized when dropped like the first.
    pub(crate) fn duplicate(&self) -> Self {
        Self::from_bytes(*self.0.expose_secret())
    }

    fn token_key(&self) -> Zeroizing<[u8; 32]> {
        hkdf32(&[], self.0.expose_secret(), TOKEN_DOMAIN)
    }

    /// Seals a token's plaintext; returns the encoded [`SealedToken`].
    pub fn seal_token(
        &self,
        at: TokenBinding<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(VaultError::TokenTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let nonce = random_array::<24>()?;
        let ciphertext = xchacha_seal(&self.token_key(), &nonce, &at.ad(), plaintext)
            .map_err(|_| VaultError::SealFailed)?;
        Ok(SealedToken { nonce, ciphertext }.encode())
    }

    /// Opens an encoded [`SealedToken`] that must belong exactly at `at`.
    pub fn open_token(
        &self,
        at: TokenBinding<'_>,
        sealed: &[u8],
    ) -> Result<SecretBytes, VaultError> {
        let sealed = SealedToken::decode(sealed)?;
        xchacha_open(
            &self.token_key(),
            &sealed.nonce,
            &at.ad(),
            &sealed.ciphertext,
        )
        .map(SecretBytes::from)
        .map_err(|_| VaultError::Tampered {
            what: "the token ciphertext",
        })
    }

    /// Wraps this DEK to `recipient_pub` (an X25519 vault or recovery key).
    pub fn wrap(
        &self,
        vault: &VaultId,
        epoch: &EpochId,
        recipient: &Recipient,
        recipient_pub: &[u8; 32],
    ) -> Result<DekWrap, VaultError> {
        let ephemeral = StaticSecret::from(*Zeroizing::new(random_array::<32>()?));
        let ephemeral_pub = PublicKey::from(&ephemeral).to_bytes();
        let shared =
            x25519_agree(&ephemeral, recipient_pub).map_err(|_| VaultError::NonContributory)?;
        let key = wrap_key(shared.as_bytes(), &ephemeral_pub, recipient_pub);
        let sealed = chacha_seal(
            &key,
            &[0u8; 12],
            &dek_wrap_ad(vault, epoch, recipient),
            self.0.expose_secret(),
        )
        .map_err(|_| VaultError::SealFailed)?;
        let ciphertext: [u8; CIPHERTEXT_LEN] =
            sealed.try_into().map_err(|_| VaultError::SealFailed)?;
        Ok(DekWrap {
            ephemeral: ephemeral_pub,
            ciphertext,
        })
    }

    /// Opens an encoded wrap with the recipient's secret. The length is checked before the
    /// key agreement, and a low-order ephemeral key is refused before the AEAD.
    pub fn unwrap(
        wrap: &[u8],
        secret: &VaultSecret,
        vault: &VaultId,
        epoch: &EpochId,
        recipient: &Recipient,
    ) -> Result<Self, VaultError> {
        let wrap = DekWrap::decode(wrap)?;
        let shared = x25519_agree(secret.static_secret(), &wrap.ephemeral)
            .map_err(|_| VaultError::NonContributory)?;
        let key = wrap_key(shared.as_bytes(), &wrap.ephemeral, &secret.public());
        let plain = Zeroizing::new(
            chacha_open(
                &key,
                &[0u8; 12],
                &dek_wrap_ad(vault, epoch, recipient),
                &wrap.ciphertext,
            )
            .map_err(|_| VaultError::Tampered {
                what: "the DEK wrap",
            })?,
        );
        let mut dek = SecretBox::new(Box::new([0u8; 32]));
        secrecy::ExposeSecretMut::expose_secret_mut(&mut dek).copy_from_slice(&plain);
        Ok(Self(dek))
    }
}

fn wrap_key(
    shared: &[u8; 32],
    ephemeral_pub: &[u8; 32],
    recipient_pub: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral_pub);
    salt[32..].copy_from_slice(recipient_pub);
    hkdf32(&salt, shared, DEK_WRAP_DOMAIN)
}

/// A wrap as stored in the document: the encoded [`DekWrap`], who signed it, and the signature
/// over [`wrap_statement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedWrap {
    pub wrap: Vec<u8>,
    pub sig: Vec<u8>,
    /// Device id (hex) of the signing admin, or `recovery`.
    pub signer: String,
}

/// The bytes an admin signs for one wrap.
pub fn wrap_statement(
    vault: &VaultId,
    epoch: &EpochId,
    generation: u64,
    recipient: &Recipient,
    wrap: &[u8],
) -> Vec<u8> {
    let hash: [u8; 32] = Sha256::digest(wrap).into();
    dek_wrap_statement(vault, epoch, generation, recipient, &hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(seed: u8) -> (VaultId, TokenId, EpochId) {
        (
            VaultId::from_bytes([seed; 16]),
            TokenId::from_bytes([seed.wrapping_add(1); 16]),
            EpochId::from_bytes([seed.wrapping_add(2); 16]),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A ciphertext moved to another token id, vault, epoch or service does not open.
        #[test]
        fn moved_ciphertext_does_not_open(
            secret in proptest::collection::vec(any::<u8>(), 1..300),
            seed in any::<u8>(),
            other in any::<[u8; 16]>(),
            which in 0usize..4,
        ) {
            let dek = Dek::generate().unwrap();
            let (vault, token, epoch) = ids(seed);
            let here = TokenBinding { vault: &vault, token: &token, epoch: &epoch, service: "anthropic" };
            let sealed = dek.seal_token(here, &secret).unwrap();
            let opened = dek.open_token(here, &sealed).unwrap();
            prop_assert_eq!(opened.expose_secret(), &secret[..]);

            let (v2, t2, e2) = (VaultId::from_bytes(other), TokenId::from_bytes(other), EpochId::from_bytes(other));
            prop_assume!(other != *vault.as_bytes() && other != *token.as_bytes() && other != *epoch.as_bytes());
            let moved = match which {
                0 => TokenBinding { token: &t2, ..here },
                1 => TokenBinding { vault: &v2, ..here },
                2 => TokenBinding { epoch: &e2, ..here },
                _ => TokenBinding { service: "openai", ..here },
            };
            let refused = matches!(dek.open_token(moved, &sealed), Err(VaultError::Tampered { .. }));
            prop_assert!(refused);
        }

        /// Any single flipped bit of a sealed token is detected.
        #[test]
        fn flipped_bit_is_detected(bit in 8usize..(8 * (1 + 24 + 16 + 5))) {
            let dek = Dek::generate().unwrap();
            let (vault, token, epoch) = ids(1);
            let at = TokenBinding { vault: &vault, token: &token, epoch: &epoch, service: "gemini" };
            let mut sealed = dek.seal_token(at, b"hello").unwrap();
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(dek.open_token(at, &sealed).is_err());
        }
    }

    #[test]
    fn wrap_round_trips_and_is_bound_to_recipient_and_epoch() {
        let dek = Dek::generate().unwrap();
        let member = VaultSecret::generate().unwrap();
        let (vault, _, epoch) = ids(3);
        let who = Recipient::Device(handoff_protocol::DeviceId::from_bytes([9; 16]));
        let wrap = dek
            .wrap(&vault, &epoch, &who, &member.public())
            .unwrap()
            .encode();
        let opened = Dek::unwrap(&wrap, &member, &vault, &epoch, &who).unwrap();
        assert_eq!(opened.0.expose_secret(), dek.0.expose_secret());

        let other_epoch = EpochId::from_bytes([0x77; 16]);
        assert!(Dek::unwrap(&wrap, &member, &vault, &other_epoch, &who).is_err());
        assert!(Dek::unwrap(&wrap, &member, &vault, &epoch, &Recipient::Recovery).is_err());
        let stranger = VaultSecret::generate().unwrap();
        assert!(Dek::unwrap(&wrap, &stranger, &vault, &epoch, &who).is_err());
    }

    #[test]
    fn wrong_length_wraps_are_refused_before_the_aead() {
        let member = VaultSecret::generate().unwrap();
        let (vault, _, epoch) = ids(4);
        for len in [0, 1, 80, 82, 200] {
            let mut bytes = vec![0u8; len];
            if let Some(b) = bytes.first_mut() {
                *b = 1;
            }
            let err =
                Dek::unwrap(&bytes, &member, &vault, &epoch, &Recipient::Recovery).unwrap_err();
            assert!(matches!(err, VaultError::Decode(_)), "len {len}: {err}");
        }
    }

    #[test]
    fn low_order_points_are_refused() {
        let dek = Dek::generate().unwrap();
        let member = VaultSecret::generate().unwrap();
        let (vault, _, epoch) = ids(5);
        // The identity point and a point of order 8 (RFC 7748 / libsodium blocklist).
        let low_order: [[u8; 32]; 2] = [
            [0; 32],
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap()
                .try_into()
                .unwrap(),
        ];
        for point in low_order {
            assert!(matches!(
                dek.wrap(&vault, &epoch, &Recipient::Recovery, &point),
                Err(VaultError::NonContributory)
            ));
            let mut wrap = vec![1u8];
            wrap.extend_from_slice(&point);
            wrap.extend_from_slice(&[0u8; CIPHERTEXT_LEN]);
            assert!(matches!(
                Dek::unwrap(&wrap, &member, &vault, &epoch, &Recipient::Recovery),
                Err(VaultError::NonContributory)
            ));
        }
    }
}
