//! Typed reads for the agent's own loops (service sync, cluster DNS, controllers):
//! every object of a kind as its model type, and the changes after that list.

use serde_json::Value;

use super::{ApiError, Registry, WatchStream};
use crate::model::{FieldSelector, Kind, Object, Selector};

/// An object the API returned, when it is one of `T` (others are skipped).
pub fn decode_as<T: TryFrom<Object>>(value: Value) -> Option<T> {
    Object::decode_stored(value)
        .ok()
        .and_then(|o| T::try_from(o).ok())
}

/// A watch event's object, when it is one of `T`: a copy, as the event's object is
/// shared with the kind's other watchers.
pub fn cast<T: TryFrom<Object>>(object: &Object) -> Option<T> {
    T::try_from(object.clone()).ok()
}

/// Every object of `kind` (in `namespace`, or all), and the resourceVersion to watch
/// from.
pub async fn list_in<T: TryFrom<Object>>(
    registry: &Registry,
    kind: Kind,
    namespace: Option<&str>,
) -> Result<(Vec<T>, String), ApiError> {
    let (objects, revision) = registry.list_objects(kind, namespace).await?;
    Ok((
        objects
            .into_iter()
            .filter_map(|o| T::try_from(o).ok())
            .collect(),
        revision.to_string(),
    ))
}

/// Every object of `kind`, and the resourceVersion to watch from.
pub async fn list_all<T: TryFrom<Object>>(
    registry: &Registry,
    kind: Kind,
) -> Result<(Vec<T>, String), ApiError> {
    list_in(registry, kind, None).await
}

/// Changes to every object of `kind` after `version`.
pub async fn watch_all(
    registry: &Registry,
    kind: Kind,
    version: &str,
) -> Result<WatchStream, ApiError> {
    registry
        .watch(
            kind,
            None,
            Selector::everything(),
            FieldSelector::everything(),
            version,
        )
        .await
}
