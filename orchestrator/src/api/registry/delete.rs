//! Deleting objects the way Kubernetes does:
//! - an object with finalizers, or a pod bound to a node with a grace period, is
//!   marked (deletionTimestamp) and stays until its finalizers or its node let go;
//! - otherwise it is removed, with its Service allocations, in one transaction;
//! - what it owns (ownerReferences) is then deleted too (background), first
//!   (foreground), or kept with the reference removed (orphan);
//! - deleting a Namespace deletes everything in it.

use serde_json::Value;

use super::services::allocation_keys;
use super::{ApiError, ObjectRef, Registry, Stored, WRITE_ATTEMPTS, kind_prefix, now};
use crate::api::encryption::SecretBox;
use crate::model::{Kind, Object};
use crate::store::{StoreError, Txn};

/// What happens to the objects a deleted object owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// The owner goes first, then its dependents.
    #[default]
    Background,
    /// Dependents go first, then the owner.
    Foreground,
    /// Dependents stay; their reference to the owner is removed.
    Orphan,
}

#[derive(Clone, Debug)]
pub struct Deleted {
    /// The object as deleted, or as it is now while terminating.
    pub object: Value,
    /// True when the object stays until its finalizers or its node release it.
    pub terminating: bool,
}

impl Registry {
    pub async fn delete(
        &self,
        reference: &ObjectRef,
        grace_period_seconds: Option<i64>,
        propagation: Propagation,
    ) -> Result<Deleted, ApiError> {
        // Recursion through dependents needs a boxed future.
        Box::pin(self.delete_inner(reference, grace_period_seconds, propagation)).await
    }

