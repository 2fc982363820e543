//! A cluster of node agents on one real etcd, on one machine: each node is a
//! network namespace with an agent of its own (state directory, cgroup, bpffs
//! pins, runc root), all joined by a bridge in a "fabric" namespace where etcd
//! listens, as hosts on one LAN with etcd on another host.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::agent::{Agent, is_ready};
use crate::etcd::EtcdServer;
use crate::netns::{NetNs, veth};

/// The fabric's bridge and etcd's address on it; node `i` (from 1) is `.1i`.
const LAN_V4: &str = "192.168.90";
const LAN_V6: &str = "fd00:90:";
/// The LAN's bridge, in [`Cluster::lan`]'s namespace (to capture on).
pub const LAN_BRIDGE: &str = "br-lan";

pub struct Cluster {
    // Fields drop in order: agents (and their pods) first, then etcd, then the LAN.
    nodes: Vec<Agent>,
    /// Nodes [`Cluster::lose`] took down.
    lost: Mutex<BTreeSet<usize>>,
    pub etcd: EtcdServer,
    fabric: NetNs,
}

impl Cluster {
    /// Starts etcd and `count` node agents named node-1, node-2, ..., in that
    /// order (so node-1 campaigns first), each with `extra_args`.
    pub fn start(count: usize, extra_args: &[&str]) -> Cluster {
        let fabric = NetNs::new();
        fabric.ip(&["link", "add", LAN_BRIDGE, "type", "bridge"]);
        fabric.ip(&["addr", "add", &format!("{LAN_V4}.1/24"), "dev", LAN_BRIDGE]);
        fabric.ip(&[
            "addr",
            "add",
            &format!("{LAN_V6}:1/64"),
            "dev",
            LAN_BRIDGE,
            "nodad",
        ]);
        fabric.ip(&["link", "set", LAN_BRIDGE, "up"]);
        let etcd = EtcdServer::start_in(&fabric, &format!("{LAN_V4}.1"));
        let mut cluster = Cluster {
            nodes: Vec::new(),
            lost: Mutex::default(),
            etcd,
            fabric,
        };
        for index in 1..=count {
            let agent = cluster.start_node(index, extra_args);
            cluster.nodes.push(agent);
        }
        cluster
    }

    fn start_node(&self, index: usize, extra_args: &[&str]) -> Agent {
        let (v4, v6) = (node_v4(index), node_v6(index));
        let mut args = vec![
            "--store".to_string(),
            self.etcd.store_url(),
            "--node-ip".into(),
            format!("{v4},{v6}"),
        ];
        // The first node creates the cluster; the others join it with its token.
        if let Some(first) = self.nodes.first() {
            args.extend(["--join".into(), "--token".into(), first.join_token()]);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start_node_named(&node_name(index), &args, |node| {
            let port = port_name(index);
            veth(
                node,
                "eth0",
                &[&format!("{v4}/24"), &format!("{v6}/64")],
                &self.fabric,
                &port,
                &[],
            );
            self.fabric
                .ip(&["link", "set", &port, "master", LAN_BRIDGE]);
        })
    }

    /// Node `index` (from 1).
    pub fn node(&self, index: usize) -> &Agent {
        &self.nodes[index - 1]
    }

    /// Node `index` (from 1), to read its log as it comes.
    pub fn node_mut(&mut self, index: usize) -> &mut Agent {
        &mut self.nodes[index - 1]
    }

    /// The LAN's own namespace, where etcd runs: a host outside every node, for
    /// clients of NodePorts.
    pub fn lan(&self) -> &NetNs {
        &self.fabric
    }

    /// Loses node `index` as a host dies: its agent is killed (SIGKILL) and its
    /// link to the LAN removed, so its pods are unreachable though still running
    /// (its guard removes them when the cluster drops).
    pub fn lose(&self, index: usize) {
        self.node(index).signal(libc::SIGKILL);
        self.fabric.ip(&["link", "del", &port_name(index)]);
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index);
    }

    /// The node whose agent said last that it leads the control loops, among
    /// those not lost.
    pub fn leader(&mut self) -> Option<usize> {
        let lost = self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut leader = None;
        for (i, agent) in self.nodes.iter_mut().enumerate() {
            let index = i + 1;
            if lost.contains(&index) {
                continue;
            }
            let name = node_name(index);
            let log = agent.logged();
            let led = log
                .iter()
                .rposition(|l| l.contains(&format!("{name} leads the control loops")));
            let lost_lead = log
                .iter()
                .rposition(|l| l.contains(&format!("{name} lost the lead")));
            if led.is_some() && led > lost_lead {
                leader = Some(index);
            }
        }
        leader
    }
}

/// How many servers [`WEB_APP`] runs.
pub const WEB_REPLICAS: usize = 6;

/// Six servers answering each TCP connection on 8080 with their pod name, ready
/// once they listen, each requesting a little CPU so that least-allocated scoring
/// spreads them; a dual-stack Service in front, and a headless one for DNS.
pub const WEB_APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: busybox:1.36
        command: [nc, -ll, -p, "8080", -e, sh, -c, 'echo $(hostname)']
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 16Mi}}
        readinessProbe: {tcpSocket: {port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: web, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-pods}
spec:
  clusterIP: None
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{name: web, port: 8080}]
"#;

/// A server pod of [`WEB_APP`].
#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    pub node: String,
    pub ips: Vec<String>,
}

/// The web pods once there are exactly six, all ready, none on `not_on`.
pub fn ready_servers(agent: &Agent, not_on: Option<&str>) -> Result<Vec<Server>, String> {
    let pods = agent.list("pods", "app=web");
    let servers: Vec<Server> = pods
        .iter()
        .filter(|p| is_ready(p))
        .map(|p| Server {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            ips: p["status"]["podIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ip| ip["ip"].as_str().map(str::to_string))
                .collect(),
        })
        .collect();
    let placed: Vec<(&str, &str)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.node.as_str()))
        .collect();
    if pods.len() != WEB_REPLICAS || servers.len() != WEB_REPLICAS {
        return Err(format!("{} pods, ready: {placed:?}", pods.len()));
    }
    if not_on.is_some_and(|lost| servers.iter().any(|s| s.node == lost)) {
        return Err(format!("some on the lost node: {placed:?}"));
    }
    Ok(servers)
}

/// The backends (`ip:port`) `agent`'s own dataplane holds for the cluster IPs of
/// Service `name`, as `skiff get services -o wide` shows them.
pub fn dataplane_backends(agent: &Agent, name: &str) -> BTreeSet<String> {
    let out = agent.ok(&["get", "services", name, "-o", "wide"]);
    let row = out.lines().nth(1).unwrap_or_default();
    let column = row.split_whitespace().last().unwrap_or_default();
    if column == "<none>" {
        return BTreeSet::new();
    }
    column
        .split(',')
        // `10.244.0.2:8080[w9]=120` or `[fd00::2]:8080=3`: the address, without
        // its weight and count.
        .map(|backend| {
            let address = backend.rsplit_once('=').map_or(backend, |(a, _)| a);
            match address.rfind("[w") {
                Some(weight) => address[..weight].to_string(),
                None => address.to_string(),
            }
        })
        .collect()
}

pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

fn port_name(index: usize) -> String {
    format!("lan-{index}")
}

/// Node `index`'s address on the LAN, each family.
pub fn node_v4(index: usize) -> String {
    format!("{LAN_V4}.{}", 10 + index)
}

pub fn node_v6(index: usize) -> String {
    format!("{LAN_V6}:{}", 10 + index)
}
