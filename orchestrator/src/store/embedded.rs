//! The embedded store: a single crash-safe redb file on local disk, for a cluster of
//! one node.
//!
//! Why redb rather than SQLite: it is pure Rust (no C library to build or link), its
//! copy-on-write B-trees with checksummed commits survive a crash at any point
//! without a recovery log to replay, readers see a snapshot and never block the
//! writer, and its typed key-value tables map one to one onto what this store keeps
//! (keys, per-revision history, two counters), with no SQL layer in between.
//!
//! Every transaction that changes something commits durably (redb's immediate
//! durability: fsync) before [`Store::txn`] returns, so an acknowledged write survives
//! a crash or power loss. Besides the keys, the file keeps each revision's events in a
//! history table that watches replay from, until compaction drops them.
//!
//! Writes (and their fsync) run on a commit thread of their own, compaction on
//! tokio's blocking threads. Reads (points, lists, a watch's history batches) run in
//! place: redb reads never wait for a lock (each sees a committed snapshot) and come
//! from its page cache, so a hand-off to another thread would cost more than the
//! read.

mod codec;
mod committer;
mod db;
mod watcher;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use self::committer::Committer;
use self::db::Db;
use self::watcher::Watcher;
use crate::store::{KeyValue, Revision, Store, StoreError, Txn, WatchStream};

