//! Resource usage (metrics.k8s.io/v1beta1): what each pod's containers and each
//! node used over the last sampling window, as metrics-server reports it. Each
//! node's agent samples its own pods' cgroups and writes these; the autoscaler and
//! `skiff top` read them, so usage reaches them through the store like every
//! other state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::object::Resource;
use super::pod::parse_quantities;
use super::validation::{FieldErrors, Format, Path, check_name, check_required, check_unique};
use super::{ObjectMeta, Quantity};

/// One pod's usage. Like Kubernetes, the fields are at the top level.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PodMetrics {
    pub metadata: ObjectMeta,
    /// When the window ended (RFC 3339).
    pub timestamp: Option<String>,
    /// How long the usage was measured over ("15s").
    pub window: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerMetrics {
    pub name: String,
    /// `cpu` (cores, e.g. "250m") and `memory` (bytes, e.g. "12Mi").
    pub usage: BTreeMap<String, Quantity>,
}

/// One node's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeMetrics {
    pub metadata: ObjectMeta,
    pub timestamp: Option<String>,
    pub window: Option<String>,
    pub usage: BTreeMap<String, Quantity>,
}

fn validate_window(errors: &mut FieldErrors, timestamp: Option<&str>, window: Option<&str>) {
    check_required(
        errors,
        &Path::root().field("timestamp"),
        timestamp.unwrap_or_default(),
    );
    check_required(
        errors,
        &Path::root().field("window"),
        window.unwrap_or_default(),
    );
}

impl Resource for PodMetrics {
    fn validate(&self, errors: &mut FieldErrors) {
        validate_window(errors, self.timestamp.as_deref(), self.window.as_deref());
        let path = Path::root().field("containers");
        check_unique(
            errors,
            self.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (path.index(i).field("name"), format!("name {:?}", c.name))),
        );
        for (i, container) in self.containers.iter().enumerate() {
            let path = path.index(i);
            check_name(
                errors,
                &path.field("name"),
                &container.name,
                Format::Dns1123Label,
            );
            parse_quantities(errors, &path.field("usage"), &container.usage);
        }
    }

    fn spec_value(&self) -> Value {
        json!({"timestamp": self.timestamp, "window": self.window, "containers": self.containers})
    }
}

impl Resource for NodeMetrics {
    fn validate(&self, errors: &mut FieldErrors) {
        validate_window(errors, self.timestamp.as_deref(), self.window.as_deref());
        parse_quantities(errors, &Path::root().field("usage"), &self.usage);
    }

    fn spec_value(&self) -> Value {
        json!({"timestamp": self.timestamp, "window": self.window, "usage": self.usage})
    }
}
