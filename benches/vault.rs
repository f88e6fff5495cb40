//! Vault benchmarks. Each group measures a `baseline` (the bare primitive underneath) beside
//! handoff's construction, so `benches/ratios.py` can report cost as a ratio measured in the
//! same run, which holds across noisy machines better than absolute times.
//!
//! Run: `cargo bench --bench vault && python3 benches/ratios.py`
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use argon2::{Algorithm, Argon2, Version};
use automerge::AutoCommit;
use criterion::{Criterion, criterion_group, criterion_main};
use handoff::doc::VaultDoc;
use handoff::doc::schema::{Epoch, Member, Role, Service, Token, TokenKind, VaultInfo};
use handoff::vault::epoch::TokenBinding;
use handoff::vault::primitives::{x25519_agree, xchacha_seal};
use handoff::vault::{Dek, DeviceKeys, KdfParams, VaultSecret, WrappedVaultKey, random_array};
use handoff_protocol::binding::{genesis_statement, token_version_statement};
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DeviceId, EpochId, TokenId, VaultId};
use x25519_dalek::StaticSecret;

const API_KEY: &[u8] = b"sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGH";

fn token_seal_open(c: &mut Criterion) {
    let dek = Dek::generate().unwrap();
    let (vault, token, epoch) = (
        VaultId::from_bytes([1; 16]),
        TokenId::from_bytes([2; 16]),
        EpochId::from_bytes([3; 16]),
    );
    let at = TokenBinding {
        vault: &vault,
        token: &token,
        epoch: &epoch,
        service: "anthropic",
    };
    let sealed = dek.seal_token(at, API_KEY).unwrap();
    let mut g = c.benchmark_group("token_seal_open");
    g.bench_function("baseline", |b| {
        b.iter(|| xchacha_seal(&[7; 32], &[9; 24], b"ad", black_box(API_KEY)).unwrap())
    });
    g.bench_function("seal", |b| {
        b.iter(|| dek.seal_token(at, black_box(API_KEY)).unwrap())
    });
    g.bench_function("open", |b| {
        b.iter(|| dek.open_token(at, black_box(&sealed)).unwrap())
    });
    g.finish();
}

fn dek_wrap(c: &mut Criterion) {
    let dek = Dek::generate().unwrap();
    let member = VaultSecret::generate().unwrap();
    let public = member.public();
    let (vault, epoch) = (VaultId::from_bytes([1; 16]), EpochId::from_bytes([3; 16]));
    let to = Recipient::Device(DeviceId::from_bytes([4; 16]));
    let wrap = dek.wrap(&vault, &epoch, &to, &public).unwrap().encode();
    let ephemeral = StaticSecret::from([5u8; 32]);
    let mut g = c.benchmark_group("dek_wrap");
    g.bench_function("baseline", |b| {
        b.iter(|| x25519_agree(&ephemeral, black_box(&public)).unwrap())
    });
    g.bench_function("wrap", |b| {
        b.iter(|| dek.wrap(&vault, &epoch, &to, black_box(&public)).unwrap())
    });
    g.bench_function("unwrap", |b| {
        b.iter(|| Dek::unwrap(black_box(&wrap), &member, &vault, &epoch, &to).unwrap())
    });
    g.finish();
}

/// What a bench vault was made with: its writer's keys and the epoch's DEK, to add more.
struct Writer {
    keys: DeviceKeys,
    dek: Dek,
    vault: VaultId,
    epoch: EpochId,
}

/// A vault document with `n` tokens, and its snapshot from before the first token.
fn document_history(n: usize) -> (Vec<u8>, Vec<u8>, DeviceId) {
    let (full, genesis, me, _) = vault_with_writer(n);
    (full, genesis, me)
}

