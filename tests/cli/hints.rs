//! Common mistakes get one line that says what to run next.

use crate::support::TestHome;

#[test]
fn an_empty_home_names_the_ways_to_get_a_vault() {
    let home = TestHome::new();
    let said = home.run(&["token", "list"]).fails_with(5).to_string();
    for way in ["handoff init", "handoff peer join", "handoff recover"] {
        assert!(said.contains(way), "{said}");
    }
}

#[test]
fn a_passphrase_file_others_can_read_is_named_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new();
    let file = home.scratch("passphrase");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = home.run(&["init", "--name", "laptop"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let fix = format!("chmod 600 {}", file.display());
    assert!(out.stderr.contains(&fix), "{out:?}");
}

#[test]
fn a_join_whose_adder_is_gone_says_to_run_peer_add_again() {
    let home = TestHome::new();
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let said = home
        .run(&[
            "peer",
            "join",
            "1914-expire-fork-enhance",
            "--addr",
            &addr,
            "--yes",
            "--no-mdns",
            "--name",
            "late",
        ])
        .fails_with(7)
        .to_string();
    assert!(said.contains("is it still waiting there?"), "{said}");
    assert!(said.contains("run it again for a new code"), "{said}");
    assert!(!home.db().exists(), "a failed join left a vault");
}

#[test]
fn a_relay_address_without_its_peer_id_and_an_empty_token_say_what_is_missing() {
    let home = TestHome::new();
    home.init();
    let said = home
        .run(&["relay", "add", "/ip4/127.0.0.1/tcp/4001"])
        .fails_with(2)
        .to_string();
    assert!(said.contains("/p2p/"), "{said}");
    let out = home.run_with_stdin(&["token", "add", "anthropic"], Some(b""));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--from-file"), "{out:?}");
}
