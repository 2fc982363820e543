//! What the scheduler knows of the cluster, as plain data: each node's allocatable
//! resources, labels, taints and health, the pods bound (or nominated) to it with
//! their requests, and the priority classes. The scheduler loop keeps it in step
//! with the store; [`decide`](super::decide) reads it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::model::{
    ConditionStatus, Node, Pod, PodAffinityTerm, PodPhase, PodSpec, PreemptionPolicy,
    PriorityClass, Quantity, Taint,
};

/// The resources the scheduler accounts for. CPU in millicores, memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub pods: i64,
}

impl Resources {
    /// A node's `allocatable` map; unknown or unreadable entries count as zero.
    pub fn from_quantities(quantities: &BTreeMap<String, Quantity>) -> Self {
        let read = |name: &str, unit: fn(crate::model::ParsedQuantity) -> i128| {
            quantities
                .get(name)
                .and_then(|q| q.parse().ok())
                .map_or(0, |q| i64::try_from(unit(q)).unwrap_or(i64::MAX))
        };
        Resources {
            cpu_millis: read("cpu", |q| q.millis()),
            memory_bytes: read("memory", |q| q.value()),
            pods: read("pods", |q| q.value()),
        }
    }

    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            pods: self.pods.saturating_add(other.pods),
        }
    }

    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            pods: self.pods.saturating_sub(other.pods),
        }
    }

    /// Kubernetes' scoring view of a request: a pod that asks for no CPU or memory
    /// still counts as 100m and 200Mi, so that such pods spread too.
    pub fn non_zero(self) -> Resources {
        Resources {
            cpu_millis: if self.cpu_millis == 0 {
                100
            } else {
                self.cpu_millis
            },
            memory_bytes: if self.memory_bytes == 0 {
                200 * 1024 * 1024
            } else {
                self.memory_bytes
            },
            pods: self.pods,
        }
    }
}

/// What a pod asks for, by Kubernetes' rules: per resource, the larger of the sum
/// over its containers and the largest init container (they run one at a time,
/// before the others). A container's limit stands in for a request it leaves out.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let of = |container: &crate::model::Container| {
        let resources = &container.resources;
        let mut merged = resources.limits.clone();
        merged.extend(resources.requests.clone());
        Resources::from_quantities(&merged)
    };
    let running = spec
        .containers
        .iter()
        .map(of)
        .fold(Resources::default(), Resources::plus);
    let init =
        spec.init_containers
            .iter()
            .map(of)
            .fold(Resources::default(), |max: Resources, r| Resources {
                cpu_millis: max.cpu_millis.max(r.cpu_millis),
                memory_bytes: max.memory_bytes.max(r.memory_bytes),
                pods: 0,
            });
    Resources {
        cpu_millis: running.cpu_millis.max(init.cpu_millis),
        memory_bytes: running.memory_bytes.max(init.memory_bytes),
        pods: 1,
    }
}

/// A pod's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn of(pod: &Pod) -> PodKey {
        PodKey {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod that holds (or, nominated, will hold) room on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedPod {
    pub key: PodKey,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub requests: Resources,
    /// Deleted and stopping: its room frees up without evicting anyone.
    pub terminating: bool,
    /// Its required pod anti-affinity terms, which keep matching pods away.
    pub anti_affinity: Vec<PodAffinityTerm>,
}

impl PlacedPod {
    pub fn new(pod: &Pod, priority: i32) -> PlacedPod {
        PlacedPod {
            key: PodKey::of(pod),
            labels: pod.metadata.labels.clone(),
            priority,
            requests: pod_requests(&pod.spec),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            anti_affinity: required_anti_affinity(&pod.spec).to_vec(),
        }
    }
}

/// A pod's required anti-affinity terms.
pub fn required_anti_affinity(spec: &PodSpec) -> &[PodAffinityTerm] {
    spec.affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .map_or(&[], |a| {
            a.required_during_scheduling_ignored_during_execution
                .as_slice()
        })
}

/// What scheduling needs of a Node object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSpecifics {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    /// Its Ready condition is True.
    pub ready: bool,
    pub allocatable: Resources,
}

impl NodeSpecifics {
    pub fn of(node: &Node) -> NodeSpecifics {
        NodeSpecifics {
            labels: node.metadata.labels.clone(),
            taints: node.spec.taints.clone(),
            unschedulable: node.spec.unschedulable == Some(true),
            ready: node
                .status
                .conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == ConditionStatus::True),
            allocatable: Resources::from_quantities(&node.status.allocatable),
        }
    }
}

/// One node and what is placed on it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    /// Its Node object exists (a node can be gone while its pods are still listed).
    pub registered: bool,
    pub specifics: NodeSpecifics,
    /// The bound pods that have not finished, terminating ones included.
    pub pods: BTreeMap<PodKey, PlacedPod>,
    /// Pods that preempted others here and wait for the room.
    pub nominated: BTreeMap<PodKey, PlacedPod>,
    /// The sum of `pods`' requests.
    pub requested: Resources,
    /// The same with [`Resources::non_zero`] requests, for scoring.
    pub requested_for_score: Resources,
}

impl NodeInfo {
    fn add(&mut self, pod: PlacedPod) {
        self.requested = self.requested.plus(pod.requests);
        self.requested_for_score = self.requested_for_score.plus(pod.requests.non_zero());
        if let Some(old) = self.pods.insert(pod.key.clone(), pod) {
            self.subtract(&old);
        }
    }

