//! Write-back judged on a real device, with stashes left the way a supervisor (or an agent
//! forging one) leaves them: only the newest of a session counts, a lease that was released
//! takes nothing more, nothing larger than a login bundle or unchanged in what matters
//! becomes a version, and a session's write-backs are spaced out.

#![allow(clippy::unwrap_used)] // a panic is the failure report

mod common;

use handoff::device::oauth::WriteBack;
use handoff::device::{Device, Unlocked};
use handoff::doc::Service;
use handoff::home::Home;
use handoff::spawn::writeback::{self, Stash, Ticket};
use handoff_protocol::TokenId;
use zeroize::Zeroizing;

fn codex(refresh: &str, pad: usize) -> String {
    format!(
        r#"{{"tokens":{{"access_token":"ACCESS-{refresh}","refresh_token":"{refresh}","account_id":"acct-1"}},"last_refresh":"2026-11-30T10:00:00Z","pad":"{}"}}"#,
        "p".repeat(pad)
    )
}

struct Rig {
    _tmp: tempfile::TempDir,
    device: Device,
    key: Unlocked,
    token: TokenId,
}

fn rig() -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let (mut device, key) = common::founder(Home::at(tmp.path().join("home")), "laptop");
    let token = device
        .add_token(
            &key,
            Service::OpenaiCodex,
            "work",
            codex("rt-first-0a1b", 0).as_bytes(),
            true,
            false,
        )
        .unwrap();
    Rig {
        _tmp: tmp,
        device,
        key,
        token,
    }
}

impl Rig {
    fn ticket(&self, session: &str, fence: u64) -> Ticket {
        Ticket {
            token: self.token.to_hex(),
            service: Service::OpenaiCodex,
            session: session.into(),
            fence,
            seal_to: self.key.public().to_vec(),
            home: self.device.home().root().to_path_buf(),
        }
    }

    fn leave(&self, session: &str, fence: u64, content: &str, last: bool) {
        let stash = Stash {
            token: self.token.to_hex(),
            session: session.into(),
            fence,
            content: Some(Zeroizing::new(content.as_bytes().to_vec())),
            last,
        };
        writeback::leave(&self.ticket(session, fence), &stash);
        // Stash names carry the time in nanoseconds: keep two stashes apart in order.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }

    fn secret(&self) -> String {
        let (_, secret) = self.device.reveal(&self.key, &self.token.to_hex()).unwrap();
        String::from_utf8(handoff::device::expose(&secret).to_vec()).unwrap()
    }

    fn waiting(&self) -> usize {
        writeback::waiting(&self.device.home().root().join(writeback::DIR)).len()
    }
}

#[test]
fn only_the_newest_stash_of_a_session_counts_and_a_released_lease_takes_nothing() {
    let mut r = rig();
    let lease = r.device.acquire_lease(&r.token, "s-one", false).unwrap();
    r.leave("s-one", lease.fence, &codex("rt-older-5c6d", 0), false);
    r.leave("s-one", lease.fence, &codex("rt-newest-7e8f", 0), true);
    let key = r.key.duplicate();
    let done = r.device.take_write_backs(&key);
    assert_eq!(
        done,
        vec![WriteBack::Unchanged, WriteBack::Written(r.token)]
    );
    assert!(r.secret().contains("rt-newest-7e8f"));
    assert_eq!(r.waiting(), 0);

    // The last stash released the lease: a stash forged for that session afterwards, with its
    // session id and fence (both readable in the document), changes nothing.
    r.leave("s-one", lease.fence, &codex("rt-forged-9a0b", 0), true);
    let done = r.device.take_write_backs(&key);
    assert!(
        matches!(done.as_slice(), [WriteBack::Refused(_)]),
        "{done:?}"
    );
    assert!(r.secret().contains("rt-newest-7e8f"));
}

#[test]
fn oversized_or_unchanged_bundles_make_no_version_and_write_backs_are_spaced_out() {
    let mut r = rig();
    let key = r.key.duplicate();
    let lease = r.device.acquire_lease(&r.token, "s-two", false).unwrap();
    // Larger than any login bundle.
    r.leave(
        "s-two",
        lease.fence,
        &codex("rt-huge-1c2d", 20 * 1024),
        true,
    );
    let done = r.device.take_write_backs(&key);
    assert!(
        matches!(done.as_slice(), [WriteBack::Refused(_)]),
        "{done:?}"
    );

    let lease = r.device.acquire_lease(&r.token, "s-three", false).unwrap();
    // The same refresh token and expiry, other bytes: nothing later sessions need changed.
    r.leave("s-three", lease.fence, &codex("rt-first-0a1b", 3), true);
    assert_eq!(r.device.take_write_backs(&key), vec![WriteBack::Unchanged]);

    let lease = r.device.acquire_lease(&r.token, "s-four", false).unwrap();
    // A change while the session runs is taken at once; the next, a moment after that
    // write-back, waits (the stash stays) rather than becoming a version at once.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    r.leave("s-four", lease.fence, &codex("rt-running-3e4f", 0), false);
    assert_eq!(
        r.device.take_write_backs(&key),
        vec![WriteBack::Written(r.token)]
    );
    r.leave("s-four", lease.fence, &codex("rt-again-7c8d", 0), false);
    assert_eq!(r.device.take_write_backs(&key), vec![WriteBack::Waiting]);
    assert_eq!(r.waiting(), 1);
    assert!(r.secret().contains("rt-running-3e4f"));
    // The session's end is judged at once, and the waiting stash is superseded by it.
    r.leave("s-four", lease.fence, &codex("rt-ended-5a6b", 0), true);
    assert_eq!(
        r.device.take_write_backs(&key),
        vec![WriteBack::Unchanged, WriteBack::Written(r.token)]
    );
    assert!(r.secret().contains("rt-ended-5a6b"));
    assert_eq!(r.waiting(), 0);
}
