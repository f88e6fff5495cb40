//! Bytes from a peer's stream: cut into frames, each read as a sync or a pairing message. No
//! panic; what decodes re-encodes exactly.
#![no_main]

use handoff_protocol::frame;
use handoff_protocol::pairing::PairMessage;
use handoff_protocol::sync::SyncFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((payload, used)) = frame::decode(rest, 1 << 20) {
        if let Ok(sync) = SyncFrame::decode(payload) {
            assert_eq!(sync.encode(), payload);
        }
        if let Ok(message) = PairMessage::decode(payload) {
            assert_eq!(message.encode(), payload);
        }
        rest = &rest[used..];
    }
});
