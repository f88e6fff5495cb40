//! What commands show, built from the device and its state: the same views whether a command
//! ran directly or through the daemon (they cross the control socket as they are). None holds
//! a secret.

use serde::{Deserialize, Serialize};

use crate::device::{Device, DeviceError, PeerSeen, Removed};
use crate::doc::{Relay, Token, VaultState};
use crate::net::{PairEvent, PairFailure};
use crate::ops::error::pair_exit;
use crate::spawn::policy::one_line;

/// The name of the member whose device id (hex) is `device`, if it is one.
fn member_name(state: &VaultState, device: &str) -> Option<String> {
    device
        .parse()
        .ok()
        .and_then(|d| state.members.get(&d))
        .map(|m| m.name.clone())
}

/// A token as commands show it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub service: String,
    pub label: String,
    pub kind: String,
    pub default: bool,
    pub conflict: bool,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
    /// The name of the device that wrote the version shown, if it is a member.
    pub updated_by_name: Option<String>,
    /// The version shown is signed by `updated_by`, which may write tokens; `false` for a
    /// record from before signatures that no admin has re-signed.
    pub verified: bool,
    /// An OAuth bundle's access-token expiry (unix seconds).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When an OAuth bundle's refresh token was obtained (unix seconds); `None`: it has none.
    #[serde(default)]
    pub refreshed_at: Option<i64>,
    /// Its lease, while one is live.
    #[serde(default)]
    pub lease: Option<LeaseView>,
}

/// A live lease on a rotating OAuth token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseView {
    pub holder: String,
    /// The holder's device name, if it is a member.
    pub holder_name: Option<String>,
    pub session: String,
    pub until: i64,
}

impl TokenView {
    pub fn of(state: &VaultState, t: &Token) -> Self {
        Self {
            id: t.id.to_hex(),
            service: t.service.as_str().into(),
            label: t.label.clone(),
            kind: t.kind.as_str().into(),
            default: state.is_default(t),
            conflict: t.conflicted,
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            updated_at: t.updated_at,
            updated_by: t.updated_by.clone(),
            updated_by_name: member_name(state, &t.updated_by),
            verified: t.verified,
            expires_at: t.expires_at,
            refreshed_at: t.refreshed_at,
            lease: t
                .lease
                .as_ref()
                .filter(|l| l.live(crate::entropy::unix_now()))
                .map(|l| LeaseView {
                    holder: l.holder.clone(),
                    holder_name: member_name(state, &l.holder),
                    session: l.session.clone(),
                    until: l.until,
                }),
        }
    }

    /// Every live token, sorted by service then label.
    pub fn all(state: &VaultState) -> Vec<Self> {
        let mut tokens: Vec<&Token> = state.live_tokens().collect();
        tokens.sort_by(|a, b| (a.service, &a.label).cmp(&(b.service, &b.label)));
        tokens.into_iter().map(|t| Self::of(state, t)).collect()
    }
}

/// One version of a token, as `token resolve` and `token history` list it.
#[derive(Clone, Serialize, Deserialize)]
pub struct VersionView {
    /// Its place in the listing (1 first).
    pub number: usize,
    /// The code of what its writer signed, the same on every device: what `--keep` names.
    pub code: String,
    /// The record's version counter when it was written.
    pub version: u64,
    pub service: String,
    pub label: String,
    pub kind: String,
    pub deleted: bool,
    pub written_at: i64,
    pub written_by: String,
    /// The writer's device name, if it is a member.
    pub written_by_name: Option<String>,
    /// Its secret, only when asked to reveal it.
    #[serde(default, with = "crate::ops::secret_bytes::optional")]
    pub secret: Option<crate::ops::Secret>,
    /// Why its secret could not be revealed, when it was asked for.
    #[serde(default)]
    pub unopened: Option<String>,
}

impl VersionView {
    pub fn of(state: &VaultState, t: &Token, number: usize) -> Self {
        Self {
            number,
            code: crate::device::version_code(&state.info.id, t),
            version: t.version,
            service: t.service.as_str().into(),
            label: t.label.clone(),
            kind: t.kind.as_str().into(),
            deleted: t.deleted,
            written_at: t.updated_at,
            written_by: t.updated_by.clone(),
            written_by_name: member_name(state, &t.updated_by),
            secret: None,
            unopened: None,
        }
    }
}

