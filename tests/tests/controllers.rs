//! The controllers on a real node: ReplicaSets keep their pods, Services get
//! EndpointSlices of their ready pods, Deployments roll out (and back) through a
//! service VIP that keeps answering. Workload templates carry spec.nodeName, so their
//! pods run on the test node without a scheduler.

use std::time::Duration;

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME, is_ready};
use skiff_tests::unique_name;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The objects of `kind` labelled app=`app`.
fn labelled(agent: &Agent, kind: &str, app: &str) -> Vec<Value> {
    agent.list(kind, &format!("app={app}"))
}

fn name(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls `probe` until it returns Ok, failing after TIMEOUT with `what` and the
/// last value seen.
fn eventually<T>(what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
    skiff_tests::eventually(what, TIMEOUT, probe)
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
    connect_from(&agent.cgroup, netns, addr, count)
}

fn connect_from(
    cgroup: &skiff_tests::cgroup::Cgroup,
    netns: &skiff_tests::netns::NetNs,
    addr: std::net::SocketAddr,
    count: usize,
) -> Vec<String> {
    skiff_tests::lab::client_output(
        cgroup.command_in(netns, skiff_tests::workspace_bin("skiff-test-client")),
        addr,
        count,
    )
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

/// Runs `during` while a client connects to `vip` over and over; returns its result
/// and every reply the client got (or `error <errno>` for a failed connection).
fn with_clients<T>(
    agent: &Agent,
    vip: std::net::SocketAddr,
    during: impl FnOnce() -> T,
) -> (T, Vec<String>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Stops the client loop however `during` ends (a failed assertion too), so
    /// the scope can end.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    let netns = agent.node_netns.as_ref().expect("a node agent");
    let cgroup = &agent.cgroup;
    std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut replies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                replies.extend(connect_from(cgroup, netns, vip, 10));
            }
            replies
        });
        let result = {
            let _stop = StopOnDrop(&stop);
            during()
        };
        (result, client.join().expect("the client loop"))
    })
}

/// A Deployment of `replicas` servers answering "`version` <pod>", surging one pod
/// at a time and keeping every old pod until a new one is available.
fn deployment(app: &str, version: &str, healthy: bool, replicas: u32, deadline: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}}}
spec:
  replicas: {replicas}
  progressDeadlineSeconds: {deadline}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  selector: {{matchLabels: {{app: {app}}}}}
{}"#,
        server_template(app, version, healthy)
    )
}

fn rollout_status(agent: &Agent, app: &str) -> std::process::Output {
    agent.cli(&[
        "rollout",
        "status",
        &format!("deployment/{app}"),
        "--timeout",
        "90s",
    ])
}

