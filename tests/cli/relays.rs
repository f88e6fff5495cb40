//! `relay add|list|rm`: listing the vault's relays, directly and through the daemon; the
//! access token comes from a file and is never shown.

use serde_json::Value;

use crate::support::{TestHome, write_private};

const ADDR: &str =
    "/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWAzZuVgYCzDLtPoLzYLrUNHJxagaaUnnJUy5CgKev7fYQ";

fn relays(home: TestHome) {
    home.init();
    let token = home.scratch("relay-token");
    write_private(&token, b"a-relay-access-token\n");
    let added: Value = serde_json::from_str(&home.ok(&[
        "--json",
        "relay",
        "add",
        ADDR,
        "--token-file",
        token.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(added["addrs"][0], ADDR);
    assert_eq!(added["access_token"], true);
    let id = added["id"].as_str().unwrap().to_string();
    let listed = home.ok(&["relay", "list"]);
    assert!(
        listed.contains(&id) && listed.contains("token: yes"),
        "{listed}"
    );
    assert!(!listed.contains("a-relay-access-token"));
    let json: Value = serde_json::from_str(&home.ok(&["--json", "relay", "list"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);

    // Bad input: one line, a distinct code, nothing written.
    home.run(&["relay", "add", "not-a-multiaddr"]).fails_with(2);
    // An address that does not name the relay would hand its token to whoever answers.
    home.run(&["relay", "add", "/ip4/127.0.0.1/tcp/4002"])
        .fails_with(2);
    home.run(&["relay", "add", ADDR, "--token-file", "/nonexistent/token"])
        .fails_with(5);
    home.run(&["relay", "rm", "ffffffff"]).fails_with(2);

    home.ok(&["relay", "rm", &id[..6]]);
    let json: Value = serde_json::from_str(&home.ok(&["--json", "relay", "list"])).unwrap();
    assert!(json.as_array().unwrap().is_empty());
}

crate::both_modes!(relays);
