//! An agent on etcd while etcd is frozen (SIGSTOP: connections stay open and
//! nothing answers): its pod keeps running and its service VIP keeps reaching the
//! pod from the last known state, while `skiff apply` and `skiff get` fail saying
//! that etcd is unreachable. Once etcd goes on, everything resumes: a new Service
//! works through its VIP, the node reports Ready again and the agent leads the
//! control loops again. The same once more with etcd killed and started again.

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME};
use skiff_tests::etcd::EtcdServer;
use skiff_tests::lab::{client_output, tally};
use skiff_tests::{unique_name, wait_for_names, workspace_bin};

const START: Duration = Duration::from_secs(30);
/// Where [`EtcdServer::start_in`] serves, on the node namespace's own loopback.
const STORE: &str = "etcd://127.0.0.1:2379";
/// How long a CLI command may take against an agent whose etcd is frozen. A
/// bound, not a speed: without one the command would hang as long as etcd does.
const FAILS_WITHIN: Duration = Duration::from_secs(10);
/// The outage lasts longer than the node monitor grace period (10 s): the
/// node's heartbeats stop for longer than a live node's may.
const OUTAGE: Duration = Duration::from_secs(14);

/// A pod that answers every TCP connection on 8080 with `reply`, and a Service
/// `name` in front of it.
fn pod_and_service(pod: &str, service: &str, reply: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, labels: {{app: {pod}}}}}\nspec:\n  \
         nodeName: {NODE_NAME}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    \
         image: busybox:1.36\n    command: [nc, -ll, -p, '8080', -e, echo, {reply}]\n---\n{}",
        service_manifest(service, pod)
    )
}

fn service_manifest(service: &str, pod: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {service}}}\nspec:\n  selector: {{app: {pod}}}\n  \
         ports:\n  - {{port: 80, targetPort: 8080}}\n"
    )
}

/// The IPv4 VIP and port of Service `name`.
fn vip(agent: &Agent, name: &str) -> SocketAddr {
    let service = agent.object("service", name).expect("the service exists");
    let ip = service["spec"]["clusterIP"].as_str().expect("a clusterIP");
    SocketAddr::new(ip.parse().expect("an IP"), 80)
}

/// Waits until connections to `addr` from the agent's namespace and cgroup are
/// all answered by `reply`.
fn wait_for_reply(agent: &Agent, addr: SocketAddr, reply: &str, timeout: Duration) {
    let netns = agent.node_netns.as_ref().expect("node agent");
    wait_for_names(addr, timeout, &[reply], || {
        let command = agent
            .cgroup
            .command_in(netns, workspace_bin("skiff-test-client"));
        tally(&client_output(command, addr, 5))
    });
}

/// Runs `skiff ARGS` (with `stdin`) and how long it took.
fn timed(agent: &Agent, args: &[&str], stdin: &str) -> (Output, Duration) {
    let started = Instant::now();
    let out = agent.cli_with_stdin(args, stdin.as_bytes());
    (out, started.elapsed())
}

