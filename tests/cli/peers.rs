//! Devices pairing and syncing through the real binary: two and three daemons on loopback,
//! `peer add` / `peer join` with a code, tokens added, edited and deleted anywhere converging
//! everywhere, a wrong code failing on both sides, and `peer remove`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Output, TestHome};
pub(crate) use crate::wait::eventually_blocking as eventually;

/// A `peer add` running in the background.
struct Offer {
    child: Child,
    first: Value,
    lines: mpsc::Receiver<String>,
}

impl Offer {
    fn open(admin: &TestHome) -> Offer {
        Self::open_with(admin, &[])
    }

    fn open_with(admin: &TestHome, extra: &[&str]) -> Offer {
        let mut args = vec!["--json", "peer", "add", "--yes"];
        args.extend_from_slice(extra);
        let mut child = admin.command(&args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("peer add prints its code");
        let first: Value = serde_json::from_str(&first).unwrap();
        Offer {
            child,
            first,
            lines,
        }
    }

    fn code(&self) -> String {
        self.first["code"].as_str().unwrap().to_string()
    }

    fn addr(&self) -> String {
        self.first["addrs"][0].as_str().unwrap().to_string()
    }

    /// Waits for `peer add` to end; its output lines after the first, and its exit.
    fn finish(self) -> Output {
        let out = crate::support::finish(self.child, Duration::from_secs(120));
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        Output {
            code: out.code,
            stdout: lines.join("\n"),
            stderr: out.stderr,
        }
    }
}

/// `peer join` on `new` with `code`, against the offer's address.
fn join(new: &TestHome, offer: &Offer, code: &str, name: &str) -> Output {
    let mut cmd = new.command(&[
        "--json",
        "peer",
        "join",
        code,
        "--addr",
        &offer.addr(),
        "--yes",
        "--no-mdns",
        "--name",
        name,
    ]);
    cmd.stdin(Stdio::null());
    crate::support::finish(cmd.spawn().unwrap(), Duration::from_secs(120))
}

/// Pairs `new` (an empty home) through `admin` and starts its daemon.
pub(crate) fn pair(admin: &TestHome, new: &TestHome, name: &str) {
    pair_as(admin, new, name, "member");
}

/// The same, with the role the admin gives the new device.
pub(crate) fn pair_as(admin: &TestHome, new: &TestHome, name: &str, role: &str) {
    let offer = Offer::open_with(admin, &["--role", role]);
    let code = offer.code();
    let joined = join(new, &offer, &code, name);
    assert_eq!(joined.code, Some(0), "peer join failed: {joined:?}");
    let added = offer.finish();
    assert_eq!(added.code, Some(0), "peer add failed: {added:?}");
    assert!(added.stdout.contains("\"paired\""), "{added:?}");
    new.configure_loopback();
    new.start_daemon_if_wanted();
    new.ok(&["unlock", "--for", "1h"]);
}

/// What a device's token list says, for comparing devices.
fn tokens(home: &TestHome) -> Vec<(String, String, String)> {
    let mut list: Vec<(String, String, String)> = home
        .list_json()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    t["service"].as_str().unwrap(),
                    t["label"].as_str().unwrap()
                ),
                t["updated_at"].to_string(),
            )
        })
        .collect();
    list.sort();
    list
}

fn reveal(home: &TestHome, query: &str) -> Option<String> {
    let out = home.run(&["token", "show", query, "--reveal"]);
    (out.code == Some(0)).then(|| out.stdout.trim_end().to_string())
}

pub(crate) fn admin() -> TestHome {
    let a = TestHome::with_daemon();
    a.init();
    a.ok(&["unlock", "--for", "1h"]);
    a
}