/// A vault document with `n` signed, sealed tokens, built through the same typed writes as
/// the CLI (one change per add); its snapshot from before the first token; and its writer.
fn vault_with_writer(n: usize) -> (Vec<u8>, Vec<u8>, DeviceId, Writer) {
    let keys = DeviceKeys::generate().unwrap();
    let secret = VaultSecret::generate().unwrap();
    let me = keys.device_id();
    let vault_id = VaultId::from_bytes(random_array().unwrap());
    // The bench's identity key doubles as the recovery signer; only the cost matters here.
    let info = VaultInfo {
        id: vault_id,
        name: "bench".into(),
        created_at: 0,
        founder: me,
        discovery_secret: [0; 32],
        recovery_pub: VaultSecret::generate().unwrap().public(),
        recovery_sign_pub: keys.identity_public(),
        genesis_sig: keys
            .sign(&genesis_statement(&vault_id, &me, &keys.identity_public()))
            .to_vec(),
    };
    let mut founder = Member::new(
        &keys,
        secret.public(),
        "bench",
        Role::Admin,
        &me.to_hex(),
        0,
    );
    handoff::device::sign_member(&mut founder, &info.id, &me.to_hex(), |m| keys.sign(m));
    let epoch = Epoch {
        id: EpochId::from_bytes(random_array().unwrap()),
        generation: 1,
        created_by: me.to_hex(),
        created_at: 0,
        wraps: BTreeMap::new(),
        untrusted: Vec::new(),
        current_eligible: true,
    };
    let dek = Dek::generate().unwrap();
    let mut doc = VaultDoc::create(&info, &founder, &epoch, |m| keys.sign(m)).unwrap();
    let genesis = doc.save();
    for i in 0..n {
        let id = TokenId::from_bytes(random_array().unwrap());
        let service = Service::ALL[i % Service::ALL.len()];
        let at = TokenBinding {
            vault: &info.id,
            token: &id,
            epoch: &epoch.id,
            service: service.as_str(),
        };
        let token = Token {
            id,
            service,
            label: format!("label-{i}"),
            kind: TokenKind::ApiKey,
            epoch: epoch.id,
            ciphertext: Some(dek.seal_token(at, API_KEY).unwrap()),
            created_at: 0,
            created_by: me.to_hex(),
            updated_at: 0,
            updated_by: me.to_hex(),
            deleted: false,
            version: 1,
            verified: true,
            conflicted: false,
            expires_at: None,
            refreshed_at: None,
            lease: None,
        };
        let sig = keys.sign(&token_version_statement(&info.id, &token.signed_fields()));
        doc.put_token(&token, &sig).unwrap();
        doc.commit("token.add", |m| keys.sign(m)); // one change per add, as the CLI writes them
    }
    let writer = Writer {
        keys,
        dek,
        vault: info.id,
        epoch: epoch.id,
    };
    (doc.save(), genesis, me, writer)
}

/// One `token add` at the document layer, as `Device::add_token` makes it: seal, sign, write,
/// commit, validate the new state.
fn add_one(doc: &mut VaultDoc, w: &Writer, i: usize) {
    let id = TokenId::from_bytes(random_array().unwrap());
    let at = TokenBinding {
        vault: &w.vault,
        token: &id,
        epoch: &w.epoch,
        service: "anthropic",
    };
    let me = w.keys.device_id().to_hex();
    let token = Token {
        id,
        service: Service::Anthropic,
        label: format!("added-{i}"),
        kind: TokenKind::ApiKey,
        epoch: w.epoch,
        ciphertext: Some(w.dek.seal_token(at, API_KEY).unwrap()),
        created_at: 0,
        created_by: me.clone(),
        updated_at: 0,
        updated_by: me,
        deleted: false,
        version: 1,
        verified: true,
        conflicted: false,
        expires_at: None,
        refreshed_at: None,
        lease: None,
    };
    let sig = w
        .keys
        .sign(&token_version_statement(&w.vault, &token.signed_fields()));
    doc.put_token(&token, &sig).unwrap();
    doc.commit("token.add", |m| w.keys.sign(m));
    doc.state().unwrap();
}

