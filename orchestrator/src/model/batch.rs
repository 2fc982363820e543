//! Jobs (batch/v1): pods that run to completion, retried on failure up to a limit;
//! and CronJobs, which create Jobs on a [`cron`] schedule.

pub mod cron;

use serde::{Deserialize, Serialize};

use self::cron::Schedule;
use super::apps::validate_template;
use super::discovery::ObjectReference;
use super::meta::Condition;
use super::object::{Resource, is_default, spec_and_status};
use super::pod::RestartPolicy;
use super::validation::{
    FieldErrors, Format, Path, check_immutable, check_keys, check_labels, check_min,
};
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
        self.spec.validate(errors, &Path::root().field("spec"));
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

impl JobSpec {
    /// Checks of a Job's spec, at `path` (`spec`, or a CronJob's
    /// `spec.jobTemplate.spec`).
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        check_min(errors, &path.field("parallelism"), self.parallelism, 0);
        check_min(errors, &path.field("completions"), self.completions, 0);
        check_min(errors, &path.field("backoffLimit"), self.backoff_limit, 0);
        check_min(
            errors,
            &path.field("activeDeadlineSeconds"),
            self.active_deadline_seconds,
            1,
        );
        check_min(
            errors,
            &path.field("ttlSecondsAfterFinished"),
            self.ttl_seconds_after_finished,
            0,
        );
        validate_template(
            errors,
            path,
            self.selector.as_ref(),
            &self.template,
            &[RestartPolicy::OnFailure, RestartPolicy::Never],
        );
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CronJob {
    pub metadata: ObjectMeta,
    pub spec: CronJobSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: CronJobStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CronJobSpec {
    /// Five cron fields or a macro: see [`cron`].
    pub schedule: String,
    /// The IANA time zone the schedule is read in; the node's local time when unset.
    pub time_zone: Option<String>,
    /// A run not started within this many seconds of its time is skipped.
    pub starting_deadline_seconds: Option<i64>,
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// While true, no new runs start (running ones go on).
    pub suspend: Option<bool>,
    /// Boxed: a whole Job spec inline would make every [`super::Object`] this big.
    pub job_template: Box<JobTemplateSpec>,
    /// Finished Jobs kept: the oldest beyond these are deleted.
    pub successful_jobs_history_limit: Option<i32>,
    pub failed_jobs_history_limit: Option<i32>,
}

/// What a run's Job looks like.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JobTemplateSpec {
    /// Labels and annotations of the Jobs.
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
}

/// What a run does when the previous one is still running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConcurrencyPolicy {
    /// Both run.
    #[default]
    Allow,
    /// The new run is skipped.
    Forbid,
    /// The running one is deleted, then the new one starts.
    Replace,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CronJobStatus {
    /// The Jobs of this CronJob that are running.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ObjectReference>,
    /// The scheduled time of the last run started.
    pub last_schedule_time: Option<String>,
    /// When the last run that succeeded finished.
    pub last_successful_time: Option<String>,
}

/// Kubernetes' limit: a Job's name is the CronJob's, a dash and up to 11 digits of
/// minutes, and must stay a valid label value (63 characters).
const MAX_CRONJOB_NAME: usize = 52;

impl Resource for CronJob {
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.concurrency_policy.get_or_insert_default();
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        // The Job's own defaults come when each Job is created.
        spec.job_template.spec.template.spec.apply_defaults(None);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let spec = &self.spec;
        let path = Path::root().field("spec");
        if self.metadata.name.len() > MAX_CRONJOB_NAME {
            errors.push(
                Path::root().field("metadata").field("name"),
                format!(
                    "must be no more than {MAX_CRONJOB_NAME} characters (the Jobs' names add \
                     the scheduled minute)"
                ),
            );
        }
        if spec.schedule.trim().is_empty() {
            errors.push(path.field("schedule"), "required");
        } else if let Err(error) = spec.schedule.parse::<Schedule>() {
            errors.push(path.field("schedule"), error.to_string());
        }
        if let Some(zone) = &spec.time_zone
            && let Err(error) = cron::time_zone(zone)
        {
            errors.push(path.field("timeZone"), error.to_string());
        }
        check_min(
            errors,
            &path.field("startingDeadlineSeconds"),
            spec.starting_deadline_seconds,
            0,
        );
        check_min(
            errors,
            &path.field("successfulJobsHistoryLimit"),
            spec.successful_jobs_history_limit,
            0,
        );
        check_min(
            errors,
            &path.field("failedJobsHistoryLimit"),
            spec.failed_jobs_history_limit,
            0,
        );
        let template = path.field("jobTemplate");
        let meta = &spec.job_template.metadata;
        check_labels(
            errors,
            &template.field("metadata").field("labels"),
            &meta.labels,
        );
        check_keys(
            errors,
            &template.field("metadata").field("annotations"),
            &meta.annotations,
            Format::QualifiedName,
        );
        spec.job_template
            .spec
            .validate(errors, &template.field("spec"));
    }

    spec_and_status!();
}
