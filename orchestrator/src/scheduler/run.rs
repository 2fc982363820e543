//! The scheduler loop: lists and watches Pods, Nodes and PriorityClasses into a
//! [`Snapshot`], decides for pending pods one at a time (highest priority first),
//! and writes the outcome: a binding, a PodScheduled=False condition, or a
//! nomination and the deletion of the pods it preempts. Pods that fit nowhere wait
//! until something that could make room changes (a node added or changed, a pod
//! gone or finished, a priority class added), or a minute passes.
//!
//! A decision is assumed at once (the pod counts on its node) while its binding is
//! written in the background, so the next decision already sees it; a binding that
//! fails is forgotten and the pod waits again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use log::{debug, info, warn};
use tokio::task::JoinSet;

use super::decide::{Decision, NextNode, decide};
use super::queue::Queue;
use super::snapshot::{NodeSpecifics, PlacedPod, PodKey, Snapshot, holds_room};
use super::{Error, Scoring};
use crate::api::registry::typed::{list_all, watch_all};
use crate::api::registry::{ApiError, EventType, ObjectRef, Propagation, Registry, now};
use crate::model::{
    Condition, ConditionStatus, Kind, Node, Object, Pod, PodPhase, PodSpec, PreemptionPolicy,
    PriorityClass,
};

/// How often pods that fit nowhere are tried again even if nothing seemed to
/// change (Kubernetes waits five minutes).
const FLUSH_PARKED: Duration = Duration::from_secs(60);

/// Bindings written at once; more wait in the queue.
const MAX_IN_FLIGHT: usize = 512;

const POD_SCHEDULED: &str = "PodScheduled";
const UNSCHEDULABLE: &str = "Unschedulable";

