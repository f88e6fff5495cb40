//! The typed records of the vault document (protocol/README.md) and the closed sets their fields
//! take.
//!
//! Records are plain data read out of, and written into, the Automerge document by
//! [`super::VaultDoc`]; nothing here touches the document itself.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DeviceId, EpochId, TokenId, VaultId};

use crate::vault::SignedWrap;

/// The document schema version this build writes. Version 2 signs every token version,
/// default and audit entry; a version-1 document (unsigned) is still read, its tokens shown as
/// unverified until an unlocked admin re-signs them (`Device::upkeep`), which writes 2.
pub const SCHEMA_VERSION: u64 = 2;

/// The oldest schema version this build reads.
pub const SCHEMA_OLDEST: u64 = 1;

/// Limits checked on every document read: a hostile peer or file cannot make us hold more.
pub mod limits {
    pub const NAME_MAX: usize = 128;
    pub const LABEL_MAX: usize = 64;
    /// A session id in a lease.
    pub const SESSION_MAX: usize = 64;
    /// Longest a lease may run from when it was written (a holder renews it long before).
    pub const LEASE_SPAN_MAX: i64 = 3600;
    pub const MEMBERS_MAX: usize = 256;
    pub const EPOCHS_MAX: usize = 4096;
    pub const TOKENS_MAX: usize = 10_000;
    pub const AUDIT_MAX: usize = 512;
    /// Services with a default (five today; room for newer builds' services).
    pub const DEFAULTS_MAX: usize = 64;
    pub const RELAYS_MAX: usize = 16;
    pub const RELAY_ADDRS_MAX: usize = 2048;
    pub const RELAY_TOKEN_MAX: usize = handoff_protocol::relay::MAX_TOKEN;
    /// Largest document accepted from a file or a peer, in bytes.
    pub const DOC_BYTES_MAX: usize = 64 * 1024 * 1024;
}

/// A vendor service whose credentials handoff stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Anthropic,
    ClaudeSubscription,
    Openai,
    OpenaiCodex,
    Gemini,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Anthropic,
        Service::ClaudeSubscription,
        Service::Openai,
        Service::OpenaiCodex,
        Service::Gemini,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Anthropic => "anthropic",
            Service::ClaudeSubscription => "claude-subscription",
            Service::Openai => "openai",
            Service::OpenaiCodex => "openai-codex",
            Service::Gemini => "gemini",
        }
    }

    /// The kind of credential a secret for this service is, judged by its content.
    pub fn kind_of(self, secret: &[u8]) -> TokenKind {
        match self {
            Service::Anthropic | Service::Openai => TokenKind::ApiKey,
            Service::OpenaiCodex => TokenKind::OauthJson,
            Service::ClaudeSubscription if crate::oauth::is_json(secret) => TokenKind::OauthJson,
            Service::ClaudeSubscription => TokenKind::SetupToken,
            Service::Gemini if crate::oauth::is_json(secret) => TokenKind::OauthJson,
            Service::Gemini => TokenKind::ApiKey,
        }
    }

    pub fn names() -> String {
        Self::ALL.map(Service::as_str).join(", ")
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name outside one of the closed sets (service, role, token kind), with the names that are
/// in it: the one line every caller shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{name}'; {known}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    known: String,
}

impl UnknownName {
    fn new(what: &'static str, name: &str, known: String) -> Self {
        UnknownName {
            what,
            name: name.to_string(),
            known,
        }
    }
}

impl FromStr for Service {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName::new("service", s, format!("known: {}", Self::names())))
    }
}

/// Members of a closed set cross the control socket by their names.
macro_rules! serde_by_name {
    ($($set:ty),*) => {$(
        impl serde::Serialize for $set {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $set {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_by_name!(Service, Role);

/// What form a stored credential takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    ApiKey,
    SetupToken,
    OauthJson,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::ApiKey => "api-key",
            TokenKind::SetupToken => "setup-token",
            TokenKind::OauthJson => "oauth-json",
        }
    }
}

impl TokenKind {
    pub const ALL: [TokenKind; 3] = [
        TokenKind::ApiKey,
        TokenKind::SetupToken,
        TokenKind::OauthJson,
    ];
}

impl FromStr for TokenKind {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let known = Self::ALL.map(TokenKind::as_str).join(", ");
                UnknownName::new("token kind", s, format!("known: {known}"))
            })
    }
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads tokens and adds or removes devices.
    Admin,
    /// Reads and writes tokens.
    Member,
    /// Asks for sessions; never receives a DEK.
    Remote,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Remote => "remote",
        }
    }
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Member, Role::Remote];
}

