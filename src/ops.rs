//! Every vault operation a command can ask for, as one typed value, and the one place that
//! runs it on a device. The CLI runs an [`Op`] directly on the store when no daemon serves the
//! home, or sends it to the daemon, which runs it here too: both paths give the same
//! [`Outcome`], and the CLI renders that whichever ran it.
//!
//! Adding an operation: a variant of [`Op`] (with what it needs, in [`Op::needs_key`]), its arm
//! in [`apply`], and its render in the CLI. Whether it changed the document is not declared:
//! the daemon compares the document's heads before and after, and offers the change to the
//! mesh when they moved.

pub mod error;
pub mod views;

use std::collections::BTreeMap;

use handoff_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::device::{Device, DeviceError, Unlocked, expose};
use crate::doc::Service;
use crate::spawn::policy::Policy;
use crate::spawn::writeback::Ticket;
use crate::spawn::{Agent, Delivery, choose_token, delivery_for};
pub use error::{Exit, OpError};
use views::{
    AuditView, PeerView, RelayView, RemovedView, SpawnPolicyView, StatusView, TokenView,
    VersionView,
};

/// Secret bytes held by an operation or its outcome: zeroized when dropped, never in `Debug`.
pub type Secret = Zeroizing<Vec<u8>>;

/// One operation on the vault. `Debug` names the operation only: several carry secrets.
#[derive(Serialize, Deserialize)]
pub enum Op {
    Status,
    ListTokens,
    ShowToken {
        query: String,
    },
    AddToken {
        service: Service,
        label: String,
        #[serde(with = "secret_bytes")]
        secret: Secret,
        default: bool,
        replace: bool,
    },
    Reveal {
        query: String,
    },
    RemoveToken {
        query: String,
    },
    SetDefault {
        query: String,
    },
    RenameToken {
        query: String,
        label: String,
    },
    /// A token's versions: the valid ones its record holds now (several after concurrent
    /// writes), or with `history` every valid one it ever held; with `reveal`, each secret.
    TokenVersions {
        query: String,
        history: bool,
        reveal: bool,
    },
    /// Settles a conflicted token: keeps the version `keep` names as its next version.
    ResolveToken {
        query: String,
        keep: String,
    },
    Export,
    Import {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    ListPeers,
    RemovePeer {
        query: String,
    },
    /// This device's own name in the vault.
    RenameDevice {
        name: String,
    },
    AddRelay {
        addrs: Vec<crate::addr::Multiaddr>,
        #[serde(with = "secret_bytes::optional")]
        token: Option<Secret>,
    },
    ListRelays,
    RemoveRelay {
        query: String,
    },
    /// The audit, newest first: entries written by `device` (a name or id prefix), at or
    /// after `since` (Unix seconds).
    Audit {
        device: Option<String>,
        since: Option<i64>,
    },
    /// This device's spawn policy: which devices may ask it to start agents.
    SpawnPolicy,
    /// Sets `device`'s rule in this device's spawn policy, or drops it (`rule: None`).
    SetSpawnPolicy {
        device: String,
        rule: Option<crate::spawn::policy::Rule>,
    },
    /// The credential for a local spawn of `agent`, in session `session`; a rotating OAuth
    /// token comes with its lease (taken from another holder when `take`).
    Credential {
        agent: String,
        service: Option<Service>,
        profile: Option<String>,
        session: String,
        take: bool,
    },
}

/// What an operation gives back. `Debug` names the outcome only: two carry secrets.
#[derive(Serialize, Deserialize)]
pub enum Outcome {
    Status(StatusView),
    Tokens(Vec<TokenView>),
    Token(TokenView),
    /// A token and versions of it (secrets only when asked to reveal them).
    Versions {
        token: TokenView,
        versions: Vec<VersionView>,
    },
    Secret {
        token: TokenView,
        #[serde(with = "secret_bytes")]
        secret: Secret,
    },
    Exported(#[serde(with = "serde_bytes")] Vec<u8>),
    Imported(usize),
    Peers(Vec<PeerView>),
    Removed(RemovedView),
    Relay(RelayView),
    Relays(Vec<RelayView>),
    SpawnPolicy(SpawnPolicyView),
    Audit(Vec<AuditView>),
    Credential {
        delivery: Delivery,
        #[serde(with = "secret_bytes")]
        secret: Secret,
        /// For a rotating OAuth token: what its write-back needs (its lease is held).
        ticket: Option<Ticket>,
        /// What the person should know before the agent starts (one line each).
        warnings: Vec<String>,
    },
}

/// What the runner knows besides the device: the daemon's mesh, when a daemon runs it.
#[derive(Debug, Default)]
pub struct Around<'a> {
    /// Members connected now, with their address (`None`: no daemon, so nobody is online).
    pub online: Option<&'a BTreeMap<DeviceId, String>>,
}

/// Who may ask for an operation through an unlocked daemon (ARCHITECTURE.md, "Who the daemon
/// serves"). The socket admits only this user; an agent handoff started runs as this user too,
/// so the tiers above [`Tier::Open`] also refuse a client inside any agent's process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Reads nothing secret and changes nothing: any client of this user.
    Open,
    /// The person, from outside every agent tree: the unlocked key serves them (a secret read,
    /// a credential for a spawn, every token write).
    Person,
    /// The person, with the passphrase given again on every call even while unlocked: what
    /// hands the vault or its membership to someone else.
    Fresh,
}

