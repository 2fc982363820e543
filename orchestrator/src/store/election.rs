//! Leadership among the agents that share a store: only the leader runs the
//! scheduler and the controllers, while every agent runs its own node, dataplane
//! and DNS. On etcd a leader holds a lease it renews several times per TTL; when
//! it dies or is cut off, the lease expires and the next candidate, already
//! waiting in etcd's election, leads within about the TTL. The embedded store
//! has one agent, which always leads.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

/// One stretch of leadership: ends when [`Term::lost`] resolves, or is given up
/// with [`Term::resign`].
pub struct Term {
    lost: watch::Receiver<bool>,
    /// The sole leader's: kept so that `lost` never resolves.
    _forever: Option<watch::Sender<bool>>,
    /// Gives the leadership up at once, so another candidate need not wait for
    /// the lease to expire.
    resign: Option<BoxFuture<'static, ()>>,
    /// Whatever keeps the leadership alive (the lease renewal task).
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Term {
    /// Leadership that lasts as long as the process: the store has one agent.
    pub fn sole() -> Self {
        let (forever, lost) = watch::channel(false);
        Self {
            lost,
            _forever: Some(forever),
            resign: None,
            keeper: None,
        }
    }

    /// A term that ends when `lost` turns true (or its sender goes).
    pub fn new(
        lost: watch::Receiver<bool>,
        keeper: tokio::task::JoinHandle<()>,
        resign: BoxFuture<'static, ()>,
    ) -> Self {
        Self {
            lost,
            _forever: None,
            resign: Some(resign),
            keeper: Some(keeper),
        }
    }

    /// Resolves when the leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Gives the leadership up.
    pub async fn resign(mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        if let Some(resign) = self.resign.take() {
            // Best effort: a lease that cannot be revoked expires by itself.
            let _ = tokio::time::timeout(Duration::from_secs(2), resign).await;
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}
