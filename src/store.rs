//! SQLite storage of one device: its keys, and the vault document as a snapshot plus the
//! incremental changes written since.
//!
//! One file, `handoff.db`, in WAL mode with `synchronous = FULL`: a write this module returns
//! from is durable, so anything acknowledged to the user survives `kill -9` or power loss.
//! `secure_delete` overwrites freed pages, so old ciphertexts do not linger in free space.
//! The schema is versioned with `PRAGMA user_version`; migrations run in a transaction.

use std::path::Path;

use handoff_protocol::{DeviceId, VaultId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::doc::TrustAnchors;
use crate::vault::{KdfParams, WrappedVaultKey};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "the database at {path} is damaged ({detail}); restore it from a backup or recover with `handoff recover`"
    )]
    Corrupt { path: String, detail: String },
    #[error("the database was written by a newer handoff (schema {0}); upgrade handoff")]
    TooNew(u32),
    #[error(
        "this home holds no vault yet: run `handoff init` for a new one, `handoff peer join` to join yours from another device, or `handoff recover`"
    )]
    NotInitialized,
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
}

/// Compact the change log into a new snapshot once it holds this many rows.
const COMPACT_AFTER: i64 = 256;

const MIGRATIONS: &[&str] = &[
    // 1: device keys, document snapshot and change log.
    "CREATE TABLE device (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        device_id BLOB NOT NULL,
        vault_id BLOB NOT NULL,
        name TEXT NOT NULL,
        identity_secret BLOB NOT NULL,
        mailbox_secret BLOB NOT NULL,
        kdf_m_kib INTEGER NOT NULL,
        kdf_t INTEGER NOT NULL,
        kdf_p INTEGER NOT NULL,
        kdf_salt BLOB NOT NULL,
        key_nonce BLOB NOT NULL,
        key_ciphertext BLOB NOT NULL,
        founder BLOB NOT NULL,
        recovery_pub BLOB NOT NULL,
        recovery_sign_pub BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE doc_snapshot (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        bytes BLOB NOT NULL
    );
    CREATE TABLE doc_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        bytes BLOB NOT NULL
    );",
    // 2: per-peer Automerge sync state (what we know they have) and when we last saw them.
    "CREATE TABLE peer_sync (
        device_id BLOB PRIMARY KEY,
        state BLOB NOT NULL,
        seen_at INTEGER NOT NULL,
        addr TEXT
    );",
    // 3: heads a peer is known to hold besides what the two last synced (left for it at a
    // relay, received from it in an envelope, handed over at pairing), and the sequence number
    // of the envelopes sealed for it.
    "ALTER TABLE peer_sync ADD COLUMN known_heads BLOB;
     ALTER TABLE peer_sync ADD COLUMN relay_seq INTEGER NOT NULL DEFAULT 0;",
    // 4: since when, and why, this device and a peer cannot converge (a change one of them
    // refuses), for `status` and `peer list`.
    "ALTER TABLE peer_sync ADD COLUMN out_of_sync_since INTEGER;
     ALTER TABLE peer_sync ADD COLUMN out_of_sync_why TEXT;",
    // 5: digests of the signatures in the document this device has checked (doc/verified.rs),
    // so that opening the vault does not verify every signature again.
    "CREATE TABLE verified_sigs (digest BLOB PRIMARY KEY) WITHOUT ROWID;",
];

/// What `peers` returns of each peer: device, last seen, addresses, and since when and why
/// the two are out of sync.
pub type PeerRow = (DeviceId, i64, Option<String>, Option<(i64, String)>);

/// A peer's persisted sync state, when it was last seen (Unix seconds) and its address.
pub type PeerSync = (Vec<u8>, i64, Option<String>);

/// What the store keeps about this device. `Debug` leaves the secret keys out.
pub struct DeviceRecord {
    pub device_id: DeviceId,
    pub name: String,
    pub identity_secret: Zeroizing<[u8; 32]>,
    pub mailbox_secret: Zeroizing<[u8; 32]>,
    pub wrapped_key: WrappedVaultKey,
    /// Pinned when this device joined the vault; every document is checked against them.
    pub anchors: TrustAnchors,
    pub created_at: i64,
}

