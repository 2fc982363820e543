//! The redb file behind the embedded store and the blocking operations on it.
//!
//! Three tables: `keys` (key -> current record), `history` (revision -> that
//! revision's events) and `meta` (the current revision and the compaction point).
//! Every operation is one redb transaction, so a reader sees a revision, the keys and
//! the history that belong together, and a write lands whole or not at all.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::codec;
use crate::store::{Compare, Event, EventKind, KeyValue, Op, Revision, StoreError, Txn};

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// How many bytes of history one [`Db::history`] call reads at most (it always reads
/// at least one revision), so a watcher far behind catches up in bounded steps.
const HISTORY_BATCH_BYTES: usize = 256 * 1024;

/// The open database file.
pub struct Db {
    db: Database,
    /// For error messages.
    path: PathBuf,
}

/// Where the store's history stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revisions {
    /// The revision of the last change (0: none yet).
    pub current: Revision,
    /// The oldest revision still in the history (0: never compacted).
    pub compacted: Revision,
}

/// Events read from the history by [`Db::history`].
pub struct HistoryBatch {
    /// The events under the prefix, in revision then op order.
    pub events: Vec<Event>,
    /// The revision to read from next.
    pub next: Revision,
    /// Whether the batch reached the end of the history, rather than its size limit.
    pub caught_up: bool,
}

impl Db {
    /// Opens the file at `path`, creating it if absent.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        // redb would only say "No such file or directory"; name what is missing.
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(StoreError::Backend(format!(
                "cannot open store {}: directory {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        let db = Database::create(path).map_err(|error| {
            StoreError::Backend(format!("cannot open store {}: {error}", path.display()))
        })?;
        let db = Db {
            db,
            path: path.to_owned(),
        };
        db.create_tables()?;
        Ok(db)
    }

