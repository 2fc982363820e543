//! Events (core/v1): what happened to an object, told to the people reading
//! `skiff describe`. The node's pod worker writes them; they go with their
//! object (their ownerReferences name it).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ObjectMeta;
use super::discovery::ObjectReference;
use super::object::Resource;
use super::validation::{FieldErrors, Path, check_required};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Event {
    pub metadata: ObjectMeta,
    pub involved_object: ObjectReference,
    /// Machine-readable, CamelCase: Started, BackOff, Unhealthy, ...
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Normal or Warning.
    pub r#type: Option<String>,
    pub count: Option<i32>,
    pub first_timestamp: Option<String>,
    pub last_timestamp: Option<String>,
    pub source: Option<EventSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSource {
    pub component: Option<String>,
    pub host: Option<String>,
}

impl Resource for Event {
    fn validate(&self, errors: &mut FieldErrors) {
        let object = Path::root().field("involvedObject");
        check_required(errors, &object.field("kind"), &self.involved_object.kind);
        check_required(errors, &object.field("name"), &self.involved_object.name);
        if let Some(kind) = self.r#type.as_deref()
            && !matches!(kind, "Normal" | "Warning")
        {
            errors.push(
                Path::root().field("type"),
                format!("unsupported value {kind:?} (supported: \"Normal\", \"Warning\")"),
            );
        }
    }

    /// An event has no desired state: what changes is its count and times.
    fn spec_value(&self) -> Value {
        Value::Null
    }
}
