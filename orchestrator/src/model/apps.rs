//! The apps/v1 workloads: a ReplicaSet keeps a number of identical pods running; a
//! Deployment rolls ReplicaSets from one pod template to the next.

use serde::{Deserialize, Serialize};

use super::meta::Condition;
use super::object::{Resource, enum_name, is_default, spec_and_status};
use super::pod::RestartPolicy;
use super::selector::validate_label_selector;
use super::validation::{FieldErrors, Path, check_immutable, check_min};
use super::{IntOrString, LabelSelector, ObjectMeta, PodTemplateSpec};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Deployment {
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: DeploymentStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    pub replicas: Option<i32>,
    /// Required and immutable: it decides which pods and ReplicaSets are this
    /// Deployment's.
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    pub strategy: Option<DeploymentStrategy>,
    /// How long a new pod must be ready before it counts as available.
    pub min_ready_seconds: Option<i32>,
    /// How many old ReplicaSets to keep for rollbacks.
    pub revision_history_limit: Option<i32>,
    /// How long a rollout may make no progress before it is reported as failed.
    pub progress_deadline_seconds: Option<i32>,
    pub paused: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentStrategy {
    pub r#type: Option<DeploymentStrategyType>,
    /// Only with the RollingUpdate type.
    pub rolling_update: Option<RollingUpdateDeployment>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeploymentStrategyType {
    /// Replace pods gradually, within the surge and unavailability bounds.
    RollingUpdate,
    /// Delete all old pods before creating new ones.
    Recreate,
}

/// Counts, or percentages of the desired replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RollingUpdateDeployment {
    /// How many pods may exist above the desired count during a rollout.
    pub max_surge: Option<IntOrString>,
    /// How many desired pods may be unavailable during a rollout.
    pub max_unavailable: Option<IntOrString>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentStatus {
    pub observed_generation: Option<i64>,
    pub replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    pub unavailable_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Bumped when a new ReplicaSet's name collides with an existing one.
    pub collision_count: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplicaSet {
    pub metadata: ObjectMeta,
    pub spec: ReplicaSetSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: ReplicaSetStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplicaSetSpec {
    pub replicas: Option<i32>,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    pub min_ready_seconds: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplicaSetStatus {
    pub replicas: Option<i32>,
    /// Pods whose labels match the template's.
    pub fully_labeled_replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The pod template of a workload (here and in Jobs): valid, selected by `selector`,
/// with a restart policy the workload can honour.
pub(crate) fn validate_template(
    errors: &mut FieldErrors,
    spec_path: &Path,
    selector: Option<&LabelSelector>,
    template: &PodTemplateSpec,
    restart_policies: &[RestartPolicy],
) {
    let template_path = spec_path.field("template");
    template.validate(errors, &template_path);
    if let Some(selector) = selector {
        validate_label_selector(errors, &spec_path.field("selector"), selector);
        if !selector.is_empty() && !selector.matches(&template.metadata.labels) {
            errors.push(
                template_path.field("metadata").field("labels"),
                "does not match spec.selector",
            );
        }
    }
    let supported = restart_policies
        .iter()
        .map(|p| format!("{:?}", enum_name(p)))
        .collect::<Vec<_>>()
        .join(", ");
    let path = template_path.field("spec").field("restartPolicy");
    match template.spec.restart_policy {
        None => errors.push(path, format!("required (supported: {supported})")),
        Some(policy) if !restart_policies.contains(&policy) => errors.push(
            path,
            format!(
                "unsupported value {:?} (supported: {supported})",
                enum_name(&policy)
            ),
        ),
        Some(_) => {}
    }
}

/// Deployments and ReplicaSets must say which pods are theirs.
fn check_selector_set(errors: &mut FieldErrors, selector: &LabelSelector) {
    if selector.is_empty() {
        errors.push(Path::root().field("spec").field("selector"), "required");
    }
}

/// A `maxSurge` or `maxUnavailable`: a count, or a percentage up to 100%. Returns
/// whether it is zero.
fn check_count_or_percent(errors: &mut FieldErrors, path: &Path, value: &IntOrString) -> bool {
    match value {
        IntOrString::Int(count) if *count >= 0 => return *count == 0,
        IntOrString::Int(count) => {
            errors.push(path, format!("{count} must be greater than or equal to 0"))
        }
        IntOrString::String(text) => {
            match text.strip_suffix('%').and_then(|p| p.parse::<i32>().ok()) {
                Some(percent) if (0..=100).contains(&percent) => return percent == 0,
                Some(_) => errors.push(
                    path,
                    format!("{text:?} is not a valid percentage (0%-100%)"),
                ),
                None => errors.push(path, format!("{text:?} is not an integer or a percentage")),
            }
        }
    }
    false
}

impl Resource for Deployment {
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.replicas.get_or_insert(1);
        let strategy = spec.strategy.get_or_insert_with(Default::default);
        let strategy_type = *strategy
            .r#type
            .get_or_insert(DeploymentStrategyType::RollingUpdate);
        if strategy_type == DeploymentStrategyType::RollingUpdate {
            let rolling = strategy.rolling_update.get_or_insert_with(Default::default);
            rolling
                .max_surge
                .get_or_insert_with(|| IntOrString::String("25%".into()));
            rolling
                .max_unavailable
                .get_or_insert_with(|| IntOrString::String("25%".into()));
        }
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        spec.template
            .spec
            .apply_defaults(Some(RestartPolicy::Always));
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let spec = &self.spec;
        let path = Path::root().field("spec");
        validate_replicated_pods(
            errors,
            &path,
            spec.replicas,
            &spec.selector,
            &spec.template,
            spec.min_ready_seconds,
        );
        check_min(
            errors,
            &path.field("revisionHistoryLimit"),
            spec.revision_history_limit,
            0,
        );
        if let Some(deadline) = spec.progress_deadline_seconds
            && deadline <= spec.min_ready_seconds.unwrap_or(0)
        {
            errors.push(
                path.field("progressDeadlineSeconds"),
                format!("{deadline} must be greater than minReadySeconds"),
            );
        }
        let Some(strategy) = &spec.strategy else {
            return;
        };
        let path = path.field("strategy");
        let Some(rolling) = &strategy.rolling_update else {
            return;
        };
        let path = path.field("rollingUpdate");
        if strategy.r#type == Some(DeploymentStrategyType::Recreate) {
            errors.push(path, "may not be set when type is Recreate");
            return;
        }
        let zero = |field: &str, value: &Option<IntOrString>, errors: &mut FieldErrors| {
            value
                .as_ref()
                .is_some_and(|v| check_count_or_percent(errors, &path.field(field), v))
        };
        let zero_surge = zero("maxSurge", &rolling.max_surge, errors);
        let zero_unavailable = zero("maxUnavailable", &rolling.max_unavailable, errors);
        if zero_surge && zero_unavailable {
            // Nothing could ever be replaced.
            errors.push(
                path.field("maxUnavailable"),
                "may not be 0 when maxSurge is 0",
            );
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let path = Path::root().field("spec").field("selector");
        check_immutable(errors, &path, &self.spec.selector, &old.spec.selector);
    }

    spec_and_status!();
}

/// The checks Deployments and ReplicaSets share: a count of identical pods that
/// their selector must match and that restart forever.
fn validate_replicated_pods(
    errors: &mut FieldErrors,
    path: &Path,
    replicas: Option<i32>,
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    min_ready_seconds: Option<i32>,
) {
    check_min(errors, &path.field("replicas"), replicas, 0);
    check_selector_set(errors, selector);
    validate_template(
        errors,
        path,
        Some(selector),
        template,
        &[RestartPolicy::Always],
    );
    check_min(errors, &path.field("minReadySeconds"), min_ready_seconds, 0);
}

impl Resource for ReplicaSet {
    fn apply_defaults(&mut self) {
        self.spec.replicas.get_or_insert(1);
        self.spec
            .template
            .spec
            .apply_defaults(Some(RestartPolicy::Always));
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let spec = &self.spec;
        let path = Path::root().field("spec");
        validate_replicated_pods(
            errors,
            &path,
            spec.replicas,
            &spec.selector,
            &spec.template,
            spec.min_ready_seconds,
        );
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let path = Path::root().field("spec").field("selector");
        check_immutable(errors, &path, &self.spec.selector, &old.spec.selector);
    }

    spec_and_status!();
}
