//! This device's view of its vault: the store, the document and the keys, and the operations
//! the CLI and the daemon run on them. Membership lives in `members`, sync sessions with
//! peers in `peers`, envelopes for and from relays in `relaying`.
//!
//! A [`Device`] owns its home for as long as it lives (the one-owner lock), loads the document
//! from the store, applies an operation as one document change, and persists that change
//! before returning, so whatever a caller reports as done is on disk. Operations that read a
//! token or seal one need an [`Unlocked`] vault key, made from the passphrase.

mod conflicts;
pub use conflicts::version_code;
mod members;
pub mod oauth;
mod peers;
mod relaying;
mod tokens;
mod writes;

pub use members::{Joiner, PendingJoin, Removed, Upkeep};
pub use peers::{PeerSeen, SyncRefusal};
pub use relaying::{Outgoing, Taken};

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use handoff_protocol::binding::genesis_statement;
use handoff_protocol::dek_wrap::Recipient;
use handoff_protocol::{DeviceId, EpochId, VaultId};
use secrecy::ExposeSecret;

use crate::doc::schema::{Epoch, Member, Role, Service, VaultInfo, VaultState, limits};
use crate::doc::{DocError, VaultDoc};
use crate::entropy::unix_now;
use crate::home::{Home, HomeError, OwnerLock};
use crate::store::{DeviceRecord, Store, StoreError};
use crate::vault::epoch::wrap_statement;
use crate::vault::{
    Dek, DeviceKeys, KdfParams, RecoveryCode, RecoveryMember, SecretBytes, SignedWrap, VaultError,
    VaultSecret, WrappedVaultKey, random_array,
};

/// How long a command waits for another process that owns the home.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How many incoming messages are judged on forks after the document had to be loaded again
/// (see [`Device::reload_if_lost`]).
const FORKS_AFTER_LOSS: u32 = 4096;

