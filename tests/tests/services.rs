//! Services through the store: a real agent in a node namespace programs its eBPF
//! maps from the Services and EndpointSlices applied to it, and a client process in
//! the agent's cgroup reaches the backends through the cluster IPs (both families)
//! and the NodePort on the node's addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skiff_tests::agent::Agent;
use skiff_tests::backend::{NamedBackend, UdpBackend};
use skiff_tests::lab::{SockClient, tally};
use skiff_tests::{wait_for_names, workspace_bin};

const ECONNREFUSED: &str = "error 111";

/// Three backends per family on port 8080 in the node namespace:
/// 127.0.0.{2,3,4} and fd00:99::{2,3,4} (added to lo).
fn backends(agent: &Agent) -> Vec<NamedBackend> {
    let netns = agent.node_netns.as_ref().expect("node agent");
    let mut all = Vec::new();
    for i in 0..3 {
        let v6 = format!("fd00:99::{}", i + 2);
        let added = agent.in_node(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{v6}/128"),
                "dev",
                "lo",
                "nodad",
            ],
        );
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
        for ip in [format!("127.0.0.{}", i + 2), format!("[{v6}]")] {
            let bind: SocketAddr = format!("{ip}:8080").parse().unwrap();
            all.push(NamedBackend::start(netns, &format!("backend-{i}"), bind));
        }
    }
    all
}

/// `count` connections to `addr` from a process in the agent's namespace and cgroup.
fn connect(agent: &Agent, addr: SocketAddr, count: usize) -> BTreeMap<String, usize> {
    let netns = agent.node_netns.as_ref().expect("node agent");
    let command = agent
        .cgroup
        .command_in(netns, workspace_bin("skiff-test-client"));
    tally(&skiff_tests::lab::client_output(command, addr, count))
}

/// Polls until connections to `addr` reach exactly `expected` (names of replies).
fn wait_for(agent: &Agent, addr: SocketAddr, expected: &[&str]) {
    wait_for_names(addr, Duration::from_secs(10), expected, || {
        connect(agent, addr, 60)
    });
}

