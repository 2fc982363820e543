//! What controllers read from pods: whether one is active, ready, available (ready
//! for minReadySeconds), and which to delete first when there are too many. Pure
//! functions of the pod and the time (seconds since the epoch), unit-tested.

use std::cmp::Reverse;

use crate::model::{ConditionStatus, Pod, PodPhase};

/// Seconds since the epoch of an RFC 3339 timestamp.
pub fn seconds(stamp: Option<&str>) -> Option<i64> {
    stamp
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

/// Now, in seconds since the epoch.
pub fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Neither finished nor being deleted: a pod that counts towards a replica count.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_finished(pod)
}

/// Succeeded or Failed: its containers will not run again.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.phase,
        Some(PodPhase::Succeeded | PodPhase::Failed)
    )
}

/// Since when the pod has been Ready (seconds since the epoch), if it is.
pub fn ready_since(pod: &Pod) -> Option<i64> {
    let ready = pod
        .status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready" && c.status == ConditionStatus::True)?;
    // A Ready condition without a time is as old as it can be.
    Some(seconds(ready.last_transition_time.as_deref()).unwrap_or(i64::MIN))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: i64) -> bool {
    ready_since(pod).is_some_and(|since| since.saturating_add(i64::from(min_ready_seconds)) <= now)
}

/// Seconds until a ready pod becomes available, when it is ready but not yet
/// available.
pub fn seconds_to_available(pod: &Pod, min_ready_seconds: i32, now: i64) -> Option<i64> {
    let since = ready_since(pod)?;
    let at = since.saturating_add(i64::from(min_ready_seconds));
    (at > now).then_some(at - now)
}

/// Kubernetes' order for scaling down (ActivePods): unbound before bound, pending
/// before unknown before running, not ready before ready, ready for less time before
/// ready for longer, more restarts before fewer, newer before older. Returns the
/// indices of the `count` pods to delete.
pub fn to_delete(pods: &[&Pod], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by_key(|&i| {
        let pod = pods[i];
        let bound = pod.spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
        let phase = match pod.status.phase {
            Some(PodPhase::Pending) | None => 0,
            Some(PodPhase::Unknown) => 1,
            _ => 2,
        };
        let restarts: i32 = pod
            .status
            .container_statuses
            .iter()
            .map(|c| c.restart_count)
            .sum();
        (
            bound,
            phase,
            is_ready(pod),
            // Ready more recently first.
            Reverse(ready_since(pod)),
            Reverse(restarts),
            Reverse(seconds(pod.metadata.creation_timestamp.as_deref())),
        )
    });
    order.truncate(count);
    order
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Condition, ContainerStatus};

    /// A bound, running pod named `name`, created at `created`, Ready since
    /// `ready_since` (None: not ready).
    pub(crate) fn pod(name: &str, created: i64, ready_since: Option<i64>) -> Pod {
        let stamp = |s: i64| {
            jiff::Timestamp::from_second(s)
                .expect("a valid time")
                .to_string()
        };
        let mut pod = Pod::default();
        pod.metadata.name = name.into();
        pod.metadata.creation_timestamp = Some(stamp(created));
        pod.spec.node_name = Some("node".into());
        pod.status.phase = Some(PodPhase::Running);
        pod.status.conditions.push(Condition {
            r#type: "Ready".into(),
            status: if ready_since.is_some() {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            last_transition_time: Some(stamp(ready_since.unwrap_or(created))),
            ..Default::default()
        });
        pod
    }

    fn names(pods: &[&Pod], indices: Vec<usize>) -> Vec<String> {
        indices
            .into_iter()
            .map(|i| pods[i].metadata.name.clone())
            .collect()
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("a", 100, Some(110));
        assert!(is_available(&p, 0, 110));
        assert!(!is_available(&p, 5, 114));
        assert!(is_available(&p, 5, 115));
        assert_eq!(seconds_to_available(&p, 5, 112), Some(3));
        assert_eq!(seconds_to_available(&p, 5, 115), None);
        let not_ready = pod("b", 100, None);
        assert!(!is_available(&not_ready, 0, 1000));
        assert_eq!(seconds_to_available(&not_ready, 5, 100), None);
    }

    #[test]
    fn terminating_and_finished_pods_are_not_active() {
        let mut p = pod("a", 1, Some(2));
        assert!(is_active(&p));
        p.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        assert!(!is_active(&p));
        let mut failed = pod("b", 1, None);
        failed.status.phase = Some(PodPhase::Failed);
        assert!(!is_active(&failed) && is_finished(&failed));
    }

    #[test]
    fn scale_down_deletes_not_ready_then_newest_ready() {
        let old_ready = pod("old-ready", 100, Some(110));
        let new_ready = pod("new-ready", 200, Some(210));
        let not_ready = pod("not-ready", 50, None);
        let mut pending = pod("pending", 10, None);
        pending.status.phase = Some(PodPhase::Pending);
        let mut unbound = pod("unbound", 5, None);
        unbound.spec.node_name = None;
        let pods = [&old_ready, &new_ready, &not_ready, &pending, &unbound];
        assert_eq!(
            names(&pods, to_delete(&pods, 5)),
            ["unbound", "pending", "not-ready", "new-ready", "old-ready"]
        );
        assert_eq!(names(&pods, to_delete(&pods, 1)), ["unbound"]);
        assert!(to_delete(&pods, 0).is_empty());
    }

    #[test]
    fn among_equals_more_restarts_then_newer_go_first() {
        let mut restarted = pod("restarted", 100, Some(300));
        restarted.status.container_statuses.push(ContainerStatus {
            restart_count: 3,
            ..Default::default()
        });
        let older = pod("older", 100, Some(300));
        let newer = pod("newer", 200, Some(300));
        let pods = [&older, &newer, &restarted];
        assert_eq!(
            names(&pods, to_delete(&pods, 3)),
            ["restarted", "newer", "older"]
        );
    }
}
