//! The decision function on constructed clusters: every filter's reason, both
//! scoring strategies, preferred affinity and taints, priorities and preemption.

use super::decide::{NextNode, feasible_nodes_to_find};
use super::snapshot::{NodeSpecifics, PlacedPod, PodKey, Resources, Snapshot, pod_requests};
use super::{Decision, Scoring};
use crate::model::{Node, Pod, PriorityClass};

/// A Ready node with `cpu` and `memory` allocatable, 110 pods, the hostname label,
/// and `extra` (YAML lines at the top level of the Node's spec and labels) added.
fn node(name: &str, cpu: &str, memory: &str, labels: &str, spec: &str) -> Node {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}{labels}}}}}\n\
         spec: {{{spec}}}\n\
         status: {{allocatable: {{cpu: \"{cpu}\", memory: {memory}, pods: \"110\"}}, \
         conditions: [{{type: Ready, status: \"True\"}}]}}"
    ))
    .unwrap()
}

/// A pod in namespace "shop" with one container requesting `cpu` and `memory`,
/// plus `spec` (YAML lines indented two spaces, inside spec) and `labels`.
fn pod(name: &str, cpu: &str, memory: &str, labels: &str, spec: &str) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, namespace: shop, labels: {{{labels}}}}}\n\
         spec:\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: \"{cpu}\", memory: {memory}}}}}}}]\n{spec}"
    ))
    .unwrap()
}

fn cluster(nodes: &[Node]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for node in nodes {
        snapshot.set_node(&node.metadata.name, NodeSpecifics::of(node));
    }
    snapshot
}

fn place(snapshot: &mut Snapshot, node: &str, pod: &Pod) {
    let (priority, _) = snapshot.priority_of(&pod.spec).unwrap();
    snapshot.place(node, PlacedPod::new(pod, priority));
}

fn class(name: &str, value: i32, extra: &str) -> PriorityClass {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}}}\nvalue: {value}\n{extra}"
    ))
    .unwrap()
}

/// A decision looking from the first node, as the first one of a scheduler does.
fn decide(pod: &Pod, snapshot: &Snapshot, scoring: Scoring) -> Decision {
    super::decide(pod, snapshot, scoring, &mut NextNode::default())
}

fn bind(node: &str) -> Decision {
    Decision::Bind { node: node.into() }
}

fn unschedulable(message: &str) -> Decision {
    Decision::Unschedulable {
        message: message.into(),
    }
}

fn key(name: &str) -> PodKey {
    PodKey {
        namespace: "shop".into(),
        name: name.into(),
    }
}

const NOT_HELPFUL: &str = " preemption: no node fits the pod by evicting lower-priority pods.";

