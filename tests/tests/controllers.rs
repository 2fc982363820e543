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

/// A pod template (YAML, indented for a workload's spec) of pods that answer every
/// TCP connection on port 8080 with "`version` <pod name>" and are ready once
/// they listen, or never when `healthy` is false.
fn server_template(app: &str, version: &str, healthy: bool) -> String {
    let probe_port = if healthy { "http" } else { "9" };
    format!(
        r#"  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      nodeName: {NODE_NAME}
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: busybox:1.36
        env: [{{name: VERSION, value: {version}}}]
        command: [nc, -ll, -p, "8080", -e, sh, -c, 'echo $VERSION $(hostname)']
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: {probe_port}}}, periodSeconds: 1}}
"#
    )
}

/// A Service selecting app=`app`, port 80 to the pods' named port "http"; returns
/// its VIP and port.
fn service(agent: &Agent, app: &str) -> std::net::SocketAddr {
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {app}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: web, port: 80, targetPort: http}}]
"#
    ));
    let service = agent.object("service", app).expect("the Service");
    let vip = service["spec"]["clusterIP"].as_str().expect("a cluster IP");
    format!("{vip}:80").parse().expect("a socket address")
}

/// `count` connections to `addr` from the node, in the agent's cgroup (where the
/// dataplane balances): one line per connection, the reply or `error <errno>`.
fn connect(agent: &Agent, addr: std::net::SocketAddr, count: usize) -> Vec<String> {
    let netns = agent.node_netns.as_ref().expect("a node agent");
    let out = agent
        .cgroup
        .command_in(netns, skiff_tests::workspace_bin("skiff-test-client"))
        .arg(addr.to_string())
        .arg(count.to_string())
        .output()
        .expect("run skiff-test-client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The pod names that answered (the second word of each reply).
fn answered_by(replies: &[String]) -> std::collections::BTreeSet<String> {
    replies
        .iter()
        .filter_map(|r| r.split_whitespace().nth(1))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_service_gets_slices_of_its_ready_pods_and_its_vip_reaches_them() {
    let agent = Agent::start_node(&[]);
    let app = unique_name("web");
    agent.apply(&format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: {app}}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: {app}}}}}\n{}",
        server_template(&app, "v1", true)
    ));
    let vip = service(&agent, &app);
    let pods = ready_pods(&agent, &app, 2);

    let slice = eventually("a slice with both pods ready", || {
        let slice = agent
            .object("endpointslice", &format!("{app}-ipv4"))
            .ok_or("no slice")?;
        let ready = slice["endpoints"].as_array().map_or(0, |e| {
            e.iter()
                .filter(|e| e["conditions"]["ready"] == true)
                .count()
        });
        (ready == 2)
            .then_some(slice.clone())
            .ok_or(slice.to_string())
    });
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        app.as_str()
    );
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.skiff.io"
    );
    let service = agent.object("service", &app).expect("the Service");
    assert_eq!(
        slice["metadata"]["ownerReferences"][0]["uid"],
        service["metadata"]["uid"]
    );
    assert_eq!(
        slice["ports"][0]["port"], 8080,
        "the named targetPort, resolved"
    );
    let mut targets: Vec<String> = slice["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            assert_eq!(e["nodeName"], NODE_NAME);
            e["targetRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    targets.sort();
    let mut expected = pods.clone();
    expected.sort();
    assert_eq!(targets, expected);

    let replies = connect(&agent, vip, 40);
    assert!(replies.iter().all(|r| r.starts_with("v1 ")), "{replies:?}");
    assert_eq!(answered_by(&replies), expected.into_iter().collect());

    // A pod being deleted is flagged terminating, then leaves the slice.
    agent.ok(&["delete", "pod", &pods[0]]);
    eventually("the deleted pod out of the slice", || {
        let slice = agent
            .object("endpointslice", &format!("{app}-ipv4"))
            .ok_or("no slice")?;
        let names: Vec<&str> = slice["endpoints"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter(|e| e["conditions"]["ready"] == true)
                    .filter_map(|e| e["targetRef"]["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        (!names.contains(&pods[0].as_str()))
            .then_some(())
            .ok_or(slice.to_string())
    });
}
