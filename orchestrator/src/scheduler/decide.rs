//! The scheduling decision for one pod, a pure function of the pod and a
//! [`Snapshot`]: filter the nodes (readiness, cordons, taints, node selector and
//! affinity, resources, pod anti-affinity), score the ones left (resources, then
//! preferred affinity and PreferNoSchedule taints, with Kubernetes' plugin
//! weights), and pick the best, the first by name on a tie. When no node fits, the
//! answer says why per node in Kubernetes' words, or names the pods to evict.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Bound;

use super::Scoring;
use super::snapshot::{
    NodeInfo, PodKey, Resources, Snapshot, pod_requests, required_anti_affinity,
};
use crate::model::{
    NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm,
    PreemptionPolicy, Taint, TaintEffect, Toleration,
};

/// Kubernetes' default plugin weights: resources 1, node affinity 2, taints 3.
const AFFINITY_WEIGHT: i64 = 2;
const TAINT_WEIGHT: i64 = 3;

/// The taint a cordoned node is treated as having (a pod tolerating it may go there).
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What to do with a pending pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind it to this node.
    Bind { node: String },
    /// Evict these pods from `node` (none: pods there are already terminating),
    /// then bind it there once they are gone.
    Preempt { node: String, victims: Vec<PodKey> },
    /// No node can take it; `message` says why, per node.
    Unschedulable { message: String },
}

/// Why one node cannot take a pod, as Kubernetes words it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reason {
    NotReady,
    Unschedulable,
    UntoleratedTaint { key: String, value: String },
    NodeAffinity,
    Insufficient(&'static str),
    TooManyPods,
    AntiAffinity,
    ExistingAntiAffinity,
}

impl Reason {
    /// Reasons evicting lower-priority pods can remove.
    fn is_resource(&self) -> bool {
        matches!(self, Reason::Insufficient(_) | Reason::TooManyPods)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotReady => f.write_str("node(s) were not ready"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
        }
    }
}

/// The pod being scheduled, with what is computed once for all nodes.
struct Candidate<'a> {
    pod: &'a Pod,
    key: PodKey,
    priority: i32,
    requests: Resources,
    /// (topology key, value) pairs its own anti-affinity terms rule out.
    avoids: HashSet<(&'a str, &'a str)>,
    /// The same, ruled out by placed pods' anti-affinity terms that match it.
    avoided_by: HashSet<(&'a str, &'a str)>,
}

/// Where the next decision starts looking at nodes: the name of the first node
/// the last decision did not examine (kube-scheduler's nextStartNodeIndex, by
/// name, so that nodes coming and going do not shift it). Empty: the first node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextNode(String);

/// Kubernetes' adaptive percentageOfNodesToScore: the filters stop once this many
/// nodes fit. Every node in clusters of up to 100; beyond, 50% less 1% per 125
/// nodes, at least 5% and at least 100 nodes.
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN_NODES: usize = 100;
    const MIN_PERCENT: usize = 5;
    if nodes < MIN_NODES {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(MIN_PERCENT);
    (nodes * percent / 100).max(MIN_NODES)
}