impl Op {
    /// The operation's tier: the one place it is decided.
    pub fn tier(&self) -> Tier {
        match self {
            Op::Status
            | Op::ListTokens
            | Op::ShowToken { .. }
            | Op::ListPeers
            | Op::ListRelays
            | Op::Audit { .. }
            | Op::TokenVersions {
                reveal: false,
                history: false,
                ..
            }
            | Op::SpawnPolicy => Tier::Open,
            Op::AddToken { .. }
            | Op::Reveal { .. }
            | Op::RemoveToken { .. }
            | Op::SetDefault { .. }
            | Op::RenameToken { .. }
            // History decodes every change of the document: not for any client to loop on.
            | Op::TokenVersions { .. }
            | Op::ResolveToken { .. }
            | Op::RenameDevice { .. }
            | Op::Import { .. }
            | Op::Credential { .. } => Tier::Person,
            // A rule lets another device start agents here: as much as handing it the vault.
            Op::Export
            | Op::RemovePeer { .. }
            | Op::AddRelay { .. }
            | Op::RemoveRelay { .. }
            | Op::SetSpawnPolicy { .. } => Tier::Fresh,
        }
    }

    /// Whether the operation needs the unlocked vault key (the passphrase, or the daemon's
    /// unlock). Everything else reads or writes only what the document holds in the clear.
    pub fn needs_key(&self) -> bool {
        matches!(
            self,
            Op::AddToken { .. }
                | Op::Reveal { .. }
                | Op::TokenVersions { reveal: true, .. }
                | Op::RemovePeer { .. }
                | Op::Credential { .. }
                | Op::SetSpawnPolicy { .. }
        )
    }