#[test]
fn two_daemons_pair_with_a_code_and_converge_on_every_edit() {
    let a = admin();
    a.add("anthropic", "work", "sk-ant-first-on-a", &[]);
    let b = TestHome::with_daemon();
    pair(&a, &b, "beta");
    // The new member reads what the vault held when it joined.
    assert_eq!(
        reveal(&b, "anthropic/work").as_deref(),
        Some("sk-ant-first-on-a")
    );

    b.add("openai", "default", "sk-proj-added-on-b", &[]);
    eventually("b's token on a", || {
        reveal(&a, "openai/default").as_deref() == Some("sk-proj-added-on-b")
    });
    a.add("anthropic", "work", "sk-ant-edited-on-a", &["--replace"]);
    eventually("a's edit on b", || {
        reveal(&b, "anthropic/work").as_deref() == Some("sk-ant-edited-on-a")
    });
    b.ok(&["token", "rm", "openai/default"]);
    eventually("b's delete on a", || tokens(&a).len() == 1);
    eventually("identical lists", || tokens(&a) == tokens(&b));

    // Each lists the other as online, with its role.
    let peers: Value = serde_json::from_str(&a.ok(&["--json", "peer", "list"])).unwrap();
    let beta = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "beta")
        .unwrap();
    assert_eq!(beta["role"], "member");
    assert_eq!(beta["online"], true);
    let status: Value = serde_json::from_str(&b.ok(&["--json", "status"])).unwrap();
    assert!(status["peer_id"].as_str().unwrap().starts_with("12D3"));
    assert_eq!(status["online"], 1);
}

#[test]
fn three_daemons_converge_on_concurrent_edits_and_each_reads_every_token() {
    let a = admin();
    let b = TestHome::with_daemon();
    let c = TestHome::with_daemon();
    pair(&a, &b, "beta");
    pair(&a, &c, "gamma");
    a.add("anthropic", "shared", "sk-ant-shared-v1", &[]);
    eventually("the shared token everywhere", || {
        reveal(&b, "anthropic/shared").is_some() && reveal(&c, "anthropic/shared").is_some()
    });
    // Concurrent work on all three.
    c.add("gemini", "from-c", "AIza-from-c", &[]);
    b.add(
        "anthropic",
        "shared",
        "sk-ant-shared-v2-by-b",
        &["--replace"],
    );
    a.add("openai", "from-a", "sk-proj-from-a", &[]);
    // c can remove a's token only once it holds it (a race the test used to leave to luck).
    eventually("a's token on c", || reveal(&c, "openai/from-a").is_some());
    c.ok(&["token", "rm", "openai/from-a"]);
    eventually("the same tokens on all three", || {
        let ta = tokens(&a);
        ta.len() >= 2 && ta == tokens(&b) && ta == tokens(&c)
    });
    for home in [&a, &b, &c] {
        assert_eq!(
            reveal(home, "gemini/from-c").as_deref(),
            Some("AIza-from-c")
        );
        assert_eq!(
            reveal(home, "anthropic/shared").as_deref(),
            Some("sk-ant-shared-v2-by-b")
        );
    }
}

#[test]
fn a_wrong_code_voids_that_code_and_peer_add_goes_on_with_a_fresh_one() {
    let a = admin();
    let offer = Offer::open(&a);
    let right = offer.code();
    let nameplate = right.split('-').next().unwrap().to_string();
    let wrong = format!("{nameplate}-zoo-zoo-zoo");
    assert_ne!(wrong, right);
    // A stranger who read the nameplate tries a guess.
    let mallory = TestHome::new();
    let line = join(&mallory, &offer, &wrong, "mallory")
        .fails_with(4)
        .to_string();
    assert!(line.contains("codes did not match"), "{line}");
    assert!(
        !mallory.db().exists(),
        "a failed join leaves no device behind"
    );

    // `peer add` says so plainly and goes on waiting under a fresh code, by itself.
    let renewed: Value = serde_json::from_str(
        &offer
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("peer add shows a fresh code"),
    )
    .unwrap();
    let fresh = renewed["renewed"]["code"].as_str().unwrap().to_string();
    assert!(
        renewed["renewed"]["reason"]
            .as_str()
            .unwrap()
            .contains("someone tried a wrong code"),
        "{renewed}"
    );
    assert_ne!(fresh, right);

    // The code that was tried is void, and says so.
    let b = TestHome::new();
    let stale = join(&b, &offer, &right, "beta");
    let line = stale.fails_with(5).to_string();
    assert!(line.contains("void"), "{line}");
    assert!(!b.db().exists());

    // The real device uses the fresh code.
    let joined = join(&b, &offer, &fresh, "beta");
    assert_eq!(joined.code, Some(0), "{joined:?}");
    let added = offer.finish();
    assert_eq!(added.code, Some(0), "{added:?}");
    assert!(added.stdout.contains("\"paired\""), "{added:?}");
    let peers: Value = serde_json::from_str(&a.ok(&["--json", "peer", "list"])).unwrap();
    let names: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only the real device was admitted: {names:?}"
    );
    assert!(
        names.contains(&"beta") && !names.contains(&"mallory"),
        "{names:?}"
    );
}