#[test]
fn each_filter_says_why_per_node() {
    let plain = |name: &str| node(name, "4", "8Gi", "", "");
    let cases: Vec<(&str, Vec<Node>, Pod, Decision)> = vec![
        (
            "resources and a taint, counted per node",
            vec![
                node("a", "4", "1Gi", "", ""),
                node("b", "4", "1Gi", "", ""),
                node(
                    "c",
                    "4",
                    "8Gi",
                    "",
                    "taints: [{key: dedicated, value: gpu, effect: NoSchedule}]",
                ),
            ],
            pod("p", "1", "2Gi", "", ""),
            unschedulable(&format!(
                "0/3 nodes are available: 2 Insufficient memory, 1 node(s) had untolerated \
                 taint {{dedicated: gpu}}.{NOT_HELPFUL}"
            )),
        ),
        (
            "cpu and memory both short on one node",
            vec![node("a", "500m", "1Gi", "", "")],
            pod("p", "1", "2Gi", "", ""),
            unschedulable(&format!(
                "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.{NOT_HELPFUL}"
            )),
        ),
        (
            "a toleration lets the pod onto the tainted node",
            vec![
                node("a", "4", "1Gi", "", ""),
                node(
                    "c",
                    "4",
                    "8Gi",
                    "",
                    "taints: [{key: dedicated, value: gpu, effect: NoSchedule}]",
                ),
            ],
            pod(
                "p",
                "1",
                "2Gi",
                "",
                "  tolerations: [{key: dedicated, operator: Equal, value: gpu}]\n",
            ),
            bind("c"),
        ),
        (
            "NoExecute filters too; a toleration for another value does not help",
            vec![node(
                "a",
                "4",
                "8Gi",
                "",
                "taints: [{key: node.kubernetes.io/not-ready, effect: NoExecute}]",
            )],
            pod(
                "p",
                "1",
                "1Gi",
                "",
                "  tolerations: [{key: node.kubernetes.io/not-ready, value: x}]\n",
            ),
            unschedulable(&format!(
                "0/1 nodes are available: 1 node(s) had untolerated taint \
                 {{node.kubernetes.io/not-ready: }}.{NOT_HELPFUL}"
            )),
        ),
        (
            "nodeSelector",
            vec![plain("a"), node("b", "4", "8Gi", ", disk: ssd", "")],
            pod("p", "1", "1Gi", "", "  nodeSelector: {disk: ssd}\n"),
            bind("b"),
        ),
        (
            "nodeSelector that no node matches",
            vec![plain("a"), plain("b")],
            pod("p", "1", "1Gi", "", "  nodeSelector: {disk: ssd}\n"),
            unschedulable(&format!(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.\
                 {NOT_HELPFUL}"
            )),
        ),
        (
            "cordoned and not ready nodes",
            vec![
                node("a", "4", "8Gi", "", "unschedulable: true"),
                serde_saphyr::from_str(
                    "metadata: {name: b}\nstatus: {allocatable: {cpu: \"4\", memory: 8Gi, pods: \"110\"}, \
                     conditions: [{type: Ready, status: \"False\"}]}",
                )
                .unwrap(),
            ],
            pod("p", "1", "1Gi", "", ""),
            unschedulable(&format!(
                "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable.\
                 {NOT_HELPFUL}"
            )),
        ),
        (
            "a pod tolerating the cordon goes to the cordoned node",
            vec![node("a", "4", "8Gi", "", "unschedulable: true")],
            pod(
                "p",
                "1",
                "1Gi",
                "",
                "  tolerations: [{key: node.kubernetes.io/unschedulable, operator: Exists}]\n",
            ),
            bind("a"),
        ),
        (
            "a pod needing more than any node has",
            vec![plain("a"), plain("b")],
            pod("p", "64", "1Gi", "", ""),
            unschedulable(&format!(
                "0/2 nodes are available: 2 Insufficient cpu.{NOT_HELPFUL}"
            )),
        ),
        (
            "no nodes at all",
            vec![],
            pod("p", "1", "1Gi", "", ""),
            unschedulable(&format!("no nodes available to schedule pods{NOT_HELPFUL}")),
        ),
    ];
    for (name, nodes, pod, expected) in cases {
        let snapshot = cluster(&nodes);
        assert_eq!(
            decide(&pod, &snapshot, Scoring::MostAllocated),
            expected,
            "{name}"
        );
    }
}

#[test]
fn required_node_affinity_operators() {
    let nodes = [
        node("a", "4", "8Gi", ", zone: east, gen: \"3\"", ""),
        node("b", "4", "8Gi", ", zone: west, gen: \"5\"", ""),
        node("c", "4", "8Gi", "", ""),
    ];
    let snapshot = cluster(&nodes);
    let cases = [
        ("{key: zone, operator: In, values: [west]}", "b"),
        ("{key: zone, operator: NotIn, values: [east]}", "b"),
        ("{key: zone, operator: Exists}", "a"),
        ("{key: zone, operator: DoesNotExist}", "c"),
        ("{key: gen, operator: Gt, values: [\"4\"]}", "b"),
        ("{key: gen, operator: Lt, values: [\"4\"]}", "a"),
    ];
    for (requirement, expected) in cases {
        // Equal scores: the first matching node by name.
        let affinity = format!(
            "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        \
             nodeSelectorTerms: [{{matchExpressions: [{requirement}]}}]\n"
        );
        let p = pod("p", "1", "1Gi", "", &affinity);
        assert_eq!(
            decide(&p, &snapshot, Scoring::MostAllocated),
            bind(expected),
            "{requirement}"
        );
    }
    let by_name = "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        \
                   nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: In, values: [c]}]}]\n";
    assert_eq!(
        decide(
            &pod("p", "1", "1Gi", "", by_name),
            &snapshot,
            Scoring::MostAllocated
        ),
        bind("c")
    );
}

#[test]
fn most_allocated_packs_and_least_allocated_spreads() {
    let mut snapshot = cluster(&[node("a", "4", "8Gi", "", ""), node("b", "4", "8Gi", "", "")]);
    place(&mut snapshot, "b", &pod("busy", "2", "4Gi", "", ""));
    let p = pod("p", "1", "1Gi", "", "");
    assert_eq!(decide(&p, &snapshot, Scoring::MostAllocated), bind("b"));
    assert_eq!(decide(&p, &snapshot, Scoring::LeastAllocated), bind("a"));
    // Pods that request nothing still spread under least-allocated.
    let idle = pod("idle", "0", "0", "", "");
    assert_eq!(decide(&idle, &snapshot, Scoring::LeastAllocated), bind("a"));
}

