//! Watches: the store's key changes under a kind's prefix, decoded, filtered by
//! label and field selectors, and told as Kubernetes events. An object that starts
//! or stops matching the selectors is ADDED or DELETED, as the Kubernetes API does.
//! Changes come from the kind's [`cache::WatchCache`] when it holds them, else
//! straight from the store.

pub(super) mod cache;

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{ApiError, Registry, kind_prefix};
use crate::model::{FieldSelector, Kind, Object, Selector};
use crate::store::{Event, EventKind, Revision, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub event_type: EventType,
    /// Shared with every other watcher of the same change: decoded once.
    pub object: Arc<Object>,
}

pub type WatchStream = BoxStream<'static, Result<WatchEvent, ApiError>>;

/// One change to one object of a kind, decoded.
#[derive(Debug)]
pub struct Change {
    revision: Revision,
    kind: EventKind,
    /// After a put; for a delete, the last state with the deleting revision as its
    /// resourceVersion.
    object: Arc<Object>,
    /// Before the change, when the object existed.
    previous: Option<Arc<Object>>,
}

impl Change {
    fn deleted(last: Arc<Object>, revision: Revision) -> Self {
        // The version of a deletion is the revision that deleted it.
        let mut object = Object::clone(&last);
        object.metadata_mut().resource_version = Some(revision.to_string());
        Change {
            revision,
            kind: EventKind::Delete,
            object: Arc::new(object),
            previous: Some(last),
        }
    }
}

/// What a watch follows.
#[derive(Clone)]
struct Filter {
    namespace: Option<String>,
    labels: Selector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Object) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| object.metadata().namespace.as_deref() == Some(ns))
            && self.labels.matches(&object.metadata().labels)
            && self.fields.matches(object)
    }

    /// The Kubernetes event `change` makes for this watcher, if any.
    fn event(&self, change: &Change) -> Option<WatchEvent> {
        let was = change.previous.as_ref().is_some_and(|o| self.matches(o));
        let event_type = match change.kind {
            EventKind::Put => match (was, self.matches(&change.object)) {
                (false, true) => EventType::Added,
                (true, true) => EventType::Modified,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            },
            EventKind::Delete if was => EventType::Deleted,
            EventKind::Delete => return None,
        };
        Some(WatchEvent {
            event_type,
            object: change.object.clone(),
        })
    }
}

impl Registry {
    /// Changes of `kind` (in `namespace`, or all) after `resource_version`; with an
    /// empty version, the current objects come first as ADDED events.
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        labels: Selector,
        fields: FieldSelector,
        resource_version: &str,
    ) -> Result<WatchStream, ApiError> {
        let filter = Filter {
            namespace: namespace.filter(|_| kind.namespaced()).map(str::to_owned),
            labels,
            fields,
        };
        let (initial, after) = if resource_version.is_empty() {
            let (objects, revision) = self.list_objects(kind, namespace).await?;
            let added: Vec<Result<WatchEvent, ApiError>> = objects
                .into_iter()
                .filter(|o| filter.matches(o))
                .map(|o| {
                    Ok(WatchEvent {
                        event_type: EventType::Added,
                        object: Arc::new(o),
                    })
                })
                .collect();
            (added, revision)
        } else {
            let revision: Revision = resource_version.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "resourceVersion \"{resource_version}\" is not a resource version (a decimal number)"
                ))
            })?;
            (Vec::new(), revision)
        };
        let changes = match self.watch_cache.subscribe(kind, after).await {
            Some(subscription) => stream::iter(subscription.missed)
                .chain(UnboundedReceiverStream::new(subscription.live))
                // The cache may be behind the list the watcher started from.
                .filter(move |change| futures::future::ready(change.revision > after))
                .map(Ok)
                .boxed(),
            None => self.store_changes(kind, namespace, after).await?,
        };
        let events = changes.filter_map(move |change| {
            futures::future::ready(match change {
                Ok(change) => filter.event(&change).map(Ok),
                Err(e) => Some(Err(e)),
            })
        });
        Ok(stream::iter(initial).chain(events).boxed())
    }

    /// The changes after `after`, read from the store's own watch.
    async fn store_changes(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<Arc<Change>, ApiError>>, ApiError> {
        let changes = self
            .store
            .watch(&kind_prefix(kind, namespace), after + 1)
            .await
            .map_err(|e| expired(e, after))?;
        let registry = self.clone();
        Ok(changes
            .filter_map(move |event| {
                futures::future::ready(match event {
                    Ok(event) => registry.change(event).transpose(),
                    Err(e) => Some(Err(expired(e, after))),
                })
            })
            .boxed())
    }

    /// A store event decoded; None for the deletion of a key that was never seen.
    fn change(&self, event: Event) -> Result<Option<Arc<Change>>, ApiError> {
        let previous = event
            .prev_kv
            .map(|kv| self.decode(kv).map(|s| Arc::new(s.object)))
            .transpose()?;
        let revision = event.kv.mod_revision;
        let change = match event.kind {
            EventKind::Put => Change {
                revision,
                kind: EventKind::Put,
                object: Arc::new(self.decode(event.kv)?.object),
                previous,
            },
            EventKind::Delete => match previous {
                Some(last) => Change::deleted(last, revision),
                None => return Ok(None),
            },
        };
        Ok(Some(Arc::new(change)))
    }
}

/// A compacted store revision is Kubernetes' "too old resource version".
fn expired(error: StoreError, after: Revision) -> ApiError {
    match error {
        StoreError::Compacted { compacted, .. } => ApiError::Expired {
            requested: after,
            oldest: compacted,
        },
        other => ApiError::Store(other),
    }
}