#[test]
fn peer_remove_rotates_disconnects_and_names_the_exposed_tokens() {
    let a = admin();
    let b = TestHome::with_daemon();
    let c = TestHome::with_daemon();
    pair(&a, &b, "beta");
    pair(&a, &c, "gamma");
    a.add("anthropic", "work", "sk-ant-c-could-read-this", &[]);
    eventually("the token on c", || reveal(&c, "anthropic/work").is_some());

    let removed: Value =
        serde_json::from_str(&a.ok(&["--json", "peer", "remove", "gamma"])).unwrap();
    assert_eq!(removed["name"], "gamma");
    assert_eq!(removed["exposed"].as_array().unwrap().len(), 1);
    assert_eq!(removed["exposed"][0]["label"], "work");
    // b is a member, not an admin: it cannot remove anyone.
    b.run(&["peer", "remove", "gamma"]).fails_with(2);

    a.add("anthropic", "after", "sk-ant-after-the-removal", &[]);
    eventually("the new token on b", || {
        reveal(&b, "anthropic/after").as_deref() == Some("sk-ant-after-the-removal")
    });
    eventually("c is offline for a and b", || {
        [&a, &b].iter().all(|home| {
            let peers: Value = serde_json::from_str(&home.ok(&["--json", "peer", "list"])).unwrap();
            peers
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "gamma" && p["active"] == false && p["online"] != true)
        })
    });
    // c never gets the new token; its own later change never reaches a or b.
    assert!(reveal(&c, "anthropic/after").is_none());
    c.ok(&["token", "rm", "anthropic/work"]);
    // Give the mesh a change of its own to carry, then check c's write is not among it.
    a.add("anthropic", "marker", "sk-ant-marker", &[]);
    eventually("the marker on b", || {
        reveal(&b, "anthropic/marker").is_some()
    });
    assert_eq!(
        reveal(&a, "anthropic/work").as_deref(),
        Some("sk-ant-c-could-read-this")
    );
    assert_eq!(
        reveal(&b, "anthropic/work").as_deref(),
        Some("sk-ant-c-could-read-this")
    );
}

#[test]
fn bad_pairing_input_gets_one_line_and_a_distinct_code() {
    let a = TestHome::new();
    a.init();
    let empty = TestHome::new();
    let line = empty
        .run(&["peer", "join", "not-a-code", "--yes"])
        .fails_with(2)
        .to_string();
    assert!(line.contains("looks like"), "{line}");
    let line = empty
        .run(&["peer", "join", "42-apple-rivr-stone", "--yes"])
        .fails_with(2)
        .to_string();
    assert!(line.contains("'rivr'"), "{line}");
    let line = empty
        .run(&[
            "peer",
            "join",
            "42-apple-river-stone",
            "--yes",
            "--addr",
            "nowhere",
        ])
        .fails_with(2)
        .to_string();
    assert!(line.contains("not a valid address"), "{line}");
    assert!(!empty.db().exists(), "nothing was created");
    // A home that already holds a vault cannot join another.
    a.run(&["peer", "join", "42-apple-river-stone", "--yes"])
        .fails_with(6);
    // Comparing the words needs a terminal unless --yes says not to.
    let line = a.run(&["peer", "add"]).fails_with(2).to_string();
    assert!(line.contains("terminal"), "{line}");
    a.run(&["peer", "add", "--role", "boss", "--yes"])
        .fails_with(2);
    let line = a
        .run(&["peer", "remove", "no-such-device"])
        .fails_with(2)
        .to_string();
    assert!(line.contains("no device named"), "{line}");
    // Without a daemon the list still shows this device and what was last seen.
    let peers: Value = serde_json::from_str(&a.ok(&["--json", "peer", "list"])).unwrap();
    assert_eq!(peers[0]["this_device"], true);
    assert_eq!(peers[0]["role"], "admin");
}

#[test]
fn an_offer_whose_peer_add_is_killed_is_withdrawn() {
    let a = admin();
    let mut offer = Offer::open(&a);
    let (code, addr) = (offer.code(), offer.addr());
    let open = |home: &TestHome| {
        let status: Value = serde_json::from_str(&home.ok(&["--json", "status"])).unwrap();
        status["pairing_offer_open"] == true
    };
    assert!(open(&a));
    offer.child.kill().unwrap();
    offer.child.wait().unwrap();
    // No one watches the offer now: the daemon withdraws it rather than admit anyone unseen.
    eventually("the offer withdrawn", || !open(&a));
    let b = TestHome::new();
    let line = b
        .run(&["peer", "join", &code, "--addr", &addr, "--yes", "--no-mdns"])
        .fails_with(7)
        .to_string();
    assert!(line.contains("closed the connection"), "{line}");
    assert!(!b.db().exists());
}

