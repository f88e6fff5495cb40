//! Durable storage of envelopes, behind a small trait so another backend (PostgreSQL, for
//! several relay processes) can replace SQLite, and the quota accounting on top of it.
//!
//! One thread owns the store. Requests reach it over a channel ([`Store`] is the async handle);
//! deposits that are waiting together are checked against the limits and written in one
//! transaction, so a burst of deposits costs one disk flush. A deposit is answered `Stored`
//! only after its transaction committed (SQLite WAL, `synchronous = FULL`): whatever the relay
//! acknowledged survives a crash or a `kill -9`.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use handoff_protocol::relay::Refusal;
use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::Limits;

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("relay database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("relay database {path} was written by a newer relay (schema {version})")]
    TooNew { path: String, version: u32 },
    #[error("the relay's store has stopped")]
    Stopped,
}

/// An envelope to store.
#[derive(Debug)]
pub struct NewEnvelope<'a> {
    pub mailbox: &'a [u8],
    pub body: &'a [u8],
    pub stored_at: i64,
}

/// How much a mailbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub envelopes: u64,
    pub bytes: u64,
}

/// What a relay needs from a durable store.
pub trait Storage: Send + 'static {
    /// Stores the batch in one durable transaction; returns the new ids, in order.
    fn insert(&mut self, batch: &[NewEnvelope<'_>]) -> Result<Vec<u64>, StorageError>;
    /// Envelopes of `mailbox` with ids above `after`, oldest first, up to about `max_bytes`
    /// (at least one if any).
    fn pending(
        &mut self,
        mailbox: &[u8],
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError>;
    /// Deletes these ids if they are in `mailbox`; returns the size of each deleted one.
    fn delete(&mut self, mailbox: &[u8], ids: &[u64]) -> Result<Vec<u64>, StorageError>;
    /// Deletes everything stored before `before`; returns what each mailbox lost.
    fn expire(&mut self, before: i64) -> Result<Vec<(Vec<u8>, Usage)>, StorageError>;
    /// What each mailbox holds (read once at start).
    fn usage(&mut self) -> Result<Vec<(Vec<u8>, Usage)>, StorageError>;
    /// A value kept beside the envelopes (the relay's identity key).
    fn setting(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    fn set_setting(&mut self, name: &str, value: &[u8]) -> Result<(), StorageError>;
}

const MIGRATIONS: &[&str] = &["CREATE TABLE envelopes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mailbox BLOB NOT NULL,
        stored_at INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX envelopes_by_mailbox ON envelopes (mailbox, id);
    CREATE INDEX envelopes_by_age ON envelopes (stored_at);
    CREATE TABLE settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);"];

/// The SQLite backend: one file, WAL, `synchronous = FULL`.
#[derive(Debug)]
pub struct SqliteStorage {
    conn: Connection,
    path: String,
}

impl SqliteStorage {
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let display = path.display().to_string();
        let err = sqlite_error(&display);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(err)?;
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
        if version > known {
            return Err(StorageError::TooNew {
                path: display.clone(),
                version,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(1))
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(Self {
            conn,
            path: display.clone(),
        })
    }
}

impl Storage for SqliteStorage {
    fn insert(&mut self, batch: &[NewEnvelope<'_>]) -> Result<Vec<u64>, StorageError> {
        let err = sqlite_error(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        let mut ids = Vec::with_capacity(batch.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO envelopes (mailbox, stored_at, body) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?;
            for e in batch {
                stmt.execute(params![e.mailbox, e.stored_at, e.body])
                    .map_err(err)?;
                ids.push(u64::try_from(tx.last_insert_rowid()).unwrap_or(0));
            }
        }
        tx.commit().map_err(err)?;
        Ok(ids)
    }

    fn pending(
        &mut self,
        mailbox: &[u8],
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let err = sqlite_error(&self.path);
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, body FROM envelopes WHERE mailbox = ?1 AND id > ?2 ORDER BY id LIMIT 256",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![mailbox, after], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in rows {
            let (id, body) = row.map_err(err)?;
            if !out.is_empty() && bytes + body.len() > max_bytes {
                break;
            }
            bytes += body.len();
            out.push((u64::try_from(id).unwrap_or(0), body));
        }
        Ok(out)
    }

    fn delete(&mut self, mailbox: &[u8], ids: &[u64]) -> Result<Vec<u64>, StorageError> {
        let err = sqlite_error(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        let mut sizes = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "DELETE FROM envelopes WHERE id = ?1 AND mailbox = ?2 RETURNING length(body)",
                )
                .map_err(err)?;
            for id in ids {
                let id = i64::try_from(*id).unwrap_or(-1);
                let mut rows = stmt.query(params![id, mailbox]).map_err(err)?;
                if let Some(row) = rows.next().map_err(err)? {
                    sizes.push(charged(
                        usize::try_from(row.get::<_, i64>(0).map_err(err)?).unwrap_or(0),
                    ));
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(sizes)
    }

    fn expire(&mut self, before: i64) -> Result<Vec<(Vec<u8>, Usage)>, StorageError> {
        let err = sqlite_error(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        let lost = usage_by_mailbox(&tx, "WHERE stored_at < ?1", [before]).map_err(err)?;
        tx.execute("DELETE FROM envelopes WHERE stored_at < ?1", [before])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(lost)
    }

    fn usage(&mut self) -> Result<Vec<(Vec<u8>, Usage)>, StorageError> {
        let err = sqlite_error(&self.path);
        usage_by_mailbox(&self.conn, "", []).map_err(err)
    }

    fn setting(&mut self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sqlite_error(&self.path))
    }

    fn set_setting(&mut self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.conn
            .execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = ?2",
                params![name, value],
            )
            .map_err(sqlite_error(&self.path))?;
        Ok(())
    }
}

/// SQLite integers are signed; counts and sizes never are.
/// Bytes charged against the quotas for each envelope besides its body: its recipient, row
/// and index entries on disk. Without it, a flood of tiny envelopes would fill the disk many
/// times over while counting as almost nothing.
pub const ROW_COST: u64 = 256;

/// What an envelope of `body_len` bytes counts against the quotas.
fn charged(body_len: usize) -> u64 {
    body_len as u64 + ROW_COST
}

/// Names the database in an error of SQLite's.
fn sqlite_error(path: &str) -> impl Fn(rusqlite::Error) -> StorageError + Copy + '_ {
    move |source| StorageError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Envelopes and bytes per mailbox among the rows `filter` (a WHERE clause, or nothing) keeps.
fn usage_by_mailbox(
    conn: &rusqlite::Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<(Vec<u8>, Usage)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT mailbox, count(*), sum(length(body)) FROM envelopes {filter} GROUP BY mailbox"
    ))?;
    let rows = stmt.query_map(params, |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, {
            let envelopes = unsigned(r.get(1)?);
            Usage {
                envelopes,
                bytes: unsigned(r.get(2)?) + envelopes * ROW_COST,
            }
        }))
    })?;
    rows.collect()
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// What the whole relay holds, readable without asking the store's thread (metrics).
#[derive(Debug, Default)]
pub struct Totals {
    pub envelopes: AtomicU64,
    pub bytes: AtomicU64,
}

/// An envelope as stored: its id and bytes.
pub type Stored = (u64, Vec<u8>);

/// A deposit waiting for the store's thread: its mailbox, body and time, where its answer
/// goes, and its share of the queue's byte budget (given back once it is written).
type Waiting = (
    Vec<u8>,
    Vec<u8>,
    i64,
    oneshot::Sender<Result<u64, Refusal>>,
    OwnedSemaphorePermit,
);

/// Requests to the store's thread.
enum Op {
    Deposit {
        mailbox: Vec<u8>,
        body: Vec<u8>,
        at: i64,
        reply: oneshot::Sender<Result<u64, Refusal>>,
        room: OwnedSemaphorePermit,
    },
    Pending {
        mailbox: Vec<u8>,
        after: u64,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Vec<Stored>, StorageError>>,
    },
    Ack {
        mailbox: Vec<u8>,
        ids: Vec<u64>,
        reply: oneshot::Sender<Result<usize, StorageError>>,
    },
    Expire {
        before: i64,
        reply: oneshot::Sender<Result<u64, StorageError>>,
    },
    /// Answer what is queued, then stop.
    Shutdown,
}

/// Most deposits written in one transaction.
const BATCH_MAX: usize = 512;
/// Bytes of deposit bodies the store's queue holds at most: past this, depositors wait for
/// room before their deposit is queued, so a flood of deposits from many streams at once
/// costs bounded memory.
const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// A deposit handed to the store's thread: awaiting it gives the envelope's id once it is
/// durable, or why it was refused.
#[derive(Debug)]
pub struct Deposited(oneshot::Receiver<Result<u64, Refusal>>);

impl std::future::Future for Deposited {
    type Output = Result<u64, Refusal>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Refusal::Internal)))
    }
}

