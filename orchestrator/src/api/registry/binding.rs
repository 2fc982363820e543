//! Binding a pod to a node, Kubernetes' `pods/binding`: the scheduler's one write
//! to a pod's spec. It sets `spec.nodeName` on a pod nobody bound yet, with
//! compare-and-swap on the pod's revision, so two schedulers (or a user and a
//! scheduler) never both bind it.

use super::{ApiError, ObjectRef, Registry, WRITE_ATTEMPTS};
use crate::model::{Kind, Object};
use crate::store::{StoreError, Txn};

impl Registry {
    /// Binds the pod `pod` to `node` and clears its `status.nominatedNodeName`.
    /// `uid`, when given, must be the pod's: a pod deleted and created again under
    /// the same name is not bound in its predecessor's place. A pod already bound,
    /// or being deleted, is refused.
    pub async fn bind(
        &self,
        pod: &ObjectRef,
        uid: Option<&str>,
        node: &str,
    ) -> Result<Object, ApiError> {
        if pod.kind != Kind::Pod {
            return Err(ApiError::BadRequest(format!(
                "only pods can be bound to nodes, not {}",
                pod.kind.plural()
            )));
        }
        for _ in 0..WRITE_ATTEMPTS {
            let stored = self.read(pod).await?.ok_or_else(|| pod.not_found())?;
            let Object::Pod(mut object) = stored.object else {
                return Err(pod.not_found());
            };
            if uid.is_some_and(|uid| object.metadata.uid.as_deref() != Some(uid)) {
                return Err(pod.conflict());
            }
            if let Some(bound) = object.spec.node_name.as_deref().filter(|n| !n.is_empty()) {
                return Err(ApiError::AlreadyBound {
                    pod: pod.name.clone(),
                    node: bound.to_string(),
                });
            }
            if object.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::BadRequest(format!(
                    "pod {:?} is being deleted and cannot be bound",
                    pod.name
                )));
            }
            object.spec.node_name = Some(node.to_string());
            object.status.nominated_node_name = None;
            let mut object = Object::Pod(object);
            let txn = Txn::new()
                .when(pod.key(), stored.kv.mod_revision)
                .put(pod.key(), self.encode(&object)?);
            match self.store.txn(txn).await {
                Ok(revision) => {
                    object.metadata_mut().resource_version = Some(revision.to_string());
                    return Ok(object);
                }
                // Changed since we read it (its status, say): read again and check again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::Store(e)),
            }
        }
        Err(pod.conflict())
    }
}
