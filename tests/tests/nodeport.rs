//! NodePort from outside the node, on the packet path: a real agent in a node
//! namespace runs the tc programs on its external device `np0`, a veth to an
//! "outside host" namespace; the service's backends run in a "pod" namespace behind
//! another veth of the node, or on a "remote node" behind `np1` (a second external
//! device). Clients in the outside namespace connect to the node's address and
//! NodePort over IPv4 and IPv6.
//!
//! ```text
//!  outside              node (agent, tc on np0)            pods
//!  cli0 192.168.77.1 -- np0 192.168.77.2    pv0 10.77.0.1 -- eth0 10.77.0.{2,3,4}
//!       fd00:77::1          fd00:77::2          fd00:77:1::1      fd00:77:1::{2,3,4}
//!                           np1 192.168.78.2 -- eth0 192.168.78.3  remote node,
//!                               fd00:78::2           fd00:78::3    pod 10.78.0.2
//!                                                                  fd00:78:1::2 (lo)
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skiff::dataplane::maglev;
use skiff_ebpf_common::nodeport::{DEFAULT_MAGLEV_SIZE, FlowKey, flow_hash};
use skiff_ebpf_common::{IPPROTO_UDP, raw_addr};
use skiff_tests::agent::Agent;
use skiff_tests::backend::UdpBackend;
use skiff_tests::kernel::{assert_unloaded, program_loaded};
use skiff_tests::netns::{NetNs, veth};
use skiff_tests::wait_for_names;

const NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;
const NODE_V4: &str = "192.168.77.2";
const NODE_V6: &str = "fd00:77::2";
const CLIENT_V4: &str = "192.168.77.1";
const CLIENT_V6: &str = "fd00:77::1";

/// The outside host, the pods' namespace and the remote node, wired to `node`.
struct Topology {
    outside: NetNs,
    pods: NetNs,
    remote: NetNs,
}

impl Topology {
    fn new() -> Self {
        Self {
            outside: NetNs::new(),
            pods: NetNs::new(),
            remote: NetNs::new(),
        }
    }

