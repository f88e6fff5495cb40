//! The byte-level test vectors of `protocol/vectors/v1.json`, run through the real code paths
//! (the same file documents the formats for implementations in other languages).
#![allow(clippy::unwrap_used)] // a panic is the failure report

use handoff::vault::epoch::{TokenBinding, wrap_statement};
use handoff::vault::keys::verify_signature;
use handoff::vault::{Dek, DeviceKeys, RecoveryCode, RecoveryMember, VaultSecret};
use handoff_protocol::binding::{dek_wrap_ad, token_ad};
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DekWrap, EpochId, SealedToken, TokenId, VaultId};
use secrecy::ExposeSecret;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/vectors/v1.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn arr32(v: &Value) -> [u8; 32] {
    bytes(v).try_into().unwrap()
}

fn ids(v: &Value) -> (VaultId, TokenId, EpochId) {
    let ids = &v["ids"];
    (
        ids["vault"].as_str().unwrap().parse().unwrap(),
        ids["token"].as_str().unwrap().parse().unwrap(),
        ids["epoch"].as_str().unwrap().parse().unwrap(),
    )
}

#[test]
fn sealed_token_vector_opens_and_binds_its_context() {
    let v = vectors();
    let (vault, token, epoch) = ids(&v);
    assert_eq!(
        token_ad(&vault, &token, &epoch, "anthropic"),
        bytes(&v["token_ad"]["ad"])
    );
    let t = &v["sealed_token"];
    let sealed = bytes(&t["sealed"]);
    let decoded = SealedToken::decode(&sealed).unwrap();
    assert_eq!(decoded.encode(), sealed);
    let dek = Dek::from_bytes(arr32(&t["dek"]));
    let at = TokenBinding {
        vault: &vault,
        token: &token,
        epoch: &epoch,
        service: t["service"].as_str().unwrap(),
    };
    assert_eq!(
        dek.open_token(at, &sealed).unwrap().expose_secret(),
        t["plaintext"].as_str().unwrap().as_bytes()
    );
    assert!(
        dek.open_token(
            TokenBinding {
                service: "openai",
                ..at
            },
            &sealed
        )
        .is_err()
    );
}

#[test]
fn device_id_vector() {
    let v = &vectors()["device_id"];
    let keys = DeviceKeys::from_secrets(&arr32(&v["identity_secret"]), &[0; 32]);
    assert_eq!(keys.identity_public(), arr32(&v["identity_pub"]));
    assert_eq!(keys.device_id().to_hex(), v["device_id"].as_str().unwrap());
}

#[test]
fn dek_wrap_vector_unwraps_verifies_and_opens_the_token() {
    let all = vectors();
    let (vault, token, epoch) = ids(&all);
    let v = &all["dek_wrap"];
    let to = Recipient::parse(v["recipient"].as_str().unwrap()).unwrap();
    assert_eq!(dek_wrap_ad(&vault, &epoch, &to), bytes(&v["ad"]));
    let wrap = bytes(&v["wrap"]);
    assert_eq!(DekWrap::decode(&wrap).unwrap().encode(), wrap);
    let secret = VaultSecret::from_bytes(arr32(&v["recipient_secret"]));
    assert_eq!(secret.public(), arr32(&v["recipient_pub"]));
    let dek = Dek::unwrap(&wrap, &secret, &vault, &epoch, &to).unwrap();
    // The unwrapped DEK is the one that sealed the token vector.
    let t = &all["sealed_token"];
    let at = TokenBinding {
        vault: &vault,
        token: &token,
        epoch: &epoch,
        service: "anthropic",
    };
    assert!(dek.open_token(at, &bytes(&t["sealed"])).is_ok());
    let statement = wrap_statement(
        &vault,
        &epoch,
        v["generation"].as_u64().unwrap(),
        &to,
        &wrap,
    );
    assert_eq!(statement, bytes(&v["statement"]));
    assert!(verify_signature(
        &arr32(&v["signer_pub"]),
        &statement,
        &bytes(&v["sig"])
    ));
    assert!(!verify_signature(
        &arr32(&v["signer_pub"]),
        &statement[1..],
        &bytes(&v["sig"])
    ));
}

#[test]
fn recovery_vector_derives_the_recovery_member() {
    let all = vectors();
    let (vault, _, _) = ids(&all);
    let v = &all["recovery"];
    let code = RecoveryCode::parse(v["code"].as_str().unwrap()).unwrap();
    assert_eq!(code.reveal().as_str(), v["code"].as_str().unwrap());
    let member = RecoveryMember::derive(&code, &vault).unwrap();
    assert_eq!(member.public(), arr32(&v["recovery_pub"]));
    assert_eq!(member.signing_public(), arr32(&v["recovery_sign_pub"]));
}