/// Errors of device operations; each maps to one exit code in the CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0} already holds a vault; use another --home or remove it first")]
    AlreadyInitialized(PathBuf),
    #[error("no token matches '{0}' (see `handoff token list`)")]
    TokenNotFound(String),
    #[error("'{query}' matches several tokens ({}); give more of the id", matches.join(", "))]
    AmbiguousToken { query: String, matches: Vec<String> },
    #[error(
        "{service}/{label} already exists; pass --replace to change its secret, or pick another --label"
    )]
    DuplicateLabel { service: Service, label: String },
    #[error("{service}/{label} already exists; pick another label")]
    LabelTaken { service: Service, label: String },
    #[error("this device holds no key for epoch {0}; another admin must grant it access")]
    NoAccess(EpochId),
    /// A `remote` device never holds a key to the tokens.
    #[error(
        "this is a remote device: it holds no key, so it cannot read or use a token here; ask a member to start the agent instead (`handoff spawn AGENT --on DEVICE`)"
    )]
    RemoteHoldsNoKey,
    #[error(
        "the vault key is one a removed device may hold; an admin must rotate it first (its next unlock does)"
    )]
    KeyNeedsRotation,
    #[error("{0}")]
    InvalidInput(String),
    /// This device's role does not allow the write (every other member would refuse it).
    #[error("this device is a {} device: it cannot {what}; do it on an admin or member device", role.as_str())]
    RoleForbids { role: Role, what: &'static str },
    /// A rotating OAuth token another session holds (DESIGN §9).
    #[error(
        "{token} is in use by {holder} until {}; wait for its session to end, or pass --take to take it over (that session's later refreshes are then dropped)",
        crate::entropy::when(*until)
    )]
    Leased {
        token: String,
        holder: String,
        until: i64,
    },
    #[error("the device record and the vault document disagree: {0}")]
    Inconsistent(&'static str),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The device's vault key, unwrapped by the passphrase, and the epoch keys it unwrapped since;
/// all zeroized when dropped (locking drops them together).
#[derive(Debug)]
pub struct Unlocked(VaultSecret, DekCache);

/// Epoch keys unwrapped with an [`Unlocked`] key, by epoch and the wrap they came from: an
/// X25519 agreement per write (and per change taken, for upkeep) otherwise.
#[derive(Debug, Default)]
struct DekCache(std::sync::Mutex<HashMap<(EpochId, Vec<u8>), Dek>>);

/// Past this many epoch keys the cache starts over (a vault rotates a few times a year).
const DEKS_CACHED: usize = 64;

impl Unlocked {
    fn new(key: VaultSecret) -> Self {
        Unlocked(key, DekCache::default())
    }

    /// The epoch key `wrap` holds for `epoch`, unwrapped by `unwrap` the first time only.
    fn dek(
        &self,
        epoch: &EpochId,
        wrap: &[u8],
        unwrap: impl FnOnce(&VaultSecret) -> Result<Dek, VaultError>,
    ) -> Result<Dek, VaultError> {
        let mut cache = self
            .1
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (*epoch, wrap.to_vec());
        if let Some(dek) = cache.get(&key) {
            return Ok(dek.duplicate());
        }
        let dek = unwrap(&self.0)?;
        if cache.len() >= DEKS_CACHED {
            cache.clear();
        }
        cache.insert(key, dek.duplicate());
        Ok(dek)
    }

    /// The vault public key this key opens for (what a write-back's stash is sealed to).
    pub fn public(&self) -> [u8; 32] {
        self.0.public()
    }

    /// A second handle on the same key (for work that outlives the caller's hold on it, such
    /// as an open pairing offer); zeroized when dropped like the first.
    pub fn duplicate(&self) -> Unlocked {
        Unlocked::new(VaultSecret::from_bytes(*self.0.to_bytes()))
    }

    /// A key for one purpose (`domain`), derived from the vault key with HKDF-SHA256: only a
    /// holder of the passphrase (or an unlocked daemon) can make it.
    pub fn derive(&self, domain: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        // 32 bytes is well within HKDF-SHA256's output limit.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0.to_bytes()[..])
            .expand(domain, &mut out[..]);
        out
    }

    #[cfg(test)]
    pub(crate) fn for_tests(bytes: [u8; 32]) -> Unlocked {
        Unlocked::new(VaultSecret::from_bytes(bytes))
    }
}

/// What `init` and `recover` need to know besides the home.
#[derive(Debug)]
pub struct NewDevice<'a> {
    pub name: &'a str,
    pub passphrase: &'a [u8],
    pub kdf: KdfParams,
}

/// An opened device: owns its home until dropped.
#[derive(Debug)]
pub struct Device {
    home: Home,
    _lock: OwnerLock,
    store: Store,
    doc: VaultDoc,
    record: DeviceRecord,
    keys: DeviceKeys,
    /// Per-peer sync state while a peer is connected (the network's task for that peer, or
    /// a test, carries the bytes; the persisted part lives in the store).
    syncing: BTreeMap<DeviceId, peers::PeerSync>,
    /// Openings of per-peer sync so far: each gets a token, so a late close of an older one
    /// cannot end a newer one. (The mesh numbers its own tasks apart from these.)
    openings: u64,
}

fn check_name(name: &str, what: &str) -> Result<(), DeviceError> {
    if name.is_empty() || name.len() > limits::NAME_MAX || name.chars().any(char::is_control) {
        return Err(DeviceError::InvalidInput(format!(
            "{what} must be 1 to {} printable characters",
            limits::NAME_MAX
        )));
    }
    Ok(())
}

/// A label: 1–64 of letters, digits and `-_.@` (no `/`, which separates SERVICE/LABEL).
pub fn check_label(label: &str) -> Result<(), DeviceError> {
    let ok = !label.is_empty()
        && label.len() <= limits::LABEL_MAX
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(DeviceError::InvalidInput(format!(
            "label '{label}' must be 1 to {} characters of letters, digits and - _ . @",
            limits::LABEL_MAX
        )))
    }
}

