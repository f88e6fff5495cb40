//! Where the vault's randomness and its clock come from: every key, id, nonce and record time
//! the vault makes is drawn through [`fill`] and [`unix_now`], and nothing else in the crate reads
//! the OS generator or the wall clock for document state.
//!
//! Normally that is the OS random generator and the system clock. Built with the `seeded`
//! feature (tests only: the crate turns it on for itself as a dev-dependency, so no release
//! build carries it), a thread may install a generator and a clock derived from one seed with
//! [`seed_thread`]: a simulation that runs many devices on that thread then makes the same
//! keys, ids, nonces, Automerge actors and change timestamps on every run, and a failing seed
//! replays bit for bit. Other threads, and any thread that never calls it, keep the OS
//! sources.

/// Fills `out` with random bytes: the OS generator, or this thread's seeded one.
pub fn fill(out: &mut [u8]) -> Result<(), getrandom::Error> {
    #[cfg(feature = "seeded")]
    if seeded::fill(out) {
        return Ok(());
    }
    getrandom::fill(out)
}

/// The current time in Unix seconds: the system clock, or this thread's simulated one.
pub fn unix_now() -> i64 {
    #[cfg(feature = "seeded")]
    if let Some(t) = seeded::now() {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(feature = "seeded")]
pub use seeded::{SeedGuard, advance_clock, seed_thread};

#[cfg(feature = "seeded")]
mod seeded {
    //! A SHA-256 counter-mode stream keyed by the seed, and a clock that starts at a fixed
    //! instant and moves only when the simulation says so.

    use sha2::{Digest, Sha256};
    use std::cell::RefCell;

    /// 2026-01-01T00:00:00Z: a fixed, plausible start for simulated clocks.
    const EPOCH: i64 = 1_767_225_600;

    struct Source {
        seed: [u8; 32],
        counter: u64,
        block: [u8; 32],
        used: usize,
        clock: i64,
    }

    thread_local! {
        static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
    }

    /// Restores the OS sources on this thread when dropped.
    #[derive(Debug)]
    #[must_use = "the seeded sources last only while the guard lives"]
    pub struct SeedGuard(());

    impl Drop for SeedGuard {
        fn drop(&mut self) {
            SOURCE.with(|s| *s.borrow_mut() = None);
        }
    }

    /// From now until the guard drops, this thread's randomness and clock come from `seed`.
    pub fn seed_thread(seed: u64) -> SeedGuard {
        let seed: [u8; 32] = Sha256::new()
            .chain_update(b"handoff/test/seeded-entropy")
            .chain_update(seed.to_be_bytes())
            .finalize()
            .into();
        SOURCE.with(|s| {
            *s.borrow_mut() = Some(Source {
                seed,
                counter: 0,
                block: [0; 32],
                used: 32,
                clock: EPOCH,
            });
        });
        SeedGuard(())
    }

    /// Moves this thread's simulated clock forward by `seconds` (no effect without a seed).
    pub fn advance_clock(seconds: i64) {
        SOURCE.with(|s| {
            if let Some(source) = s.borrow_mut().as_mut() {
                source.clock = source.clock.saturating_add(seconds.max(0));
            }
        });
    }

    pub(super) fn fill(out: &mut [u8]) -> bool {
        SOURCE.with(|s| {
            let mut slot = s.borrow_mut();
            let Some(source) = slot.as_mut() else {
                return false;
            };
            for byte in out.iter_mut() {
                if source.used == source.block.len() {
                    source.block = Sha256::new()
                        .chain_update(source.seed)
                        .chain_update(source.counter.to_be_bytes())
                        .finalize()
                        .into();
                    source.counter += 1;
                    source.used = 0;
                }
                *byte = source.block[source.used];
                source.used += 1;
            }
            true
        })
    }

    pub(super) fn now() -> Option<i64> {
        SOURCE.with(|s| s.borrow().as_ref().map(|source| source.clock))
    }
}

#[cfg(all(test, feature = "seeded"))]
mod tests {
    use super::*;

    #[test]
    fn a_time_without_an_rfc3339_form_shows_as_a_question_mark() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(when(-1), "?");
        assert_eq!(when(253_402_300_800), "?");
        assert_eq!(when(i64::MAX), "?");
    }

    #[test]
    fn one_seed_gives_one_stream_and_the_guard_restores_the_os() {
        let draw = |seed| {
            let _guard = seed_thread(seed);
            let mut a = [0u8; 45];
            fill(&mut a).unwrap();
            (a, unix_now())
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7).0, draw(8).0);
        let mut os = [0u8; 45];
        fill(&mut os).unwrap();
        assert_ne!(os, draw(7).0);
    }
}

/// Formats Unix seconds for people (RFC 3339, UTC); `?` for a time before 1970.
pub fn when(at: i64) -> String {
    u64::try_from(at)
        .ok()
        .and_then(|s| {
            use std::fmt::Write;
            let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s))?;
            // Past the year 9999 there is no RFC 3339 form (a time from another device).
            let mut text = String::new();
            write!(text, "{}", humantime::format_rfc3339_seconds(t)).ok()?;
            Some(text)
        })
        .unwrap_or_else(|| "?".into())
}