/// The async handle on the store's thread. Dropping every handle stops the thread once it
/// has answered what was queued.
#[derive(Debug, Clone)]
pub struct Store {
    ops: mpsc::UnboundedSender<Op>,
    room: Arc<Semaphore>,
    pub totals: Arc<Totals>,
}

impl Store {
    /// Starts the thread that owns `storage`, with the quota `limits`.
    /// `stored` is called on the store's thread with each mailbox a commit stored envelopes
    /// for, right after the commit.
    pub fn start<S: Storage>(
        mut storage: S,
        limits: Limits,
        stored: impl Fn(&[u8]) + Send + 'static,
    ) -> Result<(Store, std::thread::JoinHandle<()>), StorageError> {
        let usage: HashMap<Vec<u8>, Usage> = storage.usage()?.into_iter().collect();
        let totals = Arc::new(Totals::default());
        totals
            .envelopes
            .store(usage.values().map(|u| u.envelopes).sum(), Ordering::Relaxed);
        totals
            .bytes
            .store(usage.values().map(|u| u.bytes).sum(), Ordering::Relaxed);
        let (ops, rx) = mpsc::unbounded_channel();
        let mut owner = Owner {
            storage,
            limits,
            usage,
            totals: totals.clone(),
            stored: Box::new(stored),
        };
        let thread = std::thread::Builder::new()
            .name("relay-store".into())
            .spawn(move || owner.run(rx))
            .map_err(|_| StorageError::Stopped)?;
        let room = Arc::new(Semaphore::new(QUEUE_BYTES));
        Ok((Store { ops, room, totals }, thread))
    }