/// Names the version, never its secret.
impl std::fmt::Debug for VersionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionView")
            .field("code", &self.code)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A member as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub device_id: String,
    pub name: String,
    pub role: String,
    pub active: bool,
}

/// A member this device cannot converge with, as `status` and `peer list` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutOfSyncView {
    pub device_id: String,
    pub name: String,
    /// Unix seconds since when.
    pub since: i64,
    pub why: String,
}

impl OutOfSyncView {
    /// Every member this device is recorded out of sync with.
    pub fn all(seen: &[PeerSeen], state: &VaultState) -> Vec<Self> {
        seen.iter()
            .filter_map(|p| {
                let (since, why) = p.out_of_sync.clone()?;
                let member = state.members.get(&p.device).filter(|m| m.is_active())?;
                Some(Self {
                    device_id: p.device.to_hex(),
                    name: member.name.clone(),
                    since,
                    why,
                })
            })
            .collect()
    }

    /// The line a person reads.
    pub fn line(&self, when: impl Fn(i64) -> String) -> String {
        format!(
            "out of sync with {} since {}, because {}",
            self.name,
            when(self.since),
            self.why
        )
    }
}

/// A member as `peer list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub device_id: String,
    pub name: String,
    pub role: String,
    pub active: bool,
    /// This device.
    pub this_device: bool,
    /// Connected to the daemon now (`None` when no daemon runs).
    pub online: Option<bool>,
    /// Unix seconds of the last sync with it.
    pub last_seen: Option<i64>,
    /// Where it is (connected) or was last reachable.
    pub address: Option<String>,
    /// Since when, and why, this device cannot converge with it.
    pub out_of_sync: Option<OutOfSyncView>,
}

impl PeerView {
    /// Every member, this device first, then by name.
    pub fn all(
        device: &Device,
        state: &VaultState,
        online: Option<&std::collections::BTreeMap<handoff_protocol::DeviceId, String>>,
    ) -> Result<Vec<Self>, DeviceError> {
        let seen = device.peers_seen()?;
        let me = device.device_id();
        let mut out: Vec<Self> = state
            .members
            .values()
            .map(|m| {
                let record = seen.iter().find(|p| p.device == m.device);
                let live = online.and_then(|o| o.get(&m.device));
                Self {
                    device_id: m.device.to_hex(),
                    name: m.name.clone(),
                    role: m.role.as_str().into(),
                    active: m.is_active(),
                    this_device: m.device == me,
                    online: (m.device != me)
                        .then(|| online.map(|_| live.is_some()))
                        .flatten(),
                    last_seen: record.map(|r| r.seen_at).filter(|s| *s > 0),
                    address: live
                        .cloned()
                        .or_else(|| record.and_then(|r| r.addr.clone())),
                    out_of_sync: record.and_then(|r| {
                        let (since, why) = r.out_of_sync.clone()?;
                        Some(OutOfSyncView {
                            device_id: m.device.to_hex(),
                            name: m.name.clone(),
                            since,
                            why,
                        })
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| (!a.this_device, &a.name).cmp(&(!b.this_device, &b.name)));
        Ok(out)
    }
}

/// A relay as `relay list` shows it (never its access token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayView {
    pub id: String,
    pub addrs: Vec<String>,
    pub access_token: bool,
    pub added_by: String,
    pub added_at: i64,
}

impl RelayView {
    pub fn of(r: &Relay) -> Self {
        Self {
            id: r.id.clone(),
            addrs: crate::addr::from_text(&r.addrs)
                .iter()
                .map(ToString::to_string)
                .collect(),
            access_token: r.access_token.is_some(),
            added_by: r.added_by.clone(),
            added_at: r.added_at,
        }
    }
}

/// One audit entry as `handoff audit` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditView {
    pub at: i64,
    /// The member that wrote (and signed) it.
    pub device_id: String,
    /// That member's name now, if it is one.
    pub device: Option<String>,
    pub action: String,
    pub subject: String,
    /// What the subject names, when it is a token or member this document knows
    /// (`anthropic/work`, a device's name).
    pub about: Option<String>,
    /// Signed by the member it names (`false` only for entries written before signatures).
    pub verified: bool,
}

impl AuditView {
    /// The audit, newest first: written by `writer` (a device id, hex) if given, at or after
    /// `since` if given.
    pub fn newest_first(state: &VaultState, writer: Option<&str>, since: Option<i64>) -> Vec<Self> {
        let name = |id: &str| {
            state
                .members
                .values()
                .find(|m| m.device.to_hex() == id)
                .map(|m| m.name.clone())
        };
        let about = |subject: &str| {
            let token = state
                .tokens
                .values()
                .find(|t| t.id.to_hex() == subject)
                .map(|t| format!("{}/{}", t.service, t.label));
            token.or_else(|| name(subject))
        };
        let mut entries: Vec<Self> = state
            .audit
            .iter()
            .filter(|e| writer.is_none_or(|w| e.device == w))
            .filter(|e| since.is_none_or(|s| e.at >= s))
            // Every text is another member's words: one line, nothing a terminal acts on.
            .map(|e| Self {
                at: e.at,
                device_id: one_line(&e.device, 64),
                device: name(&e.device).map(|n| one_line(&n, 256)),
                action: one_line(&e.action, 256),
                subject: one_line(&e.subject, 1024),
                about: about(&e.subject).map(|a| one_line(&a, 512)),
                verified: e.verified,
            })
            .collect();
        // The list is in writing order; a stable sort keeps that order within a second.
        entries.reverse();
        entries.sort_by_key(|e| std::cmp::Reverse(e.at));
        entries
    }
}

/// This device's spawn policy as `spawn-policy list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnPolicyView {
    /// Whether the file verified under the vault key (`false`: the vault is locked, so it
    /// was not checked; one that fails to verify is an error, never a listing).
    pub verified: bool,
    /// The file found did not verify (someone wrote it without the passphrase), so this
    /// change started the policy again from nothing.
    pub reset: bool,
    pub rules: Vec<SpawnRuleView>,
}

/// One device's rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnRuleView {
    pub device_id: String,
    /// Its name in the vault, if it is still a member.
    pub name: Option<String>,
    pub agents: Vec<String>,
    pub roots: Vec<String>,
    pub profiles: Vec<String>,
    pub args: bool,
}