fn slice(name: &str, family: &str, ips: &[(&str, bool)]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|(ip, ready)| format!("  - addresses: ['{ip}']\n    conditions: {{ready: {ready}}}\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         labels: {{kubernetes.io/service-name: web}}\naddressType: {family}\nports:\n\
         - {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n{}",
        endpoints.concat()
    )
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
";

#[test]
fn services_follow_the_store_on_both_families_and_node_ports() {
    let agent = Agent::start_node(&[]);
    let _backends = backends(&agent);
    agent.apply(SERVICE);
    agent.apply(&slice(
        "web-v4",
        "IPv4",
        &[
            ("127.0.0.2", true),
            ("127.0.0.3", true),
            ("127.0.0.4", false),
        ],
    ));
    agent.apply(&slice(
        "web-v6",
        "IPv6",
        &[
            ("fd00:99::2", true),
            ("fd00:99::3", true),
            ("fd00:99::4", false),
        ],
    ));
    let service = agent.object("service", "web").expect("service");
    let vips: Vec<SocketAddr> = service["spec"]["clusterIPs"]
        .as_array()
        .expect("clusterIPs")
        .iter()
        .map(|ip| SocketAddr::new(ip.as_str().unwrap().parse().unwrap(), 80))
        .collect();
    assert_eq!(vips.len(), 2, "{}", service["spec"]);
    let node_ports: Vec<SocketAddr> = vec![
        "127.0.0.1:30080".parse().unwrap(),
        "[::1]:30080".parse().unwrap(),
    ];

    // Only ready endpoints take connections, through every frontend.
    for addr in vips.iter().chain(&node_ports) {
        wait_for(&agent, *addr, &["backend-0", "backend-1"]);
    }

    // An EndpointSlice change moves new connections.
    agent.apply(&slice(
        "web-v4",
        "IPv4",
        &[("127.0.0.3", true), ("127.0.0.4", true)],
    ));
    wait_for(&agent, vips[0], &["backend-1", "backend-2"]);
    wait_for(&agent, node_ports[0], &["backend-1", "backend-2"]);
    // The other family is untouched.
    wait_for(&agent, vips[1], &["backend-0", "backend-1"]);

    // Without endpoints the service refuses, as kube-proxy does.
    agent.ok(&["delete", "endpointslice", "web-v4"]);
    wait_for(&agent, vips[0], &[ECONNREFUSED]);

    // While no agent runs, the pinned dataplane goes on balancing; the next
    // agent takes the maps over as they are.
    let agent = agent.kill_and_restart_after(|down| {
        wait_for(down, vips[1], &["backend-0", "backend-1"]);
        wait_for(down, node_ports[1], &["backend-0", "backend-1"]);
        wait_for(down, node_ports[0], &[ECONNREFUSED]);
    });
    wait_for(&agent, vips[1], &["backend-0", "backend-1"]);
    wait_for(&agent, vips[0], &[ECONNREFUSED]);
    // And follows the store from there.
    agent.apply(&slice("web-v4", "IPv4", &[("127.0.0.2", true)]));
    wait_for(&agent, vips[0], &["backend-0"]);

    // Deleting the service removes its frontends: the VIP is an ordinary,
    // unroutable address again.
    agent.ok(&["delete", "service", "web"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = connect(&agent, vips[1], 5);
        if seen
            .keys()
            .all(|reply| reply.starts_with("error") && reply != ECONNREFUSED)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_service_map_refuses_the_extra_service_and_takes_it_once_there_is_room() {
    let mut agent = Agent::start_node(&["--max-services", "2"]);
    let _backends = backends(&agent);
    let mut vips = Vec::new();
    for name in ["one", "two", "three"] {
        agent.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
             labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{port: 8080}}]\n\
             endpoints: [{{addresses: ['127.0.0.2']}}]\n"
        ));
        let service = agent.object("service", name).expect("service");
        let ip = service["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        vips.push(SocketAddr::new(ip, 80));
    }
    wait_for(&agent, vips[0], &["backend-0"]);
    wait_for(&agent, vips[1], &["backend-0"]);
    agent.wait_for_line(
        "map SERVICES is full (2 of 2 entries in use, 1 more needed); raise --max-services",
    );
    // The refused service has no frontend at all, not a half-written one.
    let refused = connect(&agent, vips[2], 3);
    assert!(!refused.contains_key("backend-0"), "{refused:?}");
    let metrics = agent.metrics();
    for line in [
        "skiff_dataplane_map_entries{map=\"SERVICES\"} 2",
        "skiff_dataplane_map_capacity{map=\"SERVICES\"} 2",
        "skiff_dataplane_map_entries{map=\"BACKENDS\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
    let full = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skiff_dataplane_map_full_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no full counter in {metrics}"));
    assert!(full >= 1, "{metrics}");
    // Room made: the retry programs it.
    agent.ok(&["delete", "service", "one"]);
    wait_for(&agent, vips[2], &["backend-0"]);
    wait_for(&agent, vips[1], &["backend-0"]);
}

#[test]
fn weights_split_ten_thousand_connections_ninety_to_ten() {
    let agent = Agent::start_node(&[]);
    let _backends = backends(&agent);
    let weighted = |name: &str, weight: u32, ip: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
             labels: {{kubernetes.io/service-name: web}}\n  annotations: {{skiff.io/weight: '{weight}'}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: ['{ip}']}}]\n"
        )
    };
    agent.apply(SERVICE);
    agent.apply(&weighted("stable", 9, "127.0.0.2"));
    agent.apply(&weighted("canary", 1, "127.0.0.3"));
    let service = agent.object("service", "web").expect("service");
    let ip = service["spec"]["clusterIPs"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let vip = SocketAddr::new(ip, 80);
    wait_for(&agent, vip, &["backend-0", "backend-1"]);
    let counts = connect(&agent, vip, 10_000);
    let canary = counts.get("backend-1").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<usize>(), 10_000, "{counts:?}");
    // 10% is 1,000; a fair split stays within 1.5 points (over 4 standard deviations).
    assert!(
        (850..=1150).contains(&canary),
        "canary got {canary} of 10,000: {counts:?}"
    );
    // -o wide shows the weights and the connections the dataplane counted.
    let wide = agent.ok(&["get", "services", "-o", "wide"]);
    let header = wide.lines().next().unwrap_or_default();
    assert!(header.ends_with("BACKENDS"), "{wide}");
    let row = wide
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    let backends = row.rsplit(' ').next().unwrap_or_default();
    let counted: Vec<(String, usize)> = backends
        .split(',')
        .filter_map(|b| b.split_once('='))
        .map(|(addr, n)| (addr.to_string(), n.parse().unwrap_or(0)))
        .collect();
    let names: Vec<&str> = counted.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names, ["127.0.0.2:8080[w9]", "127.0.0.3:8080"], "{wide}");
    // The 10,000 and the few hundred made while waiting for the maps.
    let total: usize = counted.iter().map(|(_, n)| n).sum();
    assert!((10_000..11_000).contains(&total), "{wide}");
    // /metrics has the same counts.
    let metrics = agent.metrics();
    let vip_label = format!("frontend=\"{vip}/tcp\"");
    let scraped: usize = metrics
        .lines()
        .filter(|l| {
            l.starts_with("skiff_service_backend_connections_total{") && l.contains(&vip_label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(scraped >= total, "{scraped} < {total}: {metrics}");
    // Each backend's count covers at least the connections it answered above.
    assert!(
        counted[0].1 >= 10_000 - canary && counted[1].1 >= canary,
        "{wide}"
    );
}

/// The IPv4 addresses of [`backends`], in the order of their names.
const V4_BACKENDS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// The one backend that answered all of `count` connections to `addr`.
fn sole_backend(agent: &Agent, addr: SocketAddr, count: usize) -> String {
    let seen = connect(agent, addr, count);
    assert_eq!(seen.len(), 1, "{addr}: {seen:?}");
    seen.into_keys().next().unwrap_or_default()
}

#[test]
fn client_ip_affinity_keeps_a_client_on_its_backend_until_it_goes_or_times_out() {
    let agent = Agent::start_node(&[]);
    let _backends = backends(&agent);
    let sticky = |timeout: u32| {
        SERVICE.replace(
            "  type: NodePort\n",
            &format!(
                "  type: NodePort\n  sessionAffinity: ClientIP\n  \
                 sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}\n"
            ),
        )
    };
    agent.apply(&sticky(3600));
    let all: Vec<(&str, bool)> = V4_BACKENDS.iter().map(|ip| (*ip, true)).collect();
    agent.apply(&slice("web-v4", "IPv4", &all));
    agent.apply(&slice(
        "web-v6",
        "IPv6",
        &[
            ("fd00:99::2", true),
            ("fd00:99::3", true),
            ("fd00:99::4", true),
        ],
    ));
    let service = agent.object("service", "web").expect("service");
    let vips: Vec<SocketAddr> = (0..2)
        .map(|i| {
            let ip = service["spec"]["clusterIPs"][i].as_str().unwrap();
            SocketAddr::new(ip.parse().unwrap(), 80)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    for vip in &vips {
        while !connect(&agent, *vip, 1)
            .keys()
            .all(|r| r.starts_with("backend-"))
        {
            assert!(Instant::now() < deadline, "{vip} never served");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Every connection of this client (the node's network namespace) goes to one
    // backend, per family, where without affinity 100 would reach all three.
    let chosen: Vec<String> = vips.iter().map(|v| sole_backend(&agent, *v, 100)).collect();

    // Other endpoints going do not move the client.
    let index = |name: &str| {
        name.strip_prefix("backend-")
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{name} is not a backend"))
    };
    let chosen_v4 = V4_BACKENDS[index(&chosen[0])];
    let others: Vec<(&str, bool)> = V4_BACKENDS
        .iter()
        .filter(|ip| **ip != chosen_v4)
        .map(|ip| (*ip, true))
        .collect();
    agent.apply(&slice("web-v4", "IPv4", &[others[0], (chosen_v4, true)]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sole_backend(&agent, vips[0], 50), chosen[0]);

    // The affinity is pinned with the maps: it holds while the agent is away and
    // after the next one has taken the maps over.
    let agent = agent.kill_and_restart_after(|down| {
        assert_eq!(sole_backend(down, vips[0], 20), chosen[0]);
        assert_eq!(sole_backend(down, vips[1], 20), chosen[1]);
    });
    assert_eq!(sole_backend(&agent, vips[0], 20), chosen[0]);
    assert_eq!(sole_backend(&agent, vips[1], 20), chosen[1]);

    // Its backend removed, the client moves to another and stays there.
    agent.apply(&slice("web-v4", "IPv4", &others));
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        let seen = connect(&agent, vips[0], 50);
        if seen.len() == 1 && !seen.contains_key(&chosen[0]) {
            break seen.into_keys().next().unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sole_backend(&agent, vips[0], 50), moved);

    // With a 1 s timeout, a client that waits longer gets a fresh choice: over
    // eight waits all three backends of IPv6 are open to it, and the chance that
    // every choice repeats the first is (1/3)^7.
    agent.apply(&sticky(1));
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        seen.insert(sole_backend(&agent, vips[1], 10));
        if seen.len() > 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1_200));
    }
    assert!(seen.len() > 1, "the client never left {seen:?}");

    // Affinity off: the client's connections spread over every backend again.
    agent.apply(SERVICE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect(&agent, vips[1], 100).len() != 3 {
        assert!(Instant::now() < deadline, "affinity still on");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn established_connections_keep_working_while_the_agent_restarts() {
    let agent = Agent::start_node(&[]);
    let _backends = backends(&agent);
    let netns = agent.node_netns.as_ref().expect("node agent");
    let udp = UdpBackend::start(netns, "udp-0", "127.0.0.2:5353".parse().unwrap());
    agent.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: both}\nspec:\n  ports:\n  \
         - {name: dns, port: 53, targetPort: 5353, protocol: UDP}\n  \
         - {name: http, port: 80, targetPort: 8080}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: both\n  \
         labels: {kubernetes.io/service-name: both}\naddressType: IPv4\nports:\n\
         - {name: dns, port: 5353, protocol: UDP}\n- {name: http, port: 8080, protocol: TCP}\n\
         endpoints: [{addresses: ['127.0.0.2']}]\n",
    );
    let service = agent.object("service", "both").expect("service");
    let ip: std::net::IpAddr = service["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (udp_vip, tcp_vip) = (SocketAddr::new(ip, 53), SocketAddr::new(ip, 80));
    wait_for(&agent, tcp_vip, &["backend-0"]);

    let mut client = SockClient::spawn(
        &mut agent
            .cgroup
            .command_in(netns, workspace_bin("skiff-test-sock")),
    );
    assert_eq!(client.run(&format!("udp-connect {udp_vip}")), "ok");
    let exchange = |client: &mut SockClient| {
        assert_eq!(client.run("send"), "ok");
        assert_eq!(client.run("recv"), "udp-0");
        // The application goes on seeing the service as its peer.
        assert_eq!(client.run("peer"), udp_vip.to_string());
    };
    exchange(&mut client);
    let mut tcp = SockClient::spawn(
        &mut agent
            .cgroup
            .command_in(netns, workspace_bin("skiff-test-sock")),
    );
    assert_eq!(tcp.run(&format!("tcp-connect {tcp_vip}")), "ok");
    assert_eq!(tcp.run("peer"), tcp_vip.to_string());

    let agent = agent.kill_and_restart_after(|_| {
        exchange(&mut client);
        assert_eq!(tcp.run("peer"), tcp_vip.to_string());
    });
    // The next agent takes the maps over without disturbing them.
    wait_for(&agent, tcp_vip, &["backend-0"]);
    exchange(&mut client);
    assert_eq!(tcp.run("peer"), tcp_vip.to_string());
    assert!(udp.received() >= 3, "{} datagrams", udp.received());
    // The clients live in the agent's cgroup, which goes with the agent: they go first.
    drop((client, tcp));
}
