//! What a relay client or a relay sends, and an envelope as a recipient splits it: no panic;
//! what decodes re-encodes exactly.
#![no_main]

use handoff_protocol::envelope::{Inner, split};
use handoff_protocol::relay::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        assert_eq!(request.encode(), data);
    }
    if let Ok(response) = Response::decode(data) {
        assert_eq!(response.encode(), data);
    }
    let _ = split(data);
    if let Ok(inner) = Inner::decode(data) {
        assert_eq!(inner.encode(), data);
    }
});