    /// Runs `operation` on a blocking thread, off the async runtime.
    pub async fn run<T, F>(self: &Arc<Self>, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || operation(&db))
            .await
            .map_err(|error| self.backend_error("run a store operation", error))?
    }

    pub fn revisions(&self) -> Result<Revisions, StoreError> {
        self.revisions_in(&self.begin_read()?)
    }

    pub fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        let read = self.begin_read()?;
        let keys = read
            .open_table(KEYS)
            .map_err(self.backend("open the keys table"))?;
        Ok((self.load(&keys, key)?, self.revisions_in(&read)?.current))
    }

    pub fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let read = self.begin_read()?;
        let keys = read
            .open_table(KEYS)
            .map_err(self.backend("open the keys table"))?;
        let mut found = Vec::new();
        for entry in keys.range(prefix..).map_err(self.backend("list keys"))? {
            let (key, record) = entry.map_err(self.backend("list keys"))?;
            let key = key.value();
            // Keys are sorted, so those with the prefix are contiguous.
            if !key.starts_with(prefix) {
                break;
            }
            found.push(self.decode_record(key, record.value())?);
        }
        Ok((found, self.revisions_in(&read)?.current))
    }

    /// Applies a batch of transactions in one durable commit (group commit: one
    /// fsync for all of them). Each transaction is checked against the state the
    /// earlier ones left and gets a revision of its own, or its own conflict; the
    /// outer error means the batch as a whole failed and nothing was written.
    pub fn apply(&self, txns: &[Txn]) -> Result<Vec<Result<Revision, StoreError>>, StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(self.backend("begin a write transaction"))?;
        let (results, changed) = {
            let mut keys = write
                .open_table(KEYS)
                .map_err(self.backend("open the keys table"))?;
            let mut history = write
                .open_table(HISTORY)
                .map_err(self.backend("open the history table"))?;
            let mut meta = write
                .open_table(META)
                .map_err(self.backend("open the meta table"))?;
            let start =
                meta_value(&meta, META_REVISION).map_err(self.backend("read the revision"))?;
            let mut current = start;
            let mut results = Vec::with_capacity(txns.len());
            for txn in txns {
                if let Some(conflict) = self.first_conflict(&keys, txn)? {
                    results.push(Err(conflict));
                    continue;
                }
                let next = current + 1;
                let mut events = Vec::new();
                for op in &txn.ops {
                    events.extend(self.write_op(&mut keys, op, next)?);
                }
                if !events.is_empty() {
                    history
                        .insert(next, codec::encode_events(&events).as_slice())
                        .map_err(self.backend("record history"))?;
                    current = next;
                }
                results.push(Ok(current));
            }
            if current != start {
                meta.insert(META_REVISION, current)
                    .map_err(self.backend("record the revision"))?;
            }
            (results, current != start)
        };
        if changed {
            write
                .commit()
                .map_err(self.backend("commit a transaction"))?;
        } else {
            write
                .abort()
                .map_err(self.backend("abort an empty transaction"))?;
        }
        Ok(results)
    }

    /// The first of `txn`'s compares that does not hold, as a conflict.
    fn first_conflict(
        &self,
        keys: &impl ReadableTable<&'static str, &'static [u8]>,
        txn: &Txn,
    ) -> Result<Option<StoreError>, StoreError> {
        for Compare::ModRevision { key, revision } in &txn.compares {
            let actual = self.load(keys, key)?.map_or(0, |kv| kv.mod_revision);
            if actual != *revision {
                return Ok(Some(StoreError::Conflict {
                    key: key.clone(),
                    expected: *revision,
                    actual,
                }));
            }
        }
        Ok(None)
    }

    /// Drops the history before `revision`.
    pub fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(self.backend("begin a write transaction"))?;
        {
            let mut meta = write
                .open_table(META)
                .map_err(self.backend("open the meta table"))?;
            let current =
                meta_value(&meta, META_REVISION).map_err(self.backend("read the revision"))?;
            if revision > current {
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            let compacted = meta_value(&meta, META_COMPACTED)
                .map_err(self.backend("read the compaction point"))?;
            if revision <= compacted {
                return Ok(());
            }
            let mut history = write
                .open_table(HISTORY)
                .map_err(self.backend("open the history table"))?;
            history
                .retain_in(..revision, |_, _| false)
                .map_err(self.backend("drop history"))?;
            meta.insert(META_COMPACTED, revision)
                .map_err(self.backend("record the compaction point"))?;
        }
        write.commit().map_err(self.backend("commit a compaction"))
    }

    /// The events under `prefix` from revision `from` on, up to the batch size.
    pub fn history(&self, prefix: &str, from: Revision) -> Result<HistoryBatch, StoreError> {
        let read = self.begin_read()?;
        let compacted = self.revisions_in(&read)?.compacted;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let history = read
            .open_table(HISTORY)
            .map_err(self.backend("open the history table"))?;
        let mut batch = HistoryBatch {
            events: Vec::new(),
            next: from,
            caught_up: false,
        };
        let mut bytes_read = 0;
        for entry in history
            .range(from..)
            .map_err(self.backend("read history"))?
        {
            if bytes_read >= HISTORY_BATCH_BYTES {
                return Ok(batch);
            }
            let (revision, changes) = entry.map_err(self.backend("read history"))?;
            let (revision, changes) = (revision.value(), changes.value());
            bytes_read += changes.len();
            let events = codec::decode_events(revision, changes).map_err(|error| {
                self.backend_error(
                    format_args!("decode the history of revision {revision}"),
                    error,
                )
            })?;
            batch.events.extend(
                events
                    .into_iter()
                    .filter(|event| event.kv.key.starts_with(prefix)),
            );
            batch.next = revision + 1;
        }
        batch.caught_up = true;
        Ok(batch)
    }

    /// Makes sure every table exists, so that reads never find one missing.
    fn create_tables(&self) -> Result<(), StoreError> {
        let write = self
            .db
            .begin_write()
            .map_err(self.backend("begin a write transaction"))?;
        write
            .open_table(KEYS)
            .map_err(self.backend("create the keys table"))?;
        write
            .open_table(HISTORY)
            .map_err(self.backend("create the history table"))?;
        write
            .open_table(META)
            .map_err(self.backend("create the meta table"))?;
        write.commit().map_err(self.backend("commit the tables"))
    }

    /// Applies one op at `revision`; the event it caused, if it changed anything.
    fn write_op(
        &self,
        keys: &mut Table<&'static str, &'static [u8]>,
        op: &Op,
        revision: Revision,
    ) -> Result<Option<Event>, StoreError> {
        match op {
            Op::Put { key, value } => {
                let prev_kv = self.load(keys, key)?;
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev_kv
                        .as_ref()
                        .map_or(revision, |prev| prev.create_revision),
                    mod_revision: revision,
                    version: prev_kv.as_ref().map_or(1, |prev| prev.version + 1),
                };
                keys.insert(key.as_str(), codec::encode_record(&kv).as_slice())
                    .map_err(self.backend("write a key"))?;
                Ok(Some(Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv,
                }))
            }
            Op::Delete { key } => {
                let removed = keys
                    .remove(key.as_str())
                    .map_err(self.backend("delete a key"))?;
                let Some(record) = removed else {
                    return Ok(None);
                };
                let prev_kv = self.decode_record(key, record.value())?;
                Ok(Some(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: revision,
                        version: 0,
                    },
                    prev_kv: Some(prev_kv),
                }))
            }
        }
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.db
            .begin_read()
            .map_err(self.backend("begin a read transaction"))
    }

    fn revisions_in(&self, read: &ReadTransaction) -> Result<Revisions, StoreError> {
        let meta = read
            .open_table(META)
            .map_err(self.backend("open the meta table"))?;
        Ok(Revisions {
            current: meta_value(&meta, META_REVISION).map_err(self.backend("read the revision"))?,
            compacted: meta_value(&meta, META_COMPACTED)
                .map_err(self.backend("read the compaction point"))?,
        })
    }

    fn load(
        &self,
        keys: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<KeyValue>, StoreError> {
        let record = keys.get(key).map_err(self.backend("read a key"))?;
        record
            .map(|record| self.decode_record(key, record.value()))
            .transpose()
    }

    fn decode_record(&self, key: &str, record: &[u8]) -> Result<KeyValue, StoreError> {
        codec::decode_record(key, record)
            .map_err(|error| self.backend_error(format_args!("decode the record of {key}"), error))
    }

    /// Turns a failure to do `what` into a [`StoreError::Backend`] naming the file.
    fn backend<E: Display>(&self, what: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |error| self.backend_error(what, error)
    }

    fn backend_error(&self, what: impl Display, error: impl Display) -> StoreError {
        StoreError::Backend(format!("store {}: {what}: {error}", self.path.display()))
    }
}

/// A counter in the meta table; 0 when never written.
fn meta_value(
    meta: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, redb::StorageError> {
    Ok(meta.get(name)?.map_or(0, |value| value.value()))
}
