//! Kept-alive HTTP/1.1 connections to backend endpoints, so that a request does
//! not pay a new connection (or HBONE stream) each time. Connections are kept
//! per source identity and endpoint: a tunnel carries one source's identity, so
//! only that source's requests may reuse it. A connection goes back to its list
//! once its response head arrived; it is taken again only when hyper says it is
//! ready (the previous response was read to its end) and dropped once closed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::mesh::Identity;

use hyper::client::conn::http1::SendRequest;

/// The most connections kept per endpoint; more are closed after their response.
const MAX_PER_ENDPOINT: usize = 32;

/// Who a connection is for: the source's identity (None: plaintext) and the
/// endpoint.
pub type PoolKey = (Option<Identity>, SocketAddr);

pub struct Pool<B> {
    connections: Mutex<HashMap<PoolKey, Vec<SendRequest<B>>>>,
}

impl<B> Default for Pool<B> {
    fn default() -> Self {
        Self {
            connections: Mutex::default(),
        }
    }
}

impl<B> Pool<B> {
    /// A connection for `key` ready for a request, if one is kept.
    pub fn take(&self, key: &PoolKey) -> Option<SendRequest<B>> {
        let mut connections = self.lock();
        let list = connections.get_mut(key)?;
        list.retain(|c| !c.is_closed());
        let ready = list.iter().position(SendRequest::is_ready)?;
        Some(list.swap_remove(ready))
    }

    /// Keeps a connection whose request was sent.
    pub fn put(&self, key: PoolKey, connection: SendRequest<B>) {
        let mut connections = self.lock();
        let list = connections.entry(key).or_default();
        list.retain(|c| !c.is_closed());
        if list.len() < MAX_PER_ENDPOINT {
            list.push(connection);
        }
    }

    /// Closes the connections to endpoints not in `current`.
    pub fn keep_only(&self, current: &HashSet<SocketAddr>) {
        self.lock().retain(|(_, addr), _| current.contains(addr));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<SendRequest<B>>>> {
        // A list of handles: a panicked holder cannot leave it inconsistent.
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}