    /// What can be refused before the key is asked for, so nobody types a passphrase for a
    /// token that does not exist, a label already taken, a device this one may not remove, or
    /// an agent that cannot take it.
    pub fn check(&self, device: &Device) -> Result<(), OpError> {
        match self {
            Op::Reveal { query } | Op::TokenVersions { query, .. } => {
                device.find_token(&*device.state()?, query)?;
            }
            Op::AddToken {
                service,
                label,
                replace: false,
                ..
            } => {
                crate::device::check_label(label)?;
                Device::check_label_free(&*device.state()?, *service, label)?;
            }
            Op::RemovePeer { query } => {
                device.removable(&*device.state()?, query)?;
            }
            Op::SetSpawnPolicy { device: query, .. } => {
                device.find_member(&*device.state()?, query)?;
            }
            Op::Credential {
                agent,
                service,
                profile,
                ..
            } => {
                credential_token(device, agent, *service, profile.as_deref())?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs `op` on `device`. `key` must be given when [`Op::needs_key`] says so. An operation that
/// fails leaves the document as it found it: what it wrote before failing is dropped.
pub fn apply(
    device: &mut Device,
    key: Option<&Unlocked>,
    op: Op,
    around: &Around<'_>,
) -> Result<Outcome, OpError> {
    let outcome = run(device, key, op, around);
    if outcome.is_err() {
        device.rollback();
    }
    outcome
}

fn run(
    device: &mut Device,
    key: Option<&Unlocked>,
    op: Op,
    around: &Around<'_>,
) -> Result<Outcome, OpError> {
    let given = key;
    let key = || key.ok_or_else(|| OpError::Locked("this operation needs the vault key".into()));
    Ok(match op {
        Op::Status => {
            let state = device.state()?;
            Outcome::Status(StatusView::of(device, &state))
        }
        Op::ListTokens => Outcome::Tokens(TokenView::all(&*device.state()?)),
        Op::ShowToken { query } => {
            let state = device.state()?;
            Outcome::Token(TokenView::of(&state, device.find_token(&state, &query)?))
        }
        Op::AddToken {
            service,
            label,
            secret,
            default,
            replace,
        } => {
            let id = device.add_token(key()?, service, &label, &secret, default, replace)?;
            let state = device.state()?;
            let token = state
                .tokens
                .get(&id)
                .ok_or_else(|| OpError::Internal("the new token vanished".into()))?;
            Outcome::Token(TokenView::of(&state, token))
        }
        Op::Reveal { query } => {
            let (token, secret) = device.reveal(key()?, &query)?;
            Outcome::Secret {
                token: TokenView::of(&*device.state()?, &token),
                secret: Zeroizing::new(expose(&secret).to_vec()),
            }
        }
        Op::RemoveToken { query } => {
            let token = device.remove_token(&query)?;
            Outcome::Token(TokenView::of(&*device.state()?, &token))
        }
        Op::SetDefault { query } => {
            let token = device.set_default(&query)?;
            Outcome::Token(TokenView::of(&*device.state()?, &token))
        }
        Op::RenameToken { query, label } => {
            let token = device.rename_token(&query, &label)?;
            Outcome::Token(TokenView::of(&*device.state()?, &token))
        }
        Op::TokenVersions {
            query,
            history,
            reveal,
        } => {
            let (token, versions) = if history {
                device.token_history(&query)?
            } else {
                device.token_versions(&query)?
            };
            let state = device.state()?;
            let mut views = Vec::with_capacity(versions.len());
            for (i, version) in versions.iter().enumerate() {
                let mut view = VersionView::of(&state, version, i + 1);
                if reveal && version.ciphertext.is_some() {
                    // One version this device cannot open (an epoch from before it joined, a
                    // ciphertext that does not open) says so; the others are still shown.
                    match device.open_version(key()?, version) {
                        Ok(secret) => view.secret = Some(Zeroizing::new(expose(&secret).to_vec())),
                        Err(e) => view.unopened = Some(e.to_string()),
                    }
                }
                views.push(view);
            }
            Outcome::Versions {
                token: TokenView::of(&state, &token),
                versions: views,
            }
        }
        Op::ResolveToken { query, keep } => {
            let before = device.state()?;
            let (token, kept) = device.resolve_token(&query, &keep)?;
            Outcome::Versions {
                token: TokenView::of(&*device.state()?, &token),
                versions: vec![VersionView::of(&before, &kept, 1)],
            }
        }
        Op::Export => Outcome::Exported(device.export()),
        Op::Import { data } => Outcome::Imported(device.import(&data)?),
        Op::ListPeers => Outcome::Peers(PeerView::all(device, &*device.state()?, around.online)?),
        Op::RenameDevice { name } => {
            device.rename_self(&name)?;
            Outcome::Peers(PeerView::all(device, &*device.state()?, around.online)?)
        }
        Op::RemovePeer { query } => {
            let removed = device.remove_member(key()?, &query)?;
            Outcome::Removed(RemovedView::of(&*device.state()?, &removed))
        }
        Op::AddRelay { addrs, token } => {
            let relay = device.add_relay(&addrs, token.as_deref().map(Vec::as_slice))?;
            Outcome::Relay(RelayView::of(&relay))
        }
        Op::ListRelays => Outcome::Relays(device.relays()?.iter().map(RelayView::of).collect()),
        Op::Audit {
            device: query,
            since,
        } => {
            let state = device.state()?;
            let writer = query
                .map(|q| device.find_member(&state, &q).map(|m| m.device.to_hex()))
                .transpose()?;
            Outcome::Audit(AuditView::newest_first(&state, writer.as_deref(), since))
        }
        Op::SpawnPolicy => {
            let (policy, checked) = Policy::load(device.home().root(), given)?;
            Outcome::SpawnPolicy(SpawnPolicyView::of(&*device.state()?, &policy, checked))
        }
        Op::SetSpawnPolicy {
            device: query,
            rule,
        } => {
            let key = key()?;
            let home = device.home().root().to_path_buf();
            let state = device.state()?;
            let member = device.find_member(&state, &query)?;
            if !member.is_active() {
                return Err(OpError::Usage(format!(
                    "{query} was removed from the vault"
                )));
            }
            let member = member.device;
            // A file someone else wrote is not built on: it starts again from nothing.
            let (mut policy, reset) = match Policy::load(&home, Some(key)) {
                Ok((policy, _)) => (policy, false),
                Err(crate::spawn::policy::PolicyError::Tampered(_)) => (Policy::default(), true),
                Err(e) => return Err(e.into()),
            };
            match rule {
                Some(rule) => policy.allow(member, rule)?,
                None => {
                    if !policy.deny(&member) && !reset {
                        return Err(OpError::Device(DeviceError::InvalidInput(format!(
                            "the spawn policy has no rule for {query}"
                        ))));
                    }
                }
            }
            policy.save(&home, key)?;
            let checked = crate::spawn::policy::Checked::Verified;
            let mut view = SpawnPolicyView::of(&state, &policy, checked);
            view.reset = reset;
            Outcome::SpawnPolicy(view)
        }
        Op::RemoveRelay { query } => Outcome::Relay(RelayView::of(&device.remove_relay(&query)?)),
        Op::Credential {
            agent,
            service,
            profile,
            session,
            take,
        } => {
            let key = key()?;
            // What earlier sessions refreshed (and the leases they gave back) first.
            device.take_write_backs(key);
            let (agent, token_id, delivery) =
                credential_token(device, &agent, service, profile.as_deref())?;
            let (token, secret) = device.reveal(key, &token_id)?;
            let facts = crate::oauth::facts_of(token.service, token.kind, expose(&secret));
            let mut warnings = Vec::new();
            let file = !matches!(delivery, Delivery::Env(_));
            let ticket = if facts.rotates() && file {
                let lease = device.acquire_lease(&token.id, &session, take)?;
                if let Some(why) = unchecked_lease(device, around)? {
                    warnings.push(why);
                }
                Some(Ticket {
                    token: token.id.to_hex(),
                    service: token.service,
                    session,
                    fence: lease.fence,
                    seal_to: key.public().to_vec(),
                    home: device.home().root().to_path_buf(),
                })
            } else {
                None
            };
            if let Some(exp) = facts.expires_at
                && exp <= crate::entropy::unix_now()
                && !facts.rotates()
            {
                warnings.push(format!(
                    "{}/{}: its access token expired at {} and it has no refresh token; the agent will not be logged in (add a fresh one with `handoff token add {} --replace`)",
                    token.service,
                    token.label,
                    crate::entropy::when(exp),
                    token.service
                ));
            }
            tracing::info!(
                agent = %agent.name,
                service = %service.map_or("default", |s| s.as_str()),
                leased = ticket.is_some(),
                "credential handed to a local spawn"
            );
            Outcome::Credential {
                delivery,
                secret: Zeroizing::new(expose(&secret).to_vec()),
                ticket,
                warnings,
            }
        }
    })
}

/// Why this spawn could not check that no other device uses the login it leased: no daemon
/// serves the mesh here, or no other member that could use it is connected.
fn unchecked_lease(device: &Device, around: &Around<'_>) -> Result<Option<String>, OpError> {
    let state = device.state()?;
    let me = device.device_id();
    let others = state
        .members
        .values()
        .any(|m| m.device != me && m.is_active() && m.role.writes_tokens());
    if !others {
        return Ok(None);
    }
    let seen = around.online.is_some_and(|online| !online.is_empty());
    Ok((!seen).then(|| {
        "no other device of this vault is connected: cannot check that none of them uses this login now (two users of one refresh token log each other out)".to_string()
    }))
}

/// Only an admin device can open a pairing offer.
pub fn require_adder(device: &Device) -> Result<(), OpError> {
    if device.is_admin() {
        Ok(())
    } else {
        Err(OpError::Usage(
            "only an admin device can add devices; run `handoff peer add` on an admin".into(),
        ))
    }
}

/// The agent a spawn names (from this home's config and PATH), the token it would get, and how.
fn credential_token(
    device: &Device,
    agent: &str,
    service: Option<Service>,
    profile: Option<&str>,
) -> Result<(Agent, String, Delivery), OpError> {
    let config = Config::load(device.home().root()).map_err(|e| OpError::Usage(e.to_string()))?;
    let agent = Agent::find(agent, &config)?;
    let state = device.state()?;
    let token = choose_token(&state, &agent, service, profile)?;
    let delivery = delivery_for(&agent, token)?;
    Ok((agent, token.id.to_hex(), delivery))
}

impl Op {
    /// The operation's name (what `Debug` shows).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Status => "Status",
            Op::ListTokens => "ListTokens",
            Op::ShowToken { .. } => "ShowToken",
            Op::AddToken { .. } => "AddToken",
            Op::Reveal { .. } => "Reveal",
            Op::RemoveToken { .. } => "RemoveToken",
            Op::SetDefault { .. } => "SetDefault",
            Op::RenameToken { .. } => "RenameToken",
            Op::TokenVersions { .. } => "TokenVersions",
            Op::ResolveToken { .. } => "ResolveToken",
            Op::Export => "Export",
            Op::Import { .. } => "Import",
            Op::ListPeers => "ListPeers",
            Op::RemovePeer { .. } => "RemovePeer",
            Op::RenameDevice { .. } => "RenameDevice",
            Op::AddRelay { .. } => "AddRelay",
            Op::ListRelays => "ListRelays",
            Op::RemoveRelay { .. } => "RemoveRelay",
            Op::Credential { .. } => "Credential",
            Op::SpawnPolicy => "SpawnPolicy",
            Op::Audit { .. } => "Audit",
            Op::SetSpawnPolicy { .. } => "SetSpawnPolicy",
        }
    }
}

impl Outcome {
    /// The outcome's name (what `Debug` shows).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Status(_) => "Status",
            Outcome::Tokens(_) => "Tokens",
            Outcome::Token(_) => "Token",
            Outcome::Versions { .. } => "Versions",
            Outcome::Secret { .. } => "Secret",
            Outcome::Exported(_) => "Exported",
            Outcome::Imported(_) => "Imported",
            Outcome::Peers(_) => "Peers",
            Outcome::Removed(_) => "Removed",
            Outcome::Relay(_) => "Relay",
            Outcome::Relays(_) => "Relays",
            Outcome::Credential { .. } => "Credential",
            Outcome::SpawnPolicy(_) => "SpawnPolicy",
            Outcome::Audit(_) => "Audit",
        }
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", self.name())
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", self.name())
    }
}

/// Serde for [`Secret`]: a CBOR byte string, read straight into zeroizing memory.
pub(crate) mod secret_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(secret: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(secret)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        Ok(Zeroizing::new(
            serde_bytes::ByteBuf::deserialize(d)?.into_vec(),
        ))
    }

    pub mod optional {
        use serde::{Deserialize, Deserializer, Serializer};
        use zeroize::Zeroizing;

        pub fn serialize<S: Serializer>(
            secret: &Option<Zeroizing<Vec<u8>>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match secret {
                Some(bytes) => s.serialize_some(serde_bytes::Bytes::new(bytes)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Zeroizing<Vec<u8>>>, D::Error> {
            let bytes = Option::<serde_bytes::ByteBuf>::deserialize(d)?;
            Ok(bytes.map(|b| Zeroizing::new(b.into_vec())))
        }
    }
}
