//! Bytes a local client sends the daemon's control socket: a frame payload decoded straight
//! into a request, as the daemon does. No panic, no unbounded allocation.
#![no_main]

use handoff::control::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = control::decode::<Request>(data);
});
