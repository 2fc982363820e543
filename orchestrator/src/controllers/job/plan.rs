//! What a Job's controller does next, decided on plain data: how many pods to
//! start or stop, when a failed pod may be replaced (exponential back-off), and
//! whether the Job has completed or failed (too many retries, or past its
//! deadline), as Kubernetes' job controller decides it.

use std::time::Duration;

use crate::controllers::pods::{is_active, seconds, to_delete};
use crate::model::{Pod, PodPhase};

/// The wait before replacing the first failed pod; it doubles with each failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait (Kubernetes' cap).
const BACKOFF_CAP: Duration = Duration::from_secs(6 * 60);

/// The Job's spec as the plan needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JobSpec {
    pub parallelism: i32,
    pub completions: i32,
    pub backoff_limit: i32,
    pub active_deadline_seconds: Option<i64>,
    pub suspend: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    Complete,
    Failed {
        reason: &'static str,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Pods to start now.
    pub create: i32,
    /// Active pods to stop (extra ones, or all when the Job ends).
    pub delete: Vec<String>,
    pub active: i32,
    pub succeeded: i32,
    /// Failed pods plus containers restarted in place (restartPolicy OnFailure):
    /// each is a retry.
    pub failed: i32,
    /// Set when the Job ends with this pass.
    pub finish: Option<Finish>,
    /// Pods are due but held back by the failure back-off for this many seconds.
    pub retry_in: Option<i64>,
}

/// How long after the last failure a Job waits to create pods again, with
/// `failures` failed pods: 10 s, doubled with each further failure, up to 6 min.
pub fn backoff(failures: i32) -> Duration {
    match u32::try_from(failures) {
        Ok(0) | Err(_) => Duration::ZERO,
        Ok(n) => BACKOFF_BASE
            .checked_mul(2u32.saturating_pow(n - 1))
            .map_or(BACKOFF_CAP, |delay| delay.min(BACKOFF_CAP)),
    }
}

