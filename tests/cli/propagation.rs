//! Whether an operation changed the document is not declared anywhere: the daemon compares the
//! document before and after, and offers the change to the mesh when it moved. So every
//! operation that changes the document, run through a daemon with a connected peer, reaches
//! that peer at once, and every operation that does not sends nothing.

use std::time::Duration;

use crate::peers::{admin, eventually, pair};
use crate::support::{TestHome, write_private};

/// What `home`'s status says: its document version, and the sync frames its daemon sent.
fn document_and_frames(home: &TestHome) -> (String, u64) {
    let status: serde_json::Value = serde_json::from_str(&home.ok(&["--json", "status"])).unwrap();
    (
        status["document"].as_str().unwrap().to_string(),
        status["sync"]["frames_sent"].as_u64().unwrap(),
    )
}

#[test]
fn what_changes_the_document_reaches_the_peer_and_nothing_else_is_sent() {
    let a = admin();
    let b = TestHome::with_daemon();
    pair(&a, &b, "beta");
    let c = TestHome::with_daemon();
    pair(&a, &c, "gamma");
    eventually("the three hold one document", || {
        let doc = document_and_frames(&a).0;
        document_and_frames(&b).0 == doc && document_and_frames(&c).0 == doc
    });
    let relay_token = a.scratch("relay-token");
    write_private(&relay_token, b"relay access token\n");
    let export = a.scratch("export.automerge");
    let relay = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWCeRdFNkfpEHtu27jfSj3f4sEPqQK5rQNTmrzzDVHeEK5";
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();

    let changing: Vec<(Vec<String>, Option<&str>)> = vec![
        (
            words("token add anthropic --label work"),
            Some("sk-ant-1\n"),
        ),
        (
            words("token add anthropic --label work --replace"),
            Some("sk-ant-2\n"),
        ),
        (
            words("token add anthropic --label second"),
            Some("sk-ant-3\n"),
        ),
        (words("token default anthropic/second"), None),
        (words("token rename anthropic/second renamed"), None),
        (words("token rm anthropic/work"), None),
        (
            [
                words("relay add"),
                vec![relay.into(), "--token-file".into(), path(&relay_token)],
            ]
            .concat(),
            None,
        ),
        (words("peer remove gamma"), None),
    ];
    for (args, stdin) in &changing {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = document_and_frames(&a).0;
        let out = a.run_with_stdin(&args, stdin.map(str::as_bytes));
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        let after = document_and_frames(&a).0;
        assert_ne!(before, after, "{args:?} did not change the document");
        eventually(&format!("{args:?} reaching the peer"), || {
            document_and_frames(&b).0 == after
        });
    }
    let relay_id = {
        let list: serde_json::Value =
            serde_json::from_str(&a.ok(&["--json", "relay", "list"])).unwrap();
        list[0]["id"].as_str().unwrap().to_string()
    };
    let before = document_and_frames(&a).0;
    a.ok(&["relay", "rm", &relay_id]);
    let after = document_and_frames(&a).0;
    assert_ne!(before, after);
    eventually("relay rm reaching the peer", || {
        document_and_frames(&b).0 == after
    });

    let reading: Vec<Vec<String>> = vec![
        words("status"),
        words("token list"),
        words("token show anthropic/renamed"),
        words("token show anthropic/renamed --reveal"),
        words("token show no-such-token"),
        words("relay list"),
        words("peer list"),
        [words("export --out"), vec![path(&export)]].concat(),
        [words("import"), vec![path(&export)]].concat(),
        words("session list"),
        words("lock"),
        words("unlock --for 1h"),
        words("daemon status"),
    ];
    // Let the last change's acknowledgements settle before counting frames.
    std::thread::sleep(Duration::from_millis(500));
    for args in &reading {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (doc, frames) = document_and_frames(&a);
        a.run(&args);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            document_and_frames(&a),
            (doc, frames),
            "{args:?} changed the document or sent sync frames"
        );
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_string).collect()
}
