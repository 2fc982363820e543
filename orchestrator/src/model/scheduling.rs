//! PriorityClasses (scheduling.k8s.io/v1): named pod priorities. A pod's
//! `priorityClassName` resolves to the class's value; the scheduler places higher
//! values first and may evict lower ones to make room (preemption).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ObjectMeta;
use super::object::Resource;
use super::validation::{FieldErrors, Path, check_immutable};

/// The highest value a user's class may have; higher values are Kubernetes's
/// system classes (`system-cluster-critical`, `system-node-critical`).
pub const HIGHEST_USER_PRIORITY: i32 = 1_000_000_000;

/// Names that start with this are Kubernetes's own classes.
const SYSTEM_PREFIX: &str = "system-";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PriorityClass {
    pub metadata: ObjectMeta,
    /// The priority of the pods that name this class; higher is more important.
    /// Required: None only while decoding reports it missing.
    pub value: Option<i32>,
    /// The class of pods that name none (at most one class is the default).
    pub global_default: Option<bool>,
    pub description: Option<String>,
    /// Whether pods of this class evict lower-priority pods to fit.
    pub preemption_policy: Option<PreemptionPolicy>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreemptionPolicy {
    #[default]
    PreemptLowerPriority,
    Never,
}

impl Resource for PriorityClass {
    fn apply_defaults(&mut self) {
        self.preemption_policy
            .get_or_insert(PreemptionPolicy::PreemptLowerPriority);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let path = Path::root().field("value");
        match self.value {
            None => errors.push(path, "required"),
            Some(value) if value > HIGHEST_USER_PRIORITY => errors.push(
                path,
                format!(
                    "{value} must be less than or equal to {HIGHEST_USER_PRIORITY} (higher values \
                     are reserved for system classes)"
                ),
            ),
            Some(_) => {}
        }
        if self.metadata.name.starts_with(SYSTEM_PREFIX) {
            errors.push(
                Path::root().field("metadata").field("name"),
                format!("the prefix {SYSTEM_PREFIX:?} is reserved for system classes"),
            );
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        // Pods carry the value they were given; a changed value would disagree with them.
        check_immutable(
            errors,
            &Path::root().field("value"),
            &self.value,
            &old.value,
        );
        check_immutable(
            errors,
            &Path::root().field("preemptionPolicy"),
            &self.preemption_policy,
            &old.preemption_policy,
        );
    }

    fn spec_value(&self) -> Value {
        json!({
            "value": self.value,
            "globalDefault": self.global_default,
            "description": self.description,
            "preemptionPolicy": self.preemption_policy,
        })
    }
}
