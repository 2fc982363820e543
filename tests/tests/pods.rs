//! Pods on a real node: an agent in a node namespace of its own runs pods with
//! runc under conmon, wired by skiff-cni, from the busybox test image.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME};

const START: Duration = Duration::from_secs(30);

fn pod_ips(pod: &Value) -> Vec<String> {
    pod["status"]["podIPs"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["ip"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn running(pod: Option<&Value>) -> bool {
    pod.is_some_and(|p| {
        p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    })
}

fn container_state<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The body `ip:port` serves for `GET /`, asked from the node's namespace,
/// retrying while the server starts (a pod without a readiness probe is ready as
/// soon as its process runs).
fn http_get(agent: &Agent, ip: &str, port: u16) -> String {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(ip.parse().expect("pod IP"), port);
    let netns = agent.node_netns.as_ref().expect("node agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = netns.run(|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string())
        });
        match answer {
            Ok(body) => return body,
            Err(e) if std::time::Instant::now() > deadline => return format!("error: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn http_pod(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: busybox:1.36
    command: ["sh", "-c", "mkdir -p /www && echo hello from $POD_NAME > /www/index.html && exec httpd -f -p 8080 -h /www"]
    env:
    - name: POD_NAME
      valueFrom:
        fieldRef: {{fieldPath: metadata.name}}
"#
    )
}

#[test]
fn a_pod_serves_http_on_both_families_and_leaves_nothing_when_deleted() {
    let agent = Agent::start_node(&[]);
    agent.apply(&http_pod("web"));
    let pod = agent.wait_pod("web", START, running).expect("running pod");
    let ips = pod_ips(&pod);
    assert_eq!(ips.len(), 2, "{}", pod["status"]);
    for ip in &ips {
        assert_eq!(http_get(&agent, ip, 8080), "hello from web\n", "{ip}");
    }
    // Inside the pod, loopback is up: containers of a pod talk over localhost.
    let local = agent.exec(
        &pod,
        "web",
        &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
    );
    assert_eq!(
        String::from_utf8_lossy(&local.stdout),
        "hello from web\n",
        "{local:?}"
    );
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let conditions: Vec<(String, String)> = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            conditions.contains(&(kind.to_string(), "True".to_string())),
            "{conditions:?}"
        );
    }

    agent.ok(&["delete", "pod", "web"]);
    agent.wait_pod("web", START, |p| p.is_none());
    // Nothing of the pod is left on the node.
    assert_nothing_left(&agent, &uid);
}

/// Nothing of pod `uid` is left on the node: network namespace, pod directory,
/// veth, containers, cgroups.
fn assert_nothing_left(agent: &Agent, uid: &str) {
    let netns = Path::new("/run/netns").join(format!("skiff-{uid}"));
    assert!(!netns.exists(), "{} left", netns.display());
    assert!(
        !agent.state_dir().join("pods").join(uid).exists(),
        "pod directory left"
    );
    let veth = skiff_cni::wiring::host_veth_name(uid, "eth0");
    let links = agent.in_node("ip", &["-o", "link"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&veth),
        "veth {veth} left"
    );
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(agent.state_dir().join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    let containers = String::from_utf8_lossy(&runc.stdout);
    assert!(!containers.contains(uid), "containers left: {containers}");
    for hierarchy in skiff::cgroup::hierarchies().unwrap() {
        let cgroup = hierarchy.join(format!("skiff/pod{uid}"));
        assert!(!cgroup.exists(), "{} left", cgroup.display());
    }
}

#[test]
fn exits_and_deletions_while_the_agent_is_down_are_caught_up() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: short}}\nspec:\n  nodeName: {NODE_NAME}\n  \
         restartPolicy: Never\n  containers:\n  - name: main\n    image: busybox:1.36\n    \
         command: [sh, -c, 'sleep 6; exit 3']\n"
    ));
    // PID 1 of a container ignores SIGTERM when it has no handler: the stop takes
    // the whole grace period.
    agent.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: slow-stop}}\nspec:\n  nodeName: {NODE_NAME}\n  \
         terminationGracePeriodSeconds: 4\n  containers:\n  - name: main\n    image: busybox:1.36\n    \
         command: [sleep, '3600']\n"
    ));
    agent.wait_pod("short", START, running).unwrap();
    let slow = agent.wait_pod("slow-stop", START, running).unwrap();
    let slow_uid = slow["metadata"]["uid"].as_str().unwrap().to_string();
    agent.ok(&["delete", "pod", "slow-stop"]);
    agent.wait_pod("slow-stop", START, |p| {
        p.is_some_and(|p| !p["metadata"]["deletionTimestamp"].is_null())
    });
    assert!(
        running(agent.object("pod", "short").as_ref()),
        "the short pod must still run when the agent dies"
    );
    // The agent dies while it waits out the grace period, and stays away until
    // the short pod's container has exited.
    let agent = agent.kill_and_restart_after(|_| std::thread::sleep(Duration::from_secs(7)));
    let short = agent
        .wait_pod("short", START, |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Failed")
        })
        .unwrap();
    let state = &container_state(&short, "main")["state"]["terminated"];
    assert_eq!(state["exitCode"], 3, "{}", short["status"]);
    assert_eq!(state["reason"], "Error", "{}", short["status"]);
    // The deletion the old agent began is finished by the new one.
    agent.wait_pod("slow-stop", START, |p| p.is_none());
    assert_nothing_left(&agent, &slow_uid);
}