/// Schedules pods until `shutdown` resolves. Store errors are logged and the
/// lists retried; they never stop the agent.
pub async fn run(registry: Registry, scoring: Scoring, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let followed = tokio::select! {
            _ = &mut shutdown => return,
            ended = follow(&registry, scoring) => ended,
        };
        if let Err(e) = followed {
            warn!("scheduler: {e}; listing again");
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// What a background write reports back.
enum Written {
    Bound {
        key: PodKey,
        node: String,
        result: Result<(), ApiError>,
    },
    Other,
}

/// The loop's state between two lists.
struct Scheduler {
    registry: Registry,
    scoring: Scoring,
    snapshot: Snapshot,
    /// Unbound pods, as last seen.
    // Shared with the decisions' background writes: a decision copies no pod.
    pending: HashMap<PodKey, Arc<Pod>>,
    queue: Queue,
    /// Where the next decision starts looking at nodes.
    next_node: NextNode,
    writes: JoinSet<Written>,
}

/// One list-then-watch round; returns when a watch ends.
async fn follow(registry: &Registry, scoring: Scoring) -> Result<(), Error> {
    let (classes, class_version) = list_all::<PriorityClass>(registry, Kind::PriorityClass).await?;
    let (nodes, node_version) = list_all::<Node>(registry, Kind::Node).await?;
    let (pods, pod_version) = list_all::<Pod>(registry, Kind::Pod).await?;
    let mut scheduler = Scheduler {
        registry: registry.clone(),
        scoring,
        snapshot: Snapshot::default(),
        pending: HashMap::new(),
        queue: Queue::default(),
        next_node: NextNode::default(),
        writes: JoinSet::new(),
    };
    for class in &classes {
        scheduler.snapshot.set_priority_class(class);
    }
    for node in &nodes {
        scheduler
            .snapshot
            .set_node(&node.metadata.name, NodeSpecifics::of(node));
    }
    for pod in &pods {
        scheduler.pod_changed(EventType::Added, pod);
    }
    info!(
        "scheduler: {} nodes, {} pods pending",
        scheduler.snapshot.nodes.len(),
        scheduler.pending.len()
    );
    let mut class_events = watch_all(registry, Kind::PriorityClass, &class_version).await?;
    let mut node_events = watch_all(registry, Kind::Node, &node_version).await?;
    let mut pod_events = watch_all(registry, Kind::Pod, &pod_version).await?;
    let mut flush = tokio::time::interval(FLUSH_PARKED);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Events first: each decision sees everything that happened before it.
        tokio::select! {
            biased;
            event = pod_events.next() => match event {
                Some(Ok(event)) => if let Object::Pod(pod) = &*event.object {
                    scheduler.pod_changed(event.event_type, pod);
                },
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            event = node_events.next() => match event {
                Some(Ok(event)) => if let Object::Node(node) = &*event.object {
                    scheduler.node_changed(event.event_type, node);
                },
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            event = class_events.next() => match event {
                Some(Ok(event)) => if let Object::PriorityClass(class) = &*event.object {
                    scheduler.class_changed(event.event_type, class);
                },
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            Some(written) = scheduler.writes.join_next(), if !scheduler.writes.is_empty() => {
                if let Ok(written) = written {
                    scheduler.written(written);
                }
            }
            _ = flush.tick() => scheduler.queue.wake(),
            _ = std::future::ready(()),
                if scheduler.queue.has_active() && scheduler.writes.len() < MAX_IN_FLIGHT => {
                scheduler.schedule_next();
            }
        }
    }
}

impl Scheduler {
    /// A pod's priority and preemption policy; a pod whose class was deleted since
    /// it was admitted counts by its own `spec.priority` (or 0).
    fn priority(&self, spec: &PodSpec) -> (i32, PreemptionPolicy) {
        self.snapshot.priority_of(spec).unwrap_or((
            spec.priority.unwrap_or(0),
            spec.preemption_policy.unwrap_or_default(),
        ))
    }

    fn pod_changed(&mut self, event: EventType, pod: &Pod) {
        let key = PodKey::of(pod);
        let (priority, _) = self.priority(&pod.spec);
        if event == EventType::Deleted {
            self.pending.remove(&key);
            self.queue.remove(&key);
            self.snapshot.forget_nomination(&key);
            self.free(&key);
            return;
        }
        if pod.spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
            self.pending.remove(&key);
            self.queue.remove(&key);
            match (holds_room(pod), pod.spec.node_name.as_deref()) {
                (true, Some(node)) => {
                    let node = node.to_string();
                    self.snapshot.place(&node, PlacedPod::new(pod, priority));
                }
                // Finished: its room is free.
                _ => self.free(&key),
            }
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            self.pending.remove(&key);
            self.queue.remove(&key);
            return;
        }
        // A nomination from before a restart still holds the room.
        if let Some(node) = &pod.status.nominated_node_name {
            self.snapshot.nominate(node, PlacedPod::new(pod, priority));
        }
        // A status change (our own PodScheduled condition, say) changes nothing a
        // decision reads; only a new pod or a new spec or labels gets a new decision.
        let relevant = self
            .pending
            .get(&key)
            .is_none_or(|old| old.spec != pod.spec || old.metadata.labels != pod.metadata.labels);
        if relevant {
            self.queue.push(key.clone(), priority);
        }
        self.pending.insert(key, Arc::new(pod.clone()));
    }

    /// A placed pod went away: the room it held may let waiting pods in.
    fn free(&mut self, key: &PodKey) {
        if self.snapshot.placed_on(key).is_some() {
            self.snapshot.unplace(key);
            self.queue.wake();
        }
    }

    fn node_changed(&mut self, event: EventType, node: &Node) {
        let name = &node.metadata.name;
        if event == EventType::Deleted {
            self.snapshot.remove_node(name);
        } else if self.snapshot.set_node(name, NodeSpecifics::of(node)) {
            self.queue.wake();
        }
    }

    fn class_changed(&mut self, event: EventType, class: &PriorityClass) {
        if event == EventType::Deleted {
            self.snapshot.remove_priority_class(&class.metadata.name);
        } else {
            self.snapshot.set_priority_class(class);
            self.queue.wake();
        }
    }

    /// Decides for the next pod in the queue and starts writing the outcome.
    fn schedule_next(&mut self) {
        let Some(key) = self.queue.pop() else { return };
        // Already placed: its binding is being written.
        if self.snapshot.placed_on(&key).is_some() {
            return;
        }
        let Some(pod) = self.pending.get(&key).cloned() else {
            return;
        };
        let (priority, _) = self.priority(&pod.spec);
        match decide(&pod, &self.snapshot, self.scoring, &mut self.next_node) {
            Decision::Bind { node } => {
                debug!("scheduler: binding {key} to {node}");
                self.snapshot.place(&node, PlacedPod::new(&pod, priority));
                let registry = self.registry.clone();
                self.writes.spawn(async move {
                    let reference = pod_ref(&key);
                    let result = registry
                        .bind(&reference, pod.metadata.uid.as_deref(), &node)
                        .await
                        .map(drop);
                    Written::Bound { key, node, result }
                });
            }
            Decision::Preempt { node, victims } => {
                self.snapshot
                    .nominate(&node, PlacedPod::new(&pod, priority));
                self.queue.park(key.clone(), priority);
                let registry = self.registry.clone();
                self.writes
                    .spawn(preempt(registry, Pod::clone(&pod), node, victims));
            }
            Decision::Unschedulable { message } => {
                self.queue.park(key.clone(), priority);
                if let Some(status) = unschedulable_status(&pod, &message) {
                    info!("scheduler: {key} is unschedulable: {message}");
                    let registry = self.registry.clone();
                    self.writes.spawn(async move {
                        if let Err(e) = registry.update_status(status).await {
                            debug!("scheduler: recording why {key} waits: {e}");
                        }
                        Written::Other
                    });
                }
            }
        }
    }

    fn written(&mut self, written: Written) {
        let Written::Bound { key, node, result } = written else {
            return;
        };
        if let Err(e) = result {
            warn!("scheduler: binding {key} to {node}: {e}");
            self.snapshot.unplace(&key);
            if let Some(pod) = self.pending.get(&key) {
                let (priority, _) = self.priority(&pod.spec);
                self.queue.park(key, priority);
            }
        }
    }
}

fn pod_ref(key: &PodKey) -> ObjectRef {
    ObjectRef {
        kind: Kind::Pod,
        namespace: Some(key.namespace.clone()),
        name: key.name.clone(),
    }
}

/// The pod with PodScheduled=False and `message`, to write as its status; None
/// when it says so already.
fn unschedulable_status(pod: &Pod, message: &str) -> Option<serde_json::Value> {
    let mut pod = pod.clone();
    let conditions = &mut pod.status.conditions;
    let current = conditions.iter().position(|c| c.r#type == POD_SCHEDULED);
    if let Some(index) = current {
        let c = &conditions[index];
        if c.status == ConditionStatus::False
            && c.reason.as_deref() == Some(UNSCHEDULABLE)
            && c.message.as_deref() == Some(message)
        {
            return None;
        }
        conditions.remove(index);
    }
    let now = now();
    conditions.push(Condition {
        r#type: POD_SCHEDULED.into(),
        status: ConditionStatus::False,
        reason: Some(UNSCHEDULABLE.into()),
        message: Some(message.into()),
        last_transition_time: Some(now.clone()),
        last_probe_time: Some(now),
        ..Condition::default()
    });
    pod.status.phase.get_or_insert(PodPhase::Pending);
    Some(Object::Pod(pod).to_value())
}

/// Nominates `node` for `pod` and deletes the victims, each with its grace period.
async fn preempt(registry: Registry, pod: Pod, node: String, victims: Vec<PodKey>) -> Written {
    let key = PodKey::of(&pod);
    if pod.status.nominated_node_name.as_deref() != Some(node.as_str()) {
        let mut nominated = pod.clone();
        nominated.status.nominated_node_name = Some(node.clone());
        nominated.metadata.resource_version = None;
        if let Err(e) = registry
            .update_status(Object::Pod(nominated).to_value())
            .await
        {
            warn!("scheduler: nominating {node} for {key}: {e}");
        }
    }
    for victim in victims {
        info!("scheduler: {key} preempts {victim} on {node}");
        match registry
            .delete(&pod_ref(&victim), None, Propagation::Background)
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => warn!("scheduler: evicting {victim} for {key}: {e}"),
        }
    }
    Written::Other
}