#[test]
fn preferred_affinity_outweighs_packing() {
    let mut snapshot = cluster(&[
        node("a", "4", "8Gi", ", disk: ssd", ""),
        node("b", "4", "8Gi", "", ""),
    ]);
    place(&mut snapshot, "b", &pod("busy", "3", "6Gi", "", ""));
    let preferring = pod(
        "p",
        "1",
        "1Gi",
        "",
        "  affinity:\n    nodeAffinity:\n      preferredDuringSchedulingIgnoredDuringExecution:\n      \
         - weight: 50\n        preference: {matchExpressions: [{key: disk, operator: In, values: [ssd]}]}\n",
    );
    assert_eq!(
        decide(&preferring, &snapshot, Scoring::MostAllocated),
        bind("a")
    );
    let indifferent = pod("q", "1", "1Gi", "", "");
    assert_eq!(
        decide(&indifferent, &snapshot, Scoring::MostAllocated),
        bind("b")
    );
}

#[test]
fn prefer_no_schedule_steers_away_unless_tolerated() {
    let snapshot = cluster(&[
        node(
            "a",
            "4",
            "8Gi",
            "",
            "taints: [{key: spot, effect: PreferNoSchedule}]",
        ),
        node("b", "4", "8Gi", "", ""),
    ]);
    let p = pod("p", "1", "1Gi", "", "");
    assert_eq!(decide(&p, &snapshot, Scoring::MostAllocated), bind("b"));
    let tolerating = pod(
        "p",
        "1",
        "1Gi",
        "",
        "  tolerations: [{key: spot, operator: Exists}]\n",
    );
    // Equal scores: the first node by name.
    assert_eq!(
        decide(&tolerating, &snapshot, Scoring::MostAllocated),
        bind("a")
    );
}

#[test]
fn pod_anti_affinity_by_hostname_both_ways() {
    let mut snapshot = cluster(&[node("a", "4", "8Gi", "", ""), node("b", "4", "8Gi", "", "")]);
    place(
        &mut snapshot,
        "a",
        &pod("web-1", "1", "1Gi", "app: web", ""),
    );
    let away_from_web = "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      \
                         - labelSelector: {matchLabels: {app: web}}\n        topologyKey: kubernetes.io/hostname\n";
    // Bin-packing alone would pick "a", where web-1 is.
    let web_2 = pod("web-2", "1", "1Gi", "app: web", away_from_web);
    assert_eq!(decide(&web_2, &snapshot, Scoring::MostAllocated), bind("b"));
    place(&mut snapshot, "b", &web_2);
    let web_3 = pod("web-3", "1", "1Gi", "app: web", away_from_web);
    assert_eq!(
        decide(&web_3, &snapshot, Scoring::MostAllocated),
        unschedulable(&format!(
            "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.{NOT_HELPFUL}"
        ))
    );
    // A pod without terms of its own is kept away by web-2's terms.
    let plain_web = pod("web-4", "1", "1Gi", "app: web", "");
    assert_eq!(
        decide(&plain_web, &snapshot, Scoring::MostAllocated),
        bind("a"),
        "web-1 has no terms, web-2 on b does"
    );
    snapshot.unplace(&key("web-1"));
    place(
        &mut snapshot,
        "a",
        &pod("web-1", "1", "1Gi", "app: web", away_from_web),
    );
    assert_eq!(
        decide(&plain_web, &snapshot, Scoring::MostAllocated),
        unschedulable(&format!(
            "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules.\
             {NOT_HELPFUL}"
        ))
    );
}

#[test]
fn too_many_pods() {
    let mut snapshot = cluster(&[serde_saphyr::from_str(
        "metadata: {name: a}\nstatus: {allocatable: {cpu: \"4\", memory: 8Gi, pods: \"1\"}, \
         conditions: [{type: Ready, status: \"True\"}]}",
    )
    .unwrap()]);
    place(&mut snapshot, "a", &pod("first", "0", "0", "", ""));
    assert_eq!(
        decide(
            &pod("p", "0", "0", "", ""),
            &snapshot,
            Scoring::MostAllocated
        ),
        unschedulable(&format!(
            "0/1 nodes are available: 1 Too many pods.{NOT_HELPFUL}"
        ))
    );
}

