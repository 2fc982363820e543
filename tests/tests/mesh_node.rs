//! The mesh in the node, end to end on a real agent: pods of a namespace
//! labelled `skiff.io/mesh: enabled` have their TCP captured by eBPF at connect()
//! and carried between node proxies over mutual TLS (HBONE, port 15008).
//!
//! A packet capture on the server pod's host-side veth sees the enrolled
//! client's connections (by IPv4 and IPv6 pod IP and by service VIP) only as
//! TLS to 15008, never the server's reply; a client outside the mesh still talks plaintext to the same
//! server (permissive mode), which the capture does see, so it proves the capture
//! works. On two nodes, the same holds for a capture on the LAN between them.
//! In strict mode, the outside client gets no answer, and the node still does.
//! A namespace that leaves the mesh is no longer captured.
//! Clients run as processes inside the client pod's network namespace and
//! the cgroup the test agent's dataplane is attached to (a test agent's pods'
//! own cgroups are outside it).

use std::net::SocketAddr;
use std::time::Duration;

use skiff_tests::agent::{Agent, NODE_NAME};
use skiff_tests::capture::{Capture, carrying, contains, stream_of};
use skiff_tests::cluster::{Cluster, LAN_BRIDGE, node_name};
use skiff_tests::lab::{client_output, client_output_within};
use skiff_tests::mesh::{READY_WITHIN, metric, netns_of, pod_ip, ready_pod, uid, wait_logged};
use skiff_tests::{eventually, unique_name, workspace_bin};

const SERVER_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;
/// How long a client outside a strict namespace waits for an answer that never
/// comes (its SYNs are dropped).
const REFUSED_AFTER: Duration = Duration::from_secs(2);

