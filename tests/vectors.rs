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

#[test]
fn signed_record_vectors_verify_and_bind_every_field() {
    use handoff_protocol::binding::{
        TokenVersionFields, audit_statement, default_statement, token_version_statement,
    };
    let all = vectors();
    let (vault, token, epoch) = ids(&all);
    let v = &all["signed_records"];
    let signer = arr32(&v["signer_pub"]);
    let sealed = bytes(&all["sealed_token"]["sealed"]);
    let t = &v["token_version"];
    let s = |k: &str| t[k].as_str().unwrap();
    let fields = TokenVersionFields {
        token: &token,
        version: t["version"].as_u64().unwrap(),
        service: s("service"),
        label: s("label"),
        kind: s("kind"),
        epoch: &epoch,
        ciphertext: &sealed,
        deleted: t["deleted"].as_bool().unwrap(),
        created_at: t["created_at"].as_i64().unwrap(),
        created_by: s("created_by"),
        updated_at: t["updated_at"].as_i64().unwrap(),
        writer: s("writer"),
        expires_at: 0,
        refreshed_at: 0,
    };
    let statement = token_version_statement(&vault, &fields);
    assert_eq!(statement, bytes(&t["statement"]));
    assert!(verify_signature(&signer, &statement, &bytes(&t["sig"])));
    // The signature holds for these fields only: another label, version or deletion fails.
    for changed in [
        TokenVersionFields {
            label: "other",
            ..fields
        },
        TokenVersionFields {
            version: fields.version + 1,
            ..fields
        },
        TokenVersionFields {
            deleted: true,
            ciphertext: &[],
            ..fields
        },
    ] {
        let other = token_version_statement(&vault, &changed);
        assert!(!verify_signature(&signer, &other, &bytes(&t["sig"])));
    }

    let d = &v["default"];
    let statement = default_statement(
        &vault,
        d["service"].as_str().unwrap(),
        d["token"].as_str().unwrap(),
        d["version"].as_u64().unwrap(),
        d["at"].as_i64().unwrap(),
        d["writer"].as_str().unwrap(),
    );
    assert_eq!(statement, bytes(&d["statement"]));
    assert!(verify_signature(&signer, &statement, &bytes(&d["sig"])));

    let a = &v["audit"];
    let statement = audit_statement(
        &vault,
        a["at"].as_i64().unwrap(),
        a["device"].as_str().unwrap(),
        a["action"].as_str().unwrap(),
        a["subject"].as_str().unwrap(),
    );
    assert_eq!(statement, bytes(&a["statement"]));
    assert!(verify_signature(&signer, &statement, &bytes(&a["sig"])));
}

#[test]
fn oauth_token_version_and_lease_vectors_verify() {
    use handoff_protocol::binding::{
        LeaseFields, TokenVersionFields, lease_statement, token_version_statement,
    };
    let all = vectors();
    let (vault, token, epoch) = ids(&all);
    let v = &all["signed_records"];
    let signer = arr32(&v["signer_pub"]);
    let sealed = bytes(&all["sealed_token"]["sealed"]);
    let t = &v["token_version_oauth"];
    let s = |k: &str| t[k].as_str().unwrap();
    let i = |k: &str| t[k].as_i64().unwrap();
    let fields = TokenVersionFields {
        token: &token,
        version: t["version"].as_u64().unwrap(),
        service: s("service"),
        label: s("label"),
        kind: s("kind"),
        epoch: &epoch,
        ciphertext: &sealed,
        deleted: false,
        created_at: i("created_at"),
        created_by: s("created_by"),
        updated_at: i("updated_at"),
        writer: s("writer"),
        expires_at: i("expires_at"),
        refreshed_at: i("refreshed_at"),
    };
    let statement = token_version_statement(&vault, &fields);
    assert_eq!(statement, bytes(&t["statement"]));
    assert!(verify_signature(&signer, &statement, &bytes(&t["sig"])));
    // The expiry is bound: a version that claims a later one does not verify.
    let later = TokenVersionFields {
        expires_at: fields.expires_at + 1,
        ..fields
    };
    let other = token_version_statement(&vault, &later);
    assert!(!verify_signature(&signer, &other, &bytes(&t["sig"])));

    let l = &v["lease"];
    let lease = LeaseFields {
        token: &token,
        version: l["version"].as_u64().unwrap(),
        holder: l["holder"].as_str().unwrap(),
        session: l["session"].as_str().unwrap(),
        fence: l["fence"].as_u64().unwrap(),
        until: l["until"].as_i64().unwrap(),
        at: l["at"].as_i64().unwrap(),
    };
    let statement = lease_statement(&vault, &lease);
    assert_eq!(statement, bytes(&l["statement"]));
    assert!(verify_signature(&signer, &statement, &bytes(&l["sig"])));
    let stolen = LeaseFields {
        fence: lease.fence + 1,
        ..lease
    };
    let other = lease_statement(&vault, &stolen);
    assert!(!verify_signature(&signer, &other, &bytes(&l["sig"])));
}

