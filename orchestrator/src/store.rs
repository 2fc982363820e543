//! The state store: a revisioned key-value store with etcd's semantics, behind one
//! trait so the embedded file store ([`embedded`]) and etcd ([`etcd`], multi-node) are
//! interchangeable.
//!
//! - Every change bumps a global revision; a key remembers the revision that created
//!   it and the one that last modified it.
//! - Writes are transactions: compare-and-swap conditions on keys' mod revisions, then
//!   puts and deletes that all land at one new revision, or nothing at all.
//! - A watch streams the changes under a prefix, in revision order, from any revision
//!   still in the history; compaction drops history older than a revision.
//!
//! [`conformance`] holds the tests every backend must pass; [`election`] is who
//! leads the cluster's control loops.

pub mod conformance;
pub mod election;
pub mod embedded;
pub mod etcd;

use futures::stream::BoxStream;

/// A store revision. Revision 0 is "none": the store starts at 0 and the first
/// change is revision 1.
pub type Revision = u64;

/// A key and its value as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the change that created the key.
    pub create_revision: Revision,
    /// The revision of the change that last wrote the key.
    pub mod_revision: Revision,
    /// Writes since creation: 1 after the create.
    pub version: u64,
}

/// A condition a transaction checks before it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision is `revision`; 0 means the key must not exist.
    ModRevision { key: String, revision: Revision },
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting an absent key is not an error and produces no event.
    Delete {
        key: String,
    },
}

/// Conditions, then writes, applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to be at `revision` (0: absent).
    pub fn when(mut self, key: impl Into<String>, revision: Revision) -> Self {
        self.compares.push(Compare::ModRevision {
            key: key.into(),
            revision,
        });
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// After the change. For a delete: the key, an empty value, `mod_revision` set to
    /// the deleting revision, `create_revision` and `version` 0.
    pub kv: KeyValue,
    /// Before the change: the previous value of an overwritten or deleted key.
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A transaction's compare failed; nothing was written.
    #[error("conflict on {key}: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        /// The key's mod revision now (0: absent).
        actual: Revision,
    },
    /// A watch asked for history that compaction removed.
    #[error("revision {requested} has been compacted (history starts at {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// A compaction asked for a revision the store has not reached.
    #[error("cannot compact to revision {requested}: the store is at {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The backend did not answer (a cluster that is down or cut off); nothing
    /// is known to have been written.
    #[error("the store is unreachable: {0}")]
    Unreachable(String),
    #[error("store backend: {0}")]
    Backend(String),
}

/// A stream of changes, in revision order; ends only with an error (e.g. the
/// history it needed was compacted away) or when the store shuts down.
pub type WatchStream = BoxStream<'static, Result<Event, StoreError>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// One key, and the revision at which it was read.
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError>;

    /// Every key starting with `prefix`, sorted by key, and the revision of the read.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// Applies `txn` if all its compares hold. Returns the revision of the change
    /// (the current revision when nothing changed).
    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError>;

    /// Changes under `prefix` at revisions >= `from`; `from` 0 means changes after
    /// the current revision.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// Drops history before `revision`; watches from earlier revisions then fail
    /// with [`StoreError::Compacted`]. Current values are kept.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The oldest revision a watch may start from (0 when never compacted).
    async fn compacted(&self) -> Result<Revision, StoreError>;

    /// Waits until `candidate` leads `election` among the agents sharing the store.
    /// A store only one agent uses makes it lead at once, for good.
    async fn campaign(
        &self,
        _election: &str,
        _candidate: &str,
    ) -> Result<election::Term, StoreError> {
        Ok(election::Term::sole())
    }
}
