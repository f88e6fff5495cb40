//! `export` writes a standard Automerge document without plaintext; `recover` on an empty home
//! regains every token with that export and the recovery code; `import` merges exports.

use automerge::{AutoCommit, ReadDoc};

use crate::support::{TestHome, contains, write_private};

fn export_is_plain_automerge_without_plaintext(home: TestHome) {
    home.init();
    let id = home.add("anthropic", "work", "sk-ant-api03-EXPORTED-SECRET", &[]);
    let path = home.scratch("vault.automerge");
    home.ok(&["export", "--out", path.to_str().unwrap()]);
    let bytes = std::fs::read(&path).unwrap();
    assert!(!contains(&bytes, b"EXPORTED-SECRET"));

    // Loaded by the Automerge library alone, without handoff's own reader.
    let doc = AutoCommit::load(&bytes).unwrap();
    let (_, tokens) = doc.get(automerge::ROOT, "tokens").unwrap().unwrap();
    let (_, token) = doc.get(&tokens, id.as_str()).unwrap().unwrap();
    let (_, version) = doc.get(&token, "current").unwrap().unwrap();
    let (service, _) = doc.get(&version, "service").unwrap().unwrap();
    assert_eq!(service.to_string(), "\"anthropic\"");
    let (sig, _) = doc.get(&version, "sig").unwrap().unwrap();
    assert_eq!(sig.as_bytes().map(<[u8]>::len), Some(64));
    let (schema, _) = doc.get(automerge::ROOT, "schema").unwrap().unwrap();
    assert_eq!(schema.to_string(), "2");
}

#[test]
fn recover_on_an_empty_home_reveals_every_token() {
    let lost = TestHome::new();
    let code = lost.init();
    lost.add("anthropic", "work", "sk-ant-api03-RECOVER-ONE", &[]);
    lost.add(
        "openai-codex",
        "default",
        r#"{"tokens":{"access_token":"RECOVER-TWO"}}"#,
        &[],
    );
    lost.add("gemini", "default", "AIza-RECOVER-THREE", &[]);
    lost.ok(&["token", "rm", "gemini/default"]);
    let export = lost.scratch("backup.automerge");
    lost.ok(&["export", "--out", export.to_str().unwrap()]);
    let export = export.to_str().unwrap().to_string();

    let fresh = TestHome::with_passphrase("a brand new passphrase");
    let code_file = fresh.scratch("code");

    // A mistyped code is caught by its checksum, before any key derivation, and creates nothing.
    let mut typo = code.clone().into_bytes();
    typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
    write_private(&code_file, &typo);
    let line = fresh
        .run(&[
            "recover",
            "--from",
            &export,
            "--code-file",
            code_file.to_str().unwrap(),
        ])
        .fails_with(4)
        .to_string();
    assert!(line.contains("checksum"), "{line}");
    assert!(!fresh.db().exists());

    // A well-formed code of another vault does not open this one.
    let other = TestHome::new();
    let other_code = other.init();
    write_private(&code_file, other_code.as_bytes());
    let line = fresh
        .run(&[
            "recover",
            "--from",
            &export,
            "--code-file",
            code_file.to_str().unwrap(),
        ])
        .fails_with(4)
        .to_string();
    assert!(line.contains("does not open"), "{line}");
    assert!(!fresh.db().exists());

    // The right code, typed loosely (lower case, spaces), recovers.
    write_private(&code_file, code.to_lowercase().replace('-', " ").as_bytes());
    fresh.ok(&[
        "recover",
        "--from",
        &export,
        "--code-file",
        code_file.to_str().unwrap(),
        "--name",
        "new-laptop",
    ]);
    assert_eq!(fresh.reveal("anthropic/work"), "sk-ant-api03-RECOVER-ONE");
    assert_eq!(
        fresh.reveal("openai-codex/default"),
        r#"{"tokens":{"access_token":"RECOVER-TWO"}}"#
    );
    assert_eq!(
        fresh.list_json().len(),
        2,
        "the deleted token stays deleted"
    );
    let status: serde_json::Value = serde_json::from_str(&fresh.ok(&["--json", "status"])).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 2);

    // The recovered device keeps working: new tokens, and recover refuses a used home.
    fresh.add("openai", "default", "sk-proj-AFTER-RECOVERY", &[]);
    assert_eq!(fresh.reveal("openai/default"), "sk-proj-AFTER-RECOVERY");
    fresh
        .run(&[
            "recover",
            "--from",
            &export,
            "--code-file",
            code_file.to_str().unwrap(),
        ])
        .fails_with(6);
}