/// A namespace enrolled in the mesh with a server (answering each connection
/// with its pod name), a Service in front of it and a client; another namespace
/// outside the mesh with a client. The server has no TCP readiness probe: the
/// probe's connections from the node would carry its reply in plaintext too.
fn manifests(mesh: &str, plain: &str, server_node: &str, client_node: &str, mode: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {mesh}, labels: {{skiff.io/mesh: enabled, skiff.io/mesh-mode: {mode}}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {plain}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {mesh}, labels: {{app: server}}}}
spec:
  nodeName: {server_node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: [nc, -ll, -p, "{SERVER_PORT}", -e, sh, -c, 'echo $(hostname)-{mesh}']
    ports: [{{name: http, containerPort: {SERVER_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: {mesh}}}
spec:
  selector: {{app: server}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {mesh}}}
spec:
  nodeName: {client_node}
  terminationGracePeriodSeconds: 1
  containers: [{{name: main, image: busybox:1.36, command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {plain}}}
spec:
  nodeName: {client_node}
  terminationGracePeriodSeconds: 1
  containers: [{{name: main, image: busybox:1.36, command: [sleep, "3600"]}}]
"#
    )
}

/// The pod's IPv6 address (pods are dual-stack).
fn pod_ip6(pod: &serde_json::Value) -> std::net::IpAddr {
    pod["status"]["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["ip"].as_str()?.parse().ok())
        .find(std::net::IpAddr::is_ipv6)
        .expect("an IPv6 pod IP")
}

/// `count` connections to `addr` from inside `pod`'s namespace: each reply.
fn connect_from(
    agent: &Agent,
    pod: &serde_json::Value,
    addr: SocketAddr,
    count: usize,
) -> Vec<String> {
    let client = agent
        .cgroup
        .command_at(&netns_of(pod), workspace_bin("skiff-test-client"));
    client_output(client, addr, count)
}

/// The test's workloads, running.
struct Scene {
    mesh: String,
    /// What the server answers.
    reply: String,
    server: serde_json::Value,
    client: serde_json::Value,
    outsider: serde_json::Value,
    by_pod_ip: SocketAddr,
    by_pod_ip6: SocketAddr,
    by_vip: SocketAddr,
}

/// Applies [`manifests`] through `agent`, with the server on `server_node`, both
/// clients on `client_node` and the mesh namespace in `mode` (`permissive`, or
/// `strict`), and waits for the pods.
fn deploy(agent: &Agent, server_node: &str, client_node: &str, mode: &str) -> Scene {
    let mesh = unique_name("mesh");
    let plain = unique_name("plain");
    agent.apply(&manifests(&mesh, &plain, server_node, client_node, mode));
    let server = ready_pod(agent, &mesh, "server");
    let client = ready_pod(agent, &mesh, "client");
    let outsider = ready_pod(agent, &plain, "client");
    let service = eventually("the service's VIP", READY_WITHIN, || {
        let out = agent.cli(&["get", "service", "server", "-n", &mesh, "-o", "json"]);
        let service: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        service["spec"]["clusterIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| service.to_string())
    });
    Scene {
        reply: format!("server-{mesh}"),
        mesh,
        by_pod_ip: SocketAddr::new(pod_ip(&server), SERVER_PORT),
        by_pod_ip6: SocketAddr::new(pod_ip6(&server), SERVER_PORT),
        by_vip: SocketAddr::new(service, 80),
        server,
        client,
        outsider,
    }
}

/// From `clients`' node: the enrolled client reaches the server by pod IP (both
/// families) and through the service, the outsider by pod IP; `capture` (on the
/// path to the server) sees the outsider's reply in plaintext, the rest only as
/// TLS.
fn assert_tunnelled(clients: &Agent, scene: &Scene, capture: Capture) {
    let reply = scene.reply.as_str();
    for addr in [scene.by_pod_ip, scene.by_pod_ip6, scene.by_vip] {
        // The service's backends reach the dataplane shortly after the pod is ready.
        eventually(format!("{addr} from the mesh"), READY_WITHIN, || {
            let replies = connect_from(clients, &scene.client, addr, 3);
            match replies.iter().all(|r| r == reply) {
                true => Ok(()),
                false => Err(format!("{replies:?}")),
            }
        });
    }
    // A client outside the mesh still reaches the server, in plaintext
    // (permissive mode): its reply, last, is the capture's sentinel.
    assert_eq!(
        connect_from(clients, &scene.outsider, scene.by_pod_ip, 1),
        [reply]
    );
    let segments = capture.flush_through(reply.as_bytes());
    assert_eq!(
        carrying(&segments, SERVER_PORT, reply),
        1,
        "only the client outside the mesh may be seen in plaintext"
    );
    let tunnel = stream_of(&segments, HBONE_PORT);
    assert!(!tunnel.is_empty(), "nothing crossed on {HBONE_PORT}");
    assert!(
        !contains(&tunnel, reply.as_bytes()),
        "the reply crossed the tunnel in plaintext"
    );
    // TLS records: a handshake (ClientHello) opens the tunnel.
    assert!(
        contains(&tunnel, &[0x16, 0x03, 0x01]) || contains(&tunnel, &[0x16, 0x03, 0x03]),
        "no TLS handshake on {HBONE_PORT}"
    );
}

#[test]
fn enrolled_pods_talk_mtls_and_others_plaintext_on_one_node() {
    let mut agent = Agent::start_node(&[]);
    let scene = deploy(&agent, NODE_NAME, NODE_NAME, "permissive");
    let mesh = &scene.mesh;
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/server"));
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/client"));
    let veth = skiff_cni::wiring::host_veth_name(uid(&scene.server), "eth0");
    let node = agent.node_netns.as_ref().expect("a node namespace");
    assert_tunnelled(
        &agent,
        &scene,
        Capture::start(node.command("tcpdump"), &veth, "tcp"),
    );

    // Through an agent restart, traffic outside the mesh keeps flowing, and the
    // mesh's comes back.
    agent = agent.kill_and_restart();
    let reply = scene.reply.as_str();
    assert_eq!(
        connect_from(&agent, &scene.outsider, scene.by_pod_ip, 1),
        [reply]
    );
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/client"));
    eventually("the mesh after a restart", READY_WITHIN, || {
        let replies = connect_from(&agent, &scene.client, scene.by_vip, 2);
        match replies.iter().all(|r| r == reply) {
            true => Ok(()),
            false => Err(format!("{replies:?}")),
        }
    });

    // A namespace that leaves the mesh has its pods' traffic left alone: the
    // client's connection is plaintext on the server's veth again.
    agent.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {mesh}}}\n"
    ));
    wait_logged(
        &mut agent,
        &format!("mesh: no longer serving pod {mesh}/client"),
    );
    let node = agent.node_netns.as_ref().expect("a node namespace");
    let capture = Capture::start(node.command("tcpdump"), &veth, "tcp");
    assert_eq!(
        connect_from(&agent, &scene.client, scene.by_pod_ip, 1),
        [reply]
    );
    let segments = capture.flush_through(reply.as_bytes());
    assert_eq!(carrying(&segments, SERVER_PORT, reply), 1);
    assert!(stream_of(&segments, HBONE_PORT).is_empty());
}

#[test]
fn enrolled_pods_on_two_nodes_talk_mtls_across_the_lan() {
    let mut cluster = Cluster::start(2, &[]);
    let scene = deploy(cluster.node(1), &node_name(2), &node_name(1), "permissive");
    let mesh = &scene.mesh;
    wait_logged(
        cluster.node_mut(2),
        &format!("mesh: serving pod {mesh}/server"),
    );
    wait_logged(
        cluster.node_mut(1),
        &format!("mesh: serving pod {mesh}/client"),
    );
    let capture = Capture::start(cluster.lan().command("tcpdump"), LAN_BRIDGE, "tcp");
    assert_tunnelled(cluster.node(1), &scene, capture);
}

