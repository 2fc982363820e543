//! A pod's status as Kubernetes reports it, computed from the node's record of
//! the pod: phase, conditions, addresses, and each container's state. Pure
//! functions, so every rule is unit-tested.

use crate::model::{
    Condition, ConditionStatus, Container, ContainerState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, IpAddress, Pod, PodPhase,
    PodStatus, QosClass, RestartPolicy,
};

use super::holds::Hold;
use super::record::{ContainerRecord, PodRecord, Terminated};

/// Whether a container that ended with `exit_code` is started again.
pub fn will_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// The status to report for `pod`, given what the node did and what holds it
/// NotReady besides its containers. `now` stamps the conditions that change.
pub fn pod_status(
    pod: &Pod,
    record: &PodRecord,
    host_ip: Option<&str>,
    hold: Option<&Hold>,
    now: &str,
) -> PodStatus {
    let policy = pod.spec.restart_policy.unwrap_or(RestartPolicy::Always);
    let init_statuses: Vec<ContainerStatus> = pod
        .spec
        .init_containers
        .iter()
        .map(|c| container_status(c, record.containers.get(&c.name), "PodInitializing", true))
        .collect();
    let waiting_reason = if record.ips.is_empty() || !record.initialized {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let statuses: Vec<ContainerStatus> = pod
        .spec
        .containers
        .iter()
        .map(|c| container_status(c, record.containers.get(&c.name), waiting_reason, false))
        .collect();

    let phase = phase(pod, record, policy);
    let containers_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let initialized = record.initialized || pod.spec.init_containers.is_empty();
    let previous = &pod.status.conditions;
    let mut ready = condition(previous, "Ready", containers_ready && hold.is_none(), now);
    if let Some(hold) = hold.filter(|_| containers_ready) {
        ready.reason = Some(hold.reason.clone());
        ready.message = Some(hold.message.clone());
    }
    let conditions = vec![
        condition(previous, "PodScheduled", true, now),
        condition(previous, "Initialized", initialized, now),
        condition(previous, "ContainersReady", containers_ready, now),
        ready,
    ];
    let ips: Vec<IpAddress> = record
        .ips
        .iter()
        .map(|ip| IpAddress { ip: ip.to_string() })
        .collect();
    PodStatus {
        phase: Some(phase),
        conditions,
        host_ip: host_ip.map(str::to_string),
        host_ips: host_ip
            .map(|ip| vec![IpAddress { ip: ip.to_string() }])
            .unwrap_or_default(),
        pod_ip: ips.first().map(|a| a.ip.clone()),
        pod_ips: ips,
        start_time: record.started_at.clone(),
        reason: None,
        message: None,
        nominated_node_name: pod.status.nominated_node_name.clone(),
        container_statuses: statuses,
        init_container_statuses: init_statuses,
        qos_class: Some(qos_class(pod)),
    }
}

fn phase(pod: &Pod, record: &PodRecord, policy: RestartPolicy) -> PodPhase {
    let state = |c: &Container| record.containers.get(&c.name);
    let failed_for_good = |c: &Container| {
        state(c)
            .and_then(|r| r.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0 && !will_restart(policy, t.exit_code))
    };
    // An init container that failed and will not run again fails the pod.
    if pod.spec.init_containers.iter().any(failed_for_good) {
        return PodPhase::Failed;
    }
    if record.ips.is_empty() || !record.initialized {
        return PodPhase::Pending;
    }
    let containers = &pod.spec.containers;
    let finished = |c: &Container| {
        state(c).is_some_and(|r| {
            r.running.is_none()
                && r.terminated
                    .as_ref()
                    .is_some_and(|t| !will_restart(policy, t.exit_code))
        })
    };
    if !containers.is_empty() && containers.iter().all(finished) {
        return if containers.iter().any(failed_for_good) {
            PodPhase::Failed
        } else {
            PodPhase::Succeeded
        };
    }
    let ever_started =
        |c: &Container| state(c).is_some_and(|r| r.running.is_some() || r.terminated.is_some());
    if containers.iter().any(ever_started) {
        PodPhase::Running
    } else {
        PodPhase::Pending
    }
}

fn container_status(
    container: &Container,
    record: Option<&ContainerRecord>,
    waiting_reason: &str,
    init: bool,
) -> ContainerStatus {
    let empty = ContainerRecord::default();
    let record = record.unwrap_or(&empty);
    let state = if let Some(running) = &record.running {
        ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(running.started_at.clone()),
            }),
            ..Default::default()
        }
    } else if let Some(waiting) = &record.waiting {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(waiting.reason.clone()),
                message: waiting.message.clone(),
            }),
            ..Default::default()
        }
    } else if let Some(terminated) = &record.terminated {
        terminated_state(terminated)
    } else {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(waiting_reason.to_string()),
                message: None,
            }),
            ..Default::default()
        }
    };
    let running = record.running.is_some();
    ContainerStatus {
        name: container.name.clone(),
        // Init containers are never "ready"; they run to completion.
        ready: running && record.ready && !init,
        started: Some(running && record.started),
        restart_count: record.restart_count,
        image: container.image.clone(),
        image_id: record.image_id.clone(),
        container_id: record
            .running
            .as_ref()
            .map(|r| format!("skiff://{}", r.id))
            .or_else(|| {
                record
                    .terminated
                    .as_ref()
                    .map(|t| format!("skiff://{}", t.id))
            }),
        state: Some(state),
        last_state: record.last_terminated.as_ref().map(terminated_state),
    }
}

