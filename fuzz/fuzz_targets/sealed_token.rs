//! Any bytes given to the sealed-token decoder: no panic, and what decodes re-encodes exactly.
#![no_main]

use handoff_protocol::SealedToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sealed) = SealedToken::decode(data) {
        assert_eq!(sealed.encode(), data);
    }
});