impl FromStr for Role {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName::new("role", s, "use admin, member or remote".into()))
    }
}

/// `vault`: the vault's own record. `Debug` leaves out the discovery secret.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultInfo {
    pub id: VaultId,
    pub name: String,
    pub created_at: i64,
    /// The device that created the vault; its self-signed member record roots the chain of
    /// member signatures.
    pub founder: DeviceId,
    pub discovery_secret: [u8; 32],
    /// X25519 key every epoch's DEK is also wrapped to.
    pub recovery_pub: [u8; 32],
    /// Ed25519 key that verifies wraps signed by the recovery member.
    pub recovery_sign_pub: [u8; 32],
    /// The recovery key's signature over the genesis statement (vault, founder, founder key).
    pub genesis_sig: Vec<u8>,
}

impl std::fmt::Debug for VaultInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("founder", &self.founder)
            .finish_non_exhaustive()
    }
}

/// `members.<device id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub device: DeviceId,
    pub name: String,
    pub role: Role,
    pub identity_pub: [u8; 32],
    pub mailbox_pub: [u8; 32],
    pub vault_pub: [u8; 32],
    /// The Automerge actor id this device writes with.
    pub actor: Vec<u8>,
    pub added_by: String,
    pub added_at: i64,
    /// Signature over [`handoff_protocol::binding::member_statement`] by `signer`.
    pub sig: Vec<u8>,
    /// Device id (hex) of the admin who admitted this member, `recovery`, or the founder itself.
    pub signer: String,
    /// Signed removals of this member (`removals.<by>`), only the ones that verify, and only
    /// once one of them is a removal by an admin or the recovery key (until then the member is
    /// active and vouches for it do nothing). Several admins may remove the same device
    /// concurrently; each keeps its own entry.
    pub removals: Vec<Removal>,
}

/// One signer's entry under a member's removals: a removal, or a vouch for the changes the
/// signer holds from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Device id (hex) of the signer, or `recovery`.
    pub by: String,
    pub at: i64,
    /// The last change sequence number of the removed device's actor that is accepted.
    pub after_seq: u64,
    /// Signature over [`handoff_protocol::binding::removal_statement`] by `by`, or over
    /// [`handoff_protocol::binding::vouch_statement`] for a vouch.
    pub sig: Vec<u8>,
    /// Only raises the bound: `by` holds the member's changes up to `after_seq` (taken before
    /// it knew of a removal). Never removes anyone.
    pub vouch: bool,
}

impl Member {
    /// An unsigned record for the device holding `keys` (sign it before writing it).
    pub fn new(
        keys: &crate::vault::DeviceKeys,
        vault_pub: [u8; 32],
        name: &str,
        role: Role,
        added_by: &str,
        added_at: i64,
    ) -> Self {
        let keys = [keys.identity_public(), keys.mailbox_public(), vault_pub];
        Self::from_public_keys(keys, name, role, added_by, added_at)
    }

    /// An unsigned record for the device whose `[identity, mailbox, vault]` public keys these
    /// are (a device being paired, which holds the secrets itself).
    pub fn from_public_keys(
        [identity_pub, mailbox_pub, vault_pub]: [[u8; 32]; 3],
        name: &str,
        role: Role,
        added_by: &str,
        added_at: i64,
    ) -> Self {
        let device = crate::vault::device_id_for(&identity_pub);
        Self {
            device,
            name: name.to_string(),
            role,
            identity_pub,
            mailbox_pub,
            vault_pub,
            actor: crate::doc::actor_for(&device).to_bytes().to_vec(),
            added_by: added_by.to_string(),
            added_at,
            sig: Vec::new(),
            signer: String::new(),
            removals: Vec::new(),
        }
    }

    /// The fields the signer vouches for.
    pub fn signed_fields(&self) -> handoff_protocol::binding::MemberFields<'_> {
        handoff_protocol::binding::MemberFields {
            device: &self.device,
            role: self.role.as_str(),
            identity_pub: &self.identity_pub,
            mailbox_pub: &self.mailbox_pub,
            vault_pub: &self.vault_pub,
            actor: &self.actor,
            added_by: &self.added_by,
            added_at: self.added_at,
        }
    }

    pub fn is_active(&self) -> bool {
        self.removals.is_empty()
    }

    /// The last accepted change sequence number of a removed member's actor: the largest
    /// bound among its removals, so every reader accepts the same changes whichever removal
    /// it saw first. `None` while the member is active.
    pub fn write_bound(&self) -> Option<u64> {
        self.removals.iter().map(|r| r.after_seq).max()
    }

    /// Active members other than `remote` devices receive DEKs.
    pub fn receives_dek(&self) -> bool {
        self.is_active() && self.role != Role::Remote
    }
}

