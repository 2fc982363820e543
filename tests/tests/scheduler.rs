//! The scheduler in a real agent: pods applied without a node are bound to the
//! agent's node and run; a pod no node can take waits with the reason, and runs
//! once the node changes; a high-priority pod evicts a low-priority one to fit;
//! bad PriorityClasses, and pods naming a missing class or another priority than
//! their class's, are refused.

use std::time::Duration;

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME};

const START: Duration = Duration::from_secs(60);

/// A busybox pod with no node, and `spec` (YAML lines indented two spaces) added.
fn pod(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n\
         {spec}  containers:\n  - name: main\n    image: busybox:1.36\n    command: [sleep, '3600']\n"
    )
}

fn running(pod: Option<&Value>) -> bool {
    pod.is_some_and(|p| p["status"]["phase"] == "Running")
}

fn scheduled_condition(pod: &Value) -> Option<&Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodScheduled")
}

fn unschedulable(pod: Option<&Value>) -> bool {
    pod.and_then(scheduled_condition)
        .is_some_and(|c| c["status"] == "False" && c["reason"] == "Unschedulable")
}

#[test]
fn pods_without_a_node_are_bound_and_wait_with_a_reason_when_nothing_fits() {
    let agent = Agent::start_node(&[]);
    agent.apply(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: sched-test-gold}\n\
         value: 1000\n",
    );
    agent.apply(&pod("sched-free", "  priorityClassName: sched-test-gold\n"));
    let free = agent
        .wait_pod("sched-free", START, running)
        .expect("pod exists");
    assert_eq!(free["spec"]["nodeName"], NODE_NAME);

    let label = "sched-test.skiff.dev/disk";
    agent.apply(&pod(
        "sched-picky",
        &format!("  nodeSelector: {{{label}: ssd}}\n"),
    ));
    let picky = agent
        .wait_pod("sched-picky", START, unschedulable)
        .expect("pod exists");
    assert_eq!(
        scheduled_condition(&picky).expect("condition")["message"],
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. \
         preemption: no node fits the pod by evicting lower-priority pods."
    );
    assert!(picky["spec"]["nodeName"].is_null());
    assert_eq!(picky["status"]["phase"], "Pending");

    // The node gets the label: the waiting pod is tried again and runs.
    let mut node = agent.object("node", NODE_NAME).expect("the agent's node");
    node["metadata"]["labels"][label] = "ssd".into();
    if let Some(meta) = node["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    agent.apply(&node.to_string());
    let picky = agent
        .wait_pod("sched-picky", START, running)
        .expect("pod exists");
    assert_eq!(picky["spec"]["nodeName"], NODE_NAME);
}

#[test]
fn a_high_priority_pod_evicts_a_low_priority_one_to_fit() {
    let agent = Agent::start_node(&[]);
    let node = agent.object("node", NODE_NAME).expect("the agent's node");
    let allocatable = node["status"]["allocatable"]["cpu"].as_str().expect("cpu");
    let millis = match allocatable.strip_suffix('m') {
        Some(millis) => millis.parse::<u32>(),
        None => allocatable.parse::<u32>().map(|cores| cores * 1000),
    }
    .expect("allocatable cpu in cores or millicores");
    // Each pod takes more than half the node.
    let request = format!("{}m", millis * 3 / 4);
    let requesting = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  priorityClassName: {class}\n  containers:\n  \
             - name: main\n    image: busybox:1.36\n    command: [sleep, '3600']\n    \
             resources: {{requests: {{cpu: {request}}}}}\n"
        )
    };
    agent.apply(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: sched-test-low}\n\
         value: 10\n---\n\
         apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: sched-test-high}\n\
         value: 100000\n",
    );
    agent.apply(&requesting("sched-batch", "sched-test-low"));
    agent.wait_pod("sched-batch", START, running);
    agent.apply(&requesting("sched-urgent", "sched-test-high"));
    let urgent = agent
        .wait_pod("sched-urgent", START, running)
        .expect("pod exists");
    assert_eq!(urgent["spec"]["nodeName"], NODE_NAME);
    assert!(urgent["status"]["nominatedNodeName"].is_null());
    assert!(
        agent.object("pod", "sched-batch").is_none(),
        "the low-priority pod was evicted"
    );
}

#[test]
fn bad_priority_classes_and_pods_are_refused_with_the_field_and_nothing_is_stored() {
    let agent = Agent::start(&[]);
    let out = agent.cli_with_stdin(
        &["apply", "-f", "-"],
        b"apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: sched-test-huge}\n\
          value: 2000000000\npreemptionPolicy: Never\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "value: 2000000000 must be less than or equal to 1000000000 (higher values are \
             reserved for system classes)"
        ),
        "{stderr}"
    );
    let out = agent.cli_with_stdin(
        &["apply", "-f", "-"],
        b"apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: sched-test-none}\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("value: required"), "{stderr}");
    assert!(agent.object("priorityclass", "sched-test-huge").is_none());
    assert!(agent.object("priorityclass", "sched-test-none").is_none());

    // A pod naming a class that does not exist.
    let lost = pod("sched-lost", "  priorityClassName: sched-test-missing\n");
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], lost.as_bytes());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "spec.priorityClassName: no PriorityClass named \"sched-test-missing\" was found"
        ),
        "{stderr}"
    );
    assert!(agent.object("pod", "sched-lost").is_none());
    // A pod stating a priority of its own.
    agent.apply(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: sched-test-silver}\n\
         value: 500\n",
    );
    let greedy = pod(
        "sched-greedy",
        "  priorityClassName: sched-test-silver\n  priority: 900\n",
    );
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], greedy.as_bytes());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "spec.priority: 900 disagrees with the PriorityClass \"sched-test-silver\" (500)"
        ),
        "{stderr}"
    );
    assert!(agent.object("pod", "sched-greedy").is_none());
    // Without it, the pod gets its class's.
    agent.apply(&pod(
        "sched-silver",
        "  priorityClassName: sched-test-silver\n",
    ));
    let silver = agent.object("pod", "sched-silver").expect("stored");
    assert_eq!(silver["spec"]["priority"], 500, "{}", silver["spec"]);
    assert_eq!(silver["spec"]["preemptionPolicy"], "PreemptLowerPriority");
}
