//! The controllers on a real node: ReplicaSets keep their pods, Services get
//! EndpointSlices of their ready pods, Deployments roll out (and back) through a
//! service VIP that keeps answering. Workload templates carry spec.nodeName, so their
//! pods run on the test node without a scheduler.

use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME};
use skiff_tests::unique_name;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The objects of `kind` labelled app=`app`.
fn labelled(agent: &Agent, kind: &str, app: &str) -> Vec<Value> {
    let out = agent.ok(&["get", kind, "-l", &format!("app={app}"), "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("JSON output");
    match list["kind"].as_str() {
        Some("List") => list["items"].as_array().cloned().unwrap_or_default(),
        _ => vec![list],
    }
}

fn name(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn is_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|all| {
            all.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Polls `probe` until it returns Some, failing after TIMEOUT with `what` and the
/// last value seen.
fn eventually<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => assert!(Instant::now() < deadline, "{what}: still {last}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The ready pods labelled app=`app`, once there are exactly `count` and no others.
fn ready_pods(agent: &Agent, app: &str, count: usize) -> Vec<String> {
    eventually(&format!("{count} ready pods of {app}"), || {
        let pods = labelled(agent, "pods", app);
        let ready: Vec<String> = pods.iter().filter(|p| is_ready(p)).map(name).collect();
        if ready.len() == count && pods.len() == count {
            Ok(ready)
        } else {
            Err(format!("{} pods, ready: {ready:?}", pods.len()))
        }
    })
}

#[test]
fn a_replicaset_replaces_a_deleted_pod_and_reports_its_replicas() {
    let agent = Agent::start_node(&[]);
    let app = unique_name("rs");
    agent.apply(&format!(
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: {app}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {app}}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      nodeName: {NODE_NAME}
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: main, image: busybox:1.36, command: [sleep, "3600"]}}
"#
    ));
    let first = ready_pods(&agent, &app, 2);
    for pod in &first {
        assert!(pod.starts_with(&format!("{app}-")), "{pod}");
        assert_eq!(
            pod.len(),
            app.len() + 6,
            "{pod}: <replicaset>-<5 characters>"
        );
    }
    let rs = agent.object("replicaset", &app).expect("the ReplicaSet");
    let pod = agent.object("pod", &first[0]).expect("a pod");
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], rs["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);

    agent.ok(&["delete", "pod", &first[0]]);
    let now = ready_pods(&agent, &app, 2);
    assert!(now.contains(&first[1]), "{now:?}");
    assert!(!now.contains(&first[0]), "{now:?}");

    let status = eventually("the ReplicaSet's status", || {
        let rs = agent.object("replicaset", &app).expect("the ReplicaSet");
        let status = rs["status"].clone();
        if status["readyReplicas"] == 2 && status["availableReplicas"] == 2 {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["observedGeneration"], 1);
    let described = agent.ok(&["describe", "replicaset", &app]);
    assert!(described.contains("SuccessfulCreate"), "{described}");

    // Deleting the ReplicaSet takes its pods along.
    agent.ok(&["delete", "replicaset", &app]);
    eventually("the pods gone", || {
        let pods = labelled(&agent, "pods", &app);
        pods.is_empty()
            .then_some(())
            .ok_or(format!("{} pods", pods.len()))
    });
}
