//! The mesh's L7 layer in the connection path, on a real agent with real pods:
//! an enrolled client's connections to a Service port that declares
//! `appProtocol: http` keep the Service's cluster IP (the kernel does not pick a
//! backend), reach the node proxy, and each request follows the HTTPRoutes
//! attached to that Service: a 90/10 split between two Services, retries that
//! hide a backend failing every other request, a timeout, and outlier detection
//! that ejects an always-failing endpoint. The agent's metrics count the
//! requests. A client outside the mesh reaching the same cluster IP is balanced
//! by the kernel as before, so the routes do not apply to it. A capture on a
//! backend's link sees the mesh client's requests only inside the tunnel.
//!
//! The servers are busybox httpd with small CGI scripts; the clients are busybox
//! wget loops run inside the client pods' network namespaces and the cgroup the
//! test agent's dataplane is attached to.

use skiff_tests::agent::{Agent, NODE_NAME};
use skiff_tests::capture::{Capture, carrying, contains, stream_of};
use skiff_tests::mesh::{READY_WITHIN, metric, netns_of, ready_pod, uid, wait_logged};
use skiff_tests::{eventually, unique_name};

const SERVER_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;
/// The canary's share of requests the route gives it, in percent.
const CANARY_PERCENT: f64 = 10.0;
const SPLIT_REQUESTS: usize = 2_000;
/// How far the canary's measured share may be from its weight, in points.
const SPLIT_TOLERANCE: f64 = 3.0;
/// Consecutive 5xx before an endpoint is ejected (Envoy's default, skiff's).
const EJECTED_AFTER: usize = 5;

/// A busybox httpd pod answering `/` with its name; `/cgi-bin/who` with its
/// name too, or 500 when `fails`; `/cgi-bin/flaky` with 500 on every odd
/// request and the request's number on even ones; `/cgi-bin/slow` after 3 s.
/// (No `$(` in the script: Kubernetes expands `$(NAME)` in commands.)
fn http_pod(namespace: &str, name: &str, app: &str, fails: bool) -> String {
    let fail = if fails { "yes" } else { "no" };
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    ports: [{{name: http, containerPort: {SERVER_PORT}}}]
    readinessProbe: {{tcpSocket: {{port: {SERVER_PORT}}}, periodSeconds: 1}}
    command:
    - sh
    - -c
    - |
      mkdir -p /tmp/www/cgi-bin
      echo {name} > /tmp/www/index.html
      cd /tmp/www/cgi-bin
      cat > who <<EOF
      #!/bin/sh
      if [ {fail} = yes ]; then echo "Status: 500 Internal Server Error"; fi
      echo "Content-Type: text/plain"
      echo ""
      echo {name}
      EOF
      cat > flaky <<'EOF'
      #!/bin/sh
      n=`cat /tmp/flaky 2>/dev/null || echo 0`
      n=`expr $n + 1`
      echo $n > /tmp/flaky
      if [ `expr $n % 2` = 1 ]; then echo "Status: 500 Internal Server Error"; fi
      echo "Content-Type: text/plain"
      echo ""
      echo flaky-$n
      EOF
      cat > slow <<'EOF'
      #!/bin/sh
      sleep 3
      echo "Content-Type: text/plain"
      echo ""
      echo slow
      EOF
      chmod +x who flaky slow
      exec httpd -f -p {SERVER_PORT} -h /tmp/www
"#
    )
}

fn http_service(namespace: &str, name: &str, app: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http, appProtocol: http}}]
"#
    )
}

fn sleeper(namespace: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {namespace}}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers: [{{name: main, image: busybox:1.36, command: [sleep, "3600"]}}]
"#
    )
}

/// `count` requests for `url`, one wget after another, from inside `pod`'s
/// namespace: each response's body, or wget's error line for a failed one
/// (e.g. `... HTTP/1.1 500 Internal Server Error`).
fn get(agent: &Agent, pod: &serde_json::Value, url: &str, count: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {count}); do timeout 10 wget -q -O - {url} 2>&1 || echo failed; done"
    );
    let out = agent
        .cgroup
        .command_at(&netns_of(pod), "busybox")
        .args(["sh", "-c", &script])
        .output()
        .expect("run busybox wget");
    assert!(out.status.success(), "wget loop: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // wget prints its error, then the loop its marker: keep the error.
        .filter(|line| *line != "failed")
        .map(str::to_string)
        .collect()
}

