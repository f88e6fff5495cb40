//! No plaintext token or passphrase reaches the database, its -wal or -shm, or any file in the
//! home; the home is 0700 and every file in it 0600.

use std::os::unix::fs::PermissionsExt;

use crate::support::{PASSPHRASE, TestHome, contains};

fn no_plaintext_on_disk_and_private_modes(home: TestHome) {
    home.init();
    // Hold a connection open so SQLite keeps the -wal and -shm files for inspection.
    let observer = rusqlite::Connection::open(home.db()).unwrap();
    observer
        .query_row("SELECT count(*) FROM doc_changes", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();

    let secrets = [
        "sk-ant-api03-PLAINTEXT-ALPHA-0001",
        "sk-proj-PLAINTEXT-BRAVO-0002",
        "sk-ant-oat01-PLAINTEXT-CHARLIE-0003",
        "AIzaPLAINTEXT-DELTA-0004",
        "sk-ant-api03-PLAINTEXT-EDITED-0005",
    ];
    let oauth = r#"{"access_token":"ya29.PLAINTEXT-ECHO-0006","refresh_token":"1//PLAINTEXT-FOXTROT-0007"}"#;
    home.add("anthropic", "work", secrets[0], &[]);
    home.add("openai", "default", secrets[1], &[]);
    home.add("claude-subscription", "default", secrets[2], &[]);
    home.add("gemini", "key", secrets[3], &[]);
    home.add("gemini", "oauth", oauth, &[]);
    home.add("anthropic", "work", secrets[4], &["--replace"]);
    home.ok(&["token", "rm", "openai/default"]);
    home.ok(&["token", "rm", "gemini/key"]);
    let export = home.scratch("export.automerge");
    home.ok(&["export", "--out", export.to_str().unwrap()]);

    let files = home.all_files(); // the daemon's log too, when one runs
    let names: Vec<String> = files
        .keys()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "handoff.db-wal"),
        "expected a live WAL: {names:?}"
    );
    let mut needles: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
    needles.extend([oauth.as_bytes(), b"PLAINTEXT", PASSPHRASE.as_bytes()]);
    let mut scanned = files.clone();
    scanned.insert(export.clone(), std::fs::read(&export).unwrap());
    for (path, bytes) in &scanned {
        for needle in &needles {
            assert!(
                !contains(bytes, needle),
                "{} contains plaintext {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }

    let dir_mode = std::fs::metadata(home.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "home mode");
    for path in files.keys() {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    }
    let export_mode = std::fs::metadata(&export).unwrap().permissions().mode() & 0o777;
    assert_eq!(export_mode, 0o600, "export mode");
    drop(observer);
}

#[test]
fn a_wider_home_is_tightened() {
    let home = TestHome::new();
    std::fs::create_dir_all(home.path()).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    home.init();
    let mode = std::fs::metadata(home.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

crate::both_modes!(no_plaintext_on_disk_and_private_modes);