    /// Queues an envelope for `mailbox` once the queue has room for it, without waiting for
    /// it to be written: deposits queued together share one transaction, so a client may
    /// have several under way. The answer is its id once durable, or why not.
    pub async fn submit(&self, mailbox: Vec<u8>, body: Vec<u8>, at: i64) -> Deposited {
        let (reply, rx) = oneshot::channel();
        let share = u32::try_from(body.len().clamp(1, QUEUE_BYTES)).unwrap_or(u32::MAX);
        // The semaphore is never closed; if it were, the dropped reply answers Internal.
        if let Ok(room) = self.room.clone().acquire_many_owned(share).await {
            let _ = self.ops.send(Op::Deposit {
                mailbox,
                body,
                at,
                reply,
                room,
            });
        }
        Deposited(rx)
    }

    /// Stores an envelope for `mailbox`: its id once durable, or why not.
    pub async fn deposit(&self, mailbox: Vec<u8>, body: Vec<u8>, at: i64) -> Result<u64, Refusal> {
        self.submit(mailbox, body, at).await.await
    }

    pub async fn pending(
        &self,
        mailbox: Vec<u8>,
        after: u64,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Pending {
                mailbox,
                after,
                max_bytes,
                reply,
            })
            .map_err(|_| StorageError::Stopped)?;
        rx.await.map_err(|_| StorageError::Stopped)?
    }

    /// Deletes acknowledged envelopes of `mailbox` (ids in other mailboxes are ignored).
    pub async fn ack(&self, mailbox: Vec<u8>, ids: Vec<u64>) -> Result<usize, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Ack {
                mailbox,
                ids,
                reply,
            })
            .map_err(|_| StorageError::Stopped)?;
        rx.await.map_err(|_| StorageError::Stopped)?
    }

    /// Stops the store's thread once it has answered everything asked before this.
    pub fn shutdown(&self) {
        let _ = self.ops.send(Op::Shutdown);
    }

    /// Deletes envelopes stored before `before`; returns how many.
    pub async fn expire(&self, before: i64) -> Result<u64, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Expire { before, reply })
            .map_err(|_| StorageError::Stopped)?;
        rx.await.map_err(|_| StorageError::Stopped)?
    }
}