#[test]
fn restart_policies_and_last_state() {
    let agent = Agent::start_node(&[]);
    let failing = |name: &str, policy: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {NODE_NAME}\n  restartPolicy: {policy}\n  containers:\n  - name: main\n    image: busybox:1.36\n    command: [sh, -c, 'echo failing; exit 3']\n"
        )
    };
    agent.apply(&failing("on-failure", "OnFailure"));
    agent.apply(&failing("never", "Never"));
    // OnFailure: restarted (the first restart is immediate), lastState tells the exit.
    let pod = agent
        .wait_pod("on-failure", START, |p| {
            p.is_some_and(|p| container_state(p, "main")["restartCount"].as_i64() >= Some(1))
        })
        .unwrap();
    let last = &container_state(&pod, "main")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{}", pod["status"]);
    assert_eq!(last["reason"], "Error");
    // Never: the pod fails and stays failed.
    let pod = agent
        .wait_pod("never", START, |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Failed")
        })
        .unwrap();
    let state = &container_state(&pod, "main")["state"]["terminated"];
    assert_eq!(state["exitCode"], 3);
    assert_eq!(container_state(&pod, "main")["restartCount"], 0);
}

#[test]
fn init_containers_run_in_order_before_the_app() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: ordered}}
spec:
  nodeName: {NODE_NAME}
  initContainers:
  - {{name: first, image: busybox:1.36, command: [sh, -c, "sleep 1"]}}
  - {{name: second, image: busybox:1.36, command: [sh, -c, "sleep 1"]}}
  containers:
  - {{name: app, image: busybox:1.36, command: [sleep, "3600"]}}