/// The store in one redb file. Clones share the open file; watches end once every
/// clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Db>,
    /// Writes go through the group-commit thread.
    committer: Arc<Committer>,
    /// The latest committed revision, to wake watchers that have caught up.
    revisions: watch::Receiver<Revision>,
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file if absent; its directory must
    /// exist. A file may be open only once at a time.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Arc::new(Db::open(path)?);
        let (announce, revisions) = watch::channel(db.revisions()?.current);
        Ok(EmbeddedStore {
            committer: Arc::new(Committer::start(Arc::clone(&db), announce)?),
            db,
            revisions,
        })
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.db.revisions()?.current)
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        self.db.get(key)
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.db.list(prefix)
    }

    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError> {
        self.committer.submit(txn).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let revisions = self.db.revisions()?;
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
            self.revisions.clone(),
        );
        Ok(watcher.into_stream())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.db.run(move |db| db.compact(revision)).await
    }

    async fn compacted(&self) -> Result<Revision, StoreError> {
        Ok(self.db.revisions()?.compacted)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    crate::store_conformance_tests!(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open the store");
        (store, dir)
    });

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn temp_store() -> (EmbeddedStore, tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        (EmbeddedStore::open(&path).unwrap(), dir, path)
    }

    async fn put(store: &EmbeddedStore, key: &str, value: &str) -> Revision {
        store.txn(Txn::new().put(key, value)).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_data_revision_and_compaction_point() {
        let (store, _dir, path) = temp_store();
        let created = put(&store, "/a", "one").await;
        put(&store, "/b", "gone").await;
        let compacted = put(&store, "/a", "two").await;
        let last = store.txn(Txn::new().delete("/b")).await.unwrap();
        store.compact(compacted).await.unwrap();
        let (before, _) = store.list("/").await.unwrap();
        drop(store);

        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.revision().await.unwrap(), last);
        assert_eq!(store.compacted().await.unwrap(), compacted);
        let (after, _) = store.list("/").await.unwrap();
        assert_eq!(after, before);
        let a = &after[0];
        assert_eq!(
            (
                a.key.as_str(),
                a.value.as_slice(),
                a.create_revision,
                a.version
            ),
            ("/a", b"two".as_slice(), created, 2)
        );
        assert!(matches!(
            store.watch("/", compacted - 1).await,
            Err(StoreError::Compacted { requested, compacted: at })
                if requested == compacted - 1 && at == compacted
        ));
        // The history after the compaction point is still there.
        let mut stream = store.watch("/", compacted).await.unwrap();
        let replayed = tokio::time::timeout(TIMEOUT, stream.next()).await.unwrap();
        assert_eq!(replayed.unwrap().unwrap().kv.mod_revision, compacted);
        assert_eq!(put(&store, "/c", "new").await, last + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_names_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("store.redb");
        let Err(StoreError::Backend(message)) = EmbeddedStore::open(&path) else {
            panic!("opening under a missing directory must fail");
        };
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("does not exist"), "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_watcher_behind_compaction_ends_with_the_error() {
        let (store, _dir, _) = temp_store();
        let first = put(&store, "/k1", "v").await;
        put(&store, "/k2", "v").await;
        let third = put(&store, "/k3", "v").await;
        // The stream reads lazily: nothing is read before the first poll.
        let mut stream = store.watch("/", first).await.unwrap();
        store.compact(third).await.unwrap();
        let item = tokio::time::timeout(TIMEOUT, stream.next()).await.unwrap();
        assert!(matches!(
            item,
            Some(Err(StoreError::Compacted { requested, compacted }))
                if requested == first && compacted == third
        ));
        let end = tokio::time::timeout(TIMEOUT, stream.next()).await.unwrap();
        assert!(end.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_ends_when_the_store_is_dropped() {
        let (store, _dir, _) = temp_store();
        let written = put(&store, "/k", "v").await;
        let mut stream = store.watch("/", written).await.unwrap();
        drop(store);
        // What was written before the drop is still delivered, then the stream ends.
        let item = tokio::time::timeout(TIMEOUT, stream.next()).await.unwrap();
        assert_eq!(item.unwrap().unwrap().kv.mod_revision, written);
        let end = tokio::time::timeout(TIMEOUT, stream.next()).await.unwrap();
        assert!(end.is_none());
    }

    /// Set in the child process of [`acknowledged_writes_survive_sigkill`] to the store's path.
    const CRASH_CHILD_ENV: &str = "SKIFF_STORE_CRASH_CHILD";
    /// Marks an acknowledgement in the child's output, among the test harness's lines.
    const ACK: &str = "skiff-ack ";
    /// Acknowledgements after which the parent kills the child.
    const ACKS_BEFORE_KILL: usize = 200;
    /// Where the child stops on its own if nobody kills it.
    const CRASH_CHILD_MAX_WRITES: usize = 20_000;

    fn crash_key(i: usize) -> String {
        format!("/crash/{i:06}")
    }

    fn crash_value(i: usize) -> Vec<u8> {
        format!("value {i};").repeat(64).into_bytes()
    }

    /// The writer that [`acknowledged_writes_survive_sigkill`] runs in a child process
    /// and kills. In a normal test run (the variable unset) it returns at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let store = EmbeddedStore::open(Path::new(&path)).unwrap();
        let mut stdout = std::io::stdout();
        for i in 0..CRASH_CHILD_MAX_WRITES {
            let txn = Txn::new().put(crash_key(i), crash_value(i));
            let revision = store.txn(txn).await.unwrap();
            writeln!(stdout, "{ACK}{revision} {i}").unwrap();
            stdout.flush().unwrap();
        }
    }

    /// Runs [`crash_child`] on `path`, SIGKILLs it after [`ACKS_BEFORE_KILL`]
    /// acknowledgements, and returns every (revision, index) it acknowledged.
    fn write_until_killed(path: &Path) -> Vec<(Revision, usize)> {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::embedded::tests::crash_child",
                "--nocapture",
            ])
            .env(CRASH_CHILD_ENV, path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let parse = |line: String| {
            let (_, ack) = line.split_once(ACK)?;
            let (revision, index) = ack.split_once(' ')?;
            Some((revision.parse().unwrap(), index.parse().unwrap()))
        };
        let mut acks = Vec::new();
        while acks.len() < ACKS_BEFORE_KILL {
            let line = lines.next().expect("the child exited early").unwrap();
            acks.extend(parse(line));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Lines still in the pipe were acknowledged before the kill too.
        acks.extend(lines.map_while(Result::ok).filter_map(parse));
        acks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_writes_survive_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let child_path = path.clone();
        let acks = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || write_until_killed(&child_path)),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(acks.len() >= ACKS_BEFORE_KILL);

        let store = EmbeddedStore::open(&path).unwrap();
        for (revision, i) in &acks {
            // One put per transaction, in order, on a fresh store.
            assert_eq!(*revision, *i as Revision + 1);
            let (kv, _) = store.get(&crash_key(*i)).await.unwrap();
            let kv = kv.unwrap_or_else(|| panic!("acknowledged {} is missing", crash_key(*i)));
            assert_eq!((kv.mod_revision, kv.value), (*revision, crash_value(*i)));
        }
        // At most the one write in flight at the kill committed without an ack.
        let last = acks.last().unwrap().0;
        let current = store.revision().await.unwrap();
        assert!(
            current == last || current == last + 1,
            "{current} after {last}"
        );
    }
}