impl Device {
    /// Creates a new vault with this device as its founding admin. Returns the device and the
    /// recovery code, which exists nowhere else: show it to the user once.
    pub fn init(
        home: Home,
        new: &NewDevice<'_>,
        vault_name: &str,
    ) -> Result<(Self, RecoveryCode), DeviceError> {
        check_name(vault_name, "the vault name")?;
        let (lock, keys, secret) = claim_empty(&home, new)?;
        let me = keys.device_id();
        let vault_id = VaultId::from_bytes(random_array()?);
        let code = RecoveryCode::generate()?;
        let recovery = RecoveryMember::derive(&code, &vault_id)?;
        let now = unix_now();
        let info = VaultInfo {
            id: vault_id,
            name: vault_name.to_string(),
            created_at: now,
            founder: me,
            discovery_secret: random_array()?,
            recovery_pub: recovery.public(),
            recovery_sign_pub: recovery.signing_public(),
            genesis_sig: recovery
                .sign(&genesis_statement(&vault_id, &me, &keys.identity_public()))
                .to_vec(),
        };
        let mut founder = Member::new(
            &keys,
            secret.public(),
            new.name,
            Role::Admin,
            &me.to_hex(),
            now,
        );
        sign_member(&mut founder, &vault_id, &me.to_hex(), |m| keys.sign(m));
        let dek = Dek::generate()?;
        let mut epoch = Epoch {
            id: EpochId::from_bytes(random_array()?),
            generation: 1,
            created_by: me.to_hex(),
            created_at: now,
            wraps: BTreeMap::new(),
            untrusted: Vec::new(),
            current_eligible: true,
        };
        for (recipient, public) in [
            (Recipient::Device(me), secret.public()),
            (Recipient::Recovery, recovery.public()),
        ] {
            let wrap = signed_wrap(
                &dek,
                &info.id,
                &epoch,
                recipient,
                &public,
                &me.to_hex(),
                |m| keys.sign(m),
            )?;
            epoch.wraps.insert(recipient, wrap);
        }
        let mut doc = VaultDoc::create(&info, &founder, &epoch, |m| keys.sign(m))?;
        doc.audit(&me, "vault.create", &info.name, |m| keys.sign(m))?;
        doc.commit("audit", |m| keys.sign(m));
        let device = Self::write_new(home, lock, doc, keys, &secret, new)?;
        Ok((device, code))
    }

    /// Regains a vault on an empty home from a copy of its document and the recovery code:
    /// this device joins as an admin and is granted every epoch the recovery key can open.
    pub fn recover(
        home: Home,
        new: &NewDevice<'_>,
        export: &[u8],
        code: &RecoveryCode,
    ) -> Result<Self, DeviceError> {
        let (lock, keys, secret) = claim_empty(&home, new)?;
        let me = keys.device_id();
        // The user chose this export to recover from: its own anchors are the ones to pin.
        let mut doc = VaultDoc::load_trusted(export, &me)?;
        let state = doc.state()?;
        let recovery = RecoveryMember::derive(code, &state.info.id)?;
        // The document was checked against its own anchors; binding them to the keys the code
        // derives is what makes its founder (and so every member) trustworthy.
        if recovery.public() != state.info.recovery_pub
            || recovery.signing_public() != state.info.recovery_sign_pub
        {
            return Err(VaultError::WrongRecoveryCode.into());
        }
        let now = unix_now();
        let mut member = Member::new(
            &keys,
            secret.public(),
            new.name,
            Role::Admin,
            Recipient::RECOVERY_NAME,
            now,
        );
        sign_member(&mut member, &state.info.id, Recipient::RECOVERY_NAME, |m| {
            recovery.sign(m)
        });
        doc.put_member(&member)?;
        for epoch in state.epochs.values() {
            let Some(wrap) = epoch.wraps.get(&Recipient::Recovery) else {
                continue;
            };
            let dek = Dek::unwrap(
                &wrap.wrap,
                recovery.secret(),
                &state.info.id,
                &epoch.id,
                &Recipient::Recovery,
            )?;
            let mine = signed_wrap(
                &dek,
                &state.info.id,
                epoch,
                Recipient::Device(me),
                &secret.public(),
                Recipient::RECOVERY_NAME,
                |m| recovery.sign(m),
            )?;
            doc.put_wrap(&epoch.id, &Recipient::Device(me), &mine)?;
        }
        doc.audit(&me, "device.recover", new.name, |m| keys.sign(m))?;
        doc.commit("recover device", |m| keys.sign(m));
        Self::write_new(home, lock, doc, keys, &secret, new)
    }

