//! Any bytes given to the DEK-wrap decoder and to unwrapping: no panic; decoding round-trips.
#![no_main]

use handoff::vault::{Dek, VaultSecret};
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DekWrap, EpochId, VaultId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(wrap) = DekWrap::decode(data) {
        assert_eq!(wrap.encode(), data);
    }
    let secret = VaultSecret::from_bytes([7; 32]);
    let _ = Dek::unwrap(data, &secret, &VaultId::from_bytes([1; 16]), &EpochId::from_bytes([2; 16]), &Recipient::Recovery);
});
