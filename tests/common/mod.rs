//! Devices on real stores for the in-process membership and sync tests.

#![allow(dead_code)] // each test crate uses its own part of these helpers

pub mod mesh;
pub mod wait;

use handoff::device::{Device, NewDevice, PendingJoin, Unlocked};
use handoff::doc::Role;
use handoff::home::Home;
use handoff::vault::KdfParams;

/// Real Argon2id, at a cost that keeps many devices per test affordable.
pub const LIGHT_KDF: KdfParams = KdfParams {
    m_kib: 1024,
    t: 1,
    p: 1,
};
pub const PASSPHRASE: &[u8] = b"in-process test passphrase";

/// What `init`, `recover` or a join is told about a new device named `name`.
pub fn new_device(name: &str) -> NewDevice<'_> {
    NewDevice {
        name,
        passphrase: PASSPHRASE,
        kdf: LIGHT_KDF,
    }
}

/// A new vault founded on `home` by a device named `name`, unlocked.
pub fn founder(home: Home, name: &str) -> (Device, Unlocked) {
    let (device, _code) = Device::init(home, &new_device(name), "test vault").unwrap();
    let key = device.unlock(PASSPHRASE).unwrap();
    (device, key)
}

/// Pairs a new device on `home` through `admin` as the pairing protocol does: the newcomer's
/// keys, the admin's admission, the admin's document and anchors handed over. Unlocked.
pub fn join(
    home: Home,
    name: &str,
    admin: &mut Device,
    admin_key: &Unlocked,
    role: Role,
) -> (Device, Unlocked) {
    let pending = PendingJoin::prepare(home, &new_device(name)).unwrap();
    admin.admit(admin_key, &pending.joiner(role)).unwrap();
    let device = pending
        .finish(&admin.export(), &admin.anchors().clone())
        .unwrap();
    let key = device.unlock(PASSPHRASE).unwrap();
    (device, key)
}
