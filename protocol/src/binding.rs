//! Context binding: the associated data of every AEAD call and the statements devices sign.
//!
//! Each is a domain string followed by length-prefixed fields (`u32` big-endian length, then
//! the bytes), so no two different field lists ever encode to the same bytes and a value from
//! one context can never be read as another's. The same domain strings are used as HKDF
//! `info`, never for two purposes.

use crate::dek_wrap::Recipient;
use crate::ids::{DeviceId, EpochId, TokenId, VaultId};

/// HKDF info deriving the token key from an epoch's DEK; also the token AD's domain.
pub const TOKEN_DOMAIN: &[u8] = b"handoff/v1/token";
/// HKDF info deriving a DEK-wrap key; also the wrap AD's domain.
pub const DEK_WRAP_DOMAIN: &[u8] = b"handoff/v1/dek-wrap";
/// Domain of the statement an admin signs for each DEK wrap.
pub const DEK_WRAP_SIG_DOMAIN: &[u8] = b"handoff/v1/dek-wrap-sig";
/// Domain of the statement by which the recovery key vouches for the vault's founder.
pub const GENESIS_DOMAIN: &[u8] = b"handoff/v1/genesis";
/// Domain of the statement that vouches for a member record.
pub const MEMBER_DOMAIN: &[u8] = b"handoff/v1/member";
/// Domain of the statement by which an admin (or the recovery key) removes a member.
pub const REMOVAL_DOMAIN: &[u8] = b"handoff/v1/member-removal";
/// Domain of the statement by which a member vouches for a removed member's changes it holds.
pub const VOUCH_DOMAIN: &[u8] = b"handoff/v1/member-vouch";
/// Domain of the AD that binds a passphrase-wrapped device key to its device.
pub const DEVICE_KEY_DOMAIN: &[u8] = b"handoff/v1/device-key";
/// Domain of the statement an admin signs to list a relay in the vault.
pub const RELAY_DOMAIN: &[u8] = b"handoff/v1/relay";
/// Domain of the statement a member signs for each version of a token record it writes.
pub const TOKEN_VERSION_DOMAIN: &[u8] = b"handoff/v1/token-version";
/// Domain of the statement a member signs to set (or clear) a service's default token.
pub const DEFAULT_DOMAIN: &[u8] = b"handoff/v1/default";
/// Domain of the statement a member signs for a version of a token's lease.
pub const LEASE_DOMAIN: &[u8] = b"handoff/v1/token-lease";
/// Domain of the statement a member signs for each audit entry it writes.
pub const AUDIT_DOMAIN: &[u8] = b"handoff/v1/audit";
/// Domain of the statement by which a device vouches for an Automerge change it wrote.
pub const CHANGE_DOMAIN: &[u8] = b"handoff/v1/change";
/// Domain of the SPAKE2 password made from a pairing code.
pub const PAIR_CODE_DOMAIN: &[u8] = b"handoff/v1/pair-code";
/// Domain of the pairing Noise handshake's prologue.
pub const PAIR_PROLOGUE_DOMAIN: &[u8] = b"handoff/v1/pair";
/// Domain of the short authentication string derived from a pairing handshake.
pub const PAIR_SAS_DOMAIN: &[u8] = b"handoff/v1/pair-sas";
/// HKDF info of the mDNS tag key (the tag is HMAC-SHA256 under it, never the raw secret).
pub const DISCOVERY_DOMAIN: &[u8] = b"handoff/v1/discovery";

/// Builds `domain || (len32 || field)*`.
#[derive(Debug)]
struct Transcript(Vec<u8>);

impl Transcript {
    fn new(domain: &[u8]) -> Self {
        Self(domain.to_vec())
    }