/// `epochs.<epoch id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub id: EpochId,
    pub generation: u64,
    pub created_by: String,
    pub created_at: i64,
    /// Wraps signed by an admin (or the recovery key) of this vault.
    pub wraps: BTreeMap<Recipient, SignedWrap>,
    /// Recipients whose wrap is present but not validly signed: unusable, and worth reporting.
    pub untrusted: Vec<Recipient>,
    /// Holds a trusted wrap signed by an active admin or the recovery key: only such an epoch
    /// can be current.
    pub current_eligible: bool,
}

/// `tokens.<token id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub service: Service,
    pub label: String,
    pub kind: TokenKind,
    pub epoch: EpochId,
    /// Encoded `SealedToken`; `None` once deleted.
    pub ciphertext: Option<Vec<u8>>,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    /// The device that wrote this version (hex device id); it signed it when `verified`.
    pub updated_by: String,
    pub deleted: bool,
    /// The record's version counter: the highest among its valid versions (the next write is
    /// one more).
    pub version: u64,
    /// Signed by `updated_by`, a member whose role may write tokens. `false` only for a record
    /// written before signatures (schema 1) that no admin has re-signed yet.
    pub verified: bool,
    /// Several valid versions stand (concurrent writes), or the document's own winner was not
    /// validly signed and an older valid version is shown: the user should pick.
    pub conflicted: bool,
    /// An OAuth bundle's access-token expiry (unix seconds), as read when it was stored.
    pub expires_at: Option<i64>,
    /// When an OAuth bundle's refresh token was obtained (unix seconds).
    pub refreshed_at: Option<i64>,
    /// The newest valid lease of a rotating OAuth token (live or not).
    pub lease: Option<Lease>,
}

/// Who may use a rotating OAuth token now (DESIGN §9): one session of one device at a time,
/// until `until`. Each version is signed by its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's device id, hex (the writer).
    pub holder: String,
    pub session: String,
    /// One more at each new holder or session; kept on renewal. A write-back under an older
    /// fence is refused.
    pub fence: u64,
    /// Unix time the lease ends; 0 once released.
    pub until: i64,
    pub at: i64,
    /// The lease record's highest valid version.
    pub version: u64,
}

impl Lease {
    /// Whether it still holds at `now`.
    pub fn live(&self, now: i64) -> bool {
        self.until > now
    }

    /// The fields its holder signs, for `token`.
    pub fn signed_fields<'a>(
        &'a self,
        token: &'a TokenId,
    ) -> handoff_protocol::binding::LeaseFields<'a> {
        handoff_protocol::binding::LeaseFields {
            token,
            version: self.version,
            holder: &self.holder,
            session: &self.session,
            fence: self.fence,
            until: self.until,
            at: self.at,
        }
    }
}

impl Token {
    /// The fields its writer signs, as the version `self.version` names.
    pub fn signed_fields(&self) -> handoff_protocol::binding::TokenVersionFields<'_> {
        handoff_protocol::binding::TokenVersionFields {
            token: &self.id,
            version: self.version,
            service: self.service.as_str(),
            label: &self.label,
            kind: self.kind.as_str(),
            epoch: &self.epoch,
            ciphertext: self.ciphertext.as_deref().unwrap_or_default(),
            deleted: self.deleted,
            created_at: self.created_at,
            created_by: &self.created_by,
            updated_at: self.updated_at,
            writer: &self.updated_by,
            expires_at: self.expires_at.unwrap_or(0),
            refreshed_at: self.refreshed_at.unwrap_or(0),
        }
    }
}

/// What may write records other than members, epochs and relays: tokens and defaults need an
/// admin or a member; an audit entry any member that signs it as itself.
impl Role {
    pub fn writes_tokens(self) -> bool {
        matches!(self, Role::Admin | Role::Member)
    }
}

/// One version of `defaults.<service>`: which token is the service's default (`None`: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultChoice {
    pub service: Service,
    pub token: Option<TokenId>,
    pub version: u64,
    pub at: i64,
    /// The writer's device id, hex.
    pub writer: String,
}