/// A token add into a 1,000-token vault, against sealing the secret alone (the add's own
/// cryptography) in the same run.
fn token_add_1000(c: &mut Criterion) {
    let (bytes, _, me, writer) = vault_with_writer(1000);
    let mut g = c.benchmark_group("token_add_1000_tokens");
    g.sample_size(20);
    let at = TokenBinding {
        vault: &writer.vault,
        token: &TokenId::from_bytes([2; 16]),
        epoch: &writer.epoch,
        service: "anthropic",
    };
    g.bench_function("baseline", |b| {
        b.iter(|| writer.dek.seal_token(at, black_box(API_KEY)).unwrap())
    });
    let mut i = 0;
    g.bench_function("add", |b| {
        b.iter_batched_ref(
            || VaultDoc::load_trusted(&bytes, &me).unwrap(),
            |doc| {
                i += 1;
                add_one(doc, &writer, i);
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// How the cost of a write grows with the vault, at 100, 1,000 and 5,000 tokens: a whole
/// validation (`rebuild`, every signature already known, as on a device: what load, import and
/// recovery cost), a whole `token add` on the writer (`add`: seal, sign, commit, the state
/// updated from what the change touched), and the same add arriving from a peer (`ingest`:
/// applied to a fork, judged, kept), against handing out the kept state (`baseline`) of the
/// smallest. Flat `add` and `ingest` times are what incremental validation is for.
fn state_by_size(c: &mut Criterion) {
    let sizes = [100, 1000, 5000];
    let vaults: Vec<_> = sizes.iter().map(|&n| (n, vault_with_writer(n))).collect();
    let mut g = c.benchmark_group("state_by_size");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    let small = VaultDoc::load_trusted(&vaults[0].1.0, &vaults[0].1.2).unwrap();
    g.bench_function("baseline", |b| b.iter(|| small.state().unwrap()));
    for (n, (bytes, _, me, writer)) in &vaults {
        let doc = VaultDoc::load_trusted(bytes, me).unwrap();
        g.bench_function(format!("rebuild_{n:04}"), |b| {
            b.iter(|| doc.rebuild_state().unwrap())
        });
        // A fresh copy per add (its load is not timed), so the vault is the size named.
        let mut i = 0;
        g.bench_function(format!("add_{n:04}"), |b| {
            b.iter_batched_ref(
                || VaultDoc::load_trusted(bytes, me).unwrap(),
                |doc| {
                    i += 1;
                    add_one(doc, writer, i);
                },
                criterion::BatchSize::PerIteration,
            )
        });
        // One add made on a copy, as a peer's change chunk.
        let mut peer = VaultDoc::load_trusted(bytes, me).unwrap();
        peer.mark_saved();
        add_one(&mut peer, writer, 0);
        let chunk = peer.take_unsaved().unwrap();
        g.bench_function(format!("ingest_{n:04}"), |b| {
            b.iter_batched_ref(
                || VaultDoc::load_trusted(bytes, me).unwrap(),
                |doc| assert_eq!(doc.ingest(&chunk).unwrap(), 2),
                criterion::BatchSize::PerIteration,
            )
        });
        // The engine's own share of an ingest: copying the document for the fork, and
        // applying the chunk.
        let mut raw = AutoCommit::load(bytes).unwrap();
        g.bench_function(format!("engine_fork_{n:04}"), |b| b.iter(|| raw.fork()));
        g.bench_function(format!("engine_apply_{n:04}"), |b| {
            b.iter_batched_ref(
                || AutoCommit::load(bytes).unwrap(),
                |doc| doc.load_incremental(&chunk).unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// The same vault as written before signatures (schema 1), from the same genesis: each
/// token's fields directly in its record, unsigned, one change per add, so reading it checks
/// no signature. The baseline of what verifying the signatures at load costs.
fn unsigned_document(signed: &[u8], genesis: &[u8], me: &DeviceId) -> Vec<u8> {
    use automerge::ObjType;
    use automerge::transaction::Transactable;
    let state = VaultDoc::load_trusted(signed, me).unwrap().state().unwrap();
    let mut doc = AutoCommit::load(genesis)
        .unwrap()
        .with_actor(handoff::doc::actor_for(me));
    let root = automerge::ROOT;
    doc.put(&root, "schema", 1u64).unwrap();
    let (_, tokens) = automerge::ReadDoc::get(&doc, &root, "tokens")
        .unwrap()
        .unwrap();
    doc.commit();
    for t in state.tokens.values() {
        let obj = doc
            .put_object(&tokens, t.id.to_hex(), ObjType::Map)
            .unwrap();
        doc.put(&obj, "service", t.service.as_str()).unwrap();
        doc.put(&obj, "label", t.label.as_str()).unwrap();
        doc.put(&obj, "kind", t.kind.as_str()).unwrap();
        doc.put(&obj, "epoch", t.epoch.to_hex()).unwrap();
        let ct = t.ciphertext.clone().unwrap();
        doc.put(&obj, "ciphertext", automerge::ScalarValue::Bytes(ct))
            .unwrap();
        doc.put(&obj, "created_at", t.created_at).unwrap();
        doc.put(&obj, "created_by", t.created_by.as_str()).unwrap();
        doc.put(&obj, "updated_at", t.updated_at).unwrap();
        doc.put(&obj, "updated_by", t.updated_by.as_str()).unwrap();
        doc.commit();
    }
    doc.save()
}

/// Runs the sync protocol between two documents until neither has anything to send; returns
/// (bytes sent, messages sent).
fn sync_until_quiet(a: &mut VaultDoc, b: &mut VaultDoc) -> (usize, usize) {
    let (mut sa, mut sb) = (automerge::sync::State::new(), automerge::sync::State::new());
    let (mut bytes, mut messages) = (0, 0);
    for _ in 0..64 {
        let mut moved = false;
        if let Some(m) = a.sync_message(&mut sa, true) {
            bytes += m.len();
            messages += 1;
            b.receive_sync(&mut sb, &m).unwrap();
            moved = true;
        }
        if let Some(m) = b.sync_message(&mut sb, true) {
            bytes += m.len();
            messages += 1;
            a.receive_sync(&mut sa, &m).unwrap();
            moved = true;
        }
        if !moved {
            return (bytes, messages);
        }
    }
    panic!("sync did not go quiet in 64 rounds");
}

/// A new member's first sync of a 1,000-token vault (from the document it was admitted with),
/// beside loading the same vault as one snapshot; and the bytes one token change costs.
fn first_sync_1000(c: &mut Criterion) {
    let (full, genesis, me) = document_history(1000);
    let other = DeviceId::from_bytes([9; 16]);
    let (bytes, messages) = sync_until_quiet(
        &mut VaultDoc::load_trusted(&full, &me).unwrap(),
        &mut VaultDoc::load_trusted(&genesis, &other).unwrap(),
    );
    eprintln!(
        "first sync of 1000 tokens: {bytes} bytes in {messages} messages (snapshot: {} bytes)",
        full.len()
    );
    let mut g = c.benchmark_group("first_sync_1000_tokens");
    g.sample_size(10);
    g.bench_function("baseline", |b| {
        b.iter(|| VaultDoc::load_trusted(black_box(&full), &other).unwrap())
    });
    g.bench_function("sync", |b| {
        b.iter(|| {
            let mut sender = VaultDoc::load_trusted(&full, &me).unwrap();
            let mut joiner = VaultDoc::load_trusted(&genesis, &other).unwrap();
            sync_until_quiet(&mut sender, &mut joiner)
        })
    });
    g.finish();
}

fn document_1000(c: &mut Criterion) {
    let (bytes, genesis, me) = document_history(1000);
    eprintln!("document with 1000 tokens: {} bytes saved", bytes.len());
    let unsigned = unsigned_document(&bytes, &genesis, &me);
    eprintln!("the same before signatures: {} bytes saved", unsigned.len());
    assert!(
        VaultDoc::load_trusted(&unsigned, &me)
            .unwrap()
            .state()
            .unwrap()
            .tokens
            .values()
            .all(|t| !t.verified)
    );
    let mut g = c.benchmark_group("document_1000_tokens");
    g.sample_size(20);
    g.bench_function("baseline", |b| {
        b.iter(|| AutoCommit::load(black_box(&bytes)).unwrap())
    });
    g.bench_function("load", |b| {
        b.iter(|| VaultDoc::load_trusted(black_box(&bytes), &me).unwrap())
    });
    // As a device opens its vault: the signatures it checked before are known by digest.
    let known = {
        let doc = VaultDoc::load_trusted(&bytes, &me).unwrap();
        doc.take_verified()
    };
    assert!(known.len() >= 1000);
    g.bench_function("load_known", |b| {
        b.iter(|| {
            VaultDoc::load_known(black_box(&bytes), [], &me, None, known.iter().copied()).unwrap()
        })
    });
    // The same vault before signatures: what reading costs without verifying any.
    g.bench_function("load_unsigned", |b| {
        b.iter(|| VaultDoc::load_trusted(black_box(&unsigned), &me).unwrap())
    });
    g.bench_function("load_unsigned_automerge", |b| {
        b.iter(|| AutoCommit::load(black_box(&unsigned)).unwrap())
    });
    let mut doc = VaultDoc::load_trusted(&bytes, &me).unwrap();
    g.bench_function("save", |b| b.iter(|| doc.save()));
    g.bench_function("read_state", |b| b.iter(|| doc.state().unwrap()));
    g.finish();
}

fn unlock(c: &mut Criterion) {
    let device = DeviceId::from_bytes([6; 16]);
    let secret = VaultSecret::generate().unwrap();
    let wrapped =
        WrappedVaultKey::seal(&secret, b"bench passphrase", &device, KdfParams::DEFAULT).unwrap();
    let p = KdfParams::DEFAULT;
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32)).unwrap();
    let mut g = c.benchmark_group("unlock_default_argon2");
    g.sample_size(10);
    g.bench_function("baseline", |b| {
        b.iter(|| {
            let mut out = [0u8; 32];
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
                .hash_password_into(b"bench passphrase", &[1; 16], &mut out)
                .unwrap();
            out
        })
    });
    g.bench_function("unlock", |b| {
        b.iter(|| {
            wrapped
                .open(black_box(b"bench passphrase"), &device)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    token_seal_open,
    dek_wrap,
    document_1000,
    token_add_1000,
    state_by_size,
    first_sync_1000,
    unlock
);
criterion_main!(benches);