    /// Writes a new device's database to a temporary file and renames it into place, so a
    /// failed `init` or `recover` leaves no half-made vault behind.
    fn write_new(
        home: Home,
        lock: OwnerLock,
        mut doc: VaultDoc,
        keys: DeviceKeys,
        secret: &VaultSecret,
        new: &NewDevice<'_>,
    ) -> Result<Self, DeviceError> {
        let me = keys.device_id();
        let (identity_secret, mailbox_secret) = keys.secrets();
        let record = DeviceRecord {
            device_id: me,
            name: new.name.to_string(),
            identity_secret,
            mailbox_secret,
            wrapped_key: WrappedVaultKey::seal(secret, new.passphrase, &me, new.kdf)?,
            anchors: doc.anchors().clone(),
            created_at: unix_now(),
        };
        let final_path = home.db_path();
        let tmp_path = home.root().join("handoff.db.new");
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| DeviceError::Io { path, source }
        };
        if tmp_path.exists() {
            fs::remove_file(&tmp_path).map_err(io(&tmp_path))?;
        }
        {
            let mut tmp = Store::open(&tmp_path, true)?;
            tmp.initialize(&record, &doc.save())?;
        } // closing checkpoints the WAL into the file and removes -wal and -shm
        fs::rename(&tmp_path, &final_path).map_err(io(&final_path))?;
        fs::File::open(home.root())
            .and_then(|d| d.sync_all())
            .map_err(io(home.root()))?;
        doc.mark_saved();
        let store = Store::open(&final_path, false)?;
        Ok(Self {
            home,
            _lock: lock,
            store,
            doc,
            record,
            keys,
            syncing: BTreeMap::new(),
            openings: 0,
        })
    }

    /// Opens the device of an initialized home, taking its lock.
    pub fn open(home: Home) -> Result<Self, DeviceError> {
        if !home.is_initialized() {
            return Err(StoreError::NotInitialized.into());
        }
        let lock = home.lock(LOCK_WAIT)?;
        let store = Store::open(&home.db_path(), false)?;
        let record = store.device()?;
        let keys = DeviceKeys::from_secrets(&record.identity_secret, &record.mailbox_secret);
        if keys.device_id() != record.device_id {
            return Err(DeviceError::Inconsistent(
                "the stored identity key does not match the device id",
            ));
        }
        let doc = Self::load_doc(&store, &record)?;
        Ok(Self {
            home,
            _lock: lock,
            store,
            doc,
            record,
            keys,
            syncing: BTreeMap::new(),
            openings: 0,
        })
    }

    /// The document as the store holds it, checked against the pinned anchors.
    fn load_doc(store: &Store, record: &DeviceRecord) -> Result<VaultDoc, DeviceError> {
        let (snapshot, changes) = store.doc_parts()?;
        Ok(VaultDoc::load_known(
            &snapshot,
            changes.iter().map(Vec::as_slice),
            &record.device_id,
            Some(&record.anchors),
            store.verified_digests()?,
        )?)
    }

    /// Loads the document again from the store when it could not take back refused changes
    /// (see [`VaultDoc::is_lost`]): what was saved is what counts; until then, and for good if
    /// the store cannot be read, the document refuses every use.
    pub(crate) fn reload_if_lost(&mut self) -> Result<(), DeviceError> {
        if self.doc.is_lost() {
            tracing::warn!("loading the vault again after refused changes could not be taken back");
            self.doc = Self::load_doc(&self.store, &self.record)?;
            // Whatever made it lost stays away from the document itself for a long while.
            self.doc.owe_forks(FORKS_AFTER_LOSS);
        }
        Ok(())
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    pub fn device_id(&self) -> DeviceId {
        self.record.device_id
    }

    /// The Ed25519 identity public key (the libp2p PeerId's key).
    pub fn identity_public(&self) -> [u8; 32] {
        self.keys.identity_public()
    }

    /// The identity secret, for this device's libp2p keypair.
    pub(crate) fn identity_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.keys.secrets().0
    }

    /// The mailbox secret: the static key of pairing handshakes (and of relay envelopes).
    pub(crate) fn mailbox_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.keys.secrets().1
    }

    pub fn device_name(&self) -> &str {
        &self.record.name
    }

    pub fn state(&self) -> Result<std::sync::Arc<VaultState>, DeviceError> {
        Ok(self.doc.state()?)
    }

    /// Unwraps this device's vault key with the passphrase (runs Argon2id).
    pub fn unlock(&self, passphrase: &[u8]) -> Result<Unlocked, DeviceError> {
        Ok(Unlocked::new(
            self.record
                .wrapped_key
                .open(passphrase, &self.record.device_id)?,
        ))
    }

    /// Persists the document's new changes; compacts the log when it has grown.
    fn persist(&mut self) -> Result<(), DeviceError> {
        let Some(chunk) = self.doc.take_unsaved() else {
            // Nothing written: the home stays as it was (the checked signatures are saved
            // with the next change).
            return Ok(());
        };
        // The checked signatures ride in the same transaction: only a cache, but saving them
        // apart would cost a second disk flush per change.
        let checked = self.doc.take_verified();
        let compact =
            self.store
                .append_change(&chunk, &checked, crate::doc::MAX_REMEMBERED_SIGNATURES)?;
        if compact {
            let snapshot = self.doc.save();
            self.store.compact(&snapshot)?;
        }
        Ok(())
    }

    fn dek(&self, state: &VaultState, epoch: &EpochId, key: &Unlocked) -> Result<Dek, DeviceError> {
        let me = Recipient::Device(self.record.device_id);
        let record = state
            .epochs
            .get(epoch)
            .ok_or(DeviceError::NoAccess(*epoch))?;
        let Some(wrap) = record.wraps.get(&me) else {
            if record.untrusted.contains(&me) {
                return Err(VaultError::BadSignature {
                    what: "this device's DEK wrap",
                }
                .into());
            }
            if state
                .members
                .get(&self.record.device_id)
                .is_some_and(|m| m.role == crate::doc::Role::Remote)
            {
                return Err(DeviceError::RemoteHoldsNoKey);
            }
            return Err(DeviceError::NoAccess(*epoch));
        };
        Ok(key.dek(epoch, &wrap.wrap, |secret| {
            Dek::unwrap(&wrap.wrap, secret, &state.info.id, epoch, &me)
        })?)
    }

    /// Drops what an operation that failed wrote but did not commit.
    pub fn rollback(&mut self) {
        self.doc.rollback();
    }

    /// The whole document in the standard Automerge format.
    pub fn export(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Merges a document export of this same vault; returns how many changes were new.
    pub fn import(&mut self, data: &[u8]) -> Result<usize, DeviceError> {
        let theirs = VaultDoc::load_trusted(data, &self.record.device_id)?
            .anchors()
            .vault;
        let ours = self.record.anchors.vault;
        if theirs != ours {
            return Err(DocError::WrongVault {
                expected: ours,
                found: theirs,
            }
            .into());
        }
        let new = self.doc.ingest(data)?;
        self.persist()?;
        Ok(new)
    }
}

