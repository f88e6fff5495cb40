//! `handoff demo`, README's first command: it runs end to end and every check it reports holds.

use crate::support::TestHome;

#[test]
fn the_demo_pairs_syncs_relays_spawns_remotely_and_recovers_on_loopback() {
    let home = TestHome::new();
    let out = home.run(&["--json", "demo"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["paired"], true);
    assert_eq!(report["through_relay"], true);
    assert_eq!(report["relay_saw_plaintext"], false);
    assert_eq!(report["spawn_credential"], true);
    assert_eq!(report["plaintext_on_disk"], false);
    assert_eq!(report["recovered"], true);
    assert_eq!(report["conflict_resolved"], true);
    assert_eq!(report["remote_spawn"], true);
    assert_eq!(report["remote_sessions_listed"], true);
    assert_eq!(report["remote_spawn_audited"], true);
    assert_eq!(report["remote_phone_holds_no_token"], true);
}