    fn field(mut self, bytes: &[u8]) -> Self {
        // Fields are ids, keys, hashes and service names: far below 4 GiB.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// AD of a sealed token: moving the ciphertext to another vault, token, epoch or service
/// makes it fail to open.
pub fn token_ad(vault: &VaultId, token: &TokenId, epoch: &EpochId, service: &str) -> Vec<u8> {
    Transcript::new(TOKEN_DOMAIN)
        .field(vault.as_bytes())
        .field(token.as_bytes())
        .field(epoch.as_bytes())
        .field(service.as_bytes())
        .finish()
}

/// AD of a DEK wrap: vault, epoch and recipient.
pub fn dek_wrap_ad(vault: &VaultId, epoch: &EpochId, recipient: &Recipient) -> Vec<u8> {
    Transcript::new(DEK_WRAP_DOMAIN)
        .field(vault.as_bytes())
        .field(epoch.as_bytes())
        .field(&recipient.binding_bytes())
        .finish()
}

/// The statement an admin signs to vouch for one wrap (`wrap_hash` = SHA-256 of the encoded
/// [`crate::DekWrap`]).
pub fn dek_wrap_statement(
    vault: &VaultId,
    epoch: &EpochId,
    generation: u64,
    recipient: &Recipient,
    wrap_hash: &[u8; 32],
) -> Vec<u8> {
    Transcript::new(DEK_WRAP_SIG_DOMAIN)
        .field(vault.as_bytes())
        .field(epoch.as_bytes())
        .field(&generation.to_be_bytes())
        .field(&recipient.binding_bytes())
        .field(wrap_hash)
        .finish()
}

/// The statement the recovery key signs at `init`: this vault was founded by this device with
/// this identity key. It roots the member chain in something only the recovery code (and the
/// founder at creation) could produce, so a document cannot name another founder.
pub fn genesis_statement(
    vault: &VaultId,
    founder: &DeviceId,
    founder_identity: &[u8; 32],
) -> Vec<u8> {
    Transcript::new(GENESIS_DOMAIN)
        .field(vault.as_bytes())
        .field(founder.as_bytes())
        .field(founder_identity)
        .finish()
}

/// The fields of a member record that its signer vouches for.
#[derive(Debug, Clone, Copy)]
pub struct MemberFields<'a> {
    pub device: &'a DeviceId,
    pub role: &'a str,
    pub identity_pub: &'a [u8; 32],
    pub mailbox_pub: &'a [u8; 32],
    pub vault_pub: &'a [u8; 32],
    pub actor: &'a [u8],
    pub added_by: &'a str,
    pub added_at: i64,
}

/// The statement an admin (or the recovery key, or the founder for itself) signs to admit a
/// member: binds its keys, role and Automerge actor to the vault.
pub fn member_statement(vault: &VaultId, m: &MemberFields<'_>) -> Vec<u8> {
    Transcript::new(MEMBER_DOMAIN)
        .field(vault.as_bytes())
        .field(m.device.as_bytes())
        .field(m.role.as_bytes())
        .field(m.identity_pub)
        .field(m.mailbox_pub)
        .field(m.vault_pub)
        .field(m.actor)
        .field(m.added_by.as_bytes())
        .field(&m.added_at.to_be_bytes())
        .finish()
}

/// The statement an admin (or the recovery key) signs to remove a member: from then on the
/// removed device's Automerge changes beyond `after_seq` are refused everywhere.
pub fn removal_statement(
    vault: &VaultId,
    device: &DeviceId,
    by: &str,
    at: i64,
    after_seq: u64,
) -> Vec<u8> {
    Transcript::new(REMOVAL_DOMAIN)
        .field(vault.as_bytes())
        .field(device.as_bytes())
        .field(by.as_bytes())
        .field(&at.to_be_bytes())
        .field(&after_seq.to_be_bytes())
        .finish()
}

/// The statement a member signs to vouch for the changes it holds from `device`, up to
/// `held_seq`: if `device` is removed, its changes up to there are accepted everywhere. A vouch
/// never removes anyone, whoever signs it.
pub fn vouch_statement(
    vault: &VaultId,
    device: &DeviceId,
    by: &str,
    at: i64,
    held_seq: u64,
) -> Vec<u8> {
    Transcript::new(VOUCH_DOMAIN)
        .field(vault.as_bytes())
        .field(device.as_bytes())
        .field(by.as_bytes())
        .field(&at.to_be_bytes())
        .field(&held_seq.to_be_bytes())
        .finish()
}

/// The statement an admin signs for a relay entry: every member will dial these addresses and
/// leave envelopes there, so only an admin may name them.
pub fn relay_statement(
    vault: &VaultId,
    relay_id: &str,
    addrs: &str,
    access_token: &[u8],
    added_by: &str,
    added_at: i64,
) -> Vec<u8> {
    Transcript::new(RELAY_DOMAIN)
        .field(vault.as_bytes())
        .field(relay_id.as_bytes())
        .field(addrs.as_bytes())
        .field(access_token)
        .field(added_by.as_bytes())
        .field(&added_at.to_be_bytes())
        .finish()
}

/// The fields of one version of a token record that its writer signs.
#[derive(Debug, Clone, Copy)]
pub struct TokenVersionFields<'a> {
    pub token: &'a TokenId,
    /// The record's version counter: one more than the highest version its writer had seen.
    pub version: u64,
    pub service: &'a str,
    pub label: &'a str,
    pub kind: &'a str,
    pub epoch: &'a EpochId,
    /// The encoded sealed token; empty for a deletion mark.
    pub ciphertext: &'a [u8],
    pub deleted: bool,
    pub created_at: i64,
    pub created_by: &'a str,
    pub updated_at: i64,
    /// The writer's device id, hex: whose identity key signs.
    pub writer: &'a str,
    /// An OAuth bundle's access-token expiry (unix seconds), 0 when unknown or not OAuth.
    pub expires_at: i64,
    /// When the bundle's refresh token was obtained (unix seconds), 0 when not OAuth.
    pub refreshed_at: i64,
}

