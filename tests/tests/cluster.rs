//! A three-node cluster on a real etcd, each node a network namespace with an agent
//! of its own: a Deployment spreads over the nodes; a client on one node reaches
//! backends on the two others through the service VIP over IPv4 and IPv6; then the
//! node whose agent leads is lost (agent SIGKILLed, link cut): another agent takes
//! the lead, the lost replicas come back on the survivors, and the survivors' VIPs
//! and DNS stop sending to the lost backends after no more than the grace period.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use skiff_tests::agent::Agent;
use skiff_tests::cgroup::Cgroup;
use skiff_tests::cluster::{
    Cluster, Server, WEB_APP, dataplane_backends, node_name, node_v4, node_v6, ready_servers,
};
use skiff_tests::lab::client_output_within;
use skiff_tests::netns::NetNs;
use skiff_tests::{eventually, workspace_bin};

/// The agents' default --node-monitor-grace-period.
const GRACE: Duration = Duration::from_secs(10);
/// How long the issue gives the lost replicas to run again elsewhere.
const REPLACED_WITHIN: Duration = Duration::from_secs(20);
/// A client gives up on a backend that does not answer after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After the grace period, the leader's controllers and then every agent's maps
/// follow; on a loaded 2-core machine that took up to 1.9 s.
const FOLLOW: Duration = Duration::from_secs(2);

const NODE_PORT: u16 = 30080;
const NODE_PORT_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web-outside}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: web, port: 80, targetPort: http, nodePort: 30080}]
"#;

/// Where a client on a node runs: the node's namespace and the cgroup its
/// agent's dataplane balances.
fn client_on(agent: &Agent) -> (&NetNs, &Cgroup) {
    (
        agent.node_netns.as_ref().expect("a node agent"),
        &agent.cgroup,
    )
}

/// `count` connections to `addr` from a client at `on`: the replying pod's name
/// or `error ...` for each.
fn connect((netns, cgroup): (&NetNs, &Cgroup), addr: SocketAddr, count: usize) -> Vec<String> {
    let client = cgroup.command_in(netns, workspace_bin("skiff-test-client"));
    client_output_within(client, addr, count, Some(CONNECT_TIMEOUT))
}

/// The nodes whose pods answered `replies`, failing on any failed connection.
fn answering_nodes(replies: &[String], servers: &[Server]) -> BTreeSet<String> {
    replies
        .iter()
        .map(|reply| {
            servers
                .iter()
                .find(|s| &s.name == reply)
                .map(|s| s.node.clone())
                .unwrap_or_else(|| panic!("{reply:?} is no server; replies: {replies:?}"))
        })
        .collect()
}