/// Decides where `pod` goes. As kube-scheduler does in large clusters, it
/// examines nodes from `next` on (wrapping around) only until
/// [`feasible_nodes_to_find`] of them fit, scores those, and moves `next` past
/// the nodes it examined, so the next decision looks at others first.
pub fn decide(pod: &Pod, snapshot: &Snapshot, scoring: Scoring, next: &mut NextNode) -> Decision {
    let (priority, policy) = match snapshot.priority_of(&pod.spec) {
        Ok(resolved) => resolved,
        Err(message) => return Decision::Unschedulable { message },
    };
    let candidate = Candidate::new(pod, priority, snapshot);
    let wanted = feasible_nodes_to_find(snapshot.registered_nodes());
    let from = next.0.as_str();
    let rotated = snapshot
        .nodes
        .range::<str, _>((Bound::Included(from), Bound::Unbounded))
        .chain(
            snapshot
                .nodes
                .range::<str, _>((Bound::Unbounded, Bound::Excluded(from))),
        )
        .map(|(_, node)| node)
        .filter(|n| n.registered);
    // One buffer for every node's reasons: most nodes fit, and the others need no
    // allocation of their own.
    let mut failed = Vec::new();
    let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(wanted);
    let mut stopped_before = None;
    for node in rotated {
        if feasible.len() == wanted {
            stopped_before = Some(node.name.clone());
            break;
        }
        if candidate.filter(node, node.requested, &mut failed) {
            feasible.push(node);
        }
    }
    // Having examined every node, the next decision starts where this one did.
    if let Some(name) = stopped_before {
        next.0 = name;
    }
    if let Some(node) = best(&candidate, &feasible, scoring) {
        return Decision::Bind {
            node: node.name.clone(),
        };
    }
    // No node fits (so every node was examined): a second pass, in name order,
    // says why per node, worded only now (a pod that fits never formats a reason).
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut resource_only: Vec<&NodeInfo> = Vec::new();
    let mut total = 0;
    for node in snapshot.nodes.values().filter(|n| n.registered) {
        total += 1;
        candidate.filter(node, node.requested, &mut failed);
        if failed.iter().all(Reason::is_resource) {
            resource_only.push(node);
        }
        for reason in failed.drain(..) {
            *reasons.entry(reason.to_string()).or_default() += 1;
        }
    }
    let message = if total == 0 {
        "no nodes available to schedule pods".to_string()
    } else {
        let counts: Vec<String> = reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        format!("0/{total} nodes are available: {}.", counts.join(", "))
    };
    if policy == PreemptionPolicy::Never {
        return Decision::Unschedulable {
            message: format!("{message} preemption: not eligible due to preemptionPolicy=Never."),
        };
    }
    match preemption(&candidate, &resource_only) {
        Some((node, victims)) => Decision::Preempt { node, victims },
        None => Decision::Unschedulable {
            message: format!(
                "{message} preemption: no node fits the pod by evicting lower-priority pods."
            ),
        },
    }
}

impl<'a> Candidate<'a> {
    fn new(pod: &'a Pod, priority: i32, snapshot: &'a Snapshot) -> Self {
        let key = PodKey::of(pod);
        let own_terms = required_anti_affinity(&pod.spec);
        let mut avoids = HashSet::new();
        let mut avoided_by = HashSet::new();
        if !own_terms.is_empty() || snapshot.has_anti_affinity_pods() {
            for node in snapshot.nodes.values() {
                for placed in node.pods.values() {
                    if placed.key.namespace != key.namespace {
                        continue;
                    }
                    for term in own_terms {
                        if selects(term, &placed.labels) {
                            avoids.extend(topology(term, node));
                        }
                    }
                    for term in &placed.anti_affinity {
                        if selects(term, &pod.metadata.labels) {
                            avoided_by.extend(topology(term, node));
                        }
                    }
                }
            }
        }
        Candidate {
            pod,
            key,
            priority,
            requests: pod_requests(&pod.spec),
            avoids,
            avoided_by,
        }
    }

    /// Whether `node`, with `requested` in use, can take the pod; `why` is
    /// cleared, then holds the reasons it cannot.
    fn filter(&self, node: &NodeInfo, requested: Resources, why: &mut Vec<Reason>) -> bool {
        why.clear();
        let specifics = &node.specifics;
        let tolerations = &self.pod.spec.tolerations;
        if !specifics.ready {
            why.push(Reason::NotReady);
            return false;
        }
        if specifics.unschedulable {
            let cordon = Taint {
                key: UNSCHEDULABLE_TAINT.into(),
                effect: Some(TaintEffect::NoSchedule),
                ..Taint::default()
            };
            if !tolerated(tolerations, &cordon) {
                why.push(Reason::Unschedulable);
                return false;
            }
        }
        if let Some(taint) = specifics.taints.iter().find(|t| {
            matches!(
                t.effect,
                Some(TaintEffect::NoSchedule | TaintEffect::NoExecute)
            ) && !tolerated(tolerations, t)
        }) {
            why.push(Reason::UntoleratedTaint {
                key: taint.key.clone(),
                value: taint.value.clone().unwrap_or_default(),
            });
            return false;
        }
        if !self.matches_node(node) {
            why.push(Reason::NodeAffinity);
            return false;
        }
        self.resource_reasons(node, requested, why);
        let on = |pairs: &HashSet<(&str, &str)>| {
            pairs
                .iter()
                .any(|(key, value)| specifics.labels.get(*key).map(String::as_str) == Some(value))
        };
        if !self.avoids.is_empty() && on(&self.avoids) {
            why.push(Reason::AntiAffinity);
        } else if !self.avoided_by.is_empty() && on(&self.avoided_by) {
            why.push(Reason::ExistingAntiAffinity);
        }
        why.is_empty()
    }