impl std::fmt::Debug for DeviceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRecord")
            .field("device_id", &self.device_id)
            .field("vault_id", &self.anchors.vault)
            .field("name", &self.name)
            .field("kdf", &self.wrapped_key.params)
            .finish_non_exhaustive()
    }
}

/// An open handoff database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: String,
    /// How many rows `verified_sigs` holds: counted at the first change saved, then kept by
    /// `append_change` (counting them costs a walk of the table on every write otherwise).
    verified_rows: std::cell::Cell<Option<usize>>,
}

impl Store {
    /// Opens (creating if `create`) the database and brings its schema up to date. An existing
    /// file is integrity-checked before anything is written to it.
    pub fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        let display = path.display().to_string();
        if !create && !path.exists() {
            return Err(StoreError::NotInitialized);
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(&display, e))?;
        let store = Self {
            conn,
            path: display,
            verified_rows: std::cell::Cell::new(None),
        };
        store.check_integrity()?;
        store
            .conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA secure_delete = ON;
                 PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| store.err(e))?;
        store
            .conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| store.err(e))?;
        store.migrate()?;
        Ok(store)
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }

    fn check_integrity(&self) -> Result<(), StoreError> {
        let result: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if result != "ok" {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: result
                    .lines()
                    .next()
                    .unwrap_or("integrity check failed")
                    .to_string(),
            });
        }
        Ok(())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let version: u32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
        if version > known {
            return Err(StoreError::TooNew(version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
            tx.execute_batch(sql).map_err(|e| self.err(e))?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )
            .map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Writes the device record and the first document snapshot in one transaction.
    pub fn initialize(&mut self, device: &DeviceRecord, snapshot: &[u8]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| classify(&self.path, e))?;
        let w = &device.wrapped_key;
        tx.execute(
            "INSERT INTO device (id, device_id, vault_id, name, identity_secret, mailbox_secret,
                kdf_m_kib, kdf_t, kdf_p, kdf_salt, key_nonce, key_ciphertext, founder,
                recovery_pub, recovery_sign_pub, created_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                &device.device_id.as_bytes()[..],
                &device.anchors.vault.as_bytes()[..],
                device.name,
                &device.identity_secret[..],
                &device.mailbox_secret[..],
                w.params.m_kib,
                w.params.t,
                w.params.p,
                &w.salt[..],
                &w.nonce[..],
                w.ciphertext,
                &device.anchors.founder.as_bytes()[..],
                &device.anchors.recovery_pub[..],
                &device.anchors.recovery_sign_pub[..],
                device.created_at,
            ],
        )
        .map_err(|e| classify(&self.path, e))?;
        tx.execute(
            "INSERT INTO doc_snapshot (id, bytes) VALUES (1, ?1)",
            [snapshot],
        )
        .map_err(|e| classify(&self.path, e))?;
        tx.commit().map_err(|e| classify(&self.path, e))
    }

    /// This device's record.
    pub fn device(&self) -> Result<DeviceRecord, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT device_id, vault_id, name, identity_secret, mailbox_secret, kdf_m_kib,
                        kdf_t, kdf_p, kdf_salt, key_nonce, key_ciphertext, created_at,
                        founder, recovery_pub, recovery_sign_pub
                 FROM device WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, String>(2)?,
                        Zeroizing::new(r.get::<_, Vec<u8>>(3)?),
                        Zeroizing::new(r.get::<_, Vec<u8>>(4)?),
                        (
                            r.get::<_, u32>(5)?,
                            r.get::<_, u32>(6)?,
                            r.get::<_, u32>(7)?,
                        ),
                        r.get::<_, Vec<u8>>(8)?,
                        r.get::<_, Vec<u8>>(9)?,
                        r.get::<_, Vec<u8>>(10)?,
                        r.get::<_, i64>(11)?,
                        (
                            r.get::<_, Vec<u8>>(12)?,
                            r.get::<_, Vec<u8>>(13)?,
                            r.get::<_, Vec<u8>>(14)?,
                        ),
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotInitialized)?;
        let (
            device_id,
            vault_id,
            name,
            identity,
            mailbox,
            (m_kib, t, p),
            salt,
            nonce,
            ciphertext,
            created_at,
            (founder, recovery_pub, recovery_sign_pub),
        ) = row;
        let corrupt = |what: &str| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("the device record's {what} has the wrong length"),
        };
        let fixed32 = |v: &[u8], what: &str| -> Result<Zeroizing<[u8; 32]>, StoreError> {
            let mut out = Zeroizing::new([0u8; 32]);
            if v.len() != 32 {
                return Err(corrupt(what));
            }
            out.copy_from_slice(v);
            Ok(out)
        };
        Ok(DeviceRecord {
            device_id: DeviceId::from_slice(&device_id).map_err(|_| corrupt("device id"))?,
            name,
            identity_secret: fixed32(&identity, "identity key")?,
            mailbox_secret: fixed32(&mailbox, "mailbox key")?,
            wrapped_key: WrappedVaultKey {
                params: KdfParams { m_kib, t, p },
                salt: salt.try_into().map_err(|_| corrupt("salt"))?,
                nonce: nonce.try_into().map_err(|_| corrupt("nonce"))?,
                ciphertext,
            },
            anchors: TrustAnchors {
                vault: VaultId::from_slice(&vault_id).map_err(|_| corrupt("vault id"))?,
                founder: DeviceId::from_slice(&founder).map_err(|_| corrupt("founder"))?,
                recovery_pub: *fixed32(&recovery_pub, "recovery key")?,
                recovery_sign_pub: *fixed32(&recovery_sign_pub, "recovery signing key")?,
            },
            created_at,
        })
    }

    /// The saved snapshot and the change chunks after it, in order.
    pub fn doc_parts(&self) -> Result<(Vec<u8>, Vec<Vec<u8>>), StoreError> {
        let snapshot: Vec<u8> = self
            .conn
            .query_row("SELECT bytes FROM doc_snapshot WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or(StoreError::NotInitialized)?;
        let mut stmt = self
            .conn
            .prepare("SELECT bytes FROM doc_changes ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let changes = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok((snapshot, changes))
    }

    /// The digests of the signatures this device checked before.
    pub fn verified_digests(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT digest FROM verified_sigs")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            // A row that is not a digest is skipped: it can only make a check run again.
            if let Ok(digest) = <[u8; 32]>::try_from(row.map_err(|e| self.err(e))?) {
                out.push(digest);
            }
        }
        Ok(out)
    }

    /// Appends a change chunk and the digests of the signatures checked since the last save,
    /// in one transaction (one disk flush): past `max` rows the digests' table starts over
    /// (superseded records' signatures would pile up). Returns whether the change log is now
    /// long enough to compact.
    pub fn append_change(
        &self,
        chunk: &[u8],
        verified: &[[u8; 32]],
        max: usize,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        tx.prepare_cached("INSERT INTO doc_changes (bytes) VALUES (?1)")
            .and_then(|mut insert| insert.execute([chunk]))
            .map_err(|e| self.err(e))?;
        let mut verified_rows = self.verified_rows.get();
        if !verified.is_empty() {
            let mut rows = match verified_rows {
                Some(rows) => rows,
                None => tx
                    .query_row("SELECT count(*) FROM verified_sigs", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                    .map_err(|e| self.err(e))?,
            };
            if rows.saturating_add(verified.len()) > max {
                tx.execute("DELETE FROM verified_sigs", [])
                    .map_err(|e| self.err(e))?;
                rows = 0;
            }
            let mut insert = tx
                .prepare_cached("INSERT OR IGNORE INTO verified_sigs (digest) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            for d in verified {
                rows += insert.execute([&d[..]]).map_err(|e| self.err(e))?;
            }
            verified_rows = Some(rows);
        }
        // The log is emptied whole when it is compacted, so its sequence numbers have no gaps.
        let rows: i64 = tx
            .prepare_cached("SELECT coalesce(max(seq) - min(seq) + 1, 0) FROM doc_changes")
            .and_then(|mut count| count.query_row([], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        self.verified_rows.set(verified_rows);
        Ok(rows >= COMPACT_AFTER)
    }

    /// A peer's persisted sync state, when it was last seen and at which address.
    pub fn peer_sync(&self, device: &DeviceId) -> Result<Option<PeerSync>, StoreError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT state, seen_at, addr FROM peer_sync WHERE device_id = ?1",
                [device.as_bytes().as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records a peer's sync state (and address, if known) as of `seen_at`.
    pub fn save_peer_sync(
        &self,
        device: &DeviceId,
        state: &[u8],
        seen_at: i64,
        addr: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO peer_sync (device_id, state, seen_at, addr) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(device_id) DO UPDATE SET state = ?2, seen_at = ?3,
                 addr = coalesce(?4, addr)",
                rusqlite::params![device.as_bytes().as_slice(), state, seen_at, addr],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every peer with a sync row.
    pub fn peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT device_id, seen_at, addr, out_of_sync_since, out_of_sync_why
                 FROM peer_sync ORDER BY device_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, seen, addr, since, why)| {
                let out = since.map(|t| (t, why.unwrap_or_default()));
                Some((DeviceId::from_slice(&id).ok()?, seen, addr, out))
            })
            .collect())
    }

    /// Whether this device and `device` are recorded out of sync.
    pub fn is_out_of_sync(&self, device: &DeviceId) -> Result<bool, StoreError> {
        use rusqlite::OptionalExtension;
        let since: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT out_of_sync_since FROM peer_sync WHERE device_id = ?1",
                [device.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(since.flatten().is_some())
    }

    /// Records that this device and `device` cannot converge since `since`, because `why`
    /// (keeping an earlier `since`); `None` clears it.
    pub fn set_out_of_sync(
        &self,
        device: &DeviceId,
        out: Option<(i64, &str)>,
    ) -> Result<(), StoreError> {
        let (since, why) = out.map_or((None, None), |(t, w)| (Some(t), Some(w)));
        self.conn
            .execute(
                "INSERT INTO peer_sync (device_id, state, seen_at, out_of_sync_since, out_of_sync_why)
                 VALUES (?1, x'', 0, ?2, ?3)
                 ON CONFLICT(device_id) DO UPDATE SET
                 out_of_sync_since = CASE WHEN ?2 IS NULL THEN NULL
                     ELSE coalesce(out_of_sync_since, ?2) END,
                 out_of_sync_why = ?3",
                rusqlite::params![device.as_bytes().as_slice(), since, why],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records where a peer can be reached, keeping its sync state.
    pub fn set_peer_addr(
        &self,
        device: &DeviceId,
        addr: &str,
        seen_at: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO peer_sync (device_id, state, seen_at, addr) VALUES (?1, x'', ?2, ?3)
                 ON CONFLICT(device_id) DO UPDATE SET addr = ?3, seen_at = max(seen_at, ?2)",
                rusqlite::params![device.as_bytes().as_slice(), seen_at, addr],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Heads a peer is known to hold (32-byte hashes, concatenated) and the last sequence
    /// number of envelopes sealed for it.
    pub fn known_heads(&self, device: &DeviceId) -> Result<(Vec<u8>, u64), StoreError> {
        use rusqlite::OptionalExtension;
        let row: Option<(Option<Vec<u8>>, i64)> = self
            .conn
            .query_row(
                "SELECT known_heads, relay_seq FROM peer_sync WHERE device_id = ?1",
                [device.as_bytes().as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.map_or((Vec::new(), 0), |(heads, seq)| {
            (heads.unwrap_or_default(), u64::try_from(seq).unwrap_or(0))
        }))
    }

    /// Records the heads a peer is known to hold, and the envelope sequence number.
    pub fn set_known_heads(
        &self,
        device: &DeviceId,
        heads: &[u8],
        seq: u64,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "INSERT INTO peer_sync (device_id, state, seen_at, known_heads, relay_seq)
                 VALUES (?1, x'', 0, ?2, ?3)
                 ON CONFLICT(device_id) DO UPDATE SET known_heads = ?2, relay_seq = ?3",
                rusqlite::params![device.as_bytes().as_slice(), heads, seq],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Replaces snapshot and change log with one new snapshot, atomically.
    pub fn compact(&mut self, snapshot: &[u8]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| classify(&self.path, e))?;
        tx.execute(
            "UPDATE doc_snapshot SET bytes = ?1 WHERE id = 1",
            [snapshot],
        )
        .map_err(|e| classify(&self.path, e))?;
        tx.execute("DELETE FROM doc_changes", [])
            .map_err(|e| classify(&self.path, e))?;
        tx.commit().map_err(|e| classify(&self.path, e))
    }
}

fn classify(path: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.to_string(),
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite(e),
    }
}