#[test]
fn change_attestation_vector_verifies() {
    let all = vectors();
    let (vault, _, _) = ids(&all);
    let v = &all["signed_records"];
    let c = &v["change"];
    let statement = handoff_protocol::binding::change_statement(&vault, &arr32(&c["change_hash"]));
    assert_eq!(statement, bytes(&c["statement"]));
    assert!(verify_signature(
        &arr32(&v["signer_pub"]),
        &statement,
        &bytes(&c["sig"])
    ));
}

#[test]
fn spawn_message_vectors_encode_and_decode() {
    use handoff_protocol::spawn::{Ask, Outcome, Refusal, Request, Response, Row, RowState, Start};
    let all = vectors();
    let v = &all["spawn"];
    let id: [u8; 16] = bytes(&v["id"]).try_into().unwrap();
    let sent_at = v["sent_at"].as_i64().unwrap();
    let text = |x: &Value| x.as_str().unwrap().to_string();
    let s = &v["start"];
    let requests = [
        (
            Ask::Start(Start {
                agent: text(&s["agent"]),
                dir: text(&s["dir"]),
                profile: s["profile"].as_str().map(str::to_string),
                service: s["service"].as_str().map(str::to_string),
                args: s["args"].as_array().unwrap().iter().map(text).collect(),
            }),
            s,
        ),
        (Ask::List, &v["list"]),
        (
            Ask::Stop {
                session: text(&v["stop"]["session"]),
            },
            &v["stop"],
        ),
    ];
    for (ask, vector) in requests {
        let request = Request { id, sent_at, ask };
        let encoded = bytes(&vector["encoded"]);
        assert_eq!(request.encode().unwrap(), encoded);
        assert_eq!(Request::decode(&encoded).unwrap(), request);
    }
    let rows = v["sessions"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Row {
            session: text(&r["session"]),
            agent: text(&r["agent"]),
            dir: text(&r["dir"]),
            started_at: r["started_at"].as_i64().unwrap(),
            state: match r["state"].as_u64().unwrap() {
                1 => RowState::Running,
                2 => RowState::Exited,
                _ => RowState::Failed,
            },
        })
        .collect();
    assert_eq!(v["refused"]["refusal"].as_u64(), Some(5));
    let responses = [
        (
            Outcome::Started {
                session: text(&v["started"]["session"]),
            },
            &v["started"],
        ),
        (
            Outcome::Refused {
                why: Refusal::DirNotAllowed,
                detail: text(&v["refused"]["detail"]),
            },
            &v["refused"],
        ),
        (Outcome::Sessions(rows), &v["sessions"]),
        (Outcome::Stopped, &v["stopped"]),
    ];
    for (outcome, vector) in responses {
        let response = Response { id, outcome };
        let encoded = bytes(&vector["encoded"]);
        assert_eq!(response.encode().unwrap(), encoded);
        assert_eq!(Response::decode(&encoded).unwrap(), response);
    }
}
