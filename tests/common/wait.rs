//! Waiting for what no event announces (a connection the other side refused, a process that
//! synced), under one deadline shared by every test crate: a bounded poll, never a fixed sleep.

use std::time::{Duration, Instant};

/// Longest any one wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// Waits until `check` holds, looking again every few milliseconds, inside an async test
/// (the runtime keeps driving the nodes between looks).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same for a test that drives processes, not tasks: the thread sleeps between looks.
pub fn eventually_blocking(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
