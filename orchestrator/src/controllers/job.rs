//! The Job controller: runs a Job's pods to completion: up to `parallelism` at
//! once until `completions` have succeeded, retrying failures up to
//! `backoffLimit` (each retry after an exponential back-off), stopping everything
//! past `activeDeadlineSeconds`, and deleting the finished Job (with its pods)
//! `ttlSecondsAfterFinished` later. The decisions are in [`plan`]; this file reads
//! the store and writes them.

pub mod plan;

use std::time::Duration;

use async_trait::async_trait;

use self::plan::{Finish, JobSpec};
use super::pods::{now_seconds, seconds};
use super::{Action, Context, Error, Reconciler, controlled_by, namespace_of, owner_reference};
use crate::api::registry::now as timestamp;
use crate::model::{Condition, ConditionStatus, Job, JobStatus, Kind, Object, ObjectMeta, Pod};
use crate::runtime::events::Type;

pub struct JobController;

/// The Job's terminal condition (Complete or Failed, status True), if it has one.
pub fn finished(job: &Job) -> Option<&Condition> {
    job.status.conditions.iter().find(|c| {
        matches!(c.r#type.as_str(), "Complete" | "Failed") && c.status == ConditionStatus::True
    })
}

/// A pod of `job`, from its template, owned by it and labelled as Kubernetes does.
fn new_pod(job: &Job) -> Pod {
    let template = &job.spec.template;
    let mut labels = template.metadata.labels.clone();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    for (key, value) in [
        ("batch.kubernetes.io/job-name", &job.metadata.name),
        ("job-name", &job.metadata.name),
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
    ] {
        labels.insert(key.into(), value.clone());
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", job.metadata.name)),
            namespace: Some(namespace_of(&job.metadata).to_string()),
            labels,
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![owner_reference(Kind::Job, &job.metadata)],
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: Default::default(),
    }
}

#[async_trait]
impl Reconciler for JobController {
    const NAME: &'static str = "job-controller";
    const KIND: Kind = Kind::Job;
    const RELATED: &'static [Kind] = &[Kind::Pod];

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let Object::Job(job) = object else {
            return Ok(Action::await_change());
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let now = now_seconds();
        if let Some(done) = finished(job) {
            return expire(ctx, job, done, now).await;
        }
        let pods: Vec<Pod> = ctx
            .list::<Pod>(Kind::Pod, namespace_of(&job.metadata))
            .await?
            .into_iter()
            .filter(|p| controlled_by(&p.metadata, job.metadata.uid.as_deref()))
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let suspend = job.spec.suspend.unwrap_or(false);
        let started = seconds(job.status.start_time.as_deref());
        let spec = JobSpec {
            parallelism: job.spec.parallelism.unwrap_or(1),
            completions: job.spec.completions.unwrap_or(1),
            backoff_limit: job.spec.backoff_limit.unwrap_or(6),
            active_deadline_seconds: job.spec.active_deadline_seconds,
            suspend,
        };
        let plan = plan::plan(spec, &refs, started.unwrap_or(now), now);
        for _ in 0..plan.create {
            let pod: Pod = ctx.apply(new_pod(job).into()).await?;
            let message = format!("Created pod: {}", pod.metadata.name);
            ctx.event(
                Kind::Job,
                &job.metadata,
                Type::Normal,
                "SuccessfulCreate",
                &message,
            )
            .await;
        }
        for name in &plan.delete {
            if let Some(pod) = pods.iter().find(|p| &p.metadata.name == name) {
                ctx.delete(Kind::Pod, &pod.metadata).await?;
            }
        }
        let mut updated = job.clone();
        updated.status = JobStatus {
            active: Some(plan.active + plan.create - i32::try_from(plan.delete.len()).unwrap_or(0)),
            succeeded: Some(plan.succeeded),
            failed: Some(plan.failed),
            start_time: job
                .status
                .start_time
                .clone()
                .or_else(|| (!suspend).then(timestamp)),
            completion_time: None,
            conditions: job.status.conditions.clone(),
        };
        let stamp = timestamp();
        match &plan.finish {
            Some(Finish::Complete) => {
                updated.status.completion_time = Some(stamp.clone());
                updated
                    .status
                    .conditions
                    .push(terminal("Complete", "Completed", None, &stamp));
                ctx.event(
                    Kind::Job,
                    &job.metadata,
                    Type::Normal,
                    "Completed",
                    "Job completed",
                )
                .await;
            }
            Some(Finish::Failed { reason, message }) => {
                updated
                    .status
                    .conditions
                    .push(terminal("Failed", reason, Some(message), &stamp));
                ctx.event(Kind::Job, &job.metadata, Type::Warning, reason, message)
                    .await;
            }
            None => {}
        }
        ctx.update_status(updated.into()).await?;
        let in_seconds = |left: i64| Duration::from_secs(u64::try_from(left).unwrap_or(0).max(1));
        let deadline = match (&plan.finish, job.spec.active_deadline_seconds) {
            (Some(_), _) => Action::requeue(Duration::from_secs(1)),
            (None, Some(deadline)) if !suspend => {
                Action::requeue(in_seconds(started.unwrap_or(now) + deadline - now))
            }
            _ => Action::await_change(),
        };
        // Pods held back by the failure back-off are created when it ends.
        let retry = plan.retry_in.map_or_else(Action::await_change, |left| {
            Action::requeue(in_seconds(left))
        });
        Ok(deadline.sooner(retry))
    }
}

fn terminal(kind: &str, reason: &str, message: Option<&String>, stamp: &str) -> Condition {
    Condition {
        r#type: kind.into(),
        status: ConditionStatus::True,
        reason: Some(reason.into()),
        message: message.cloned(),
        last_transition_time: Some(stamp.into()),
        last_probe_time: Some(stamp.into()),
        ..Condition::default()
    }
}

/// A finished Job with ttlSecondsAfterFinished is deleted (its pods with it) that
/// long after it finished.
async fn expire(ctx: &Context, job: &Job, done: &Condition, now: i64) -> Result<Action, Error> {
    let Some(ttl) = job.spec.ttl_seconds_after_finished else {
        return Ok(Action::await_change());
    };
    let finished_at = seconds(done.last_transition_time.as_deref()).unwrap_or(now);
    let left = finished_at + i64::from(ttl) - now;
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left.unsigned_abs())));
    }
    ctx.delete(Kind::Job, &job.metadata).await?;
    Ok(Action::await_change())
}
