//! Reasons other parts of the node keep a pod NotReady although its containers
//! are ready, as Kubernetes' readiness gates do: the mesh holds a pod it cannot
//! serve (no certificate for its identity), so Services do not send it traffic
//! it would receive unprotected. The pod's worker reads them into the Ready
//! condition's reason and message.

use std::collections::HashMap;
use std::sync::Mutex;

/// Why a pod is held NotReady.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// A CamelCase word, as condition reasons are.
    pub reason: String,
    pub message: String,
}

/// The holds on this node's pods, by pod UID.
#[derive(Debug, Default)]
pub struct ReadinessHolds {
    held: Mutex<HashMap<String, Hold>>,
}

impl ReadinessHolds {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hold>> {
        // A poisoned lock only means a thread panicked mid-insert; the map is whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn hold(&self, uid: &str, hold: Hold) {
        self.held().insert(uid.to_string(), hold);
    }

    pub fn release(&self, uid: &str) {
        self.held().remove(uid);
    }

    pub fn get(&self, uid: &str) -> Option<Hold> {
        self.held().get(uid).cloned()
    }
}
