//! Jobs (batch/v1): pods that run to completion, retried on failure up to a limit.

use serde::{Deserialize, Serialize};

use super::apps::validate_template;
use super::meta::Condition;
use super::object::{Resource, is_default, spec_and_status};
use super::pod::RestartPolicy;
use super::validation::{FieldErrors, Path, check_immutable, check_min};
use super::{LabelSelector, ObjectMeta, PodTemplateSpec};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Job {
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: JobStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JobSpec {
    /// How many pods may run at once.
    pub parallelism: Option<i32>,
    /// How many pods must succeed.
    pub completions: Option<i32>,
    /// Retries before the Job fails.
    pub backoff_limit: Option<i32>,
    pub active_deadline_seconds: Option<i64>,
    /// Delete the Job this long after it finishes.
    pub ttl_seconds_after_finished: Option<i32>,
    pub completion_mode: Option<CompletionMode>,
    /// Usually left out: the server generates one from the Job's uid.
    pub selector: Option<LabelSelector>,
    /// True when the user chose `selector` themselves.
    pub manual_selector: Option<bool>,
    /// While true, no pods are created (and running ones are stopped).
    pub suspend: Option<bool>,
    pub template: PodTemplateSpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompletionMode {
    /// Pods are interchangeable.
    NonIndexed,
    /// Each pod gets an index, 0 to completions - 1.
    Indexed,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JobStatus {
    pub active: Option<i32>,
    pub succeeded: Option<i32>,
    pub failed: Option<i32>,
    pub start_time: Option<String>,
    pub completion_time: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Resource for Job {
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.parallelism.get_or_insert(1);
        spec.completions.get_or_insert(1);
        spec.backoff_limit.get_or_insert(6);
        // No default restart policy: a Job's user must choose OnFailure or Never.
        spec.template.spec.apply_defaults(None);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let spec = &self.spec;
        let path = Path::root().field("spec");
        check_min(errors, &path.field("parallelism"), spec.parallelism, 0);
        check_min(errors, &path.field("completions"), spec.completions, 0);
        check_min(errors, &path.field("backoffLimit"), spec.backoff_limit, 0);
        check_min(
            errors,
            &path.field("activeDeadlineSeconds"),
            spec.active_deadline_seconds,
            1,
        );
        check_min(
            errors,
            &path.field("ttlSecondsAfterFinished"),
            spec.ttl_seconds_after_finished,
            0,
        );
        validate_template(
            errors,
            &path,
            spec.selector.as_ref(),
            &spec.template,
            &[RestartPolicy::OnFailure, RestartPolicy::Never],
        );
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let path = Path::root().field("spec");
        // An unset selector means "as stored" (the server may have generated it).
        if self.spec.selector.is_some() {
            check_immutable(
                errors,
                &path.field("selector"),
                &self.spec.selector,
                &old.spec.selector,
            );
        }
        check_immutable(
            errors,
            &path.field("template"),
            &self.spec.template,
            &old.spec.template,
        );
    }

    spec_and_status!();
}