#[test]
fn strict_mode_refuses_plaintext_from_outside_the_mesh() {
    let mut agent = Agent::start_node(&[]);
    let scene = deploy(&agent, NODE_NAME, NODE_NAME, "strict");
    let mesh = &scene.mesh;
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/server"));
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/client"));
    let reply = scene.reply.as_str();
    // Through the mesh, the server answers.
    eventually("the server through the mesh", READY_WITHIN, || {
        let replies = connect_from(&agent, &scene.client, scene.by_pod_ip, 2);
        match replies.iter().all(|r| r == reply) {
            true => Ok(()),
            false => Err(format!("{replies:?}")),
        }
    });
    // From outside the mesh, the connection is never answered.
    let outsider = agent.cgroup.command_at(
        &netns_of(&scene.outsider),
        workspace_bin("skiff-test-client"),
    );
    assert_eq!(
        client_output_within(outsider, scene.by_pod_ip, 1, Some(REFUSED_AFTER)),
        ["error timeout"]
    );
    // The node itself (its probes) still reaches the pod.
    let node = agent.node_netns.as_ref().expect("a node namespace");
    assert_eq!(
        client_output(
            node.command(workspace_bin("skiff-test-client")),
            scene.by_pod_ip,
            1
        ),
        [reply]
    );
}

#[test]
fn an_authorization_policy_admits_only_the_identities_it_names() {
    let mut agent = Agent::start_node(&[]);
    let scene = deploy(&agent, NODE_NAME, NODE_NAME, "permissive");
    let mesh = &scene.mesh;
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: trusted, namespace: {mesh}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: trusted, namespace: {mesh}}}
spec:
  nodeName: {NODE_NAME}
  serviceAccountName: trusted
  terminationGracePeriodSeconds: 1
  containers: [{{name: main, image: busybox:1.36, command: [sleep, "3600"]}}]
---
apiVersion: mesh.skiff.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-trusted, namespace: {mesh}}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["spiffe://cluster.local/ns/{mesh}/sa/trusted"]}}}}]
"#
    ));
    let trusted = ready_pod(&agent, mesh, "trusted");
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/server"));
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/trusted"));
    wait_logged(&mut agent, &format!("mesh: serving pod {mesh}/client"));
    let reply = scene.reply.as_str();

    // The client runs as `default`, which the policy does not name.
    let refused = connect_from(&agent, &scene.client, scene.by_pod_ip, 1);
    assert_ne!(refused, [reply], "a denied identity got through");
    wait_logged(
        &mut agent,
        &format!("mesh: denied spiffe://cluster.local/ns/{mesh}/sa/default to {mesh}/server"),
    );
    // The named identity gets through, three times by pod IP, and at least
    // twice through the Service (once its endpoint reached the dataplane).
    assert_eq!(
        connect_from(&agent, &trusted, scene.by_pod_ip, 3),
        [reply, reply, reply]
    );
    let mut through_service = 0;
    eventually("connections through the service", READY_WITHIN, || {
        let replies = connect_from(&agent, &trusted, scene.by_vip, 1);
        through_service += replies.iter().filter(|r| *r == reply).count();
        match through_service >= 2 {
            true => Ok(()),
            false => Err(format!("{through_service} so far: {replies:?}")),
        }
    });

    // The metrics count exactly that: one denial of the default account, three
    // tunnelled connections from `trusted` to `server` with their replies' bytes,
    // and those through the Service under its name.
    let to_server = [
        ("source_namespace", mesh.as_str()),
        ("destination_namespace", mesh.as_str()),
        ("destination_workload", "server"),
    ];
    let denials = metric(
        &agent.metrics(),
        "skiff_mesh_authorization_denials_total",
        &[to_server[1], to_server[2]],
    );
    assert_eq!(denials, Some(1.0));
    let from_trusted = [
        to_server[0],
        ("source_workload", "trusted"),
        to_server[1],
        to_server[2],
        ("destination_service", ""),
    ];
    let mut through_server = from_trusted;
    through_server[4] = ("destination_service", "server");
    eventually("the tunnelled connections closed", READY_WITHIN, || {
        let text = agent.metrics();
        let counts = [
            "skiff_mesh_tcp_connections_opened_total",
            "skiff_mesh_tcp_connections_closed_total",
        ]
        .map(|name| {
            (
                metric(&text, name, &from_trusted),
                metric(&text, name, &through_server),
            )
        });
        let service = Some(through_service as f64);
        match counts == [(Some(3.0), service), (Some(3.0), service)] {
            true => Ok(()),
            false => Err(format!(
                "opened, closed (by pod IP, by service): {counts:?}"
            )),
        }
    });
    let received = metric(
        &agent.metrics(),
        "skiff_mesh_tcp_received_bytes_total",
        &from_trusted,
    );
    // Each reply is the server's line, with its newline.
    assert_eq!(received, Some(3.0 * (reply.len() + 1) as f64));
}