/// Takes an empty home for a new device: checks the name, takes the lock, refuses a home that
/// already holds a vault, and makes the new device's keys.
fn claim_empty(
    home: &Home,
    new: &NewDevice<'_>,
) -> Result<(OwnerLock, DeviceKeys, VaultSecret), DeviceError> {
    check_name(new.name, "the device name")?;
    let lock = home.lock(LOCK_WAIT)?;
    if home.is_initialized() {
        return Err(DeviceError::AlreadyInitialized(home.root().to_path_buf()));
    }
    Ok((lock, DeviceKeys::generate()?, VaultSecret::generate()?))
}

/// Signs a member record's fields as `signer` (an admin's device id, `recovery`, or the
/// founder itself).
pub fn sign_member(
    member: &mut Member,
    vault: &VaultId,
    signer: &str,
    sign: impl Fn(&[u8]) -> [u8; 64],
) {
    let statement = handoff_protocol::binding::member_statement(vault, &member.signed_fields());
    member.sig = sign(&statement).to_vec();
    member.signer = signer.to_string();
}

fn signed_wrap(
    dek: &Dek,
    vault: &VaultId,
    epoch: &Epoch,
    recipient: Recipient,
    public: &[u8; 32],
    signer: &str,
    sign: impl Fn(&[u8]) -> [u8; 64],
) -> Result<SignedWrap, DeviceError> {
    let wrap = dek.wrap(vault, &epoch.id, &recipient, public)?.encode();
    let sig = sign(&wrap_statement(
        vault,
        &epoch.id,
        epoch.generation,
        &recipient,
        &wrap,
    ));
    Ok(SignedWrap {
        wrap,
        sig: sig.to_vec(),
        signer: signer.to_string(),
    })
}