impl DefaultChoice {
    /// The statement its writer signs.
    pub fn statement(&self, vault: &VaultId) -> Vec<u8> {
        let token = self.token.map(|t| t.to_hex()).unwrap_or_default();
        handoff_protocol::binding::default_statement(
            vault,
            self.service.as_str(),
            &token,
            self.version,
            self.at,
            &self.writer,
        )
    }
}

/// `relays.<relay id>`: a relay every member uses, listed by an admin.
#[derive(Clone, PartialEq, Eq)]
pub struct Relay {
    /// 16 random bytes, hex.
    pub id: String,
    /// Multiaddrs, space-separated (best with `/p2p/<relay PeerId>`).
    pub addrs: String,
    /// The relay's shared access token, if it has one. Stored in the document so every member
    /// (and every copy of the document) has it: it lets one use the relay's storage, never read
    /// what is there.
    pub access_token: Option<Vec<u8>>,
    pub added_by: String,
    pub added_at: i64,
    /// Signature over [`handoff_protocol::binding::relay_statement`] by `added_by`, an admin.
    pub sig: Vec<u8>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("addrs", &self.addrs)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .field("added_by", &self.added_by)
            .finish_non_exhaustive()
    }
}

/// One `audit` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuditEntry {
    pub at: i64,
    pub device: String,
    pub action: String,
    pub subject: String,
    /// Signed by `device`, a member. `false` for an entry written before signatures.
    pub verified: bool,
}

impl AuditEntry {
    /// The statement its writer signs.
    pub fn statement(&self, vault: &VaultId) -> Vec<u8> {
        handoff_protocol::binding::audit_statement(
            vault,
            self.at,
            &self.device,
            &self.action,
            &self.subject,
        )
    }
}

/// What a device pins locally when it joins a vault and checks every document against: no
/// change in the document can move these, so no injected change can make a member or a wrap
/// trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchors {
    pub vault: VaultId,
    pub founder: DeviceId,
    pub recovery_pub: [u8; 32],
    pub recovery_sign_pub: [u8; 32],
}

impl TrustAnchors {
    /// The anchors a document states about itself (trusted when the document is, e.g. the
    /// export a user recovers from).
    pub fn of(info: &VaultInfo) -> Self {
        Self {
            vault: info.id,
            founder: info.founder,
            recovery_pub: info.recovery_pub,
            recovery_sign_pub: info.recovery_sign_pub,
        }
    }
}

/// Everything in the document, typed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultState {
    pub info: VaultInfo,
    /// Members whose record is signed along a chain from the trust anchors.
    pub members: BTreeMap<DeviceId, Member>,
    /// Member records present but not validly signed: ignored, and worth reporting.
    pub unverified: Vec<DeviceId>,
    pub epochs: BTreeMap<EpochId, Epoch>,
    pub tokens: BTreeMap<TokenId, Token>,
    /// Token records none of whose versions is validly signed (and that are not from before
    /// signatures): ignored, and worth reporting.
    pub unverified_tokens: Vec<TokenId>,
    pub defaults: BTreeMap<Service, TokenId>,
    /// Each service's default record's version counter (the next write is one more), by
    /// service name, including defaults that point nowhere now.
    pub default_versions: BTreeMap<String, u64>,
    /// The schema version the document says it is.
    pub schema: u64,
    /// Relays listed by a verified admin (others are ignored).
    pub relays: BTreeMap<String, Relay>,
    pub audit: Vec<AuditEntry>,
}

impl VaultState {
    /// The current epoch: highest (generation, epoch id) among epochs that hold at least one
    /// wrap signed by a verified admin (or the recovery key), the same on every device. An
    /// epoch nobody trusted wrapped is ignored, so an injected epoch cannot take over.
    pub fn current_epoch(&self) -> Option<&Epoch> {
        self.epochs
            .values()
            .filter(|e| e.current_eligible)
            .max_by_key(|e| (e.generation, e.id))
    }

    /// Whether `epoch` is wrapped to a device that must not hold its key (removed, or a
    /// `remote` device): nothing may be sealed under it until an admin rotates past it.
    pub fn reaches_outsider(&self, epoch: &Epoch) -> bool {
        epoch.wraps.keys().any(|r| match r {
            Recipient::Recovery => false,
            Recipient::Device(d) => !self.members.get(d).is_some_and(Member::receives_dek),
        })
    }

    /// Live (not deleted) tokens.
    pub fn live_tokens(&self) -> impl Iterator<Item = &Token> {
        self.tokens.values().filter(|t| !t.deleted)
    }

    /// Whether `token` is its service's default.
    pub fn is_default(&self, token: &Token) -> bool {
        self.defaults.get(&token.service) == Some(&token.id)
    }
}
