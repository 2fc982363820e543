//! Binding a pod to a node, Kubernetes' `pods/binding`: the scheduler's one write
//! to a pod's spec. It sets `spec.nodeName` on a pod nobody bound yet, with
//! compare-and-swap on the pod's revision, so two schedulers (or a user and a
//! scheduler) never both bind it.

use super::{ApiError, ObjectRef, Registry, WRITE_ATTEMPTS};
use crate::model::{Kind, Object, Pod};
use std::sync::Arc;

use crate::store::{Revision, StoreError, Txn};

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
        let key = pod.key();
        // The first attempt starts from the watch cache's copy (the scheduler binds
        // pods it has just seen there). A stale copy fails the compare, or the
        // checks, and then the store decides.
        let mut cached = self
            .watch_cache
            .get(Kind::Pod, &key)
            .and_then(|o| cached_revision(&o));
        for _ in 0..WRITE_ATTEMPTS {
            let from_cache = cached
                .take()
                .and_then(|(object, revision)| Some((bindable(object, pod, uid).ok()?, revision)));
            let (mut object, revision) = match from_cache {
                Some(found) => found,
                None => {
                    let stored = self.read(pod).await?.ok_or_else(|| pod.not_found())?;
                    (bindable(stored.object, pod, uid)?, stored.kv.mod_revision)
                }
            };
            object.spec.node_name = Some(node.to_string());
            object.status.nominated_node_name = None;
            let mut object = Object::Pod(object);
            let txn = Txn::new()
                .when(key.clone(), revision)
                .put(key.clone(), self.encode(&object)?);
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

/// A cached object (a copy to change) and the store revision it was read at.
fn cached_revision(object: &Arc<Object>) -> Option<(Object, Revision)> {
    let revision = object
        .metadata()
        .resource_version
        .as_deref()?
        .parse()
        .ok()?;
    Some((Object::clone(object), revision))
}

/// `object` as a pod that may be bound: `uid`'s (when given), unbound and not
/// being deleted.
fn bindable(object: Object, pod: &ObjectRef, uid: Option<&str>) -> Result<Pod, ApiError> {
    let Object::Pod(object) = object else {
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
    Ok(object)
}
