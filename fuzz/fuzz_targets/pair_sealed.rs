//! What a pairing peer sends inside the Noise session, and a pairing code as typed: no panic;
//! a sealed message that decodes re-encodes exactly.
#![no_main]

use handoff_protocol::pairing::Sealed;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sealed) = Sealed::decode(data) {
        assert_eq!(sealed.encode(), data);
    }
    let _ = Sealed::announced_len(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = handoff::net::PairCode::parse(text);
    }
});
