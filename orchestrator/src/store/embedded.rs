//! The embedded store: a single crash-safe redb file on local disk, for a cluster of
//! one node.
//!
//! Every transaction that changes something commits durably (redb's immediate
//! durability: fsync) before [`Store::txn`] returns, so an acknowledged write survives
//! a crash or power loss. Besides the keys, the file keeps each revision's events in a
//! history table that watches replay from, until compaction drops them.
//!
//! redb's work is blocking, so it runs on tokio's blocking threads; redb itself
//! serialises write transactions and lets reads run beside them.

mod codec;
mod db;
mod watcher;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use self::db::Db;
use self::watcher::Watcher;
use crate::store::{KeyValue, Revision, Store, StoreError, Txn, WatchStream};

/// The store in one redb file. Clones share the open file; watches end once every
/// clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Db>,
    /// The latest committed revision, to wake watchers that have caught up.
    revisions: watch::Sender<Revision>,
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file if absent; its directory must
    /// exist. A file may be open only once at a time.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Db::open(path)?;
        let current = db.revisions()?.current;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            revisions: watch::Sender::new(current),
        })
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.db.run(|db| db.revisions()).await?.current)
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        let key = key.to_owned();
        self.db.run(move |db| db.get(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let prefix = prefix.to_owned();
        self.db.run(move |db| db.list(&prefix)).await
    }

    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError> {
        let revision = self.db.run(move |db| db.apply(&txn)).await?;
        // Concurrent transactions may finish out of order; the channel only moves forward.
        self.revisions.send_if_modified(|latest| {
            let newer = revision > *latest;
            if newer {
                *latest = revision;
            }
            newer
        });
        Ok(revision)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let revisions = self.db.run(|db| db.revisions()).await?;
        let start = match from {
            0 => revisions.current + 1,
            from if from < revisions.compacted => {
                return Err(StoreError::Compacted {
                    requested: from,
                    compacted: revisions.compacted,
                });
            }
            from => from,
        };
        let watcher = Watcher::new(
            Arc::clone(&self.db),
            prefix.to_owned(),
            start,
            self.revisions.subscribe(),
        );
        Ok(watcher.into_stream())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.db.run(move |db| db.compact(revision)).await
    }

    async fn compacted(&self) -> Result<Revision, StoreError> {
        Ok(self.db.run(|db| db.revisions()).await?.compacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store_conformance_tests!(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open the store");
        (store, dir)
    });
}