#[test]
fn lock_withdraws_an_open_offer_and_its_code_admits_no_one() {
    let a = admin();
    let offer = Offer::open(&a);
    let (code, addr) = (offer.code(), offer.addr());
    let open = |home: &TestHome| {
        let status: Value = serde_json::from_str(&home.ok(&["--json", "status"])).unwrap();
        status["pairing_offer_open"] == true
    };
    assert!(open(&a));
    // The offer holds its own copy of the key: locking must take that away too.
    a.ok(&["lock"]);
    eventually("the offer withdrawn", || !open(&a));
    let out = offer.finish();
    assert_ne!(
        out.code,
        Some(0),
        "peer add reported success after a lock: {out:?}"
    );
    let b = TestHome::new();
    b.run(&["peer", "join", &code, "--addr", &addr, "--yes", "--no-mdns"])
        .fails_with(7);
    assert!(!b.db().exists());
    let peers: Value = serde_json::from_str(&a.ok(&["--json", "peer", "list"])).unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");
}

/// A `remote` device (a phone) paired through the real binaries holds no key for any epoch,
/// reveals nothing, and cannot change a token: its own device refuses (exit 10), and a change
/// its hand-modified client makes anyway is refused by every member (see
/// tests/signed_writes.rs). Its new name reaches the other members.
#[test]
fn a_remote_device_asks_but_cannot_read_or_damage() {
    let a = admin();
    let work = a.add("anthropic", "work", "sk-ant-REMOTE-CANNOT-READ", &[]);
    let b = TestHome::with_daemon();
    pair(&a, &b, "desktop");
    let phone = TestHome::with_daemon();
    pair_as(&a, &phone, "phone", "remote");
    eventually("the phone on b", || {
        let peers: Value = serde_json::from_str(&b.ok(&["--json", "peer", "list"])).unwrap();
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "phone" && p["role"] == "remote")
    });

    // No wrap for it in any epoch of its own document.
    let export = phone.export("phone.automerge");
    let me = phone_id(&phone);
    let state = handoff::doc::VaultDoc::load_trusted(&std::fs::read(export).unwrap(), &me)
        .unwrap()
        .state()
        .unwrap();
    assert!(!state.epochs.is_empty());
    for epoch in state.epochs.values() {
        assert!(
            !epoch
                .wraps
                .contains_key(&handoff_protocol::dek_wrap::Recipient::Device(me)),
            "the phone holds a wrap"
        );
    }
    let out = phone.run(&["token", "show", "anthropic/work", "--reveal"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!out.stdout.contains("REMOTE-CANNOT-READ"), "{out:?}");

    // Every token write is refused on the phone itself, with its own exit code.
    let before = tokens(&a);
    for args in [
        vec!["token", "rm", "anthropic/work"],
        vec!["token", "rename", "anthropic/work", "mine"],
        vec!["token", "default", "anthropic/work"],
    ] {
        let line = phone.run(&args).fails_with(10).to_string();
        assert!(line.contains("remote"), "{line}");
    }
    let out = phone.run_with_stdin(
        &["token", "add", "openai"],
        Some(
            b"sk-proj-FROM-PHONE
",
        ),
    );
    out.fails_with(10);

    // Its own name is its to change, and the change reaches the members.
    phone.ok(&["peer", "rename", "pocket"]);
    for member in [&a, &b] {
        eventually("the phone's new name", || {
            let peers: Value =
                serde_json::from_str(&member.ok(&["--json", "peer", "list"])).unwrap();
            peers
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "pocket")
        });
    }
    assert_eq!(tokens(&a), before, "the phone changed a token");
    assert_eq!(tokens(&b), before);
    assert_eq!(
        reveal(&b, "anthropic/work").as_deref(),
        Some("sk-ant-REMOTE-CANNOT-READ")
    );
    let listed = a.list_json();
    assert_eq!(listed[0]["id"], work.as_str());
    assert_eq!(listed[0]["updated_by"]["name"], "test-device");
}

fn phone_id(home: &TestHome) -> handoff_protocol::DeviceId {
    let status: Value = serde_json::from_str(&home.ok(&["--json", "status"])).unwrap();
    status["device"]["id"].as_str().unwrap().parse().unwrap()
}
