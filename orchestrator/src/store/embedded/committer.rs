//! Group commit: one thread owns the store's writes. It takes every transaction
//! waiting in its queue, applies them in one redb write transaction with one fsync,
//! then answers each. Under concurrent writers this turns N fsyncs into one, as
//! etcd's write-ahead log does; a lone writer waits for nothing extra.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::{oneshot, watch};

use super::db::Db;
use crate::store::{Revision, StoreError, Txn};

/// Most transactions in one commit, to bound the latency of the first.
const MAX_BATCH: usize = 256;

struct Pending {
    txn: Txn,
    reply: oneshot::Sender<Result<Revision, StoreError>>,
}

/// The handle to the commit thread. Dropping it stops the thread and waits for it,
/// so the file is closed (and may be reopened) once the store is gone.
pub struct Committer {
    queue: Option<mpsc::Sender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// Starts the commit thread. It announces each committed revision on
    /// `revisions`, which closes (ending the watches) when the thread stops.
    pub fn start(db: Arc<Db>, revisions: watch::Sender<Revision>) -> Result<Self, StoreError> {
        let (queue, waiting) = mpsc::channel::<Pending>();
        let thread = std::thread::Builder::new()
            .name("skiff-store-commit".into())
            .spawn(move || commit_loop(&db, &waiting, &revisions))
            .map_err(|e| StoreError::Backend(format!("starting the store's commit thread: {e}")))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    pub async fn submit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the store is closing".into()))?
            .send(Pending { txn, reply })
            .map_err(|_| StoreError::Backend("the store's commit thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the store's commit thread has stopped".into()))?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queue ends the loop once the batch in hand is committed.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn commit_loop(db: &Db, waiting: &mpsc::Receiver<Pending>, revisions: &watch::Sender<Revision>) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (txns, replies): (Vec<Txn>, Vec<_>) =
            batch.into_iter().map(|p| (p.txn, p.reply)).unzip();
        match db.apply(&txns) {
            Ok(results) => {
                let latest = results
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .max()
                    .copied();
                // Announce before answering, so a writer that then watches from its
                // own revision never waits on a stale channel value.
                if let Some(latest) = latest {
                    revisions.send_if_modified(|current| {
                        let newer = latest > *current;
                        if newer {
                            *current = latest;
                        }
                        newer
                    });
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}