/// What the store's thread calls with each mailbox a commit stored envelopes for.
type OnStored = dyn Fn(&[u8]) + Send;

/// The store's thread.
struct Owner<S> {
    storage: S,
    limits: Limits,
    usage: HashMap<Vec<u8>, Usage>,
    totals: Arc<Totals>,
    stored: Box<OnStored>,
}

impl<S: Storage> Owner<S> {
    fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut later = VecDeque::new();
        let mut stopping = false;
        loop {
            let op = match later.pop_front() {
                Some(op) => op,
                None if stopping => match rx.try_recv() {
                    Ok(op) => op,
                    Err(_) => return,
                },
                None => match rx.blocking_recv() {
                    Some(op) => op,
                    None => return,
                },
            };
            match op {
                Op::Shutdown => stopping = true,
                Op::Deposit {
                    mailbox,
                    body,
                    at,
                    reply,
                    room,
                } => {
                    // Take every deposit already waiting: one transaction for all of them.
                    let mut batch: Vec<Waiting> = vec![(mailbox, body, at, reply, room)];
                    while batch.len() < BATCH_MAX {
                        match rx.try_recv() {
                            Ok(Op::Deposit {
                                mailbox,
                                body,
                                at,
                                reply,
                                room,
                            }) => batch.push((mailbox, body, at, reply, room)),
                            Ok(other) => later.push_back(other),
                            Err(_) => break,
                        }
                    }
                    self.deposit(batch);
                }
                Op::Pending {
                    mailbox,
                    after,
                    max_bytes,
                    reply,
                } => {
                    let _ = reply.send(self.storage.pending(&mailbox, after, max_bytes));
                }
                Op::Ack {
                    mailbox,
                    ids,
                    reply,
                } => {
                    let result = self.storage.delete(&mailbox, &ids).map(|sizes| {
                        let freed = Usage {
                            envelopes: sizes.len() as u64,
                            bytes: sizes.iter().sum(),
                        };
                        self.release(&mailbox, freed);
                        sizes.len()
                    });
                    let _ = reply.send(result);
                }
                Op::Expire { before, reply } => {
                    let result = self.storage.expire(before).map(|lost| {
                        let mut count = 0;
                        for (mailbox, usage) in lost {
                            count += usage.envelopes;
                            self.release(&mailbox, usage);
                        }
                        count
                    });
                    let _ = reply.send(result);
                }
            }
        }
    }

    fn release(&mut self, mailbox: &[u8], freed: Usage) {
        if let Some(u) = self.usage.get_mut(mailbox) {
            u.envelopes = u.envelopes.saturating_sub(freed.envelopes);
            u.bytes = u.bytes.saturating_sub(freed.bytes);
            if u.envelopes == 0 {
                self.usage.remove(mailbox);
            }
        }
        // Only this thread changes the totals: load then store cannot race.
        let envelopes = self.totals.envelopes.load(Ordering::Relaxed);
        self.totals
            .envelopes
            .store(envelopes.saturating_sub(freed.envelopes), Ordering::Relaxed);
        let bytes = self.totals.bytes.load(Ordering::Relaxed);
        self.totals
            .bytes
            .store(bytes.saturating_sub(freed.bytes), Ordering::Relaxed);
    }

    /// Checks each deposit against the limits (counting the ones before it in the batch),
    /// writes the accepted ones in one transaction, then answers every one.
    fn deposit(&mut self, batch: Vec<Waiting>) {
        let mut total = self.totals.bytes.load(Ordering::Relaxed);
        let mut tentative: HashMap<Vec<u8>, Usage> = HashMap::new();
        let mut accepted = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        let mut rooms = Vec::with_capacity(batch.len());
        for (mailbox, body, at, reply, room) in batch {
            rooms.push(room);
            let size = charged(body.len());
            let current = tentative
                .get(&mailbox)
                .copied()
                .unwrap_or_else(|| self.usage.get(&mailbox).copied().unwrap_or_default());
            let refusal = if body.len() > self.limits.max_envelope {
                Some(Refusal::TooLarge)
            } else if current.envelopes + 1 > self.limits.mailbox_envelopes
                || current.bytes + size > self.limits.mailbox_bytes
            {
                Some(Refusal::MailboxFull)
            } else if total + size > self.limits.total_bytes {
                Some(Refusal::RelayFull)
            } else {
                None
            };
            match refusal {
                Some(r) => answers.push((reply, Err(r))),
                None => {
                    total += size;
                    tentative.insert(
                        mailbox.clone(),
                        Usage {
                            envelopes: current.envelopes + 1,
                            bytes: current.bytes + size,
                        },
                    );
                    answers.push((reply, Ok(accepted.len())));
                    accepted.push((mailbox, body, at));
                }
            }
        }
        let rows: Vec<NewEnvelope<'_>> = accepted
            .iter()
            .map(|(mailbox, body, at)| NewEnvelope {
                mailbox,
                body,
                stored_at: *at,
            })
            .collect();
        let stored = if rows.is_empty() {
            Ok(Vec::new())
        } else {
            self.storage.insert(&rows)
        };
        drop(rows);
        match &stored {
            Ok(_) => {
                for (mailbox, usage) in tentative {
                    (self.stored)(&mailbox);
                    self.usage.insert(mailbox, usage);
                }
                let bytes: u64 = accepted.iter().map(|(_, b, _)| charged(b.len())).sum();
                self.totals
                    .envelopes
                    .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                self.totals.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "storing envelopes failed"),
        }
        for (reply, answer) in answers {
            let answer = match (answer, &stored) {
                (Err(r), _) => Err(r),
                (Ok(i), Ok(ids)) => ids.get(i).copied().ok_or(Refusal::Internal),
                (Ok(_), Err(_)) => Err(Refusal::Internal),
            };
            let _ = reply.send(answer);
        }
        // The bodies are written or refused: their room in the queue is free again.
        drop(accepted);
        drop(rooms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            mailbox_envelopes: 3,
            mailbox_bytes: 100 + 3 * ROW_COST,
            total_bytes: 150 + 5 * ROW_COST,
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn quotas_hold_across_batches_restarts_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let (store, thread) =
            Store::start(SqliteStorage::open(&path).unwrap(), limits(), |_| {}).unwrap();
        let a = b"mailbox-a".to_vec();
        let b = b"mailbox-b".to_vec();
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(store.deposit(a.clone(), vec![1; 20], 10).await.unwrap());
        }
        assert_eq!(
            store.deposit(a.clone(), vec![1; 20], 10).await,
            Err(Refusal::MailboxFull)
        );
        assert_eq!(
            store
                .deposit(b.clone(), vec![2; 101 + 2 * ROW_COST as usize], 10)
                .await,
            Err(Refusal::MailboxFull)
        );
        store.deposit(b.clone(), vec![2; 80], 10).await.unwrap();
        assert_eq!(
            store.deposit(b.clone(), vec![2; 20], 10).await,
            Err(Refusal::RelayFull),
            "140 of 150 bytes held (besides the per-envelope cost)"
        );
        // Another mailbox cannot ack a's envelopes.
        assert_eq!(store.ack(b.clone(), ids.clone()).await.unwrap(), 0);
        assert_eq!(store.pending(a.clone(), 0, 1 << 20).await.unwrap().len(), 3);
        drop(store);
        thread.join().unwrap();

        // A restart finds what was stored, and the quotas with it.
        let (store, _thread) =
            Store::start(SqliteStorage::open(&path).unwrap(), limits(), |_| {}).unwrap();
        assert_eq!(store.totals.envelopes.load(Ordering::Relaxed), 4);
        assert_eq!(
            store.deposit(a.clone(), vec![1; 5], 10).await,
            Err(Refusal::MailboxFull)
        );
        assert_eq!(store.ack(a.clone(), ids[..2].to_vec()).await.unwrap(), 2);
        let left = store.pending(a.clone(), 0, 1 << 20).await.unwrap();
        assert_eq!(left.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [ids[2]]);
        store.deposit(a.clone(), vec![1; 5], 20).await.unwrap();
        // Expiry removes what is older than the cut and frees its quota.
        assert_eq!(store.expire(11).await.unwrap(), 2);
        assert_eq!(store.totals.envelopes.load(Ordering::Relaxed), 1);
    }
}