    /// The node selector and required node affinity.
    fn matches_node(&self, node: &NodeInfo) -> bool {
        let labels = &node.specifics.labels;
        let spec = &self.pod.spec;
        if !spec
            .node_selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
        {
            return false;
        }
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        required.is_none_or(|selector| {
            selector
                .node_selector_terms
                .iter()
                .any(|term| term_matches(term, node))
        })
    }

    /// Adds the resources short on `node` with `requested` in use to `why`, counting
    /// the room held for nominated pods that go first (at least this pod's priority).
    fn resource_reasons(&self, node: &NodeInfo, requested: Resources, why: &mut Vec<Reason>) {
        let used = node
            .nominated
            .values()
            .filter(|n| n.priority >= self.priority && n.key != self.key)
            .fold(requested, |sum, n| sum.plus(n.requests));
        let allocatable = node.specifics.allocatable;
        if used.pods + self.requests.pods > allocatable.pods {
            why.push(Reason::TooManyPods);
        }
        if self.requests.cpu_millis > 0
            && used.cpu_millis + self.requests.cpu_millis > allocatable.cpu_millis
        {
            why.push(Reason::Insufficient("cpu"));
        }
        if self.requests.memory_bytes > 0
            && used.memory_bytes + self.requests.memory_bytes > allocatable.memory_bytes
        {
            why.push(Reason::Insufficient("memory"));
        }
    }

    /// The sum of the weights of the preferred node affinity terms `node` matches.
    fn preferred_affinity(&self, node: &NodeInfo) -> i64 {
        self.pod
            .spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .map_or(0, |a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .filter(|p| term_matches(&p.preference, node))
                    .map(|p| i64::from(p.weight))
                    .sum()
            })
    }

    /// How many PreferNoSchedule taints of `node` the pod does not tolerate.
    fn intolerable_preferences(&self, node: &NodeInfo) -> i64 {
        let count = node
            .specifics
            .taints
            .iter()
            .filter(|t| {
                t.effect == Some(TaintEffect::PreferNoSchedule)
                    && !tolerated(&self.pod.spec.tolerations, t)
            })
            .count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }
}

/// The best of the feasible nodes, the first by name among equals (whatever
/// order they were examined in).
fn best<'a>(
    candidate: &Candidate,
    feasible: &[&'a NodeInfo],
    scoring: Scoring,
) -> Option<&'a NodeInfo> {
    let raw: Vec<(i64, i64, i64)> = feasible
        .iter()
        .map(|node| {
            (
                resource_score(candidate, node, scoring),
                candidate.preferred_affinity(node),
                candidate.intolerable_preferences(node),
            )
        })
        .collect();
    let max_affinity = raw.iter().map(|r| r.1).max().unwrap_or(0);
    let max_intolerable = raw.iter().map(|r| r.2).max().unwrap_or(0);
    let mut best: Option<(&NodeInfo, i64)> = None;
    for (node, (resources, affinity, intolerable)) in feasible.iter().zip(raw) {
        let affinity = normalized(affinity, max_affinity);
        let taints = 100 - normalized(intolerable, max_intolerable);
        let score = resources + AFFINITY_WEIGHT * affinity + TAINT_WEIGHT * taints;
        if best.is_none_or(|(top_node, top)| {
            score > top || (score == top && node.name < top_node.name)
        }) {
            best = Some((node, score));
        }
    }
    best.map(|(node, _)| node)
}

/// `value` scaled to 0-100 of `max` (0 when max is 0).
fn normalized(value: i64, max: i64) -> i64 {
    if max == 0 { 0 } else { value * 100 / max }
}