impl SpawnPolicyView {
    pub fn of(
        state: &VaultState,
        policy: &crate::spawn::policy::Policy,
        checked: crate::spawn::policy::Checked,
    ) -> Self {
        let rules = policy
            .rules
            .iter()
            .map(|(device, rule)| SpawnRuleView {
                device_id: device.clone(),
                name: state
                    .members
                    .values()
                    .find(|m| m.device.to_hex() == *device && m.is_active())
                    .map(|m| m.name.clone()),
                agents: rule.agents.clone(),
                roots: rule.roots.iter().map(|r| r.display().to_string()).collect(),
                profiles: rule.profiles.clone(),
                args: rule.args,
            })
            .collect();
        Self {
            verified: checked == crate::spawn::policy::Checked::Verified,
            reset: false,
            rules,
        }
    }
}

/// What `peer remove` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedView {
    pub device_id: String,
    pub name: String,
    /// Tokens the removed device could read: rotate them at the vendor.
    pub exposed: Vec<TokenView>,
    pub epoch_generation: u64,
}

impl RemovedView {
    pub fn of(state: &VaultState, removed: &Removed) -> Self {
        Self {
            device_id: removed.member.device.to_hex(),
            name: removed.member.name.clone(),
            exposed: removed
                .exposed
                .iter()
                .map(|t| TokenView::of(state, t))
                .collect(),
            epoch_generation: state.epochs.get(&removed.epoch).map_or(0, |e| e.generation),
        }
    }
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub vault_id: String,
    pub vault_name: String,
    pub vault_created_at: i64,
    pub device_id: String,
    pub device_name: String,
    pub role: String,
    pub identity_pub: String,
    /// The daemon's pid, when one serves this home.
    pub daemon_pid: Option<u32>,
    /// Unix time the daemon's unlock lasts until; `None` when locked.
    pub unlocked_until: Option<i64>,
    pub tokens: usize,
    pub epoch_generation: u64,
    pub members: Vec<MemberView>,
    /// This device's libp2p PeerId.
    pub peer_id: String,
    /// The mesh's listen addresses (empty when no daemon runs).
    pub listen: Vec<String>,
    /// Members connected now (0 when no daemon runs).
    pub online: usize,
    /// A pairing offer waits for its joiner.
    pub offer_open: bool,
    /// Members this device cannot converge with.
    pub out_of_sync: Vec<OutOfSyncView>,
    /// What the document holds, in short (see [`Device::document_version`]): equal on two
    /// devices exactly when they hold the same document.
    pub document: String,
    /// The daemon's sync traffic since it started (`None` when no daemon runs).
    pub sync: Option<SyncView>,
}