    fn remove(&mut self, key: &PodKey) {
        if let Some(old) = self.pods.remove(key) {
            self.subtract(&old);
        }
    }

    fn subtract(&mut self, pod: &PlacedPod) {
        self.requested = self.requested.minus(pod.requests);
        self.requested_for_score = self.requested_for_score.minus(pod.requests.non_zero());
    }
}

/// A priority class as the scheduler uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorityInfo {
    pub value: i32,
    pub preemption_policy: PreemptionPolicy,
    pub global_default: bool,
}

/// The cluster as the scheduler sees it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub priority_classes: BTreeMap<String, PriorityInfo>,
    /// The node each placed pod is on.
    placed_on: HashMap<PodKey, String>,
    /// The node each nominated pod waits for.
    nominated_on: HashMap<PodKey, String>,
    /// How many placed pods have required anti-affinity terms (usually none, and
    /// then the symmetric check is skipped).
    anti_affinity_pods: usize,
    /// How many nodes have their Node object.
    registered_nodes: usize,
}

impl Snapshot {
    /// Adds or updates a node; returns whether what scheduling reads of it changed
    /// (a heartbeat changes nothing).
    pub fn set_node(&mut self, name: &str, specifics: NodeSpecifics) -> bool {
        let node = self
            .nodes
            .entry(name.to_string())
            .or_insert_with(|| NodeInfo {
                name: name.to_string(),
                ..NodeInfo::default()
            });
        let changed = !node.registered || node.specifics != specifics;
        self.registered_nodes += usize::from(!node.registered);
        node.registered = true;
        node.specifics = specifics;
        changed
    }

    /// Removes a node. Its pods stay accounted for, should it come back.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(node) = self.nodes.get_mut(name) {
            self.registered_nodes -= usize::from(node.registered);
            node.registered = false;
            node.specifics = NodeSpecifics::default();
            if node.pods.is_empty() && node.nominated.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Records a pod bound to `node` (replacing what was recorded for it).
    pub fn place(&mut self, node: &str, pod: PlacedPod) {
        self.unplace(&pod.key);
        self.forget_nomination(&pod.key);
        self.anti_affinity_pods += usize::from(!pod.anti_affinity.is_empty());
        self.placed_on.insert(pod.key.clone(), node.to_string());
        self.nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeInfo {
                name: node.to_string(),
                ..NodeInfo::default()
            })
            .add(pod);
    }

    /// Forgets a placed pod (deleted, finished, or a binding that failed).
    pub fn unplace(&mut self, key: &PodKey) {
        let Some(node) = self.placed_on.remove(key) else {
            return;
        };
        if let Some(info) = self.nodes.get_mut(&node) {
            if info
                .pods
                .get(key)
                .is_some_and(|p| !p.anti_affinity.is_empty())
            {
                self.anti_affinity_pods -= 1;
            }
            info.remove(key);
        }
    }

    /// Records that `pod` waits for room on `node`, which its preemption makes.
    pub fn nominate(&mut self, node: &str, pod: PlacedPod) {
        self.forget_nomination(&pod.key);
        self.nominated_on.insert(pod.key.clone(), node.to_string());
        if let Some(info) = self.nodes.get_mut(node) {
            info.nominated.insert(pod.key.clone(), pod);
        }
    }

    pub fn forget_nomination(&mut self, key: &PodKey) {
        if let Some(node) = self.nominated_on.remove(key)
            && let Some(info) = self.nodes.get_mut(&node)
        {
            info.nominated.remove(key);
        }
    }

    /// The node a pod is placed on, if any.
    pub fn placed_on(&self, key: &PodKey) -> Option<&str> {
        self.placed_on.get(key).map(String::as_str)
    }

    /// How many nodes have their Node object (placed pods can name others).
    pub fn registered_nodes(&self) -> usize {
        self.registered_nodes
    }

    /// Whether any placed pod has required anti-affinity terms.
    pub fn has_anti_affinity_pods(&self) -> bool {
        self.anti_affinity_pods > 0
    }

    pub fn set_priority_class(&mut self, class: &PriorityClass) {
        self.priority_classes.insert(
            class.metadata.name.clone(),
            PriorityInfo {
                value: class.value.unwrap_or_default(),
                preemption_policy: class.preemption_policy.unwrap_or_default(),
                global_default: class.global_default == Some(true),
            },
        );
    }

    pub fn remove_priority_class(&mut self, name: &str) {
        self.priority_classes.remove(name);
    }

    /// A pod's priority and preemption policy: its own (set at admission) if set,
    /// else its class's, else the global default class's, else 0. Err names a class
    /// that does not exist.
    pub fn priority_of(&self, spec: &PodSpec) -> Result<(i32, PreemptionPolicy), String> {
        let class = match &spec.priority_class_name {
            Some(name) => Some(
                self.priority_classes
                    .get(name)
                    .ok_or_else(|| format!("no PriorityClass named {name:?}"))?,
            ),
            None => self.priority_classes.values().find(|c| c.global_default),
        };
        let policy = spec
            .preemption_policy
            .or(class.map(|c| c.preemption_policy))
            .unwrap_or_default();
        let value = spec.priority.or(class.map(|c| c.value)).unwrap_or(0);
        Ok((value, policy))
    }
}

/// Whether a pod holds room on its node: bound and not finished.
pub fn holds_room(pod: &Pod) -> bool {
    pod.spec.node_name.as_deref().is_some_and(|n| !n.is_empty())
        && !matches!(
            pod.status.phase,
            Some(PodPhase::Succeeded | PodPhase::Failed)
        )
}