/// The statement a member (or admin) signs for one version of a token record: every field,
/// bound to the vault and the record, so a signature cannot be moved to another record, field
/// or vault.
pub fn token_version_statement(vault: &VaultId, t: &TokenVersionFields<'_>) -> Vec<u8> {
    let mut transcript = Transcript::new(TOKEN_VERSION_DOMAIN)
        .field(vault.as_bytes())
        .field(t.token.as_bytes())
        .field(&t.version.to_be_bytes())
        .field(t.service.as_bytes())
        .field(t.label.as_bytes())
        .field(t.kind.as_bytes())
        .field(t.epoch.as_bytes())
        .field(t.ciphertext)
        .field(&[u8::from(t.deleted)])
        .field(&t.created_at.to_be_bytes())
        .field(t.created_by.as_bytes())
        .field(&t.updated_at.to_be_bytes())
        .field(t.writer.as_bytes());
    // Only an OAuth bundle's version has these two (a version without them reads as before).
    if t.expires_at != 0 || t.refreshed_at != 0 {
        transcript = transcript
            .field(&t.expires_at.to_be_bytes())
            .field(&t.refreshed_at.to_be_bytes());
    }
    transcript.finish()
}

/// The fields of one version of a token's lease (DESIGN §9): which device's session may use
/// a rotating OAuth token until when, under which fencing counter.
#[derive(Debug, Clone, Copy)]
pub struct LeaseFields<'a> {
    pub token: &'a TokenId,
    /// The lease record's version counter: one more than the highest its writer had seen.
    pub version: u64,
    /// The holder's device id, hex: the writer, whose identity key signs.
    pub holder: &'a str,
    /// The holder's session id.
    pub session: &'a str,
    /// Counts acquisitions: one more at each new holder or session, the same on renewal.
    pub fence: u64,
    /// The lease ends at this unix time; 0 is released.
    pub until: i64,
    pub at: i64,
}

/// The statement a member signs for a version of a token's lease.
pub fn lease_statement(vault: &VaultId, l: &LeaseFields<'_>) -> Vec<u8> {
    Transcript::new(LEASE_DOMAIN)
        .field(vault.as_bytes())
        .field(l.token.as_bytes())
        .field(&l.version.to_be_bytes())
        .field(l.holder.as_bytes())
        .field(l.session.as_bytes())
        .field(&l.fence.to_be_bytes())
        .field(&l.until.to_be_bytes())
        .field(&l.at.to_be_bytes())
        .finish()
}

/// The statement a member signs to make `token` (hex; empty to clear) the default of
/// `service`, as version `version` of that service's default.
pub fn default_statement(
    vault: &VaultId,
    service: &str,
    token: &str,
    version: u64,
    at: i64,
    writer: &str,
) -> Vec<u8> {
    Transcript::new(DEFAULT_DOMAIN)
        .field(vault.as_bytes())
        .field(service.as_bytes())
        .field(token.as_bytes())
        .field(&version.to_be_bytes())
        .field(&at.to_be_bytes())
        .field(writer.as_bytes())
        .finish()
}

