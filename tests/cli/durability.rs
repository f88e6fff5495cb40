//! SIGKILL during a loop of `token add`s loses no add that was reported done.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::support::TestHome;

/// A small deterministic generator, so a failure is reproducible from the printed seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn sigkill_loses_no_acknowledged_add(home: TestHome) {
    let seed = std::env::var("HANDOFF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = SplitMix(seed);
    home.init();

    let mut acknowledged = Vec::new();
    let mut killed = 0;
    for i in 0..30 {
        let label = format!("k{i}");
        let mut child = home
            .command(&["token", "add", "anthropic", "--label", &label])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("sk-ant-kill-{i}").as_bytes())
            .unwrap();
        // A typical add takes 100-300 ms (most of it Argon2); kill anywhere in and around it.
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        let _ = child.kill(); // SIGKILL
        let out = crate::support::finish(child, Duration::from_secs(60));
        if out.code == Some(0) && out.stdout.contains("Added") {
            acknowledged.push(label);
        } else {
            killed += 1;
        }
    }
    eprintln!(
        "seed {seed}: {} acknowledged, {killed} killed",
        acknowledged.len()
    );

    // The store opens cleanly and passes SQLite's full integrity check.
    let conn = rusqlite::Connection::open(home.db()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "seed {seed}");
    drop(conn);

    let list = home.list_json();
    for label in &acknowledged {
        assert!(
            list.iter().any(|t| t["label"] == label.as_str()),
            "seed {seed}: acknowledged add {label} was lost"
        );
    }
    // Whatever survived decrypts, and the store still takes writes.
    for t in &list {
        let label = t["label"].as_str().unwrap();
        let i = &label[1..];
        assert_eq!(
            home.reveal(&format!("anthropic/{label}")),
            format!("sk-ant-kill-{i}")
        );
    }
    home.add("openai", "after", "sk-proj-after-kills", &[]);
}

crate::both_modes!(sigkill_loses_no_acknowledged_add);