/// The node's Ready condition.
fn ready(agent: &Agent) -> Option<Value> {
    let node = agent.object("node", NODE_NAME)?;
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

/// When the node's Lease (its heartbeat) was last renewed.
fn lease_renewed(agent: &Agent) -> Option<Value> {
    Some(agent.node_lease(NODE_NAME)?["spec"]["renewTime"].clone())
}

#[test]
fn while_etcd_is_frozen_pods_and_vips_keep_serving_writes_fail_and_all_resumes_after() {
    // etcd in the node's namespace, where the agent runs (dropped after it).
    let mut etcd = None;
    let mut agent = Agent::start_node_with(&["--store", STORE], |netns| {
        etcd = Some(EtcdServer::start_in(netns, "127.0.0.1"));
    });
    let etcd = etcd.as_mut().expect("etcd started");
    assert_eq!(etcd.store_url(), STORE);
    let (pod, service, reply) = (
        unique_name("held"),
        unique_name("held"),
        unique_name("from"),
    );
    agent.apply(&pod_and_service(&pod, &service, &reply));
    let running = agent
        .wait_pod(&pod, START, |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Running")
        })
        .expect("running pod");
    let uid = running["metadata"]["uid"].clone();
    let held = vip(&agent, &service);
    wait_for_reply(&agent, held, &reply, START);
    let beat_before = lease_renewed(&agent).expect("the node's lease");

    etcd.pause();
    let frozen = Instant::now();
    let unreachable = format!("etcd at http://{} is unreachable", etcd.endpoint());
    let (out, took) = timed(
        &agent,
        &["apply", "-f", "-"],
        &service_manifest("never", &pod),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply succeeded with etcd frozen");
    assert!(stderr.contains(&unreachable), "{stderr}");
    assert!(took < FAILS_WITHIN, "apply took {took:?}");
    println!("apply failed after {took:?}: {stderr}");
    let (out, took) = timed(&agent, &["get", "pod", &pod], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "get succeeded with etcd frozen");
    assert!(stderr.contains(&unreachable), "{stderr}");
    assert!(took < FAILS_WITHIN, "get took {took:?}");
    // The pod serves through its VIP all along, past the grace period.
    wait_for_reply(&agent, held, &reply, START);
    std::thread::sleep(OUTAGE.saturating_sub(frozen.elapsed()));
    wait_for_reply(&agent, held, &reply, START);

    etcd.resume();
    // A new Service through the agent: applied once the store answers again
    // (the first attempts may still meet broken connections), then served.
    let (second, second_reply) = (unique_name("after"), unique_name("after"));
    apply_once_etcd_answers(&agent, &pod_and_service(&second, &second, &second_reply));
    let after = vip(&agent, &second);
    wait_for_reply(&agent, after, &second_reply, START);
    wait_for_reply(&agent, held, &reply, START);

    // The node reports again, its first pod was neither evicted nor replaced.
    let deadline = Instant::now() + START;
    loop {
        let condition = ready(&agent).expect("a Ready condition");
        if condition["status"] == "True" && lease_renewed(&agent) != Some(beat_before.clone()) {
            break;
        }
        assert!(Instant::now() < deadline, "the node stays {condition}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let still = agent
        .object("pod", &pod)
        .expect("the first pod is still there");
    assert_eq!(still["metadata"]["uid"], uid);
    assert_eq!(still["status"]["phase"], "Running", "{}", still["status"]);
    assert!(still["metadata"]["deletionTimestamp"].is_null(), "{still}");
    // It lost the lead while etcd was frozen, and leads again.
    agent.wait_for_line("lost the lead of the control loops");
    agent.wait_for_line("leads the control loops");

    // The other kind of outage: etcd killed (connections refused), then started
    // again on the same data.
    etcd.kill();
    let (out, took) = timed(&agent, &["get", "pod", &pod], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "get succeeded with etcd dead");
    assert!(stderr.contains(&unreachable), "{stderr}");
    assert!(took < FAILS_WITHIN, "get took {took:?}");
    wait_for_reply(&agent, held, &reply, START);
    etcd.restart();
    let (third, third_reply) = (unique_name("third"), unique_name("third"));
    apply_once_etcd_answers(&agent, &pod_and_service(&third, &third, &third_reply));
    wait_for_reply(&agent, vip(&agent, &third), &third_reply, START);
    wait_for_reply(&agent, held, &reply, START);
}

/// Applies `manifest`, retrying while the agent's connections to etcd recover
/// from an outage.
fn apply_once_etcd_answers(agent: &Agent, manifest: &str) {
    let deadline = Instant::now() + START;
    loop {
        let out = agent.cli_with_stdin(&["apply", "-f", "-"], manifest.as_bytes());
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(Instant::now() < deadline, "apply still fails: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
