//! Jobs, autoscaling and node loss against a real agent and real pods: a Job
//! runs to completion and another gives up at its backoff limit; an autoscaler
//! scales a CPU-burning Deployment up and, once idle, down again; a node that
//! stops reporting is marked Unknown, tainted, and loses its pods.

use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME};

/// Polls `kind/name` until `until` holds, failing with its last state.
fn wait_object(
    agent: &Agent,
    kind: &str,
    name: &str,
    timeout: Duration,
    until: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let object = agent.object(kind, name);
        if until(object.as_ref()) {
            return object;
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name} did not get there in {timeout:?}: {}",
            object.map_or("gone".into(), |o| o["status"].to_string())
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The pods whose label `key` is `value`.
fn pods_labelled(agent: &Agent, selector: &str) -> Vec<Value> {
    let out = agent.ok(&["get", "pods", "-l", selector, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("JSON list");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
}

fn job(name: &str, script: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra_spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: ["sh", "-c", "{script}"]
"#
    )
}

#[test]
fn a_job_runs_its_completions_and_is_deleted_after_its_ttl() {
    let agent = Agent::start_node(&[]);
    agent.apply(&job(
        "count",
        "sleep 1; exit 0",
        "  completions: 3\n  parallelism: 2\n  ttlSecondsAfterFinished: 3",
    ));
    let done = wait_object(&agent, "job", "count", Duration::from_secs(60), |j| {
        j.is_some_and(|j| condition(j, "Complete").is_some())
    })
    .expect("the job");
    assert_eq!(done["status"]["succeeded"], 3, "{}", done["status"]);
    assert_eq!(done["status"]["failed"], 0, "{}", done["status"]);
    assert!(done["status"]["completionTime"].is_string());
    let pods = pods_labelled(&agent, "job-name=count");
    assert_eq!(pods.len(), 3, "one pod per completion");
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    // The TTL removes the Job and, with it, its pods.
    wait_object(&agent, "job", "count", Duration::from_secs(15), |j| {
        j.is_none()
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pods_labelled(&agent, "job-name=count").is_empty() {
        assert!(Instant::now() < deadline, "the Job's pods outlived it");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_failing_job_stops_at_its_backoff_limit() {
    let agent = Agent::start_node(&[]);
    agent.apply(&job("flaky", "exit 3", "  backoffLimit: 2"));
    let failed = wait_object(&agent, "job", "flaky", Duration::from_secs(60), |j| {
        j.is_some_and(|j| condition(j, "Failed").is_some())
    })
    .expect("the job");
    let reason = &condition(&failed, "Failed").expect("Failed")["reason"];
    assert_eq!(reason, "BackoffLimitExceeded", "{}", failed["status"]);
    assert_eq!(failed["status"]["failed"], 3, "{}", failed["status"]);
    // No pod is started after the Job failed.
    std::thread::sleep(Duration::from_secs(2));
    let pods = pods_labelled(&agent, "job-name=flaky");
    assert_eq!(pods.len(), 3, "{pods:?}");
    let events = agent.ok(&["describe", "job", "flaky"]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
}

#[test]
fn an_autoscaler_follows_cpu_use_up_and_back_down() {
    let agent = Agent::start_node(&["--usage-interval", "1s", "--hpa-sync-period", "1s"]);
    agent.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burner}
spec:
  replicas: 1
  selector: {matchLabels: {app: burner}}
  template:
    metadata: {labels: {app: burner}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: ["sh", "-c", "while [ ! -f /stop ]; do :; done; exec sleep 3600"]
        resources: {requests: {cpu: 200m}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burner}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burner}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 2}
"#,
    );
    // One pod burning a core is far over 50% of 200m: up to the maximum.
    let up = wait_object(
        &agent,
        "deployment",
        "burner",
        Duration::from_secs(60),
        |d| d.is_some_and(|d| d["spec"]["replicas"] == 3),
    )
    .expect("deployment");
    assert_eq!(up["spec"]["replicas"], 3);
    let hpa = agent.object("hpa", "burner").expect("hpa");
    let utilization =
        hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
            .as_i64()
            .unwrap_or(0);
    assert!(utilization > 50, "{}", hpa["status"]);
    // Every pod stops burning: back down to the minimum.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = pods_labelled(&agent, "app=burner");
        for pod in pods.iter().filter(|p| p["status"]["phase"] == "Running") {
            let out = agent.exec(pod, "main", &["touch", "/stop"]);
            assert!(
                out.status.success(),
                "touch /stop: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if agent.object("deployment", "burner").expect("deployment")["spec"]["replicas"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never scaled down: {}",
            agent.object("hpa", "burner").expect("hpa")["status"]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let events = agent.ok(&["describe", "hpa", "burner"]);
    assert!(events.contains("SuccessfulRescale"), "{events}");
}

#[test]
fn a_silent_node_is_marked_unknown_tainted_and_loses_its_pods() {
    let agent = Agent::start_node(&[
        "--node-monitor-grace-period",
        "4s",
        "--node-heartbeat-interval",
        "1s",
    ]);
    // A node whose agent never reports, with pods bound to it.
    let pod = |name: &str, tolerations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: ghost\n  \
             tolerations: {tolerations}\n  containers:\n  - {{name: main, image: busybox:1.36}}\n---\n"
        )
    };
    agent.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: ghost}}\n---\n{}{}{}",
        pod("plain", "[]"),
        pod(
            "patient",
            "[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 3}]"
        ),
        pod("stubborn", "[{operator: Exists}]"),
    ));
    let lost = wait_object(&agent, "node", "ghost", Duration::from_secs(20), |n| {
        n.is_some_and(|n| {
            n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["key"] == "node.kubernetes.io/unreachable")
            })
        })
    })
    .expect("node");
    let ready = lost["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition");
    assert_eq!(ready["status"], "Unknown", "{ready}");
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{ready}");
    wait_object(&agent, "pod", "plain", Duration::from_secs(10), |p| {
        p.is_none()
    });
    wait_object(&agent, "pod", "patient", Duration::from_secs(15), |p| {
        p.is_none()
    });
    assert!(
        agent.object("pod", "stubborn").is_some(),
        "a pod tolerating every taint stays"
    );
    // The node whose agent reports stays Ready and untainted.
    let node = agent.object("node", NODE_NAME).expect("this node");
    assert!(
        node["spec"]["taints"]
            .as_array()
            .is_none_or(|t| t.is_empty()),
        "{node}"
    );
    // Its heartbeats move on while the time it became Ready stays.
    let ready = condition(&node, "Ready").expect("Ready").clone();
    std::thread::sleep(Duration::from_secs(3));
    let later = agent.object("node", NODE_NAME).expect("this node");
    let ready_later = condition(&later, "Ready").expect("still Ready");
    assert_eq!(
        ready_later["lastTransitionTime"],
        ready["lastTransitionTime"]
    );
    assert_ne!(ready_later["lastHeartbeatTime"], ready["lastHeartbeatTime"]);
}