fn terminated_state(terminated: &Terminated) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: terminated.exit_code,
            signal: None,
            reason: Some(terminated.reason.clone()),
            message: terminated.message.clone(),
            started_at: terminated.started_at.clone(),
            finished_at: Some(terminated.finished_at.clone()),
            container_id: Some(format!("skiff://{}", terminated.id)),
        }),
        ..Default::default()
    }
}

/// A condition, keeping its transition time while its status stays the same.
fn condition(previous: &[Condition], kind: &str, holds: bool, now: &str) -> Condition {
    let status = if holds {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let since = previous
        .iter()
        .find(|c| c.r#type == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        r#type: kind.to_string(),
        status,
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// Kubernetes' QoS classes: Guaranteed when every container's requests equal its
/// limits for CPU and memory, BestEffort when none sets any, else Burstable.
fn qos_class(pod: &Pod) -> QosClass {
    let containers: Vec<&Container> = pod
        .spec
        .containers
        .iter()
        .chain(&pod.spec.init_containers)
        .collect();
    let none = containers
        .iter()
        .all(|c| c.resources.requests.is_empty() && c.resources.limits.is_empty());
    if none {
        return QosClass::BestEffort;
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = c.resources.limits.get(*r).and_then(|q| q.parse().ok());
            let request = c
                .resources
                .requests
                .get(*r)
                .and_then(|q| q.parse().ok())
                .or(limit);
            limit.is_some() && limit == request
        })
    });
    if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::record::Running;

    /// A pod with one container, and a record of it running and ready.
    fn running_pod() -> (Pod, PodRecord) {
        let value = serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        });
        let pod: Pod = serde_json::from_value(value).expect("pod");
        let mut record = PodRecord {
            uid: "u1".into(),
            initialized: true,
            ips: vec!["10.244.0.7".parse().expect("ip")],
            ..Default::default()
        };
        record.containers.insert(
            "main".into(),
            ContainerRecord {
                running: Some(Running {
                    id: "c1".into(),
                    started_at: "2026-01-01T00:00:00Z".into(),
                    started_unix: 0,
                }),
                ready: true,
                started: true,
                ..Default::default()
            },
        );
        (pod, record)
    }

    fn ready_condition(status: &PodStatus) -> &Condition {
        status
            .conditions
            .iter()
            .find(|c| c.r#type == "Ready")
            .expect("a Ready condition")
    }

    #[test]
    fn a_hold_keeps_a_pod_with_ready_containers_not_ready_and_says_why() {
        let (pod, record) = running_pod();
        let now = "2026-01-01T00:00:01Z";
        let free = pod_status(&pod, &record, None, None, now);
        assert_eq!(ready_condition(&free).status, ConditionStatus::True);
        let hold = Hold {
            reason: "MeshCertificate".into(),
            message: "no certificate for spiffe://cluster.local/ns/shop/sa/web".into(),
        };
        let held = pod_status(&pod, &record, None, Some(&hold), now);
        let ready = ready_condition(&held);
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason.as_deref(), Some("MeshCertificate"));
        assert_eq!(ready.message.as_deref(), Some(hold.message.as_str()));
        let containers_ready = held
            .conditions
            .iter()
            .find(|c| c.r#type == "ContainersReady")
            .expect("ContainersReady");
        assert_eq!(containers_ready.status, ConditionStatus::True);
    }
}