"#
    ));
    let pod = agent.wait_pod("ordered", START, running).unwrap();
    let init = pod["status"]["initContainerStatuses"].as_array().unwrap();
    let time = |status: &Value, field: &str| {
        status["state"]["terminated"][field]
            .as_str()
            .unwrap_or_else(|| panic!("{status}"))
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    assert_eq!(init[0]["name"], "first");
    assert_eq!(init[1]["name"], "second");
    // Whole seconds: second starts no earlier than first finishes.
    assert!(
        time(&init[1], "startedAt") >= time(&init[0], "finishedAt"),
        "{}",
        pod["status"]
    );
    let app_started = container_state(&pod, "app")["state"]["running"]["startedAt"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert!(app_started >= time(&init[1], "finishedAt"));
}

#[test]
fn bad_images_and_commands_are_reported_and_the_agent_carries_on() {
    let agent = Agent::start_node(&[]);
    let pod = |name: &str, image: &str, command: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {NODE_NAME}\n  containers:\n  - name: main\n    image: {image}\n    command: [{command}]\n"
        )
    };
    // Never: a missing image is not pulled (these tests reach no registry).
    agent.apply(&pod(
        "no-image",
        "nosuch:1.0\n    imagePullPolicy: Never",
        "sh",
    ));
    agent.apply(&pod("no-command", "busybox:1.36", "/bin/does-not-exist"));
    agent.apply(&http_pod("fine"));
    let waiting = |name: &str, reason: &str| {
        let pod = agent
            .wait_pod(name, START, |p| {
                p.is_some_and(|p| {
                    container_state(p, "main")["state"]["waiting"]["reason"] == reason
                })
            })
            .unwrap();
        container_state(&pod, "main")["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let message = waiting("no-image", "ErrImageNeverPull");
    assert!(message.contains("nosuch"), "{message}");
    let message = waiting("no-command", "CreateContainerError");
    assert!(message.contains("/bin/does-not-exist"), "{message}");
    agent.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: tiny}}\nspec:\n  nodeName: {NODE_NAME}\n  containers:\n  - name: main\n    image: busybox:1.36\n    command: [sleep, '3600']\n    resources: {{limits: {{memory: 4Ki}}}}\n"
    ));
    // A memory limit below what the container needs to start: runc refuses it.
    let message = waiting("tiny", "CreateContainerError");
    assert!(
        message.contains("unable to set memory limit to 4096"),
        "{message}"
    );
    // Other pods are unaffected.
    agent.wait_pod("fine", START, running);
}

#[test]
fn a_killed_agent_adopts_its_running_containers() {
    let agent = Agent::start_node(&[]);
    agent.apply(&http_pod("kept"));
    let before = agent.wait_pod("kept", START, running).unwrap();
    let id = container_state(&before, "web")["containerID"].clone();
    let agent = agent.kill_and_restart();
    // Same container, not restarted, still serving.
    let after = agent
        .wait_pod("kept", START, |p| {
            p.is_some_and(|p| running(Some(p)) && container_state(p, "web")["containerID"] == id)
        })
        .unwrap();
    assert_eq!(container_state(&after, "web")["restartCount"], 0);
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(agent.state_dir().join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&runc.stdout).lines().count(),
        1,
        "no duplicate containers"
    );
    let ip = &pod_ips(&after)[0];
    assert_eq!(http_get(&agent, ip, 8080), "hello from kept\n");
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: liveness}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec: {{command: [cat, /tmp/healthy]}}
      periodSeconds: 1
      failureThreshold: 2
"#
    ));
    let pod = agent
        .wait_pod("liveness", START, |p| {
            p.is_some_and(|p| container_state(p, "main")["restartCount"].as_i64() >= Some(1))
        })
        .unwrap();
    let last = &container_state(&pod, "main")["lastState"]["terminated"];
    // Killed by the agent (SIGTERM, then SIGKILL after the grace period).
    assert!(
        last["exitCode"] == 137 || last["exitCode"] == 143,
        "{}",
        pod["status"]
    );
    let described = agent.ok(&["describe", "pod", "liveness"]);
    assert!(
        described
            .contains("Liveness probe failed: command [\"cat\", \"/tmp/healthy\"] exited with 1"),
        "{described}"
    );
    assert!(
        described.contains("Container main failed liveness probe, will be restarted"),
        "{described}"
    );
    assert!(described.contains("Started container main"), "{described}");
}

#[test]
fn readiness_flips_the_ready_condition() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: readiness}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:1.36
    command: [sh, -c, "mkdir -p /www; (sleep 3; echo ok > /www/ready; sleep 3; rm /www/ready) & exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /ready, port: http}}
      periodSeconds: 1
      failureThreshold: 1
"#
    ));
    let ready = |wanted: &'static str| {
        move |p: Option<&Value>| {
            p.is_some_and(|p| p["status"]["phase"] == "Running" && condition(p, "Ready") == wanted)
        }
    };
    agent.wait_pod("readiness", START, ready("False"));
    let pod = agent.wait_pod("readiness", START, ready("True")).unwrap();
    assert_eq!(container_state(&pod, "web")["ready"], true);
    let pod = agent.wait_pod("readiness", START, ready("False")).unwrap();
    assert_eq!(container_state(&pod, "web")["ready"], false);
    // Not ready is not unhealthy: the container was never restarted.
    assert_eq!(container_state(&pod, "web")["restartCount"], 0);
}