/// Exposes a secret's bytes (kept here so callers need not import the trait).
pub fn expose(secret: &SecretBytes) -> &[u8] {
    secret.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::{Dek, Unlocked};
    use crate::vault::epoch::TokenBinding;
    use handoff_protocol::{EpochId, TokenId, VaultId};

    /// An epoch key is unwrapped once per epoch and wrap: the same wrap again comes from the
    /// cache, another wrap of the same epoch (or another epoch) is unwrapped anew, and a
    /// failed unwrap is not remembered.
    #[test]
    fn an_epoch_key_is_unwrapped_once_per_epoch_and_wrap() {
        let key = Unlocked::for_tests([7; 32]);
        let (one, two) = (EpochId::from_bytes([1; 16]), EpochId::from_bytes([2; 16]));
        let mut unwraps = 0u8;
        let mut dek = |epoch: &EpochId, wrap: &[u8]| {
            key.dek(epoch, wrap, |_| {
                unwraps += 1;
                Ok(Dek::from_bytes([unwraps; 32]))
            })
            .unwrap()
        };
        let first = dek(&one, b"wrap a");
        let again = dek(&one, b"wrap a");
        let (vault, token) = (VaultId::from_bytes([3; 16]), TokenId::from_bytes([4; 16]));
        let at = TokenBinding {
            vault: &vault,
            token: &token,
            epoch: &one,
            service: "openai",
        };
        let sealed = first.seal_token(at, b"sk-test").unwrap();
        assert!(
            again.open_token(at, &sealed).is_ok(),
            "a different key came back"
        );
        dek(&one, b"wrap b");
        dek(&two, b"wrap a");
        assert_eq!(unwraps, 3);
        let failed = key.dek(&one, b"wrap c", |_| {
            Err(crate::vault::VaultError::BadSignature {
                what: "a test wrap",
            })
        });
        assert!(failed.is_err());
        assert!(
            key.dek(&one, b"wrap c", |_| Ok(Dek::from_bytes([9; 32])))
                .is_ok()
        );
    }
}