/// The statement a device signs for an audit entry it writes (`device` is its own id, hex).
pub fn audit_statement(
    vault: &VaultId,
    at: i64,
    device: &str,
    action: &str,
    subject: &str,
) -> Vec<u8> {
    Transcript::new(AUDIT_DOMAIN)
        .field(vault.as_bytes())
        .field(&at.to_be_bytes())
        .field(device.as_bytes())
        .field(action.as_bytes())
        .field(subject.as_bytes())
        .finish()
}

/// The statement a device signs for each Automerge change it writes (`change_hash`, the
/// change's 32-byte hash): the change is its own, whatever actor id another device claims.
pub fn change_statement(vault: &VaultId, change_hash: &[u8; 32]) -> Vec<u8> {
    Transcript::new(CHANGE_DOMAIN)
        .field(vault.as_bytes())
        .field(change_hash)
        .finish()
}

/// The SPAKE2 password of a pairing code: `code` is its canonical text (`NN-word-word-word`
/// lowercased, or `NN-` and the 26 base32 letters of a QR code's secret).
pub fn pair_password(code: &str) -> Vec<u8> {
    Transcript::new(PAIR_CODE_DOMAIN)
        .field(code.as_bytes())
        .finish()
}

/// The prologue of the pairing Noise handshake: both libp2p PeerIds (the adder's first), so
/// the session is bound to the two connected devices and to nothing else.
pub fn pair_prologue(adder_peer: &[u8], joiner_peer: &[u8]) -> Vec<u8> {
    Transcript::new(PAIR_PROLOGUE_DOMAIN)
        .field(adder_peer)
        .field(joiner_peer)
        .finish()
}

/// What the short authentication string is a hash of: the pairing handshake's hash.
pub fn pair_sas_input(handshake_hash: &[u8]) -> Vec<u8> {
    Transcript::new(PAIR_SAS_DOMAIN)
        .field(handshake_hash)
        .finish()
}

/// The message whose HMAC under the discovery key is a vault's mDNS tag for one hour.
pub fn discovery_message(hour: u64) -> Vec<u8> {
    Transcript::new(DISCOVERY_DOMAIN)
        .field(&hour.to_be_bytes())
        .finish()
}

/// AD of a device's passphrase-wrapped vault key.
pub fn device_key_ad(device: &DeviceId) -> Vec<u8> {
    Transcript::new(DEVICE_KEY_DOMAIN)
        .field(device.as_bytes())
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: VaultId = VaultId::from_bytes([1; 16]);
    const T: TokenId = TokenId::from_bytes([2; 16]);
    const E: EpochId = EpochId::from_bytes([3; 16]);

    #[test]
    fn token_ad_vector() {
        let ad = token_ad(&V, &T, &E, "anthropic");
        let mut want = b"handoff/v1/token".to_vec();
        for field in [&[1u8; 16][..], &[2; 16], &[3; 16], b"anthropic"] {
            want.extend_from_slice(&(field.len() as u32).to_be_bytes());
            want.extend_from_slice(field);
        }
        assert_eq!(ad, want);
    }

    #[test]
    fn every_field_changes_the_binding() {
        let base = token_ad(&V, &T, &E, "openai");
        assert_ne!(
            base,
            token_ad(&VaultId::from_bytes([9; 16]), &T, &E, "openai")
        );
        assert_ne!(
            base,
            token_ad(&V, &TokenId::from_bytes([9; 16]), &E, "openai")
        );
        assert_ne!(
            base,
            token_ad(&V, &T, &EpochId::from_bytes([9; 16]), "openai")
        );
        assert_ne!(base, token_ad(&V, &T, &E, "openai-codex"));
        let device = Recipient::Device(DeviceId::from_bytes([4; 16]));
        assert_ne!(
            dek_wrap_ad(&V, &E, &device),
            dek_wrap_ad(&V, &E, &Recipient::Recovery)
        );
    }

    #[test]
    fn a_vouch_never_reads_as_a_removal() {
        let device = DeviceId::from_bytes([4; 16]);
        assert_ne!(
            vouch_statement(&V, &device, "ab", 7, 3),
            removal_statement(&V, &device, "ab", 7, 3)
        );
    }
}
