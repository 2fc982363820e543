//! What a CronJob's controller does next, decided on plain data at a given `now`:
//! which run (if any) to start, which running Jobs to delete first (Replace), which
//! finished Jobs the history limits drop, the events to record and when to look
//! again, as Kubernetes' CronJob controller (v2) decides it.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::model::ConcurrencyPolicy;
use crate::model::cron::Schedule;
use crate::runtime::events::Type;

/// Past this many missed runs the CronJob gets a warning (Kubernetes' number): the
/// clock or the controller was off for long. The latest run still starts.
pub const MANY_MISSED: usize = 100;

/// The CronJob as the plan needs it.
#[derive(Clone, Debug)]
pub struct CronSpec {
    pub schedule: Schedule,
    pub time_zone: TimeZone,
    pub starting_deadline_seconds: Option<i64>,
    pub concurrency_policy: ConcurrencyPolicy,
    pub suspend: bool,
    pub successful_jobs_history_limit: usize,
    pub failed_jobs_history_limit: usize,
    /// When the CronJob was created: runs before it are not missed ones.
    pub created: Timestamp,
    /// The scheduled time of the last run started (status.lastScheduleTime).
    pub last_scheduled: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Complete,
    Failed,
}

/// One Job of the CronJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub name: String,
    pub state: JobState,
    /// Orders the history: the Job's creation (Kubernetes uses its start time).
    pub created: Timestamp,
    /// When it finished, for a finished one.
    pub finished: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_type: Type,
    pub reason: &'static str,
    pub message: String,
}

/// A run to start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The Job's name: the CronJob's and the scheduled time in minutes since the
    /// epoch, so that starting the same run twice names the same Job.
    pub job_name: String,
    pub scheduled: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Running Jobs to delete before starting (concurrencyPolicy Replace).
    pub replace: Vec<String>,
    pub start: Option<Start>,
    /// Finished Jobs beyond the history limits, oldest first.
    pub prune: Vec<String>,
    /// The Jobs that run after this pass (status.active).
    pub active: Vec<String>,
    /// What to tell the user: Jobs seen finished for the first time, runs skipped
    /// (Forbid, past their deadline) and too many missed runs.
    pub events: Vec<Event>,
    /// When the latest successful Job finished (status.lastSuccessfulTime).
    pub last_successful: Option<Timestamp>,
    /// When to look again: the next scheduled time; None while suspended.
    pub requeue_after: Option<Duration>,
}

/// The Job name of the run scheduled at `scheduled`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The plan for a CronJob named `name` whose Jobs are `runs`, that listed
/// `was_active` as running, at `now`.
pub fn plan(
    name: &str,
    spec: &CronSpec,
    runs: &[Run],
    was_active: &[String],
    now: Timestamp,
) -> Plan {
    let mut plan = Plan {
        active: runs
            .iter()
            .filter(|r| r.state == JobState::Running)
            .map(|r| r.name.clone())
            .collect(),
        last_successful: runs
            .iter()
            .filter(|r| r.state == JobState::Complete)
            .filter_map(|r| r.finished)
            .max(),
        ..Plan::default()
    };
    for run in runs.iter().filter(|r| r.state != JobState::Running) {
        if was_active.contains(&run.name) {
            plan.events.push(Event {
                event_type: Type::Normal,
                reason: "SawCompletedJob",
                message: format!(
                    "Saw completed job: {}, condition: {}",
                    run.name,
                    if run.state == JobState::Complete {
                        "Complete"
                    } else {
                        "Failed"
                    }
                ),
            });
        }
    }
    plan.prune = prune(runs, JobState::Complete, spec.successful_jobs_history_limit);
    plan.prune.extend(prune(
        runs,
        JobState::Failed,
        spec.failed_jobs_history_limit,
    ));
    if spec.suspend {
        return plan;
    }
    plan.requeue_after = spec
        .schedule
        .next_after(now, &spec.time_zone)
        .map(|next| duration_until(now, next));
    let Some(scheduled) = due(spec, now, &mut plan.events) else {
        return plan;
    };
    let job_name = job_name(name, scheduled);
    let started = spec.last_scheduled == Some(scheduled) || runs.iter().any(|r| r.name == job_name);
    if started {
        return plan;
    }
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled.as_second().saturating_add(deadline) < now.as_second()
    {
        plan.events.push(Event {
            event_type: Type::Warning,
            reason: "MissSchedule",
            message: format!(
                "Missed scheduled time to start a job: {}",
                scheduled.strftime("%a, %d %b %Y %H:%M:%S +0000")
            ),
        });
        return plan;
    }
    match spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !plan.active.is_empty() => {
            plan.events.push(Event {
                event_type: Type::Normal,
                reason: "JobAlreadyActive",
                message: "Not starting job because prior execution is running and concurrency \
                          policy is Forbid"
                    .into(),
            });
            return plan;
        }
        ConcurrencyPolicy::Replace => plan.replace = std::mem::take(&mut plan.active),
        _ => {}
    }
    plan.active.push(job_name.clone());
    plan.start = Some(Start {
        job_name,
        scheduled,
    });
    plan
}

/// The latest scheduled time at or before `now` that has not passed unnoticed, if
/// any: runs before the last one started, or before the CronJob existed, do not
/// count. More than [`MANY_MISSED`] since then adds a warning.
fn due(spec: &CronSpec, now: Timestamp, events: &mut Vec<Event>) -> Option<Timestamp> {
    let mut earliest = spec.last_scheduled.unwrap_or(spec.created);
    let (schedule, tz) = (&spec.schedule, &spec.time_zone);
    let latest = schedule
        .last_at_or_before(now, tz)
        .filter(|t| *t > earliest)?;
    // Runs older than the deadline could not start anyway: they are not counted.
    if let Some(deadline) = spec.starting_deadline_seconds
        && let Ok(cutoff) = Timestamp::from_second(now.as_second().saturating_sub(deadline))
    {
        earliest = earliest.max(cutoff);
    }
    let missed = std::iter::successors(schedule.next_after(earliest, tz), |t| {
        schedule.next_after(*t, tz)
    })
    .take_while(|t| *t <= now)
    .take(MANY_MISSED + 1)
    .count();
    if missed > MANY_MISSED {
        events.push(Event {
            event_type: Type::Warning,
            reason: "TooManyMissedTimes",
            message: format!(
                "too many missed start times: > {MANY_MISSED}. Set or decrease \
                 .spec.startingDeadlineSeconds or check clock skew"
            ),
        });
    }
    Some(latest)
}

/// The finished Jobs in `state` beyond `limit`, oldest first.
fn prune(runs: &[Run], state: JobState, limit: usize) -> Vec<String> {
    let mut finished: Vec<&Run> = runs.iter().filter(|r| r.state == state).collect();
    finished.sort_by_key(|r| (r.created, r.name.as_str()));
    let extra = finished.len().saturating_sub(limit);
    finished
        .into_iter()
        .take(extra)
        .map(|r| r.name.clone())
        .collect()
}

/// From `now` to a little after `next` (so the pass then finds the run due).
fn duration_until(now: Timestamp, next: Timestamp) -> Duration {
    let wait = Duration::try_from(next.duration_since(now)).unwrap_or_default();
    wait + Duration::from_millis(100)
}

#[cfg(test)]
mod tests;
