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

    /// Keeps only the holds on pods `keep` names.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.held().retain(|uid, _| keep(uid));
    }

    pub fn get(&self, uid: &str) -> Option<Hold> {
        self.held().get(uid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_kept_released_and_retained_by_pod() {
        let holds = ReadinessHolds::default();
        let hold = |reason: &str| Hold {
            reason: reason.into(),
            message: format!("{reason} message"),
        };
        holds.hold("a", hold("MeshCertificate"));
        holds.hold("b", hold("MeshCertificate"));
        assert_eq!(holds.get("a"), Some(hold("MeshCertificate")));
        holds.release("a");
        assert_eq!(holds.get("a"), None);
        holds.retain(|uid| uid != "b");
        assert_eq!(holds.get("b"), None);
    }
}