/// Sync frames a daemon sent and received since it started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SyncView {
    pub frames_sent: u64,
    pub frames_received: u64,
}

impl StatusView {
    pub fn of(device: &mut Device, state: &VaultState) -> Self {
        let me = device.device_id();
        Self {
            vault_id: state.info.id.to_hex(),
            vault_name: state.info.name.clone(),
            vault_created_at: state.info.created_at,
            device_id: me.to_hex(),
            device_name: device.device_name().into(),
            role: state
                .members
                .get(&me)
                .map_or("unknown", |m| m.role.as_str())
                .into(),
            identity_pub: hex::encode(device.identity_public()),
            peer_id: crate::net::peer_id_for(&device.identity_public())
                .map(|p| p.to_string())
                .unwrap_or_default(),
            listen: Vec::new(),
            online: 0,
            offer_open: false,
            out_of_sync: device
                .peers_seen()
                .map(|seen| OutOfSyncView::all(&seen, state))
                .unwrap_or_default(),
            document: device.document_version(),
            sync: None,
            daemon_pid: None,
            unlocked_until: None,
            tokens: state.live_tokens().count(),
            epoch_generation: state.current_epoch().map_or(0, |e| e.generation),
            members: state
                .members
                .values()
                .map(|m| MemberView {
                    device_id: m.device.to_hex(),
                    name: m.name.clone(),
                    role: m.role.as_str().into(),
                    active: m.is_active(),
                })
                .collect(),
        }
    }
}

/// An open pairing offer, as `peer add` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferView {
    pub code: String,
    /// The `handoff://pair?...` link (with `--qr`).
    pub link: Option<String>,
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub expires_at: i64,
}

impl OfferView {
    /// What `peer add` shows of `ticket`, an offer `mesh` opened (with the link for a QR code
    /// when `qr`).
    pub fn of(ticket: &crate::net::PairTicket, mesh: &crate::net::Mesh, qr: bool) -> OfferView {
        let view = mesh.view();
        let link = qr.then(|| ticket.code.link(&mesh.peer_id(), &view.listen).to_string());
        OfferView {
            code: ticket.code.text().to_string(),
            link,
            peer_id: view.peer_id,
            addrs: view.listen.iter().map(ToString::to_string).collect(),
            expires_at: ticket.expires_at,
        }
    }
}

/// One step of a pairing, as `peer add` follows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PairStep {
    /// Compare these words with the other screen.
    Sas {
        sas: String,
    },
    /// The last code was tried and is void; the offer waits under this fresh one.
    Renewed {
        code: String,
        link: Option<String>,
        message: String,
    },
    Paired {
        device_id: String,
        name: String,
        role: String,
    },
    Failed {
        exit: u8,
        message: String,
    },
}

impl From<PairEvent> for PairStep {
    fn from(event: PairEvent) -> Self {
        match event {
            PairEvent::Sas { sas } => PairStep::Sas { sas },
            PairEvent::Renewed { code, link, why } => PairStep::Renewed {
                code: code.text().to_string(),
                link,
                message: match why {
                    PairFailure::WrongCode => {
                        "someone tried a wrong code; that code is void".to_string()
                    }
                    other => format!("a pairing attempt broke off ({other}); that code is void"),
                },
            },
            PairEvent::Paired { device, name, role } => PairStep::Paired {
                device_id: device.to_hex(),
                name,
                role: role.as_str().into(),
            },
            PairEvent::Failed(f) => PairStep::Failed {
                exit: pair_exit(&f) as u8,
                message: f.to_string(),
            },
        }
    }
}