    /// Links, addresses, routes and forwarding (as the CNI plugin sets it for pods).
    fn wire(&self, node: &NetNs) {
        let (outside, pods, remote) = (&self.outside, &self.pods, &self.remote);
        let (v4, v6) = (format!("{NODE_V4}/24"), format!("{NODE_V6}/64"));
        let client = [format!("{CLIENT_V4}/24"), format!("{CLIENT_V6}/64")];
        let client: Vec<&str> = client.iter().map(String::as_str).collect();
        veth(outside, "cli0", &client, node, "np0", &[&v4, &v6]);

        let pod_addrs: Vec<String> = (2..5)
            .flat_map(|i| [format!("10.77.0.{i}/24"), format!("fd00:77:1::{i}/64")])
            .collect();
        let pod_addrs: Vec<&str> = pod_addrs.iter().map(String::as_str).collect();
        veth(
            node,
            "pv0",
            &["10.77.0.1/24", "fd00:77:1::1/64"],
            pods,
            "eth0",
            &pod_addrs,
        );
        pods.ip(&["route", "add", "default", "via", "10.77.0.1"]);
        pods.ip(&["-6", "route", "add", "default", "via", "fd00:77:1::1"]);

        veth(
            node,
            "np1",
            &["192.168.78.2/24", "fd00:78::2/64"],
            remote,
            "eth0",
            &["192.168.78.3/24", "fd00:78::3/64"],
        );
        remote.ip(&["addr", "add", "10.78.0.2/32", "dev", "lo"]);
        remote.ip(&["addr", "add", "fd00:78:1::2/128", "dev", "lo"]);
        remote.ip(&["route", "add", "default", "via", "192.168.78.2"]);
        remote.ip(&["-6", "route", "add", "default", "via", "fd00:78::2"]);
        node.ip(&["route", "add", "10.78.0.0/24", "via", "192.168.78.3"]);
        node.ip(&["-6", "route", "add", "fd00:78:1::/64", "via", "fd00:78::3"]);

        let sysctl = Command::new("ip")
            .args(["netns", "exec", node.name(), "sysctl", "-qw"])
            .args(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
            .output()
            .expect("run sysctl");
        assert!(
            sysctl.status.success(),
            "{}",
            String::from_utf8_lossy(&sysctl.stderr)
        );
    }
}

/// A TCP backend in the pods' namespace: says `NAME CLIENT-IP` on every
/// connection, then echoes each line as `NAME: LINE` until the client closes.
struct Backend {
    listener: Arc<TcpListener>,
    server: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(netns: &NetNs, name: &str, bind: SocketAddr) -> Self {
        let listener = Arc::new(netns.run(|| TcpListener::bind(bind).expect("bind backend")));
        let server = {
            let (listener, name) = (listener.clone(), name.to_string());
            std::thread::spawn(move || {
                while let Ok((conn, peer)) = listener.accept() {
                    let name = name.clone();
                    std::thread::spawn(move || serve(conn, &name, peer.ip()));
                }
            })
        };
        Self {
            listener,
            server: Some(server),
        }
    }
}

fn serve(mut conn: TcpStream, name: &str, peer: IpAddr) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    if writeln!(conn, "{name} {peer}").is_err() {
        return;
    }
    let Ok(reader) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if writeln!(conn, "{name}: {line}").is_err() {
            return;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: shutting down a listening socket we own wakes the blocked accept().
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// backend-0..2 at `port` of 10.77.0.{2,3,4} and fd00:77:1::{2,3,4}.
fn pod_backends(port: u16) -> Vec<(String, SocketAddr)> {
    let mut all = Vec::new();
    for i in 0..3 {
        for ip in [
            format!("10.77.0.{}", i + 2),
            format!("[fd00:77:1::{}]", i + 2),
        ] {
            let bind: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            all.push((format!("backend-{i}"), bind));
        }
    }
    all
}

/// The TCP backends of [`pod_backends`] on port 8080.
fn backends(pods: &NetNs) -> Vec<Backend> {
    pod_backends(8080)
        .iter()
        .map(|(name, bind)| Backend::start(pods, name, *bind))
        .collect()
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}
";

/// An EndpointSlice of the service with backends `indexes` (ready).
fn slice(family: &str, indexes: &[usize]) -> String {
    let ips: Vec<String> = indexes
        .iter()
        .map(|i| {
            if family == "IPv4" {
                format!("10.77.0.{}", i + 2)
            } else {
                format!("fd00:77:1::{}", i + 2)
            }
        })
        .collect();
    slice_of(family, &ips)
}

/// An EndpointSlice of the service with the ready endpoints `ips`.
fn slice_of(family: &str, ips: &[String]) -> String {
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("- addresses: ['{ip}']\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{}\n  \
         labels: {{kubernetes.io/service-name: web}}\naddressType: {family}\nports:\n\
         - {{name: http, port: 8080, protocol: TCP}}\n- {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n{endpoints}",
        family.to_lowercase()
    )
}

/// Connects from the outside namespace and reads the greeting.
fn connect(outside: &NetNs, addr: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    outside.run(|| {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut line)?;
        Ok((stream, line.trim().to_string()))
    })
}

/// `count` connections from outside to `addr`: how many times each backend
/// answered, checking each saw the client's own address.
fn spread(
    outside: &NetNs,
    addr: SocketAddr,
    client: &str,
    count: usize,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let (_, greeting) = connect(outside, addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        let (name, peer) = greeting
            .split_once(' ')
            .unwrap_or_else(|| panic!("greeting {greeting:?}"));
        assert_eq!(peer, client, "the backend sees the client's address");
        *seen.entry(name.to_string()).or_insert(0) += 1;
    }
    seen
}

/// Waits until new connections to `addr` reach exactly the backends `expected`.
fn wait_for(outside: &NetNs, addr: SocketAddr, expected: &[&str]) {
    wait_for_names(addr, Duration::from_secs(15), expected, || {
        let mut seen = BTreeMap::new();
        for _ in 0..30 {
            let reply = match connect(outside, addr) {
                Ok((_, greeting)) => greeting.split(' ').next().unwrap_or_default().to_string(),
                Err(e) => format!("error: {e}"),
            };
            *seen.entry(reply).or_insert(0) += 1;
        }
        seen
    });
}

fn node_ports() -> [(SocketAddr, &'static str, &'static str); 2] {
    [
        (
            SocketAddr::new(NODE_V4.parse().unwrap(), NODE_PORT),
            CLIENT_V4,
            "IPv4",
        ),
        (
            SocketAddr::new(NODE_V6.parse().unwrap(), NODE_PORT),
            CLIENT_V6,
            "IPv6",
        ),
    ]
}

/// The packets and bytes the agent's metrics count for `backend` of `frontend` in
/// `direction` (0 when absent).
fn counted(metrics: &str, frontend: &str, backend: &str, direction: &str) -> (u64, u64) {
    let value = |name: &str| {
        let prefix = format!(
            "{name}_total{{frontend=\"{frontend}\",backend=\"{backend}\",direction=\"{direction}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        value("skiff_service_backend_packets"),
        value("skiff_service_backend_bytes"),
    )
}

/// An agent with the tc programs on np0, serving the service with all three pod
/// backends in its slices.
fn serving_node(topology: &Topology) -> Agent {
    let agent = Agent::start_node_with(&["--nodeport-device", "np0"], |node| topology.wire(node));
    agent.apply(SERVICE);
    agent.apply(&slice("IPv4", &[0, 1, 2]));
    agent.apply(&slice("IPv6", &[0, 1, 2]));
    agent
}

/// Checks that the agent's metrics count at least `packets` packets (of at least
/// 40 bytes, the IP and TCP headers) each way for each (frontend, backend).
fn assert_counted(agent: &Agent, pairs: &[(&str, &str)], packets: u64) {
    let metrics = agent.metrics();
    for (frontend, backend) in pairs {
        for direction in ["in", "out"] {
            let (n, bytes) = counted(&metrics, frontend, backend, direction);
            assert!(
                n >= packets,
                "{frontend} {backend} {direction}: {n} packets\n{metrics}"
            );
            assert!(bytes >= n * 40, "{bytes} bytes for {n} packets");
        }
    }
}

#[test]
fn node_ports_from_outside_spread_over_backends_and_keep_established_flows() {
    let topology = Topology::new();
    let agent = serving_node(&topology);
    assert!(
        agent
            .log
            .iter()
            .any(|l| l.contains("attached skiff_nodeport_ingress") && l.contains("np0")),
        "{:#?}",
        agent.log
    );
    let _backends = backends(&topology.pods);
    let outside = &topology.outside;
    let all = ["backend-0", "backend-1", "backend-2"];
    for (addr, _, _) in node_ports() {
        wait_for(outside, addr, &all);
    }

    // Replies come from the NodePort (the client's socket accepts nothing else),
    // backends see the client, and flows spread over every backend.
    for (addr, client, _) in node_ports() {
        let seen = spread(outside, addr, client, 300);
        assert_eq!(seen.values().sum::<usize>(), 300);
        for name in all {
            let n = seen.get(name).copied().unwrap_or(0);
            assert!(n >= 50, "{addr}: {name} got {n} of 300: {seen:?}");
        }
    }

    // Packets and bytes per frontend and backend, both ways: every connection is
    // at least 3 packets each way.
    assert_counted(
        &agent,
        &[
            ("192.168.77.2:30080/tcp", "10.77.0.2:8080"),
            ("[fd00:77::2]:30080/tcp", "[fd00:77:1::3]:8080"),
        ],
        150,
    );

    // Established flows keep their backend when it leaves the EndpointSlice, though
    // the Maglev table no longer has it: conntrack.
    let mut established = Vec::new();
    for (addr, _, family) in node_ports() {
        let (stream, greeting) = connect(outside, addr).expect("long-lived connection");
        let name = greeting.split(' ').next().unwrap_or_default().to_string();
        let index: usize = name
            .trim_start_matches("backend-")
            .parse()
            .expect("backend name");
        let rest: Vec<usize> = (0..3).filter(|i| *i != index).collect();
        established.push((stream, name, addr, family, rest));
    }
    for (_, name, addr, family, rest) in &established {
        agent.apply(&slice(family, rest));
        let expected: Vec<String> = rest.iter().map(|i| format!("backend-{i}")).collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        wait_for(outside, *addr, &expected);
        assert!(!expected.contains(&name.as_str()));
    }
    for (stream, name, addr, _, _) in &established {
        let reply = echo(stream, "still there?")
            .unwrap_or_else(|e| panic!("{addr}: on the established flow: {e}"));
        assert_eq!(reply, format!("{name}: still there?"), "{addr}");
    }
}

/// The ids of the agent's NodePort programs, from its log.
fn tc_program_ids(agent: &Agent) -> Vec<u32> {
    agent
        .log
        .iter()
        .filter_map(|l| {
            l.split("(tc program ")
                .nth(1)?
                .split(')')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_clean_stop_detaches_the_tc_programs() {
    let topology = Topology::new();
    let mut agent =
        Agent::start_node_with(&["--nodeport-device", "np0"], |node| topology.wire(node));
    let ids = tc_program_ids(&agent);
    assert_eq!(ids.len(), 2, "ingress and egress on np0: {:#?}", agent.log);
    assert!(ids.iter().all(|id| program_loaded(*id)));
    agent.signal(libc::SIGTERM);
    agent.wait_for_line("detached skiff_nodeport_egress");
    assert!(agent.wait().success());
    // Unloaded: no link (pinned or not) holds them on the device any more.
    assert_unloaded(&ids);
    assert!(!agent.pin_dir().exists(), "the pins are removed");
}

/// Sends one datagram from `client` (bound in the outside namespace) to `addr`
/// and returns the name in the reply, which only a reply from `addr` reaches.
fn ask_udp(outside: &NetNs, client: SocketAddr, addr: SocketAddr) -> std::io::Result<String> {
    outside.run(|| {
        // A child another test thread forks holds our last socket of this port
        // until it execs (the fd is close-on-exec): the port frees at once after.
        let mut tries = 0;
        let socket = loop {
            match UdpSocket::bind(client) {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        socket.connect(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        socket.send(b"?")?;
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// The backend Maglev gives the flow `client` -> `node` (UDP), computed as every
/// node computes it: the table of the service's slots (sorted backends) at the
/// position of the flow's hash.
fn maglev_choice(client: SocketAddr, node: SocketAddr, slots: &[SocketAddr]) -> SocketAddr {
    let (saddr, family) = raw_addr(client.ip());
    let (daddr, _) = raw_addr(node.ip());
    let flow = FlowKey::new(
        saddr,
        client.port().to_be(),
        daddr,
        node.port().to_be(),
        IPPROTO_UDP,
        family,
    );
    let table = maglev::table(slots, DEFAULT_MAGLEV_SIZE);
    let position = flow_hash(&flow) % DEFAULT_MAGLEV_SIZE;
    slots[usize::from(table[position as usize])]
}

#[test]
fn udp_node_ports_from_outside_pick_the_maglev_backend_of_each_flow() {
    let topology = Topology::new();
    let agent = serving_node(&topology);
    let names: BTreeMap<SocketAddr, String> = pod_backends(5353)
        .into_iter()
        .map(|(name, bind)| (bind, name))
        .collect();
    let _backends: Vec<UdpBackend> = names
        .iter()
        .map(|(bind, name)| UdpBackend::start(&topology.pods, name, *bind))
        .collect();
    let outside = &topology.outside;
    for (client, node) in [(CLIENT_V4, NODE_V4), (CLIENT_V6, NODE_V6)] {
        let node = SocketAddr::new(node.parse().unwrap(), UDP_NODE_PORT);
        let client_ip: IpAddr = client.parse().unwrap();
        let slots: Vec<SocketAddr> = names
            .keys()
            .filter(|b| b.is_ipv4() == node.is_ipv4())
            .copied()
            .collect();
        // The first answer says the frontend is programmed.
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) = ask_udp(outside, SocketAddr::new(client_ip, 42_999), node) {
            assert!(Instant::now() < deadline, "{node}: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut seen = BTreeMap::new();
        for port in 43_000..43_060 {
            let client = SocketAddr::new(client_ip, port);
            let expected = &names[&maglev_choice(client, node, &slots)];
            for _ in 0..2 {
                let answer = ask_udp(outside, client, node)
                    .unwrap_or_else(|e| panic!("{client} -> {node}: {e}"));
                assert_eq!(&answer, expected, "{client} -> {node}");
            }
            *seen.entry(expected.clone()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "flows reach every backend: {seen:?}");
    }

    let metrics = agent.metrics();
    let frontend = format!("{NODE_V4}:{UDP_NODE_PORT}/udp");
    let total: u64 = ["10.77.0.2:5353", "10.77.0.3:5353", "10.77.0.4:5353"]
        .iter()
        .map(|b| counted(&metrics, &frontend, b, "out").0)
        .sum();
    assert!(total >= 120, "{total} replies counted\n{metrics}");

    // A removed backend's UDP flows choose again (conntrack forgets them), while
    // its process still answers anything that reaches it.
    let node = SocketAddr::new(NODE_V4.parse().unwrap(), UDP_NODE_PORT);
    let client = SocketAddr::new(CLIENT_V4.parse().unwrap(), 43_000);
    let before = ask_udp(outside, client, node).expect("ask");
    let index: usize = before
        .trim_start_matches("backend-")
        .parse()
        .expect("backend name");
    let rest: Vec<usize> = (0..3).filter(|i| *i != index).collect();
    agent.apply(&slice("IPv4", &rest));
    // A datagram in flight while the flow is forgotten may go unanswered (UDP): it
    // only counts as a try.
    let deadline = Instant::now() + Duration::from_secs(15);
    while ask_udp(outside, client, node).map_or(true, |reply| reply == before) {
        assert!(Instant::now() < deadline, "{client} stays on {before}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn node_ports_reach_backends_on_other_nodes_through_this_node() {
    let topology = Topology::new();
    let agent = Agent::start_node_with(
        &["--nodeport-device", "np0", "--nodeport-device", "np1"],
        |node| topology.wire(node),
    );
    let _backends = [
        Backend::start(
            &topology.remote,
            "remote-0",
            "10.78.0.2:8080".parse().unwrap(),
        ),
        Backend::start(
            &topology.remote,
            "remote-0",
            "[fd00:78:1::2]:8080".parse().unwrap(),
        ),
    ];
    agent.apply(SERVICE);
    agent.apply(&slice_of("IPv4", &["10.78.0.2".into()]));
    agent.apply(&slice_of("IPv6", &["fd00:78:1::2".into()]));
    let outside = &topology.outside;
    for (addr, _, _) in node_ports() {
        wait_for(outside, addr, &["remote-0"]);
        // The remote node answers the node (the source is translated, so replies
        // come back through it), and the client hears the NodePort.
        let (stream, greeting) = connect(outside, addr).expect("connect");
        assert_eq!(greeting, format!("remote-0 {}", addr.ip()));
        for line in ["one", "two"] {
            let reply = echo(&stream, line).unwrap_or_else(|e| panic!("{addr}: {e}"));
            assert_eq!(reply, format!("remote-0: {line}"));
        }
    }
    assert_counted(
        &agent,
        &[
            ("192.168.77.2:30080/tcp", "10.78.0.2:8080"),
            ("[fd00:77::2]:30080/tcp", "[fd00:78:1::2]:8080"),
        ],
        3,
    );
}

/// Writes a line on `stream` and reads the backend's echo.
fn echo(stream: &TcpStream, line: &str) -> std::io::Result<String> {
    let mut writer = stream;
    writeln!(writer, "{line}")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply.trim().to_string())
}

#[test]
fn node_ports_keep_working_while_the_agent_restarts() {
    let topology = Topology::new();
    let agent = serving_node(&topology);
    let _backends = backends(&topology.pods);
    let outside = &topology.outside;
    let all = ["backend-0", "backend-1", "backend-2"];
    let mut established = Vec::new();
    for (addr, _, _) in node_ports() {
        wait_for(outside, addr, &all);
        let (stream, greeting) = connect(outside, addr).expect("connect");
        let name = greeting.split(' ').next().unwrap_or_default().to_string();
        established.push((stream, name, addr));
    }
    let check = |when: &str| {
        for (stream, name, addr) in &established {
            let reply = echo(stream, when).unwrap_or_else(|e| panic!("{addr} {when}: {e}"));
            assert_eq!(reply, format!("{name}: {when}"), "{addr}");
            let (_, greeting) = connect(outside, *addr)
                .unwrap_or_else(|e| panic!("{addr}: a new connection {when}: {e}"));
            assert!(greeting.starts_with("backend-"), "{greeting}");
        }
    };
    // Links and maps are pinned: the tc programs go on without an agent, and the
    // next agent keeps conntrack and the Maglev tables.
    let agent = agent.kill_and_restart_after(|_| check("while the agent is down"));
    check("after the restart");
    assert_eq!(tc_program_ids(&agent).len(), 2, "{:#?}", agent.log);
}

#[test]
fn node_ports_beyond_the_maglev_capacity_are_refused_with_the_flag_to_raise() {
    let topology = Topology::new();
    let mut agent = Agent::start_node_with(
        &["--nodeport-device", "np0", "--max-nodeport-frontends", "1"],
        |node| topology.wire(node),
    );
    let _backends = backends(&topology.pods);
    let _udp_backends: Vec<UdpBackend> = pod_backends(5353)
        .iter()
        .map(|(name, bind)| UdpBackend::start(&topology.pods, name, *bind))
        .collect();
    // Four NodePort frontends on np0: TCP and UDP on its two addresses.
    agent.apply(SERVICE);
    agent.apply(&slice("IPv4", &[0]));
    agent.apply(&slice("IPv6", &[0]));
    agent.wait_for_line("raise --max-nodeport-frontends");
    // The one that fits serves.
    let served = node_ports()
        .iter()
        .filter(|(addr, _, _)| connect(&topology.outside, *addr).is_ok())
        .count()
        + [NODE_V4, NODE_V6]
            .iter()
            .filter(|ip| {
                let node = SocketAddr::new(ip.parse().unwrap(), UDP_NODE_PORT);
                let client = if node.is_ipv4() { CLIENT_V4 } else { CLIENT_V6 };
                let client = SocketAddr::new(client.parse().unwrap(), 44_000);
                ask_udp(&topology.outside, client, node).is_ok()
            })
            .count();
    assert_eq!(served, 1, "{:#?}", agent.log);
    let metrics = agent.metrics();
    let refusals: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skiff_dataplane_map_full_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(refusals >= 3, "{metrics}");
}

/// A TCP connection from `client` (address and port, in the outside namespace) to
/// `addr`, with the greeting read.
fn connect_from(
    outside: &NetNs,
    client: SocketAddr,
    addr: SocketAddr,
) -> std::io::Result<(TcpStream, String)> {
    fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                // SAFETY: as above.
                let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
    let check = |rc: i32| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    outside.run(|| {
        let family = if client.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain system calls on a socket this function owns; the addresses
        // are valid sockaddrs of the lengths given.
        let stream = unsafe {
            let fd = check(libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
            ))?;
            let fd = OwnedFd::from_raw_fd(fd);
            let (local, local_len) = sockaddr(client);
            check(libc::bind(
                fd.as_raw_fd(),
                (&local as *const libc::sockaddr_storage).cast(),
                local_len,
            ))?;
            let (peer, peer_len) = sockaddr(addr);
            check(libc::connect(
                fd.as_raw_fd(),
                (&peer as *const libc::sockaddr_storage).cast(),
                peer_len,
            ))?;
            TcpStream::from(fd)
        };
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok((stream, line.trim().to_string()))
    })
}

#[test]
fn a_new_connection_on_a_known_tuple_gets_a_backend_of_the_current_set() {
    let topology = Topology::new();
    let agent = serving_node(&topology);
    let _backends = backends(&topology.pods);
    let outside = &topology.outside;
    for (addr, client, family) in node_ports() {
        wait_for(outside, addr, &["backend-0", "backend-1", "backend-2"]);
        let client = SocketAddr::new(client.parse().unwrap(), 45_000);
        let (stream, greeting) = connect_from(outside, client, addr).expect("connect");
        let name = greeting.split(' ').next().unwrap_or_default().to_string();
        // Closed with a reset (linger 0): the client's port is free at once, with
        // no TIME_WAIT, while conntrack still has the tuple.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on an open socket with a valid linger struct.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        drop(stream);
        let index: usize = name.trim_start_matches("backend-").parse().expect("name");
        let rest: Vec<usize> = (0..3).filter(|i| *i != index).collect();
        agent.apply(&slice(family, &rest));
        let expected: Vec<String> = rest.iter().map(|i| format!("backend-{i}")).collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        wait_for(outside, addr, &expected);
        // The removed backend still listens: only the SYN rule keeps the same tuple
        // away from it.
        let (_, again) = connect_from(outside, client, addr).expect("connect again");
        assert!(
            !again.starts_with(&name),
            "{client}: {again} after {name} was removed"
        );
    }
}