/// Node "a" runs two pods of priority 10 (1.5 cpu each); node "b" one of priority
/// 5 (2 cpu) and one of priority 1 (1 cpu). Each has 3 cpu allocatable, all in use.
fn crowded() -> Snapshot {
    let mut snapshot = cluster(&[node("a", "3", "8Gi", "", ""), node("b", "3", "8Gi", "", "")]);
    for (name, value) in [("high", 1000), ("ten", 10), ("five", 5), ("one", 1)] {
        snapshot.set_priority_class(&class(name, value, ""));
    }
    snapshot.set_priority_class(&class("polite", 1000, "preemptionPolicy: Never"));
    let with_class = |name: &str, cpu: &str, class: &str| {
        pod(
            name,
            cpu,
            "1Gi",
            "",
            &format!("  priorityClassName: {class}\n"),
        )
    };
    place(&mut snapshot, "a", &with_class("a-1", "1500m", "ten"));
    place(&mut snapshot, "a", &with_class("a-2", "1500m", "ten"));
    place(&mut snapshot, "b", &with_class("b-1", "2", "five"));
    place(&mut snapshot, "b", &with_class("b-2", "1", "one"));
    snapshot
}

#[test]
fn preemption_evicts_the_fewest_lowest_priority_pods() {
    let snapshot = crowded();
    // 2 cpu: on "b", evicting b-1 (priority 5) suffices; b-2 stays.
    let urgent = pod("urgent", "2", "1Gi", "", "  priorityClassName: high\n");
    assert_eq!(
        decide(&urgent, &snapshot, Scoring::MostAllocated),
        Decision::Preempt {
            node: "b".into(),
            victims: vec![key("b-1")],
        }
    );
    // 1 cpu: "b" with b-2 (priority 1) alone beats "a" (priority 10).
    let small = pod("small", "1", "1Gi", "", "  priorityClassName: high\n");
    assert_eq!(
        decide(&small, &snapshot, Scoring::MostAllocated),
        Decision::Preempt {
            node: "b".into(),
            victims: vec![key("b-2")],
        }
    );
    // Priority 3 may only evict b-2 (1 cpu): not enough for 2 cpu anywhere.
    let middling = pod("m", "2", "1Gi", "", "  priority: 3\n");
    assert_eq!(
        decide(&middling, &snapshot, Scoring::MostAllocated),
        unschedulable(&format!(
            "0/2 nodes are available: 2 Insufficient cpu.{NOT_HELPFUL}"
        ))
    );
}

#[test]
fn no_preemption_with_policy_never() {
    let snapshot = crowded();
    let polite = pod("p", "2", "1Gi", "", "  priorityClassName: polite\n");
    assert_eq!(
        decide(&polite, &snapshot, Scoring::MostAllocated),
        unschedulable(
            "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to \
             preemptionPolicy=Never."
        )
    );
}

#[test]
fn terminating_pods_and_nominations() {
    let mut snapshot = crowded();
    let mut leaving: Pod = pod("b-1", "2", "1Gi", "", "  priorityClassName: five\n");
    leaving.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
    place(&mut snapshot, "b", &leaving);
    // b-1 is on its way out: nothing more to evict, wait for it on "b".
    let urgent = pod("urgent", "2", "1Gi", "", "  priorityClassName: high\n");
    assert_eq!(
        decide(&urgent, &snapshot, Scoring::MostAllocated),
        Decision::Preempt {
            node: "b".into(),
            victims: vec![],
        }
    );
    // Once b-1 is gone, the room "urgent" was nominated for is not taken by a
    // lower-priority pod, and "urgent" itself fits.
    snapshot.unplace(&key("b-1"));
    snapshot.nominate("b", PlacedPod::new(&urgent, 1000));
    let low = pod("low", "2", "1Gi", "", "  priorityClassName: one\n");
    assert_eq!(
        decide(&low, &snapshot, Scoring::MostAllocated),
        unschedulable(&format!(
            "0/2 nodes are available: 2 Insufficient cpu.{NOT_HELPFUL}"
        ))
    );
    assert_eq!(
        decide(&urgent, &snapshot, Scoring::MostAllocated),
        bind("b")
    );
}