#[test]
fn an_oom_killed_container_is_reported_and_restarted() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hungry}}
spec:
  nodeName: {NODE_NAME}
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, "x=$(head -c 100000000 /dev/zero | tr '\\0' x); sleep 3600"]
    resources:
      limits: {{memory: 16Mi}}
"#
    ));
    let pod = agent
        .wait_pod("hungry", Duration::from_secs(60), |p| {
            p.is_some_and(|p| container_state(p, "main")["restartCount"].as_i64() >= Some(1))
        })
        .unwrap();
    let last = &container_state(&pod, "main")["lastState"]["terminated"];
    assert_eq!(last["reason"], "OOMKilled", "{}", pod["status"]);
    assert_eq!(last["exitCode"], 137);
}

#[test]
fn pre_stop_runs_before_the_container_is_stopped() {
    use std::io::Read;
    let agent = Agent::start_node(&[]);
    // The node listens where pods reach it: their gateway address.
    let netns = agent.node_netns.as_ref().unwrap();
    let listener = netns.run(|| std::net::TcpListener::bind("0.0.0.0:9999").unwrap());
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: polite}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: busybox:1.36
    command: [sleep, "3600"]
    lifecycle:
      preStop:
        exec: {{command: [sh, -c, "echo goodbye from $HOSTNAME | nc 10.244.0.1 9999"]}}
"#
    ));
    agent.wait_pod("polite", START, running);
    agent.ok(&["delete", "pod", "polite"]);
    listener.set_nonblocking(false).unwrap();
    let (mut conn, _) = listener.accept().expect("the preStop hook connects");
    let mut said = String::new();
    conn.read_to_string(&mut said).unwrap();
    assert_eq!(said, "goodbye from polite\n");
    agent.wait_pod("polite", START, |p| p.is_none());
}

#[test]
fn a_broken_pod_network_is_reported_by_the_periodic_cni_check() {
    let agent = Agent::start_node(&["--pod-network-check-interval", "1s"]);
    agent.apply(&http_pod("checked"));
    let pod = agent.wait_pod("checked", START, running).unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let healthy = agent.ok(&["describe", "pod", "checked"]);
    assert!(!healthy.contains("NetworkCheckFailed"), "{healthy}");
    // Break the pod's network behind the agent's back.
    let netns = format!("skiff-{uid}");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &netns, "ip", "route", "del", "default"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let described = agent.ok(&["describe", "pod", "checked"]);
        if described.contains("NetworkCheckFailed") && described.contains("CNI CHECK failed") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{described}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_pod_removed_at_once_is_stopped_with_its_own_grace_period() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: forced}}\nspec:\n  nodeName: {NODE_NAME}\n  \
         terminationGracePeriodSeconds: 3\n  containers:\n  - name: main\n    image: busybox:1.36\n    \
         command: [sleep, '3600']\n"
    ));
    let pod = agent.wait_pod("forced", START, running).unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let deleted = Instant::now();
    agent.ok(&["delete", "pod", "forced", "--grace-period", "0"]);
    assert!(
        agent.object("pod", "forced").is_none(),
        "still in the store"
    );
    // The node has nothing left to tell it the grace period but what it recorded:
    // it waits the pod's 3 s (sleep as PID 1 ignores SIGTERM), not the default 30.
    let pod_dir = agent.state_dir().join("pods").join(&uid);
    while pod_dir.exists() {
        assert!(
            deleted.elapsed() < Duration::from_secs(20),
            "the pod was not torn down within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        deleted.elapsed() >= Duration::from_millis(2_500),
        "stopped after {:?}, before its grace period",
        deleted.elapsed()
    );
    assert_nothing_left(&agent, &uid);
}
