//! Runs one controller: lists its primary and related kinds into a [`Cache`],
//! watches them, maps each change to the primary objects it concerns, and
//! reconciles the keys the [`WorkQueue`] says are due, one at a time. A watch that
//! ends or fails is followed by a fresh list, after which every primary object is
//! reconciled again (level-triggered: nothing is lost in between).
//!
//! The cache only answers "which primary objects does this change concern"; a
//! reconcile reads the primary object and what it needs from the store itself, so
//! it always sees its own previous writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use log::{debug, warn};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::queue::WorkQueue;
use super::{Context, Reconciler};
use crate::api::registry::typed::{decode_as, list_all, watch_all};
use crate::api::registry::{ApiError, EventType, ObjectRef, Registry, WatchEvent};
use crate::model::{Kind, Object};

/// How long after a failed list or watch the runner lists again.
const RELIST_DELAY: Duration = Duration::from_secs(1);

/// The last seen objects of the kinds a controller watches.
#[derive(Debug, Default)]
pub struct Cache {
    // Shared with the watch events they came from: not copied per controller.
    objects: HashMap<Kind, HashMap<ObjectRef, Arc<Object>>>,
}

impl Cache {
    /// The objects of `kind`.
    pub fn objects(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.values().map(|o| &**o))
    }

    pub fn get(&self, reference: &ObjectRef) -> Option<&Object> {
        self.objects
            .get(&reference.kind)?
            .get(reference)
            .map(|o| &**o)
    }

    /// Replaces every object of `kind` (after a list).
    pub fn replace(&mut self, kind: Kind, objects: Vec<Object>) {
        let by_ref = objects
            .into_iter()
            .map(|o| (ObjectRef::of(&o), Arc::new(o)))
            .collect();
        self.objects.insert(kind, by_ref);
    }

    /// Records a change; returns the object's previous state.
    pub fn change(&mut self, event_type: EventType, object: Arc<Object>) -> Option<Arc<Object>> {
        let reference = ObjectRef::of(&object);
        let objects = self.objects.entry(reference.kind).or_default();
        match event_type {
            EventType::Deleted => objects.remove(&reference),
            EventType::Added | EventType::Modified => objects.insert(reference, object),
        }
    }
}

/// Starts `reconciler` as a task that follows the store until `stop` turns true.
pub fn spawn<R: Reconciler>(
    reconciler: R,
    registry: &Registry,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let ctx = Context::new(registry.clone(), R::NAME);
    tokio::spawn(run(reconciler, ctx, stop))
}

/// Whether a round ended because the controller is stopping.
enum Ended {
    Stopping,
    WatchClosed,
}

async fn run<R: Reconciler>(reconciler: R, ctx: Context, mut stop: watch::Receiver<bool>) {
    let mut cache = Cache::default();
    let mut queue = WorkQueue::default();
    loop {
        if *stop.borrow() {
            return;
        }
        match follow(&reconciler, &ctx, &mut cache, &mut queue, &mut stop).await {
            Ok(Ended::Stopping) => return,
            Ok(Ended::WatchClosed) => debug!("{}: a watch ended; listing again", R::NAME),
            Err(e) => {
                warn!("{}: {e}; listing again", R::NAME);
                tokio::select! {
                    _ = stop.wait_for(|stopping| *stopping) => return,
                    _ = tokio::time::sleep(RELIST_DELAY) => {}
                }
            }
        }
    }
}

