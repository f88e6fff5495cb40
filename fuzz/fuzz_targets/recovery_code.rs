//! Any text typed as a recovery code: no panic; what parses formats back to a parsable code.
#![no_main]

use handoff::vault::RecoveryCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(code) = RecoveryCode::parse(text)
    {
        assert!(RecoveryCode::parse(&code.reveal()).is_ok());
    }
});
