//! One watch on the embedded store: a stream that reads the history table from its
//! next revision on, batch by batch, as fast as its consumer takes events.
//!
//! The history in redb is the source of truth, so a slow consumer never loses an
//! event; the store's revision channel only wakes watchers that have caught up.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;

use super::db::Db;
use crate::store::{Event, Revision, StoreError, WatchStream};

pub struct Watcher {
    db: Arc<Db>,
    prefix: String,
    /// The first revision not yet read from the history.
    next: Revision,
    /// Read but not yet handed to the consumer.
    pending: VecDeque<Event>,
    /// Wakes the watcher after a commit; closed when the store is dropped.
    revisions: watch::Receiver<Revision>,
    /// Set after the stream yielded an error, its last item.
    failed: bool,
}

impl Watcher {
    pub fn new(
        db: Arc<Db>,
        prefix: String,
        from: Revision,
        revisions: watch::Receiver<Revision>,
    ) -> Self {
        Watcher {
            db,
            prefix,
            next: from,
            pending: VecDeque::new(),
            revisions,
            failed: false,
        }
    }

    pub fn into_stream(self) -> WatchStream {
        futures::stream::unfold(self, Watcher::advance).boxed()
    }

    /// The next item of the stream, and the watcher to take the one after from.
    async fn advance(mut self) -> Option<(Result<Event, StoreError>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.failed {
                return None;
            }
            // Marked before reading, so a commit the read below misses still wakes us.
            self.revisions.mark_unchanged();
            // In place, like the store's other reads: bounded by the batch size.
            match self.db.history(&self.prefix, self.next) {
                Err(error) => {
                    self.failed = true;
                    return Some((Err(error), self));
                }
                Ok(batch) => {
                    self.next = batch.next;
                    self.pending.extend(batch.events);
                    if batch.caught_up
                        && self.pending.is_empty()
                        && self.revisions.changed().await.is_err()
                    {
                        // The store was dropped: nothing more will be written.
                        return None;
                    }
                }
            }
        }
    }
}
