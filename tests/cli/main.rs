//! End-to-end tests of the `handoff` binary: real processes, real SQLite files in temp dirs,
//! the real Argon2 parameters. Each submodule is one user-visible behaviour.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

/// Declares two tests running one body: on a home used directly, and on a home served by a
/// daemon, so every check holds through the control socket too.
#[macro_export]
macro_rules! both_modes {
    ($body:ident) => {
        mod $body {
            #[test]
            fn direct() {
                super::$body($crate::support::TestHome::new())
            }

            #[test]
            fn through_the_daemon() {
                super::$body($crate::support::TestHome::with_daemon())
            }
        }
    };
}

mod support;
#[allow(dead_code)] // the async half is for the in-process tests
#[path = "../common/wait.rs"]
mod wait;

mod cleanup;
mod containment;
mod contrib;
mod daemon;
mod damage;
mod demo;
mod durability;
mod export_recover;
mod hardening;
mod hints;
mod hostile;
mod lan;
mod migration;
mod oauth;
mod peers;
mod progress;
mod propagation;
mod reference;
mod refused_first;
mod relay_proc;
mod relays;
mod remote_spawn;
mod rename;
mod resolve;
mod round_trip;
mod secrecy_on_disk;
mod snapshots;
mod spawn;
mod spawn_policy;
