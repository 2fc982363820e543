//! Direct routing to other nodes' pods: a second host (a network namespace
//! joined to the node's by a veth) holds addresses of its own pod CIDRs; once
//! its Node object names those CIDRs and its addresses, a pod on the agent's
//! node reaches it by pod IP over both families, and the routes go when the
//! Node goes.

use std::time::{Duration, Instant};

use skiff_tests::agent::{Agent, NODE_NAME};
use skiff_tests::netns::{NetNs, veth};

const NODE_V4: &str = "192.168.79.1";
const NODE_V6: &str = "fd00:79::1";
const PEER_V4: &str = "192.168.79.2";
const PEER_V6: &str = "fd00:79::2";
/// An address in each of the peer node's pod CIDRs (as a pod there would have).
const PEER_POD_V4: &str = "10.244.250.7";
const PEER_POD_V6: &str = "fd00:10:244:fa::7";

/// skiff's routes in the node namespace (`ip route show proto 152`), both families.
fn skiff_routes(agent: &Agent) -> String {
    let mut all = String::new();
    for family in ["-4", "-6"] {
        let out = agent.in_node("ip", &[family, "route", "show", "proto", "152"]);
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

fn wait_routes(agent: &Agent, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routes = skiff_routes(agent);
        if until(&routes) {
            return routes;
        }
        assert!(Instant::now() < deadline, "routes now: {routes}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pods_reach_another_nodes_pod_cidrs_through_its_address_and_the_routes_follow_the_node() {
    let peer = NetNs::new();
    let agent = Agent::start_node_with(&["--node-ip", &format!("{NODE_V4},{NODE_V6}")], |node| {
        veth(
            node,
            "rt-peer",
            &[&format!("{NODE_V4}/24"), &format!("{NODE_V6}/64")],
            &peer,
            "rt-node",
            &[&format!("{PEER_V4}/24"), &format!("{PEER_V6}/64")],
        )
    });
    // The agent publishes both addresses.
    let node = agent.object("node", NODE_NAME).expect("this node");
    let addresses = node["status"]["addresses"].to_string();
    assert!(
        addresses.contains(NODE_V4) && addresses.contains(NODE_V6),
        "{addresses}"
    );
    // The peer host: its pods' addresses, and its way back to this node's pods
    // (what its own agent would install).
    peer.ip(&["addr", "add", &format!("{PEER_POD_V4}/32"), "dev", "lo"]);
    peer.ip(&["addr", "add", &format!("{PEER_POD_V6}/128"), "dev", "lo"]);
    for cidr in node["spec"]["podCIDRs"].as_array().expect("pod CIDRs") {
        let cidr = cidr.as_str().expect("CIDR");
        let via = if cidr.contains(':') { NODE_V6 } else { NODE_V4 };
        peer.ip(&["route", "add", cidr, "via", via]);
    }
    agent.apply(
        "apiVersion: v1\nkind: Node\nmetadata: {name: peer}\n\
         spec: {podCIDRs: [10.244.250.0/24, 'fd00:10:244:fa::/64']}\n",
    );
    let client = agent.client();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut client = client.await;
        let status = serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "peer"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": PEER_V4},
                {"type": "InternalIP", "address": PEER_V6},
            ]},
        });
        client
            .update_status(skiff::api::proto::UpdateStatusRequest {
                object: serde_json::to_vec(&status).expect("JSON"),
            })
            .await
            .expect("update the peer's status");
    });
    let routes = wait_routes(&agent, |r| {
        r.contains("10.244.250.0/24") && r.contains("fd00:10:244:fa::/64")
    });
    assert!(routes.contains(&format!("via {PEER_V4}")), "{routes}");
    assert!(routes.contains(&format!("via {PEER_V6}")), "{routes}");

    // A pod on this node reaches the peer's pod addresses over both families.
    agent.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pinger}}\nspec:\n  nodeName: {NODE_NAME}\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  \
         - {{name: main, image: 'busybox:1.36', command: [sleep, '3600']}}\n"
    ));
    let pod = agent
        .wait_pod("pinger", Duration::from_secs(30), |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Running")
        })
        .expect("pod");
    for target in [PEER_POD_V4, PEER_POD_V6] {
        let out = agent.exec(&pod, "main", &["ping", "-c", "1", "-W", "2", target]);
        assert!(
            out.status.success(),
            "ping {target} from the pod: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The peer leaves: its routes go, this node's own stay untouched.
    agent.ok(&["delete", "node", "peer"]);
    wait_routes(&agent, |r| r.trim().is_empty());
}