fn import_merges_an_export_of_the_same_vault_only(a: TestHome) {
    let code = a.init();
    a.add("anthropic", "work", "sk-ant-FROM-A", &[]);
    let b = a.second_device(&code);
    b.add("openai", "default", "sk-proj-FROM-B", &[]);
    let b_export = b.export("b.automerge");

    a.ok(&["import", &b_export]);
    assert_eq!(a.reveal("openai/default"), "sk-proj-FROM-B");
    assert_eq!(a.list_json().len(), 2);

    // Another vault's export is refused and changes nothing.
    let stranger = TestHome::new();
    stranger.init();
    let s_export = stranger.export("s.automerge");
    let before = a.files();
    a.run(&["import", &s_export]).fails_with(6);
    // Garbage is refused as damaged.
    let junk = a.scratch("junk");
    std::fs::write(&junk, b"\x85\x6f\x4a\x83 not an automerge document").unwrap();
    a.run(&["import", junk.to_str().unwrap()]).fails_with(8);
    assert_eq!(a.files(), before);
}

/// The JavaScript Automerge implementation (`@automerge/automerge`, installed by `.ci/run`
/// under `target/interop`) loads an export and sees the schema, without any plaintext.
#[test]
fn export_loads_in_automerge_js() {
    let modules = std::env::var_os("HANDOFF_INTEROP_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop"));
    let package = modules.join("node_modules/@automerge/automerge/package.json");
    let node = std::process::Command::new("node").arg("--version").output();
    if !package.is_file() || node.is_err() {
        let why = format!(
            "SKIPPED export_loads_in_automerge_js: needs node and {} (bash .ci/run installs them)",
            package.display()
        );
        assert!(
            std::env::var_os("HANDOFF_REQUIRE_INTEROP").is_none(),
            "{why}"
        );
        eprintln!("{why}");
        return;
    }
    let home = TestHome::new();
    home.init();
    let id = home.add("gemini", "work", "AIza-JS-INTEROP-SECRET", &[]);
    let export = home.scratch("vault.automerge");
    home.ok(&["export", "--out", export.to_str().unwrap()]);

    let script = modules.join("check-export.mjs");
    std::fs::write(
        &script,
        r#"import * as A from "@automerge/automerge";
import { readFileSync } from "node:fs";
const doc = A.load(new Uint8Array(readFileSync(process.argv[2])));
const tokens = Object.entries(doc.tokens).map(([id, t]) =>
  ({ id, service: t.current.service, label: t.current.label,
     ciphertext_len: t.current.ciphertext.length, sig_len: t.current.sig.length }));
console.log(JSON.stringify({ schema: Number(doc.schema), vault: doc.vault.name, tokens }));
"#,
    )
    .unwrap();
    let out = std::process::Command::new("node")
        .arg(&script)
        .arg(&export)
        .current_dir(&modules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("JS-INTEROP-SECRET"));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["schema"], 2);
    assert_eq!(v["vault"], "personal");
    let token = &v["tokens"][0];
    assert_eq!(
        (
            token["id"].as_str(),
            token["service"].as_str(),
            token["label"].as_str()
        ),
        (Some(id.as_str()), Some("gemini"), Some("work"))
    );
    assert!(token["ciphertext_len"].as_u64().unwrap() > 40);
    assert_eq!(token["sig_len"], 64);
}

/// Concurrent edits of one token on two devices both survive a merge, and the list shows the
/// conflict instead of silently dropping one.
fn concurrent_edits_show_as_a_conflict_after_import(a: TestHome) {
    let code = a.init();
    a.add("anthropic", "work", "sk-ant-ORIGINAL", &[]);
    let b = a.second_device(&code);

    a.add("anthropic", "work", "sk-ant-EDITED-ON-A", &["--replace"]);
    b.add("anthropic", "work", "sk-ant-EDITED-ON-B", &["--replace"]);
    a.ok(&["import", &b.export("b.automerge")]);

    let list = a.list_json();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["conflict"], true, "{list:?}");
    assert!(a.ok(&["token", "list"]).contains("(conflict)"));
    let shown = a.reveal("anthropic/work");
    assert!(
        shown == "sk-ant-EDITED-ON-A" || shown == "sk-ant-EDITED-ON-B",
        "{shown}"
    );
}

/// Bytes that make the Automerge engine itself panic or ask for gigabytes (found by
/// `fuzz/vault_doc`) give one line and exit 8 from `import` and `recover`, and change nothing.
#[test]
fn bytes_that_break_the_document_engine_are_refused_cleanly() {
    for name in ["automerge-hexane-panic.bin", "automerge-bundle-oom.bin"] {
        refused_cleanly(&format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR")));
    }
}

fn refused_cleanly(crash: &str) {
    let home = TestHome::new();
    let code = home.init();
    let before = home.files();
    let out = home.run(&["import", crash]);
    let line = out.fails_with(8).to_string();
    assert!(line.contains("damaged"), "{line}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert_eq!(home.files(), before);

    let fresh = TestHome::new();
    let code_file = fresh.scratch("code");
    write_private(&code_file, code.as_bytes());
    fresh
        .run(&[
            "recover",
            "--from",
            crash,
            "--code-file",
            code_file.to_str().unwrap(),
        ])
        .fails_with(8);
    assert!(!fresh.db().exists());
}

crate::both_modes!(export_is_plain_automerge_without_plaintext);

crate::both_modes!(import_merges_an_export_of_the_same_vault_only);

crate::both_modes!(concurrent_edits_show_as_a_conflict_after_import);