/// 0-100: how full (most-allocated) or empty (least-allocated) the node would be
/// with the pod, averaged over CPU and memory.
fn resource_score(candidate: &Candidate, node: &NodeInfo, scoring: Scoring) -> i64 {
    let used = node.requested_for_score.plus(candidate.requests.non_zero());
    let allocatable = node.specifics.allocatable;
    let share = |used: i64, allocatable: i64| -> i64 {
        if allocatable <= 0 {
            return 0;
        }
        let used = used.clamp(0, allocatable);
        // i128 only for allocatable amounts near i64::MAX: its division is slow.
        let full = match used.checked_mul(100) {
            Some(hundredfold) => hundredfold / allocatable,
            None => (i128::from(used) * 100 / i128::from(allocatable)) as i64,
        };
        match scoring {
            Scoring::MostAllocated => full,
            Scoring::LeastAllocated => 100 - full,
        }
    };
    (share(used.cpu_millis, allocatable.cpu_millis)
        + share(used.memory_bytes, allocatable.memory_bytes))
        / 2
}

/// How much harm evicting a node's victims does, least first: the highest victim
/// priority, then how many, then the sum of their priorities.
type Harm = (i32, usize, i64);

/// The node where evicting pods of lower priority makes room with the least harm
/// (then the first by name), and the victims. Terminating pods count as gone:
/// their room is on the way.
fn preemption(candidate: &Candidate, nodes: &[&NodeInfo]) -> Option<(String, Vec<PodKey>)> {
    let mut best: Option<(Harm, String, Vec<PodKey>)> = None;
    let mut why = Vec::new();
    for node in nodes {
        let mut evictable: Vec<_> = node
            .pods
            .values()
            .filter(|p| !p.terminating && p.priority < candidate.priority)
            .collect();
        // Keep the most important pods first; the order of equals is fixed by name.
        evictable.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.key.cmp(&b.key)));
        let freed = node
            .pods
            .values()
            .filter(|p| p.terminating)
            .chain(evictable.iter().copied())
            .fold(Resources::default(), |sum, p| sum.plus(p.requests));
        let mut requested = node.requested.minus(freed);
        if !candidate.filter(node, requested, &mut why) {
            continue;
        }
        let mut victims = Vec::new();
        for pod in evictable {
            let kept = requested.plus(pod.requests);
            if candidate.filter(node, kept, &mut why) {
                requested = kept;
            } else {
                victims.push(pod);
            }
        }
        let harm: Harm = (
            victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
            victims.len(),
            victims.iter().map(|v| i64::from(v.priority)).sum(),
        );
        if best.as_ref().is_none_or(|(least, _, _)| harm < *least) {
            let keys = victims.iter().map(|v| v.key.clone()).collect();
            best = Some((harm, node.name.clone(), keys));
        }
    }
    best.map(|(_, node, victims)| (node, victims))
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

/// A node selector term: every requirement holds (a term with none matches nothing).
fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    if term.match_expressions.is_empty() && term.match_fields.is_empty() {
        return false;
    }
    let labels = &node.specifics.labels;
    term.match_expressions
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && term.match_fields.iter().all(|r| {
            // Validation allows metadata.name only.
            requirement_matches(r, Some(node.name.as_str()))
        })
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = &requirement.values;
    let compare = |wanted: fn(i64, i64) -> bool| {
        let bound = values.first().and_then(|v| v.parse::<i64>().ok());
        match (value.and_then(|v| v.parse::<i64>().ok()), bound) {
            (Some(value), Some(bound)) => wanted(value, bound),
            _ => false,
        }
    };
    match requirement.operator {
        NodeSelectorOperator::In => value.is_some_and(|v| values.iter().any(|w| w == v)),
        NodeSelectorOperator::NotIn => value.is_none_or(|v| values.iter().all(|w| w != v)),
        NodeSelectorOperator::Exists => value.is_some(),
        NodeSelectorOperator::DoesNotExist => value.is_none(),
        NodeSelectorOperator::Gt => compare(|value, bound| value > bound),
        NodeSelectorOperator::Lt => compare(|value, bound| value < bound),
    }
}

/// Whether an affinity term selects pods with `labels` (no selector: none).
fn selects(term: &PodAffinityTerm, labels: &BTreeMap<String, String>) -> bool {
    term.label_selector
        .as_ref()
        .is_some_and(|selector| selector.matches(labels))
}

/// The topology domain of `node` that `term` names (none if the node lacks the label).
fn topology<'a>(term: &'a PodAffinityTerm, node: &'a NodeInfo) -> Option<(&'a str, &'a str)> {
    node.specifics
        .labels
        .get(&term.topology_key)
        .map(|value| (term.topology_key.as_str(), value.as_str()))
}