#[test]
fn priority_resolution() {
    let mut snapshot = Snapshot::default();
    let spec = |extra: &str| pod("p", "1", "1Gi", "", extra).spec;
    assert_eq!(snapshot.priority_of(&spec("")).unwrap().0, 0);
    assert_eq!(
        snapshot.priority_of(&spec("  priorityClassName: gold\n")),
        Err("no PriorityClass named \"gold\"".to_string())
    );
    snapshot.set_priority_class(&class("gold", 100, ""));
    snapshot.set_priority_class(&class("base", 7, "globalDefault: true"));
    assert_eq!(
        snapshot
            .priority_of(&spec("  priorityClassName: gold\n"))
            .unwrap()
            .0,
        100
    );
    assert_eq!(snapshot.priority_of(&spec("")).unwrap().0, 7);
    assert_eq!(
        decide(
            &pod("p", "1", "1Gi", "", "  priorityClassName: silver\n"),
            &snapshot,
            Scoring::MostAllocated
        ),
        unschedulable("no PriorityClass named \"silver\"")
    );
}

#[test]
fn requests_follow_kubernetes_rules() {
    let spec: crate::model::PodSpec = serde_saphyr::from_str(
        "containers:\n\
         - {name: a, image: x, resources: {requests: {cpu: 250m, memory: 64Mi}}}\n\
         - {name: b, image: x, resources: {limits: {cpu: 500m, memory: 128Mi}}}\n\
         initContainers:\n\
         - {name: i, image: x, resources: {requests: {cpu: \"2\", memory: 1Mi}}}\n",
    )
    .unwrap();
    assert_eq!(
        pod_requests(&spec),
        Resources {
            cpu_millis: 2000,
            memory_bytes: 192 * 1024 * 1024,
            pods: 1,
        }
    );
}

#[test]
fn heartbeats_are_not_changes() {
    let a = node("a", "4", "8Gi", "", "");
    let mut snapshot = cluster(std::slice::from_ref(&a));
    let mut beat = a.clone();
    beat.status.conditions[0].last_heartbeat_time = Some("2026-01-01T00:00:10Z".into());
    assert!(!snapshot.set_node("a", NodeSpecifics::of(&beat)));
    let labelled = node("a", "4", "8Gi", ", disk: ssd", "");
    assert!(snapshot.set_node("a", NodeSpecifics::of(&labelled)));
}

#[test]
fn nodes_to_find_follow_kubernetes_percentage() {
    // Small clusters: every node; then 50% less 1% per 125 nodes, at least 100
    // nodes and at least 5%.
    assert_eq!(feasible_nodes_to_find(0), 0);
    assert_eq!(feasible_nodes_to_find(99), 99);
    assert_eq!(feasible_nodes_to_find(150), 100);
    assert_eq!(feasible_nodes_to_find(250), 120);
    assert_eq!(feasible_nodes_to_find(1_000), 420);
    assert_eq!(feasible_nodes_to_find(5_000), 500);
    assert_eq!(feasible_nodes_to_find(100_000), 5_000);
}

/// 250 equal nodes: a decision stops after the 120 that fit first, and the next
/// one goes on from there, wrapping around; the first by name wins a tie among
/// the nodes a decision examined.
#[test]
fn large_clusters_examine_part_of_the_nodes_in_turn() {
    let nodes: Vec<Node> = (0..250)
        .map(|i| node(&format!("n{i:03}"), "4", "8Gi", "", ""))
        .collect();
    let mut snapshot = cluster(&nodes);
    let p = pod("p", "1", "1Gi", "", "");
    let mut next = NextNode::default();
    let mut decide_next =
        |snapshot: &Snapshot| super::decide(&p, snapshot, Scoring::LeastAllocated, &mut next);
    assert_eq!(decide_next(&snapshot), bind("n000"));
    assert_eq!(decide_next(&snapshot), bind("n120"));
    // n240-n249, then n000-n109: n000 first by name.
    assert_eq!(decide_next(&snapshot), bind("n000"));
    // A node that no longer fits is passed over and not counted: n110-n229 fit.
    let big = pod("big", "4", "1Gi", "", "");
    place(&mut snapshot, "n110", &big);
    assert_eq!(decide_next(&snapshot), bind("n111"));
    assert_eq!(decide_next(&snapshot), bind("n000"));
    // A pod that fits nowhere is told about every node, whatever the turn.
    let huge = pod("huge", "5", "1Gi", "", "");
    assert_eq!(
        super::decide(&huge, &snapshot, Scoring::LeastAllocated, &mut next),
        unschedulable(&format!(
            "0/250 nodes are available: 250 Insufficient cpu.{NOT_HELPFUL}"
        ))
    );
}