fn count(responses: &[String], body: &str) -> usize {
    responses.iter().filter(|r| *r == body).count()
}

fn count_status(responses: &[String], status: u16) -> usize {
    let status = format!("HTTP/1.1 {status} ");
    responses.iter().filter(|r| r.contains(&status)).count()
}

#[test]
fn enrolled_clients_requests_follow_http_routes() {
    let mut agent = Agent::start_node(&[]);
    let mesh = unique_name("mesh");
    let plain = unique_name("plain");
    let mut manifests = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {mesh}, labels: {{skiff.io/mesh: enabled}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {plain}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: front, namespace: {mesh}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: front, port: 80}}]
  rules:
  - backendRefs:
    - {{name: stable, port: 80, weight: 90}}
    - {{name: canary, port: 80, weight: 10}}
  - matches: [{{path: {{type: PathPrefix, value: /cgi-bin/flaky}}}}]
    backendRefs: [{{name: stable, port: 80}}]
    retry: {{codes: [500], attempts: 1, backoff: 10ms}}
  - matches: [{{path: {{type: PathPrefix, value: /cgi-bin/slow}}}}]
    backendRefs: [{{name: stable, port: 80}}]
    timeouts: {{request: 1s}}
"#
    );
    for (service, app) in [
        ("front", "stable"),
        ("stable", "stable"),
        ("canary", "canary"),
        ("pool", "pool"),
    ] {
        manifests += &format!("---{}", http_service(&mesh, service, app));
    }
    for (pod, app, fails) in [
        ("stable", "stable", false),
        ("canary", "canary", false),
        ("good", "pool", false),
        ("broken", "pool", true),
    ] {
        manifests += &format!("---{}", http_pod(&mesh, pod, app, fails));
    }
    manifests += &format!("---{}---{}", sleeper(&mesh), sleeper(&plain));
    agent.apply(&manifests);
    for pod in ["stable", "good", "broken"] {
        ready_pod(&agent, &mesh, pod);
    }
    let canary_pod = ready_pod(&agent, &mesh, "canary");
    let client = ready_pod(&agent, &mesh, "client");
    let outsider = ready_pod(&agent, &plain, "client");
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/client"));
    let front = format!("http://{}/", vip(&agent, &mesh, "front"));

    // Warm up until both sides of the split answer (their endpoints reached
    // the proxy), with nothing failing.
    eventually("both sides of the split", READY_WITHIN, || {
        let responses = get(&agent, &client, &front, 40);
        match count(&responses, "stable") + count(&responses, "canary") == 40
            && count(&responses, "canary") > 0
        {
            true => Ok(()),
            false => Err(format!("{responses:?}")),
        }
    });
    let before = requests_to(&agent, &mesh, "canary", "2xx");

    // The split: 90/10 by weight, whatever the kernel would have picked (front
    // selects only the stable pod).
    let responses = get(&agent, &client, &front, SPLIT_REQUESTS);
    let (stable, canary) = (count(&responses, "stable"), count(&responses, "canary"));
    assert_eq!(stable + canary, SPLIT_REQUESTS, "{responses:?}");
    let share = 100.0 * canary as f64 / SPLIT_REQUESTS as f64;
    assert!(
        (share - CANARY_PERCENT).abs() <= SPLIT_TOLERANCE,
        "the canary got {share:.1}% of {SPLIT_REQUESTS} requests ({canary})"
    );
    assert_eq!(
        requests_to(&agent, &mesh, "canary", "2xx") - before,
        canary as f64,
        "the metrics count the canary's requests"
    );

    // Retries: every first attempt fails, every retry succeeds; the client
    // sees only successes, and the server counted two requests for each.
    let flaky = get(&agent, &client, &format!("{front}cgi-bin/flaky"), 10);
    let expected: Vec<String> = (1..=10).map(|i| format!("flaky-{}", 2 * i)).collect();
    assert_eq!(flaky, expected);

    // The timeout: 1 s for a backend that takes 3 s.
    let slow = get(&agent, &client, &format!("{front}cgi-bin/slow"), 2);
    assert_eq!(count_status(&slow, 504), 2, "{slow:?}");
    assert_eq!(requests_to(&agent, &mesh, "stable", "5xx"), 2.0);

    // Outlier detection: the broken endpoint answers 500 until its fifth
    // failure in a row ejects it; then only the good one answers.
    let pool = format!("http://{}/cgi-bin/who", vip(&agent, &mesh, "pool"));
    let mut seen = Vec::new();
    while seen.len() < 200 {
        seen.extend(get(&agent, &client, &pool, 20));
        let failures = count_status(&seen, 500);
        let last_failure = seen.iter().rposition(|r| r.contains("HTTP/1.1 500 "));
        let after = last_failure.map_or(0, |i| seen.len() - i - 1);
        if failures >= EJECTED_AFTER && after >= 40 {
            break;
        }
    }
    assert_eq!(count_status(&seen, 500), EJECTED_AFTER, "{seen:?}");
    let last_failure = seen.iter().rposition(|r| r.contains("HTTP/1.1 500 "));
    let after = &seen[last_failure.map_or(0, |i| i + 1)..];
    assert!(
        after.len() >= 40 && after.iter().all(|r| r == "good"),
        "after the ejection only the good endpoint answers: {seen:?}"
    );
    let broken = metric(
        &agent.metrics(),
        "skiff_mesh_requests_total",
        &[
            ("destination_service", "pool"),
            ("destination_workload", "broken"),
            ("status_class", "5xx"),
        ],
    );
    assert_eq!(broken, Some(EJECTED_AFTER as f64));

    // Outside the mesh the kernel balances the same cluster IP to front's own
    // endpoint: no route applies.
    let outside = get(&agent, &outsider, &front, 20);
    assert_eq!(count(&outside, "stable"), 20, "{outside:?}");

    // On the canary's link, requests through the L7 proxy arrive inside the
    // tunnel (TLS to 15008); only the outsider's, last, is plaintext HTTP.
    let veth = skiff_cni::wiring::host_veth_name(uid(&canary_pod), "eth0");
    let node = agent.node_netns.as_ref().expect("a node namespace");
    let capture = Capture::start(node.command("tcpdump"), &veth, "tcp");
    let to_canary = format!("http://{}/", vip(&agent, &mesh, "canary"));
    assert_eq!(get(&agent, &client, &to_canary, 3), ["canary"; 3]);
    assert_eq!(get(&agent, &outsider, &to_canary, 1), ["canary"]);
    let segments = capture.flush_through(b"canary");
    assert_eq!(carrying(&segments, SERVER_PORT, "canary"), 1);
    let tunnel = stream_of(&segments, HBONE_PORT);
    assert!(!tunnel.is_empty(), "nothing crossed on {HBONE_PORT}");
    assert!(
        !contains(&tunnel, b"canary"),
        "the tunnel carried plaintext"
    );
}

/// The cluster IP of Service `name` in `namespace`.
fn vip(agent: &Agent, namespace: &str, name: &str) -> String {
    eventually(format!("service {name}'s cluster IP"), READY_WITHIN, || {
        let out = agent.cli(&["get", "service", name, "-n", namespace, "-o", "json"]);
        let service: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        service["spec"]["clusterIP"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| service.to_string())
    })
}

/// Requests the L7 proxy answered for the client, to `service`, by status class.
fn requests_to(agent: &Agent, namespace: &str, service: &str, class: &str) -> f64 {
    metric(
        &agent.metrics(),
        "skiff_mesh_requests_total",
        &[
            ("source_namespace", namespace),
            ("source_workload", "client"),
            ("destination_service", service),
            ("status_class", class),
        ],
    )
    .unwrap_or(0.0)
}
