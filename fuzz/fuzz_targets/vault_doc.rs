//! Any bytes offered as a vault document (an import, a recovery export): loading and validating
//! never panics.
#![no_main]

use handoff::doc::VaultDoc;
use handoff_protocol::DeviceId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = VaultDoc::load_trusted(data, &DeviceId::from_bytes([3; 16])) {
        let _ = doc.state();
    }
});