fn assert_rolled_out(agent: &Agent, app: &str) {
    let out = rollout_status(agent, app);
    assert!(
        out.status.success(),
        "rollout status: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));
}

/// The versions that answered, in order, without repeats.
fn versions(replies: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for version in replies.iter().filter_map(|r| r.split_whitespace().next()) {
        if seen.last().map(String::as_str) != Some(version) {
            seen.push(version.to_string());
        }
    }
    seen
}

/// Deploys `app` at v1 (2 ready replicas, the given progress deadline) behind a
/// Service, and waits until its VIP answers from v1; returns the VIP.
fn serve_v1(agent: &Agent, app: &str, deadline_seconds: u32) -> std::net::SocketAddr {
    agent.apply(&deployment(app, "v1", true, 2, deadline_seconds));
    let vip = service(agent, app);
    assert_rolled_out(agent, app);
    eventually("the VIP answering", || {
        let replies = connect(agent, vip, 4);
        replies
            .iter()
            .all(|r| r.starts_with("v1 "))
            .then_some(())
            .ok_or(format!("{replies:?}"))
    });
    vip
}

#[test]
fn a_rolling_update_through_the_service_vip_loses_no_connection() {
    let agent = Agent::start_node(&[]);
    let app = unique_name("roll");
    let vip = serve_v1(&agent, &app, 120);
    ready_pods(&agent, &app, 2);

    let ((), replies) = with_clients(&agent, vip, || {
        agent.apply(&deployment(&app, "v2", true, 2, 120));
        assert_rolled_out(&agent, &app);
    });
    let failed: Vec<&String> = replies.iter().filter(|r| !r.starts_with('v')).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        replies.len()
    );
    assert_eq!(versions(&replies).first().map(String::as_str), Some("v1"));
    let after = connect(&agent, vip, 10);
    assert!(after.iter().all(|r| r.starts_with("v2 ")), "{after:?}");

    let d = agent.object("deployment", &app).expect("the Deployment");
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    assert_eq!(d["status"]["updatedReplicas"], 2);
    assert_eq!(d["status"]["availableReplicas"], 2);
    let sets = labelled(&agent, "replicasets", &app);
    assert_eq!(sets.len(), 2, "one ReplicaSet per template");
    for rs in &sets {
        let hash = rs["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .expect("a hash label");
        assert_eq!(name(rs), format!("{app}-{hash}"));
        let expected = if rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        {
            2
        } else {
            0
        };
        assert_eq!(rs["spec"]["replicas"], expected, "{rs}");
    }
    let history = agent.ok(&["rollout", "history", &format!("deployment/{app}")]);
    assert!(history.lines().any(|l| l.starts_with("1 ")), "{history}");
    assert!(history.lines().any(|l| l.starts_with("2 ")), "{history}");
}

#[test]
fn a_release_that_never_gets_ready_is_rolled_back_and_the_service_stays_up() {
    let agent = Agent::start_node(&[]);
    let app = unique_name("broken");
    let vip = serve_v1(&agent, &app, 6);

    let (status, replies) = with_clients(&agent, vip, || {
        agent.apply(&deployment(&app, "v2", false, 2, 6));
        let failed = rollout_status(&agent, &app);
        // Back on v1: a rollout of its own, which completes.
        assert_rolled_out(&agent, &app);
        failed
    });
    assert!(
        !status.status.success(),
        "rollout status of the broken release must fail"
    );
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("rolled back automatically"), "{stderr}");
    let failed: Vec<&String> = replies.iter().filter(|r| !r.starts_with("v1 ")).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections did not reach v1: {failed:?}",
        failed.len(),
        replies.len()
    );

    let d = agent.object("deployment", &app).expect("the Deployment");
    let env = &d["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(env["value"], "v1", "the template is v1's again");
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let rolled = d["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "RolledBack"))
        .cloned()
        .expect("a RolledBack condition");
    assert_eq!(rolled["reason"], "ProgressDeadlineExceeded");
    assert_eq!(
        d["metadata"]["annotations"]["skiff.io/rolled-back-generation"],
        "2"
    );
    assert!(
        rolled["message"]
            .as_str()
            .is_some_and(|m| m.contains("from revision 2 to revision 1")),
        "{rolled}"
    );
    let described = agent.ok(&["describe", "deployment", &app]);
    assert!(described.contains("RolledBack"), "{described}");
    ready_pods(&agent, &app, 2);
}

#[test]
fn undo_to_a_revision_pause_resume_and_scale_from_the_command_line() {
    let agent = Agent::start_node(&[]);
    let app = unique_name("undo");
    let target = format!("deployment/{app}");
    agent.apply(&deployment(&app, "v1", true, 1, 120));
    let vip = service(&agent, &app);
    assert_rolled_out(&agent, &app);
    agent.apply(&deployment(&app, "v2", true, 1, 120));
    assert_rolled_out(&agent, &app);

    let out = agent.cli(&["rollout", "undo", &target, "--to-revision", "9"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unable to find specified revision 9"),
        "{stderr}"
    );
    let out = agent.cli(&[
        "rollout",
        "undo",
        "deployment/missing",
        "--to-revision",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"missing\" not found"));

    let undone = agent.ok(&["rollout", "undo", &target, "--to-revision", "1"]);
    assert!(undone.contains("rolled back"), "{undone}");
    assert_rolled_out(&agent, &app);
    let d = agent.object("deployment", &app).expect("the Deployment");
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert!(connect(&agent, vip, 5).iter().all(|r| r.starts_with("v1 ")));

    // Paused: a template change waits.
    agent.ok(&["rollout", "pause", &target]);
    agent.apply(&format!(
        "{}  paused: true\n",
        deployment(&app, "v3", true, 1, 120)
    ));
    eventually("the paused change observed", || {
        let d = agent.object("deployment", &app).ok_or("no deployment")?;
        let paused = d["status"]["conditions"]
            .as_array()
            .is_some_and(|all| all.iter().any(|c| c["reason"] == "DeploymentPaused"));
        (paused && d["status"]["observedGeneration"] == d["metadata"]["generation"])
            .then_some(())
            .ok_or(d["status"].to_string())
    });
    assert_eq!(
        labelled(&agent, "replicasets", &app).len(),
        2,
        "no ReplicaSet for v3 while paused"
    );
    agent.ok(&["rollout", "resume", &target]);
    assert_rolled_out(&agent, &app);
    assert!(connect(&agent, vip, 5).iter().all(|r| r.starts_with("v3 ")));

    let scaled = agent.ok(&["scale", "deployment", &app, "--replicas", "2"]);
    assert!(
        scaled.contains(&format!("deployment.apps/{app} scaled")),
        "{scaled}"
    );
    assert_rolled_out(&agent, &app);
    ready_pods(&agent, &app, 2);
    for (args, expected) in [
        (
            vec!["scale", "deployment", app.as_str(), "--replicas", "-1"],
            "--replicas must be between 0",
        ),
        (
            vec!["scale", "deployment", "missing", "--replicas", "1"],
            "\"missing\" not found",
        ),
        (
            vec!["scale", "pod", app.as_str(), "--replicas", "1"],
            "\"pod\" is not supported here",
        ),
    ] {
        let out = agent.cli(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn recreate_removes_every_old_pod_before_starting_new_ones() {
    let agent = Agent::start_node(&[]);
    let app = unique_name("recreate");
    let manifest = |version: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {app}}}\nspec:\n  replicas: 2\n  strategy: {{type: Recreate}}\n  selector: {{matchLabels: {{app: {app}}}}}\n{}",
            server_template(&app, version, true)
        )
    };
    agent.apply(&manifest("v1"));
    assert_rolled_out(&agent, &app);
    let old = labelled(&agent, "replicasets", &app);
    assert_eq!(old.len(), 1);
    agent.apply(&manifest("v2"));
    assert_rolled_out(&agent, &app);
    let sets = labelled(&agent, "replicasets", &app);
    let new = sets
        .iter()
        .find(|rs| name(rs) != name(&old[0]))
        .expect("a ReplicaSet for v2");
    let described = agent.ok(&["describe", "deployment", &app]);
    // All at once, in that order: the old set to zero, then the new one to two.
    let down = format!("Scaled down replica set {} from 2 to 0", name(&old[0]));
    let up = format!("Scaled up replica set {} from 0 to 2", name(new));
    let (Some(down_at), Some(up_at)) = (described.find(&down), described.find(&up)) else {
        panic!("expected {down:?} then {up:?} in: {described}");
    };
    assert!(down_at < up_at, "{described}");
}
