//! Watches: the store's key changes under a kind's prefix, decoded, filtered by
//! label and field selectors, and told as Kubernetes events. An object that starts
//! or stops matching the selectors is ADDED or DELETED, as the Kubernetes API does.

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use serde_json::Value;

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
    pub object: Value,
}

pub type WatchStream = BoxStream<'static, Result<WatchEvent, ApiError>>;

/// What a watch follows.
#[derive(Clone)]
struct Filter {
    labels: Selector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Object) -> bool {
        self.labels.matches(&object.metadata().labels) && self.fields.matches(object)
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
        let filter = Filter { labels, fields };
        let prefix = kind_prefix(kind, namespace);
        let (initial, after) = if resource_version.is_empty() {
            let (objects, revision) = self.list_objects(kind, namespace).await?;
            let added: Vec<Result<WatchEvent, ApiError>> = objects
                .into_iter()
                .filter(|o| filter.matches(o))
                .map(|o| {
                    Ok(WatchEvent {
                        event_type: EventType::Added,
                        object: o.to_value(),
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
        let changes = self
            .store
            .watch(&prefix, after + 1)
            .await
            .map_err(|e| expired(e, after))?;
        let registry = self.clone();
        let events = changes.filter_map(move |change| {
            let translated = match change {
                Ok(event) => registry.translate(event, &filter).transpose(),
                Err(e) => Some(Err(expired(e, after))),
            };
            futures::future::ready(translated)
        });
        Ok(stream::iter(initial).chain(events).boxed())
    }

    /// The Kubernetes event a store change makes for a watcher with `filter`, if any.
    fn translate(&self, event: Event, filter: &Filter) -> Result<Option<WatchEvent>, ApiError> {
        let before = event
            .prev_kv
            .map(|kv| self.decode(kv).map(|s| s.object))
            .transpose()?;
        let was = before.as_ref().is_some_and(|o| filter.matches(o));
        let (event_type, object) = match event.kind {
            EventKind::Put => {
                let after = self.decode(event.kv)?.object;
                match (was, filter.matches(&after)) {
                    (false, true) => (EventType::Added, after),
                    (true, true) => (EventType::Modified, after),
                    (true, false) => (EventType::Deleted, after),
                    (false, false) => return Ok(None),
                }
            }
            EventKind::Delete => match before {
                Some(mut last) if was => {
                    // The version of a deletion is the revision that deleted it.
                    last.metadata_mut().resource_version = Some(event.kv.mod_revision.to_string());
                    (EventType::Deleted, last)
                }
                _ => return Ok(None),
            },
        };
        Ok(Some(WatchEvent {
            event_type,
            object: object.to_value(),
        }))
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