    async fn delete_inner(
        &self,
        reference: &ObjectRef,
        grace_period_seconds: Option<i64>,
        propagation: Propagation,
    ) -> Result<Deleted, ApiError> {
        for _ in 0..WRITE_ATTEMPTS {
            let stored = self
                .read(reference)
                .await?
                .ok_or_else(|| reference.not_found())?;
            if propagation == Propagation::Foreground {
                self.delete_dependents(&stored.object, Propagation::Foreground)
                    .await?;
            }
            if reference.kind == Kind::Namespace {
                self.empty_namespace(&reference.name).await?;
            }
            let result = match grace(&stored.object, grace_period_seconds) {
                Some(grace) => self.mark_terminating(reference, &stored, grace).await,
                None => self.remove(reference, &stored).await,
            };
            match result {
                Ok(deleted) => {
                    if !deleted.terminating {
                        self.after_removal(&stored.object, propagation).await?;
                    }
                    return Ok(deleted);
                }
                // Changed since we read it: read again and redo.
                Err(ApiError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(reference.conflict())
    }

    /// Removes the object and releases what it holds; cascades happen afterwards.
    async fn remove(&self, reference: &ObjectRef, stored: &Stored) -> Result<Deleted, ApiError> {
        let mut txn = Txn::new()
            .when(reference.key(), stored.kv.mod_revision)
            .delete(reference.key());
        if reference.kind == Kind::Service {
            for key in allocation_keys(&stored.object) {
                txn = txn.delete(key);
            }
        }
        self.store.txn(txn).await.map_err(ApiError::Store)?;
        Ok(Deleted {
            object: stored.object.to_value(),
            terminating: false,
        })
    }

    /// Sets deletionTimestamp (once) and the grace period, leaving the object.
    async fn mark_terminating(
        &self,
        reference: &ObjectRef,
        stored: &Stored,
        grace: i64,
    ) -> Result<Deleted, ApiError> {
        let mut object = stored.object.clone();
        let meta = object.metadata_mut();
        if meta.deletion_timestamp.is_some() {
            return Ok(Deleted {
                object: stored.object.to_value(),
                terminating: true,
            });
        }
        meta.deletion_timestamp = Some(now());
        meta.deletion_grace_period_seconds = Some(grace);
        let txn = Txn::new()
            .when(reference.key(), stored.kv.mod_revision)
            .put(reference.key(), self.encode(&object)?);
        let revision = self.store.txn(txn).await.map_err(ApiError::Store)?;
        object.metadata_mut().resource_version = Some(revision.to_string());
        Ok(Deleted {
            object: object.to_value(),
            terminating: true,
        })
    }

    /// What follows the removal of `owner` for the objects it owns.
    pub(super) async fn after_removal(
        &self,
        owner: &Object,
        propagation: Propagation,
    ) -> Result<(), ApiError> {
        match propagation {
            Propagation::Orphan => self.orphan_dependents(owner).await,
            // Foreground already deleted them; a dependent created meanwhile still goes.
            Propagation::Background | Propagation::Foreground => {
                self.delete_dependents(owner, Propagation::Background).await
            }
        }
    }

    async fn delete_dependents(
        &self,
        owner: &Object,
        propagation: Propagation,
    ) -> Result<(), ApiError> {
        for dependent in self.dependents(owner).await? {
            match self.delete(&dependent, None, propagation).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes `owner`'s uid from the ownerReferences of everything it owns.
    async fn orphan_dependents(&self, owner: &Object) -> Result<(), ApiError> {
        let Some(uid) = owner.metadata().uid.clone() else {
            return Ok(());
        };
        for dependent in self.dependents(owner).await? {
            for _ in 0..WRITE_ATTEMPTS {
                let Some(stored) = self.read(&dependent).await? else {
                    break;
                };
                let mut object = stored.object.clone();
                object
                    .metadata_mut()
                    .owner_references
                    .retain(|r| r.uid != uid);
                let txn = Txn::new()
                    .when(dependent.key(), stored.kv.mod_revision)
                    .put(dependent.key(), self.encode(&object)?);
                match self.store.txn(txn).await {
                    Ok(_) => break,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::Store(e)),
                }
            }
        }
        Ok(())
    }

    /// The objects whose ownerReferences name `owner`'s uid: in its namespace, or
    /// anywhere for a cluster-scoped owner. Only stored objects whose bytes hold the
    /// uid (or that are sealed) are decoded: a delete scans its namespace, it does
    /// not decode it.
    async fn dependents(&self, owner: &Object) -> Result<Vec<ObjectRef>, ApiError> {
        let Some(uid) = owner.metadata().uid.as_deref() else {
            return Ok(Vec::new());
        };
        let mentions_uid = memchr::memmem::Finder::new(uid.as_bytes());
        let namespace = owner.metadata().namespace.as_deref();
        let mut found = Vec::new();
        for kind in Kind::ALL {
            if namespace.is_some() && !kind.namespaced() {
                continue;
            }
            let (kvs, _) = self
                .store
                .list(&kind_prefix(kind, namespace))
                .await
                .map_err(ApiError::Store)?;
            for kv in kvs {
                if !SecretBox::is_sealed(&kv.value) && mentions_uid.find(&kv.value).is_none() {
                    continue;
                }
                let object = self.decode(kv)?.object;
                if object
                    .metadata()
                    .owner_references
                    .iter()
                    .any(|r| r.uid == uid)
                {
                    found.push(ObjectRef::of(&object));
                }
            }
        }
        Ok(found)
    }

    /// Deletes every object in a namespace (the namespace controller's job).
    async fn empty_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        for kind in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
            let (objects, _) = self.list_objects(kind, Some(namespace)).await?;
            for object in objects {
                match self
                    .delete(&ObjectRef::of(&object), Some(0), Propagation::Background)
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// The grace period `object` gets before removal, or None to remove it now: objects
/// with finalizers wait for them; pods bound to a node get their grace period for
/// the node to stop them (0 forces immediate removal).
fn grace(object: &Object, requested: Option<i64>) -> Option<i64> {
    let meta = object.metadata();
    if !meta.finalizers.is_empty() {
        return Some(
            requested
                .or(meta.deletion_grace_period_seconds)
                .unwrap_or(0),
        );
    }
    if object.kind() != Kind::Pod {
        return None;
    }
    let spec = object.spec_value();
    let bound = spec
        .get("nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let grace = requested
        .or_else(|| {
            spec.get("terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    (bound && grace > 0).then_some(grace)
}