/// The addresses cluster DNS on `agent`'s node gives for `name` (A and AAAA).
fn resolve(agent: &Agent, name: &str) -> BTreeSet<String> {
    let dns = agent.dns_addrs()[0];
    let mut addresses = BTreeSet::new();
    for record in ["A", "AAAA"] {
        let out = agent.in_node(
            "dig",
            &[
                &format!("@{}", dns.ip()),
                "-p",
                &dns.port().to_string(),
                "+short",
                name,
                record,
            ],
        );
        assert!(out.status.success(), "dig {name} {record}: {out:?}");
        addresses.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    addresses
}

fn all_ips(servers: &[Server]) -> BTreeSet<String> {
    servers.iter().flat_map(|s| s.ips.iter().cloned()).collect()
}

/// The servers' backends as a dataplane holds them: every pod IP, port 8080.
fn backends(servers: &[Server]) -> BTreeSet<String> {
    all_ips(servers)
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .map(|ip| SocketAddr::new(ip, 8080).to_string())
        .collect()
}

#[test]
fn a_deployment_spreads_over_three_nodes_and_survives_losing_the_leading_node() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--scheduler-score",
            "least-allocated",
            "--nodeport-device",
            "eth0",
        ],
    );
    eventually("three Ready nodes", Duration::from_secs(30), || {
        let nodes = cluster.node(1).list("nodes", "");
        let ready = nodes
            .iter()
            .filter(|n| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        (ready == 3).then_some(()).ok_or(format!("{ready} ready"))
    });
    cluster.node(1).apply(WEB_APP);
    let servers = eventually("six ready servers", Duration::from_secs(90), || {
        ready_servers(cluster.node(1), None)
    });
    let spread: BTreeSet<&str> = servers.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(spread.len(), 3, "the replicas are not spread: {servers:?}");

    let leader = eventually("a leader", Duration::from_secs(10), || {
        cluster.leader().ok_or("none".to_string())
    });
    let client = (1..=3)
        .find(|&i| i != leader)
        .expect("a node that does not lead");
    let service = cluster.node(client).object("service", "web").expect("web");
    let vips: Vec<SocketAddr> = service["spec"]["clusterIPs"]
        .as_array()
        .expect("clusterIPs")
        .iter()
        .filter_map(|ip| ip.as_str()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, 80))
        .collect();
    assert_eq!(vips.len(), 2, "one VIP per family: {service}");

    // The client's node reaches the backends on both other nodes, each family.
    let others: BTreeSet<String> = (1..=3).filter(|&i| i != client).map(node_name).collect();
    for vip in &vips {
        let replies = connect(client_on(cluster.node(client)), *vip, 60);
        let nodes = answering_nodes(&replies, &servers);
        assert!(
            nodes.is_superset(&others),
            "through {vip} the client on {} reached pods on {nodes:?}, not on all of {others:?}",
            node_name(client)
        );
    }
    // A host on the LAN reaches every node's backends through the client node's
    // NodePort, over both families.
    cluster.node(client).apply(NODE_PORT_SERVICE);
    let all: BTreeSet<String> = (1..=3).map(node_name).collect();
    for ip in [node_v4(client), node_v6(client)] {
        let ip: std::net::IpAddr = ip.parse().expect("a node address");
        let node_port = SocketAddr::new(ip, NODE_PORT);
        let replies = eventually("the NodePort", Duration::from_secs(10), || {
            let replies = client_output_within(
                cluster.lan().command(workspace_bin("skiff-test-client")),
                node_port,
                60,
                Some(CONNECT_TIMEOUT),
            );
            match replies.iter().find(|r| r.starts_with("error")) {
                Some(error) => Err(error.clone()),
                None => Ok(replies),
            }
        });
        assert_eq!(
            answering_nodes(&replies, &servers),
            all,
            "through {node_port} from the LAN"
        );
    }

    let name = "web-pods.default.svc.cluster.local";
    assert_eq!(resolve(cluster.node(client), name), all_ips(&servers));

    // Pods reach pods on other nodes by pod IP, over both families.
    let local = servers
        .iter()
        .find(|s| s.node == node_name(client))
        .expect("a server on the client's node");
    let pod = cluster
        .node(client)
        .object("pod", &local.name)
        .expect("its pod");
    for remote in servers.iter().filter(|s| s.node != node_name(client)) {
        for ip in &remote.ips {
            let out = cluster
                .node(client)
                .exec(&pod, "web", &["nc", "-w", "2", ip, "8080"]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                remote.name,
                "{} -> {ip} on {}: {out:?}",
                local.name,
                remote.node
            );
        }
    }

    // Lose the leading node while the client keeps connecting.
    let stop = AtomicBool::new(false);
    let (lost_at, attempts) = std::thread::scope(|scope| {
        let node = client_on(cluster.node(client));
        let stop = &stop;
        let vips = &vips;
        let attempts = scope.spawn(move || {
            let mut attempts: Vec<(Instant, String)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for vip in vips {
                    let started = Instant::now();
                    for reply in connect(node, *vip, 1) {
                        attempts.push((started, reply));
                    }
                }
            }
            attempts
        });
        std::thread::sleep(Duration::from_secs(1));
        let lost_at = Instant::now();
        cluster.lose(leader);
        // Observed from the client's node: every change reaches every agent.
        let observer = cluster.node(client);
        let replaced = eventually(
            "six ready servers on the surviving nodes",
            REPLACED_WITHIN,
            || ready_servers(observer, Some(&node_name(leader))),
        );
        let replaced_after = lost_at.elapsed();
        // A little longer, to see that connections keep succeeding.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let attempts = attempts.join().expect("the client loop");
        println!("replicas back on the survivors {replaced_after:?} after the loss: {replaced:?}");
        (lost_at, attempts)
    });
    let failures: Vec<Duration> = attempts
        .iter()
        .filter(|(_, reply)| reply.starts_with("error") || reply.starts_with("read-error"))
        .map(|(at, _)| at.saturating_duration_since(lost_at))
        .collect();
    println!(
        "{} of {} connection attempts failed, the last one started {:?} after the loss",
        failures.len(),
        attempts.len(),
        failures.iter().max()
    );
    if let Some(last) = failures.iter().max() {
        assert!(
            *last <= GRACE + FOLLOW,
            "connections still failed {last:?} after the node was lost (grace {GRACE:?})"
        );
    }

    // Another agent leads, and the survivors' VIPs and DNS know only the new pods.
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader);
    let servers = ready_servers(cluster.node(client), Some(&node_name(leader)))
        .expect("six ready servers on the survivors");
    for vip in &vips {
        let replies = connect(client_on(cluster.node(client)), *vip, 30);
        let nodes = answering_nodes(&replies, &servers);
        assert!(
            !nodes.contains(&node_name(leader)),
            "{vip} still reaches the lost node: {replies:?}"
        );
    }
    assert_eq!(resolve(cluster.node(client), name), all_ips(&servers));
    for survivor in (1..=3).filter(|&i| i != leader) {
        assert_eq!(
            dataplane_backends(cluster.node(survivor), "web"),
            backends(&servers),
            "the dataplane of node-{survivor}"
        );
    }
}
