//! HorizontalPodAutoscalers (autoscaling/v2): scale a workload between bounds to keep
//! its pods' cpu or memory use near a target. skiff supports Resource metrics only.

use serde::{Deserialize, Serialize};

use super::meta::Condition;
use super::object::{Resource, enum_name, is_default, spec_and_status};
use super::validation::{FieldErrors, Path, check_min, check_range, check_required};
use super::{ObjectMeta, Quantity};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HorizontalPodAutoscaler {
    pub metadata: ObjectMeta,
    pub spec: HorizontalPodAutoscalerSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: HorizontalPodAutoscalerStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerSpec {
    /// The workload to scale, in the autoscaler's namespace.
    pub scale_target_ref: CrossVersionObjectReference,
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CrossVersionObjectReference {
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricSpec {
    pub r#type: Option<MetricSourceType>,
    pub resource: Option<ResourceMetricSource>,
}

/// Kubernetes also has Pods, Object, External and ContainerResource metrics; skiff
/// has no metrics pipeline for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricSourceType {
    Resource,
}

/// The average use of a resource across the target's pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceMetricSource {
    /// "cpu" or "memory".
    pub name: String,
    pub target: MetricTarget,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricTarget {
    pub r#type: Option<MetricTargetType>,
    /// Percent of the pods' requests (for Utilization).
    pub average_utilization: Option<i32>,
    /// An absolute amount per pod (for AverageValue).
    pub average_value: Option<Quantity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricTargetType {
    Utilization,
    AverageValue,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerBehavior {
    pub scale_up: Option<HpaScalingRules>,
    pub scale_down: Option<HpaScalingRules>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HpaScalingRules {
    /// Look back this far and pick the most conservative recommendation, to avoid
    /// flapping.
    pub stabilization_window_seconds: Option<i32>,
    pub select_policy: Option<ScalingPolicySelect>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<HpaScalingPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalingPolicySelect {
    Max,
    Min,
    Disabled,
}

/// At most `value` pods (or percent) of change per `periodSeconds`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HpaScalingPolicy {
    pub r#type: Option<ScalingPolicyType>,
    pub value: i32,
    pub period_seconds: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalingPolicyType {
    Pods,
    Percent,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerStatus {
    pub observed_generation: Option<i64>,
    pub last_scale_time: Option<String>,
    pub current_replicas: Option<i32>,
    pub desired_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricStatus {
    pub r#type: Option<MetricSourceType>,
    pub resource: Option<ResourceMetricStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceMetricStatus {
    pub name: String,
    pub current: MetricValueStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricValueStatus {
    pub average_utilization: Option<i32>,
    pub average_value: Option<Quantity>,
}

impl Resource for HorizontalPodAutoscaler {
    fn apply_defaults(&mut self) {
        self.spec.min_replicas.get_or_insert(1);
        // As in Kubernetes: no metrics means 80% cpu utilization.
        if self.spec.metrics.is_empty() {
            self.spec.metrics.push(MetricSpec {
                r#type: Some(MetricSourceType::Resource),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        r#type: Some(MetricTargetType::Utilization),
                        average_utilization: Some(80),
                        average_value: None,
                    },
                }),
            });
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let spec = &self.spec;
        let path = Path::root().field("spec");
        let target = path.field("scaleTargetRef");
        check_required(errors, &target.field("kind"), &spec.scale_target_ref.kind);
        check_required(errors, &target.field("name"), &spec.scale_target_ref.name);
        check_min(errors, &path.field("minReplicas"), spec.min_replicas, 1);
        check_min(
            errors,
            &path.field("maxReplicas"),
            Some(spec.max_replicas),
            1,
        );
        let min = spec.min_replicas.unwrap_or(1);
        if spec.max_replicas >= 1 && spec.max_replicas < min {
            errors.push(
                path.field("maxReplicas"),
                format!(
                    "{} must be greater than or equal to minReplicas ({min})",
                    spec.max_replicas
                ),
            );
        }
        for (i, metric) in spec.metrics.iter().enumerate() {
            validate_metric(errors, &path.field("metrics").index(i), metric);
        }
        if let Some(behavior) = &spec.behavior {
            for (field, rules) in [
                ("scaleUp", &behavior.scale_up),
                ("scaleDown", &behavior.scale_down),
            ] {
                if let Some(rules) = rules {
                    validate_rules(errors, &path.field("behavior").field(field), rules);
                }
            }
        }
    }

    spec_and_status!();
}

fn validate_metric(errors: &mut FieldErrors, path: &Path, metric: &MetricSpec) {
    if metric.r#type.is_none() {
        errors.push(path.field("type"), "required");
    }
    let Some(resource) = &metric.resource else {
        errors.push(path.field("resource"), "required when type is Resource");
        return;
    };
    let path = path.field("resource");
    if !matches!(resource.name.as_str(), "cpu" | "memory") {
        errors.push(
            path.field("name"),
            format!(
                "{:?} is not supported (supported: cpu, memory)",
                resource.name
            ),
        );
    }
    let target = &resource.target;
    let path = path.field("target");
    match target.r#type {
        None => errors.push(path.field("type"), "required"),
        Some(MetricTargetType::Utilization) => match target.average_utilization {
            None => errors.push(
                path.field("averageUtilization"),
                "required when type is Utilization",
            ),
            Some(_) => check_min(
                errors,
                &path.field("averageUtilization"),
                target.average_utilization,
                1,
            ),
        },
        Some(MetricTargetType::AverageValue) => {
            match target.average_value.as_ref().map(Quantity::parse) {
                None => errors.push(
                    path.field("averageValue"),
                    "required when type is AverageValue",
                ),
                Some(Err(reason)) => errors.push(path.field("averageValue"), reason),
                Some(Ok(value)) if value.millis() <= 0 => {
                    errors.push(path.field("averageValue"), "must be greater than 0")
                }
                Some(Ok(_)) => {}
            }
        }
    }
    // The target's other field would be silently ignored.
    let other = match target.r#type {
        Some(MetricTargetType::Utilization) => {
            target.average_value.is_some().then_some("averageValue")
        }
        Some(MetricTargetType::AverageValue) => target
            .average_utilization
            .is_some()
            .then_some("averageUtilization"),
        None => None,
    };
    if let (Some(field), Some(target_type)) = (other, target.r#type) {
        errors.push(
            path.field(field),
            format!("may not be set when type is {}", enum_name(&target_type)),
        );
    }
}

fn validate_rules(errors: &mut FieldErrors, path: &Path, rules: &HpaScalingRules) {
    check_range(
        errors,
        &path.field("stabilizationWindowSeconds"),
        rules.stabilization_window_seconds,
        0,
        3600,
    );
    for (i, policy) in rules.policies.iter().enumerate() {
        let path = path.field("policies").index(i);
        if policy.r#type.is_none() {
            errors.push(path.field("type"), "required");
        }
        check_min(errors, &path.field("value"), Some(policy.value), 1);
        check_range(
            errors,
            &path.field("periodSeconds"),
            Some(policy.period_seconds),
            1,
            1800,
        );
    }
}
