//! The CronJob controller: creates a CronJob's Jobs on its schedule (in its time
//! zone), honouring suspend, startingDeadlineSeconds and concurrencyPolicy, keeps
//! status.active / lastScheduleTime / lastSuccessfulTime, and deletes the oldest
//! finished Jobs beyond the history limits. The decisions are in [`plan`] (pure, at
//! a given time); this file reads the store, writes the decisions and requeues the
//! CronJob for its next scheduled time.

pub mod plan;

use async_trait::async_trait;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use self::plan::{CronSpec, JobState, Run};
use super::job::finished;
use super::{Action, Context, Error, Reconciler, controlled_by, namespace_of, owner_reference};
use crate::model::cron::{self, Schedule, ScheduleError};
use crate::model::{CronJob, CronJobStatus, Job, Kind, Object, ObjectMeta, ObjectReference};
use crate::runtime::events::Type;

/// The annotation Kubernetes puts on a CronJob's Job: the run's scheduled time.
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub struct CronJobController;

/// A Job as the plan sees it.
fn run_of(job: &Job) -> Run {
    let done = finished(job);
    let state = match done.map(|c| c.r#type.as_str()) {
        Some("Complete") => JobState::Complete,
        Some(_) => JobState::Failed,
        None => JobState::Running,
    };
    Run {
        name: job.metadata.name.clone(),
        state,
        created: timestamp(job.metadata.creation_timestamp.as_deref()).unwrap_or_default(),
        finished: done.and_then(|c| timestamp(c.last_transition_time.as_deref())),
    }
}

fn timestamp(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| t.parse().ok())
}

/// A Job of `cronjob` named `name`: the template's labels, annotations and spec,
/// controlled by the CronJob (for its runs, and for `skiff create job --from`).
pub fn job_from_template(cronjob: &CronJob, name: &str) -> Job {
    let template = &cronjob.spec.job_template;
    Job {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(namespace_of(&cronjob.metadata).to_string()),
            labels: template.metadata.labels.clone(),
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![owner_reference(Kind::CronJob, &cronjob.metadata)],
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: Default::default(),
    }
}

/// The Job of the run scheduled at `scheduled`.
fn new_job(cronjob: &CronJob, name: &str, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let mut job = job_from_template(cronjob, name);
    job.metadata.annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.into(),
        scheduled
            .display_with_offset(tz.to_offset(scheduled))
            .to_string(),
    );
    // Create only: a stored object never has revision 0, so a second create of the
    // same run is refused rather than replacing the Job.
    job.metadata.resource_version = Some("0".into());
    job
}

/// The reference status.active holds for the Job named `name`.
fn reference(namespace: &str, name: &str, jobs: &[Job]) -> ObjectReference {
    ObjectReference {
        kind: Kind::Job.name().into(),
        namespace: Some(namespace.into()),
        name: name.into(),
        uid: jobs
            .iter()
            .find(|j| j.metadata.name == name)
            .and_then(|j| j.metadata.uid.clone()),
    }
}

#[async_trait]
impl Reconciler for CronJobController {
    const NAME: &'static str = "cronjob-controller";
    const KIND: Kind = Kind::CronJob;
    const RELATED: &'static [Kind] = &[Kind::Job];

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let Object::CronJob(cronjob) = object else {
            return Ok(Action::await_change());
        };
        if cronjob.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let meta = &cronjob.metadata;
        let namespace = namespace_of(meta);
        // Validated on write; a schedule stored before a stricter check, or a time
        // zone this node's database lacks, is reported and waits for a fix.
        let parsed = cronjob
            .spec
            .schedule
            .parse::<Schedule>()
            .and_then(|schedule| {
                let tz = match &cronjob.spec.time_zone {
                    Some(name) => cron::time_zone(name)?,
                    None => TimeZone::system(),
                };
                Ok((schedule, tz))
            });
        let (schedule, time_zone) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                let reason = match error {
                    ScheduleError::UnknownTimeZone(_) | ScheduleError::NoTimeZoneDatabase(_) => {
                        "UnknownTimeZone"
                    }
                    _ => "UnparseableSchedule",
                };
                ctx.event(
                    Kind::CronJob,
                    meta,
                    Type::Warning,
                    reason,
                    &error.to_string(),
                )
                .await;
                return Ok(Action::await_change());
            }
        };
        let mut jobs: Vec<Job> = ctx
            .list::<Job>(Kind::Job, namespace)
            .await?
            .into_iter()
            .filter(|j| controlled_by(&j.metadata, meta.uid.as_deref()))
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        let runs: Vec<Run> = jobs.iter().map(run_of).collect();
        let spec = CronSpec {
            schedule,
            time_zone: time_zone.clone(),
            starting_deadline_seconds: cronjob.spec.starting_deadline_seconds,
            concurrency_policy: cronjob.spec.concurrency_policy.unwrap_or_default(),
            suspend: cronjob.spec.suspend.unwrap_or(false),
            successful_jobs_history_limit: limit(cronjob.spec.successful_jobs_history_limit, 3),
            failed_jobs_history_limit: limit(cronjob.spec.failed_jobs_history_limit, 1),
            created: timestamp(meta.creation_timestamp.as_deref()).unwrap_or_default(),
            last_scheduled: timestamp(cronjob.status.last_schedule_time.as_deref()),
        };
        let was_active: Vec<String> = cronjob
            .status
            .active
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let plan = plan::plan(&meta.name, &spec, &runs, &was_active, Timestamp::now());
        for event in &plan.events {
            ctx.event(
                Kind::CronJob,
                meta,
                event.event_type,
                event.reason,
                &event.message,
            )
            .await;
        }
        for name in plan.replace.iter().chain(&plan.prune) {
            if let Some(job) = jobs.iter().find(|j| &j.metadata.name == name) {
                ctx.delete(Kind::Job, &job.metadata).await?;
                let message = format!("Deleted job {name}");
                ctx.event(
                    Kind::CronJob,
                    meta,
                    Type::Normal,
                    "SuccessfulDelete",
                    &message,
                )
                .await;
            }
        }
        if let Some(start) = &plan.start {
            let job: Job = ctx
                .apply(new_job(cronjob, &start.job_name, start.scheduled, &time_zone).into())
                .await?;
            jobs.push(job);
            let message = format!("Created job {}", start.job_name);
            ctx.event(
                Kind::CronJob,
                meta,
                Type::Normal,
                "SuccessfulCreate",
                &message,
            )
            .await;
        }
        let mut updated = cronjob.clone();
        updated.status = CronJobStatus {
            active: plan
                .active
                .iter()
                .map(|name| reference(namespace, name, &jobs))
                .collect(),
            last_schedule_time: plan
                .start
                .as_ref()
                .map(|s| s.scheduled.to_string())
                .or_else(|| cronjob.status.last_schedule_time.clone()),
            last_successful_time: plan
                .last_successful
                .map(|t| t.to_string())
                .or_else(|| cronjob.status.last_successful_time.clone()),
        };
        if updated.status != cronjob.status {
            ctx.update_status(updated.into()).await?;
        }
        Ok(plan
            .requeue_after
            .map_or_else(Action::await_change, Action::requeue))
    }
}

/// A history limit, or its default.
fn limit(value: Option<i32>, default: usize) -> usize {
    value.map_or(default, |v| usize::try_from(v).unwrap_or(0))
}