/// When a failed pod failed: its last container's end, else its creation.
fn failed_at(pod: &Pod) -> Option<i64> {
    pod.status
        .container_statuses
        .iter()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_deref()
        })
        .filter_map(|t| seconds(Some(t)))
        .max()
        .or_else(|| seconds(pod.metadata.creation_timestamp.as_deref()))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The plan for a Job whose pods are `pods`, started at `started` (unix
/// seconds), at `now`.
pub fn plan(spec: JobSpec, pods: &[&Pod], started: i64, now: i64) -> Plan {
    let phase = |p: PodPhase| {
        count(
            pods.iter()
                .filter(|pod| pod.status.phase == Some(p))
                .count(),
        )
    };
    let active: Vec<&Pod> = pods.iter().copied().filter(|p| is_active(p)).collect();
    let restarts: i32 = active
        .iter()
        .flat_map(|p| &p.status.container_statuses)
        .map(|c| c.restart_count)
        .sum();
    let succeeded = phase(PodPhase::Succeeded);
    let failed = phase(PodPhase::Failed) + restarts;
    let mut plan = Plan {
        active: count(active.len()),
        succeeded,
        failed,
        ..Plan::default()
    };
    let names = |chosen: &[&Pod]| chosen.iter().map(|p| p.metadata.name.clone()).collect();
    let finish = if succeeded >= spec.completions {
        Some(Finish::Complete)
    } else if failed > spec.backoff_limit {
        Some(Finish::Failed {
            reason: "BackoffLimitExceeded",
            message: format!(
                "Job has reached the specified backoff limit ({} retries allowed, {failed} failed)",
                spec.backoff_limit
            ),
        })
    } else {
        spec.active_deadline_seconds
            .filter(|deadline| now - started >= *deadline)
            .map(|deadline| Finish::Failed {
                reason: "DeadlineExceeded",
                message: format!("Job was active longer than specified deadline ({deadline}s)"),
            })
    };
    if finish.is_some() {
        plan.finish = finish;
        plan.delete = names(&active);
        return plan;
    }
    let wanted = if spec.suspend {
        0
    } else {
        // Never more at once than completions still needed.
        spec.parallelism.min(spec.completions - succeeded).max(0)
    };
    // Pods being deleted still run: they are replaced once gone.
    let terminating = count(
        pods.iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && p.status
                        .phase
                        .is_none_or(|ph| !matches!(ph, PodPhase::Succeeded | PodPhase::Failed))
            })
            .count(),
    );
    if plan.active > wanted {
        let extra = usize::try_from(plan.active - wanted).unwrap_or(0);
        let chosen: Vec<&Pod> = to_delete(&active, extra)
            .into_iter()
            .map(|i| active[i])
            .collect();
        plan.delete = names(&chosen);
    } else {
        plan.create = (wanted - plan.active - terminating).max(0);
    }
    // Failed pods are replaced after the back-off, counted from the last failure.
    let failed_pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.status.phase == Some(PodPhase::Failed))
        .collect();
    let last_failure = failed_pods.iter().filter_map(|p| failed_at(p)).max();
    if plan.create > 0
        && let Some(last) = last_failure
    {
        let delay = i64::try_from(backoff(count(failed_pods.len())).as_secs()).unwrap_or(i64::MAX);
        let left = last.saturating_add(delay) - now;
        if left > 0 {
            plan.create = 0;
            plan.retry_in = Some(left);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::pods::tests::pod;
    use crate::model::{ContainerState, ContainerStateTerminated, ContainerStatus};

    fn spec() -> JobSpec {
        JobSpec {
            parallelism: 2,
            completions: 3,
            backoff_limit: 2,
            active_deadline_seconds: None,
            suspend: false,
        }
    }

    fn finished(name: &str, phase: PodPhase) -> Pod {
        let mut p = pod(name, 1, None);
        p.status.phase = Some(phase);
        p
    }

    #[test]
    fn starts_up_to_parallelism_and_no_more_than_remaining_completions() {
        assert_eq!(plan(spec(), &[], 0, 0).create, 2);
        let (a, b) = (
            finished("a", PodPhase::Succeeded),
            finished("b", PodPhase::Succeeded),
        );
        let p = plan(spec(), &[&a, &b], 0, 0);
        assert_eq!((p.create, p.succeeded, p.finish), (1, 2, None));
        // A terminating pod is not replaced until it is gone.
        let mut leaving = pod("leaving", 1, Some(1));
        leaving.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        assert_eq!(plan(spec(), &[&leaving], 0, 0).create, 1);
    }

    #[test]
    fn completes_when_enough_pods_succeeded() {
        let done: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| finished(n, PodPhase::Succeeded))
            .collect();
        let refs: Vec<&Pod> = done.iter().collect();
        assert_eq!(plan(spec(), &refs, 0, 0).finish, Some(Finish::Complete));
    }

    #[test]
    fn fails_past_the_backoff_limit_counting_restarts_in_place() {
        let (a, b) = (
            finished("a", PodPhase::Failed),
            finished("b", PodPhase::Failed),
        );
        // Long after the failures: the back-off is over.
        let p = plan(spec(), &[&a, &b], 0, 1000);
        assert_eq!((p.failed, p.finish.clone(), p.create), (2, None, 2));
        let mut restarted = pod("c", 1, None);
        restarted.status.container_statuses.push(ContainerStatus {
            restart_count: 1,
            ..Default::default()
        });
        let p = plan(spec(), &[&a, &b, &restarted], 0, 0);
        assert_eq!(p.failed, 3);
        assert!(matches!(
            p.finish,
            Some(Finish::Failed {
                reason: "BackoffLimitExceeded",
                ..
            })
        ));
        assert_eq!(p.delete, ["c"]);
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_six_minutes() {
        for (failures, wait) in [
            (0, 0),
            (1, 10),
            (2, 20),
            (3, 40),
            (6, 320),
            (7, 360),
            (40, 360),
        ] {
            assert_eq!(backoff(failures), Duration::from_secs(wait), "{failures}");
        }
    }

    /// A pod whose container failed at `at`.
    fn failed_at(name: &str, at: i64) -> Pod {
        let mut p = finished(name, PodPhase::Failed);
        p.status.container_statuses.push(ContainerStatus {
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    finished_at: Some(jiff::Timestamp::from_second(at).expect("valid").to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_failed_pod_is_replaced_after_the_backoff_from_the_last_failure() {
        let one = JobSpec {
            parallelism: 1,
            completions: 1,
            backoff_limit: 5,
            ..spec()
        };
        let first = failed_at("a", 100);
        let p = plan(one, &[&first], 0, 105);
        assert_eq!((p.create, p.retry_in), (0, Some(5)));
        let p = plan(one, &[&first], 0, 110);
        assert_eq!((p.create, p.retry_in), (1, None));
        // Two failures: 20 s from the later one.
        let second = failed_at("b", 200);
        let p = plan(one, &[&first, &second], 0, 215);
        assert_eq!((p.create, p.retry_in), (0, Some(5)));
        assert_eq!(plan(one, &[&first, &second], 0, 220).create, 1);
    }

    #[test]
    fn fails_past_the_deadline_and_stops_what_runs() {
        let s = JobSpec {
            active_deadline_seconds: Some(10),
            ..spec()
        };
        let running = pod("a", 1, Some(1));
        assert_eq!(plan(s, &[&running], 100, 109).finish, None);
        let p = plan(s, &[&running], 100, 110);
        assert!(matches!(
            p.finish,
            Some(Finish::Failed {
                reason: "DeadlineExceeded",
                ..
            })
        ));
        assert_eq!(p.delete, ["a"]);
    }

    #[test]
    fn suspending_stops_running_pods() {
        let s = JobSpec {
            suspend: true,
            ..spec()
        };
        let (old, new) = (pod("old", 1, Some(2)), pod("new", 3, None));
        let p = plan(s, &[&old, &new], 0, 0);
        assert_eq!((p.create, p.delete.len()), (0, 2));
        // Fewer wanted: the not-ready one goes first.
        let one = JobSpec {
            parallelism: 1,
            ..spec()
        };
        assert_eq!(plan(one, &[&old, &new], 0, 0).delete, ["new"]);
    }
}