/// One list-then-watch round.
async fn follow<R: Reconciler>(
    reconciler: &R,
    ctx: &Context,
    cache: &mut Cache,
    queue: &mut WorkQueue<ObjectRef>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, ApiError> {
    let mut watches = Vec::new();
    for kind in std::iter::once(R::KIND).chain(R::RELATED.iter().copied()) {
        let (objects, version) = list_all::<Object>(&ctx.registry, kind).await?;
        cache.replace(kind, objects);
        let events = watch_all(&ctx.registry, kind, &version).await?;
        watches.push(events);
    }
    let now = Instant::now().into_std();
    for object in cache.objects(R::KIND) {
        queue.add(ObjectRef::of(object), now);
    }
    let mut events = futures::stream::select_all(watches);
    loop {
        let due = queue.next_due().map(Instant::from_std);
        tokio::select! {
            changed = stop.changed() => {
                // An error means the sender is gone: stop as well.
                if changed.is_err() || *stop.borrow() {
                    return Ok(Ended::Stopping);
                }
            }
            event = events.next() => match event {
                None => return Ok(Ended::WatchClosed),
                Some(Err(e)) => return Err(e),
                Some(Ok(event)) => {
                    let now = Instant::now().into_std();
                    for key in concerned(reconciler, cache, event) {
                        queue.add(key, now);
                    }
                }
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if let Some(key) = queue.pop_due(Instant::now().into_std()) {
                    reconcile_one(reconciler, ctx, queue, key).await;
                }
            }
        }
    }
}

/// Records `event` in the cache and returns the primary objects it concerns: the
/// object itself for the primary kind, else the owners of its old and new states.
fn concerned<R: Reconciler>(
    reconciler: &R,
    cache: &mut Cache,
    event: WatchEvent,
) -> Vec<ObjectRef> {
    let object = event.object;
    let kind = object.kind();
    let old = cache.change(event.event_type, object.clone());
    if kind == R::KIND {
        return vec![ObjectRef::of(&object)];
    }
    let mut keys = reconciler.owners_of(&object, cache);
    for key in old
        .map(|o| reconciler.owners_of(&o, cache))
        .unwrap_or_default()
    {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// Reconciles the object `key` names, as stored now; a failure is retried later.
async fn reconcile_one<R: Reconciler>(
    reconciler: &R,
    ctx: &Context,
    queue: &mut WorkQueue<ObjectRef>,
    key: ObjectRef,
) {
    let object = match ctx.registry.get(&key).await {
        Ok(value) => decode_as::<Object>(value),
        // Gone: what it owned goes with it (the registry's cascading delete).
        Err(ApiError::NotFound { .. }) => {
            queue.succeeded(&key);
            return;
        }
        Err(e) => {
            let delay = queue.failed(key.clone(), Instant::now().into_std());
            warn!(
                "{}: reading {}: {e}; retrying in {delay:?}",
                R::NAME,
                key.key()
            );
            return;
        }
    };
    let Some(object) = object else {
        return;
    };
    match reconciler.reconcile(&object, ctx).await {
        Ok(action) => {
            queue.succeeded(&key);
            if let Some(delay) = action.requeue_after() {
                queue.add(key, Instant::now().into_std() + delay);
            }
        }
        Err(e) => {
            let delay = queue.failed(key, Instant::now().into_std());
            warn!("{}: {e}; retrying in {delay:?}", R::NAME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::DeploymentController;
    use crate::controllers::owner_reference;
    use crate::model::{Deployment, Pod, ReplicaSet};

    fn event(event_type: EventType, object: impl Into<Object>) -> WatchEvent {
        WatchEvent {
            event_type,
            object: Arc::new(object.into()),
        }
    }

    #[test]
    fn changes_map_to_their_owners_through_the_cache() {
        let mut deployment = Deployment::default();
        deployment.metadata.name = "web".into();
        deployment.metadata.namespace = Some("shop".into());
        deployment.metadata.uid = Some("d".into());
        let mut rs = ReplicaSet::default();
        rs.metadata.name = "web-abc".into();
        rs.metadata.namespace = Some("shop".into());
        rs.metadata.uid = Some("r".into());
        rs.metadata.owner_references =
            vec![owner_reference(Kind::Deployment, &deployment.metadata)];
        let mut pod = Pod::default();
        pod.metadata.name = "web-abc-xyz".into();
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.owner_references = vec![owner_reference(Kind::ReplicaSet, &rs.metadata)];
        let web = ObjectRef {
            kind: Kind::Deployment,
            namespace: Some("shop".into()),
            name: "web".into(),
        };

        let mut cache = Cache::default();
        let controller = DeploymentController;
        // A pod whose ReplicaSet is not known yet concerns nobody.
        let unknown = concerned(
            &controller,
            &mut cache,
            event(EventType::Added, pod.clone()),
        );
        assert!(unknown.is_empty());
        let for_rs = concerned(&controller, &mut cache, event(EventType::Added, rs));
        assert_eq!(for_rs, std::slice::from_ref(&web));
        let for_pod = concerned(
            &controller,
            &mut cache,
            event(EventType::Deleted, pod.clone()),
        );
        assert_eq!(for_pod, std::slice::from_ref(&web));
        assert!(
            cache.get(&ObjectRef::of(&pod.into())).is_none(),
            "deleted from the cache"
        );
        let itself = concerned(
            &controller,
            &mut cache,
            event(EventType::Modified, deployment),
        );
        assert_eq!(itself, [web]);
        assert_eq!(cache.objects(Kind::Deployment).count(), 1);
    }
}
