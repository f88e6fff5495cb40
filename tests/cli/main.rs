//! End-to-end tests of the `handoff` binary: real processes, real SQLite files in temp dirs,
//! the real Argon2 parameters. Each submodule is one user-visible behaviour.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod support;

mod damage;
mod durability;
mod export_recover;
mod hardening;
mod round_trip;
mod secrecy_on_disk;
mod spawn;
