//! Cluster DNS against a real agent: real UDP and TCP packets to the address it
//! logs, answers checked record by record against the Kubernetes DNS
//! specification; answers follow the store within 100 ms; and dig, inside a
//! pod's network namespace, resolves a short service name through the pod's
//! resolv.conf and the cluster DNS virtual IP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use skiff_tests::agent::{Agent, NODE_NAME};
use skiff_tests::unique_name;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Udp,
    Tcp,
}

/// Asks `server` one question; `edns` offers that UDP payload size.
fn ask(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    transport: Transport,
    edns: Option<u16>,
) -> Message {
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        request.set_edns(e);
    }
    let bytes = request.to_vec().expect("encode");
    let timeout = Some(Duration::from_secs(5));
    let reply = match transport {
        Transport::Udp => {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket.set_read_timeout(timeout).expect("timeout");
            socket.send_to(&bytes, server).expect("send");
            let mut buffer = vec![0u8; 65535];
            let (len, _) = socket.recv_from(&mut buffer).expect("DNS answer over UDP");
            buffer.truncate(len);
            buffer
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect(server).expect("connect");
            stream.set_read_timeout(timeout).expect("timeout");
            let len = u16::try_from(bytes.len()).expect("short query");
            stream.write_all(&len.to_be_bytes()).expect("write");
            stream.write_all(&bytes).expect("write");
            let mut len = [0u8; 2];
            stream
                .read_exact(&mut len)
                .expect("DNS answer length over TCP");
            let mut buffer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut buffer).expect("DNS answer over TCP");
            buffer
        }
    };
    let message = Message::from_vec(&reply).expect("decode the answer");
    assert_eq!(message.metadata.id, request.metadata.id);
    message
}

/// A record as the table writes it: `name TYPE data` (an SOA by name only: its
/// serial changes with every build of the zone).
fn show(record: &Record) -> String {
    match &record.data {
        RData::SOA(_) => format!("{} SOA", record.name),
        data => format!("{} {} {data}", record.name, record.record_type()),
    }
}

fn shown(records: &[Record]) -> Vec<String> {
    let mut all: Vec<String> = records.iter().map(show).collect();
    all.sort();
    all
}

/// A UDP server on `addr` standing in for the host's resolver: example.org has
/// an address, every other name does not exist. Answers until the test ends.
fn fake_upstream(addr: SocketAddr) {
    let socket =
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind the fake upstream on {addr}: {e}"));
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 4096];
        while let Ok((len, client)) = socket.recv_from(&mut buffer) {
            let Ok(request) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            response.metadata.recursion_available = true;
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            response.add_queries(request.queries.iter().cloned());
            let Some(query) = request.queries.first() else {
                continue;
            };
            if query.name().to_ascii().eq_ignore_ascii_case("example.org.")
                && query.query_type() == RecordType::A
            {
                response.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A("192.0.2.7".parse().expect("ip")),
                ));
            } else {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = socket.send_to(&response.to_vec().expect("encode"), client);
        }
    });
}

const OBJECTS: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilyPolicy: RequireDualStack
  clusterIPs: [10.96.1.5, 'fd00:10:96::105']
  ports:
  - {name: http, port: 80}
  - {name: dnsu, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: v4only}
spec:
  clusterIP: 10.96.1.6
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-v4, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.7], hostname: db-0}
- {addresses: [10.244.0.8], conditions: {ready: true}}
- {addresses: [10.244.0.9], conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-v6, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: ['fd00:10:244::7'], hostname: db-0}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: example.com
";

/// One row: the question, the response code, the answer and additional sections.
struct Case {
    name: &'static str,
    rtype: RecordType,
    code: ResponseCode,
    answers: &'static [&'static str],
    additionals: &'static [&'static str],
}

const fn case(
    name: &'static str,
    rtype: RecordType,
    code: ResponseCode,
    answers: &'static [&'static str],
    additionals: &'static [&'static str],
) -> Case {
    Case {
        name,
        rtype,
        code,
        answers,
        additionals,
    }
}

use RecordType::{A, AAAA, ANY, CNAME, MX, NS, PTR, SOA, SRV, TXT};
use ResponseCode::{NXDomain, NoError};

const WEB: &str = "web.default.svc.cluster.local.";
const NONE: &[&str] = &[];

const CASES: &[Case] = &[
    // ClusterIP services: one address per family.
    case(
        WEB,
        A,
        NoError,
        &["web.default.svc.cluster.local. A 10.96.1.5"],
        NONE,
    ),
    case(
        WEB,
        AAAA,
        NoError,
        &["web.default.svc.cluster.local. AAAA fd00:10:96::105"],
        NONE,
    ),
    case(
        "WEB.Default.SVC.cluster.LOCAL.",
        A,
        NoError,
        &["WEB.Default.SVC.cluster.LOCAL. A 10.96.1.5"],
        NONE,
    ),
    case(
        WEB,
        ANY,
        NoError,
        &[
            "web.default.svc.cluster.local. A 10.96.1.5",
            "web.default.svc.cluster.local. AAAA fd00:10:96::105",
        ],
        NONE,
    ),
    case(WEB, TXT, NoError, NONE, NONE),
    case(WEB, MX, NoError, NONE, NONE),
    case(
        "v4only.default.svc.cluster.local.",
        A,
        NoError,
        &["v4only.default.svc.cluster.local. A 10.96.1.6"],
        NONE,
    ),
    case(
        "v4only.default.svc.cluster.local.",
        AAAA,
        NoError,
        NONE,
        NONE,
    ),
    // Named ports are SRV records, with the target's addresses as additionals.
    case(
        "_http._tcp.web.default.svc.cluster.local.",
        SRV,
        NoError,
        &["_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."],
        &[
            "web.default.svc.cluster.local. A 10.96.1.5",
            "web.default.svc.cluster.local. AAAA fd00:10:96::105",
        ],
    ),
    case(
        "_dnsu._udp.web.default.svc.cluster.local.",
        SRV,
        NoError,
        &["_dnsu._udp.web.default.svc.cluster.local. SRV 0 100 53 web.default.svc.cluster.local."],
        &[
            "web.default.svc.cluster.local. A 10.96.1.5",
            "web.default.svc.cluster.local. AAAA fd00:10:96::105",
        ],
    ),
    case(
        "_http._udp.web.default.svc.cluster.local.",
        SRV,
        NXDomain,
        NONE,
        NONE,
    ),
    case(
        "_tcp.web.default.svc.cluster.local.",
        SRV,
        NoError,
        NONE,
        NONE,
    ),
    case(
        "_http._tcp.v4only.default.svc.cluster.local.",
        SRV,
        NXDomain,
        NONE,
        NONE,
    ),
    // Headless: the ready endpoints, each also under its own name.
    case(
        "db.default.svc.cluster.local.",
        A,
        NoError,
        &[
            "db.default.svc.cluster.local. A 10.244.0.7",
            "db.default.svc.cluster.local. A 10.244.0.8",
        ],
        NONE,
    ),
    case(
        "db.default.svc.cluster.local.",
        AAAA,
        NoError,
        &["db.default.svc.cluster.local. AAAA fd00:10:244::7"],
        NONE,
    ),
    case(
        "db-0.db.default.svc.cluster.local.",
        A,
        NoError,
        &["db-0.db.default.svc.cluster.local. A 10.244.0.7"],
        NONE,
    ),
    case(
        "db-0.db.default.svc.cluster.local.",
        AAAA,
        NoError,
        &["db-0.db.default.svc.cluster.local. AAAA fd00:10:244::7"],
        NONE,
    ),
    case(
        "10-244-0-8.db.default.svc.cluster.local.",
        A,
        NoError,
        &["10-244-0-8.db.default.svc.cluster.local. A 10.244.0.8"],
        NONE,
    ),
    case(
        "10-244-0-8.db.default.svc.cluster.local.",
        AAAA,
        NoError,
        NONE,
        NONE,
    ),
    case(
        "10-244-0-9.db.default.svc.cluster.local.",
        A,
        NXDomain,
        NONE,
        NONE,
    ),
    case(
        "_pg._tcp.db.default.svc.cluster.local.",
        SRV,
        NoError,
        &[
            "_pg._tcp.db.default.svc.cluster.local. SRV 0 100 5432 10-244-0-8.db.default.svc.cluster.local.",
            "_pg._tcp.db.default.svc.cluster.local. SRV 0 100 5432 db-0.db.default.svc.cluster.local.",
        ],
        &[
            "10-244-0-8.db.default.svc.cluster.local. A 10.244.0.8",
            "db-0.db.default.svc.cluster.local. A 10.244.0.7",
            "db-0.db.default.svc.cluster.local. AAAA fd00:10:244::7",
        ],
    ),
    // Reverse names of cluster IPs and of headless endpoints.
    case(
        "5.1.96.10.in-addr.arpa.",
        PTR,
        NoError,
        &["5.1.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."],
        NONE,
    ),
    case(
        "5.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.",
        PTR,
        NoError,
        &[
            "5.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa. PTR web.default.svc.cluster.local.",
        ],
        NONE,
    ),
    case(
        "6.1.96.10.in-addr.arpa.",
        PTR,
        NoError,
        &["6.1.96.10.in-addr.arpa. PTR v4only.default.svc.cluster.local."],
        NONE,
    ),
    case(
        "7.0.244.10.in-addr.arpa.",
        PTR,
        NoError,
        &["7.0.244.10.in-addr.arpa. PTR db-0.db.default.svc.cluster.local."],
        NONE,
    ),
    case(
        "8.0.244.10.in-addr.arpa.",
        PTR,
        NoError,
        &["8.0.244.10.in-addr.arpa. PTR 10-244-0-8.db.default.svc.cluster.local."],
        NONE,
    ),
    case(
        "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa.",
        PTR,
        NoError,
        &[
            "7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa. PTR db-0.db.default.svc.cluster.local.",
        ],
        NONE,
    ),
    // ExternalName: a CNAME, whatever the type asked.
    case(
        "ext.default.svc.cluster.local.",
        CNAME,
        NoError,
        &["ext.default.svc.cluster.local. CNAME example.com."],
        NONE,
    ),
    case(
        "ext.default.svc.cluster.local.",
        A,
        NoError,
        &["ext.default.svc.cluster.local. CNAME example.com."],
        NONE,
    ),
    case(
        "ext.default.svc.cluster.local.",
        AAAA,
        NoError,
        &["ext.default.svc.cluster.local. CNAME example.com."],
        NONE,
    ),
    // The schema version, and the zone's own records.
    case(
        "dns-version.cluster.local.",
        TXT,
        NoError,
        &["dns-version.cluster.local. TXT 1.1.0"],
        NONE,
    ),
    case(
        "cluster.local.",
        SOA,
        NoError,
        &["cluster.local. SOA"],
        NONE,
    ),
    case("cluster.local.", A, NoError, NONE, NONE),
    // The apex names the SOA's server (its addresses are the kube-dns Service's,
    // which an agent serving DNS on loopback only does not publish).
    case(
        "cluster.local.",
        NS,
        NoError,
        &["cluster.local. NS ns.dns.cluster.local."],
        NONE,
    ),
    case("ns.dns.cluster.local.", A, NoError, NONE, NONE),
    case("svc.cluster.local.", A, NoError, NONE, NONE),
    case("default.svc.cluster.local.", A, NoError, NONE, NONE),
    // Names that do not exist.
    case(
        "nothing.default.svc.cluster.local.",
        A,
        NXDomain,
        NONE,
        NONE,
    ),
    case("web.nowhere.svc.cluster.local.", A, NXDomain, NONE, NONE),
    case("nowhere.svc.cluster.local.", A, NXDomain, NONE, NONE),
    case("x.web.default.svc.cluster.local.", A, NXDomain, NONE, NONE),
    // Types a name lacks: NODATA, whatever kind of name it is.
    case(
        "_pg._tcp.db.default.svc.cluster.local.",
        A,
        NoError,
        NONE,
        NONE,
    ),
    case("6.1.96.10.in-addr.arpa.", A, NoError, NONE, NONE),
    case("dns-version.cluster.local.", A, NoError, NONE, NONE),
    case(
        "DB-0.Db.default.svc.cluster.local.",
        AAAA,
        NoError,
        &["DB-0.Db.default.svc.cluster.local. AAAA fd00:10:244::7"],
        NONE,
    ),
    // Outside the zone: forwarded to the upstream of the resolv.conf.
    case(
        "example.org.",
        A,
        NoError,
        &["example.org. A 192.0.2.7"],
        NONE,
    ),
    case("missing.example.org.", A, NXDomain, NONE, NONE),
    // Reverse names the zone does not hold are forwarded too.
    case("99.0.96.10.in-addr.arpa.", PTR, NXDomain, NONE, NONE),
];

/// The agent with the objects applied, answering names outside the zone from a
/// fake upstream on a loopback address of its own.
fn agent_with_objects() -> (Agent, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    // A loopback address no other test uses: resolv.conf nameservers are on port 53.
    let n = std::process::id();
    let upstream: SocketAddr = format!("127.53.{}.{}:53", (n >> 8) & 0xff, n & 0xff)
        .parse()
        .expect("address");
    fake_upstream(upstream);
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", upstream.ip())).expect("resolv.conf");
    let agent = Agent::start(&[
        "--dns-addr",
        "127.0.0.1:0",
        "--dns-upstream-resolv-conf",
        resolv.to_str().expect("utf-8"),
    ]);
    agent.apply(OBJECTS);
    let server = agent.dns_addrs()[0];
    // The zone follows the store shortly after apply returns. Services and
    // EndpointSlices come through separate watches, so wait for the last
    // object of each kind.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, rtype) in [
        ("ext.default.svc.cluster.local.", CNAME),
        ("db-0.db.default.svc.cluster.local.", AAAA),
    ] {
        while ask(server, name, rtype, Transport::Udp, None)
            .answers
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "the zone never got the objects: no {rtype} for {name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (agent, server, dir)
}

#[test]
fn every_record_kind_is_answered_as_the_specification_says_over_udp_and_tcp() {
    let (agent, server, _dir) = agent_with_objects();
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        for case in CASES {
            let m = ask(server, case.name, case.rtype, transport, Some(1232));
            let got = (
                m.metadata.response_code,
                shown(&m.answers),
                shown(&m.additionals),
            );
            let mut answers: Vec<String> = case.answers.iter().map(|s| s.to_string()).collect();
            answers.sort();
            let mut additionals: Vec<String> =
                case.additionals.iter().map(|s| s.to_string()).collect();
            additionals.sort();
            if got != (case.code, answers, additionals) {
                failures.push(format!(
                    "{transport:?} {} {}: got {got:?}",
                    case.name, case.rtype
                ));
            }
            // Negative answers inside the zone carry its SOA.
            let in_zone = case.name.to_ascii_lowercase().ends_with("cluster.local.");
            if in_zone
                && m.answers.is_empty()
                && m.authorities.iter().all(|r| r.record_type() != SOA)
            {
                failures.push(format!(
                    "{transport:?} {} {}: no SOA in authority",
                    case.name, case.rtype
                ));
            }
            if in_zone && !m.metadata.authoritative {
                failures.push(format!(
                    "{transport:?} {} {}: not authoritative",
                    case.name, case.rtype
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let metrics = agent.metrics();
    for needle in [
        "skiff_dns_queries_total{type=\"A\",rcode=\"NOERROR\",protocol=\"udp\"}",
        "skiff_dns_queries_total{type=\"SRV\",rcode=\"NXDOMAIN\",protocol=\"tcp\"}",
        "skiff_dns_request_duration_seconds_count",
    ] {
        assert!(metrics.contains(needle), "{needle} not in {metrics}");
    }
}

#[test]
fn udp_answers_over_the_clients_size_are_truncated_and_tcp_gets_them_whole() {
    let agent = Agent::start(&[]);
    let endpoints: String = (1..=60)
        .map(|i| format!("- {{addresses: [10.244.1.{i}]}}\n"))
        .collect();
    agent.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: many}}\nspec: {{clusterIP: None, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: many, labels: {{kubernetes.io/service-name: many}}}}\n\
         addressType: IPv4\nports: [{{port: 80}}]\nendpoints:\n{endpoints}"
    ));
    let server = agent.dns_addrs()[0];
    let name = "many.default.svc.cluster.local.";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let whole = ask(server, name, A, Transport::Tcp, None);
        if whole.answers.len() == 60 {
            break;
        }
        assert!(Instant::now() < deadline, "{whole:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 60 addresses take about 1 kB: over 512 bytes, under EDNS's 1232.
    let small = ask(server, name, A, Transport::Udp, None);
    assert!(
        small.metadata.truncation && small.answers.is_empty(),
        "{small:?}"
    );
    let edns = ask(server, name, A, Transport::Udp, Some(1232));
    assert!(!edns.metadata.truncation, "{edns:?}");
    assert_eq!(edns.answers.len(), 60);
}

#[test]
fn broken_packets_get_formerr_or_silence_and_the_server_goes_on() {
    let agent = Agent::start(&[]);
    let server = agent.dns_addrs()[0];
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buffer = vec![0u8; 4096];
    // Too short for a header: no answer.
    socket.send_to(b"\x12\x34\x01", server).expect("send");
    assert!(
        socket.recv_from(&mut buffer).is_err(),
        "answered a 3-byte packet"
    );
    // A question whose name is a compression loop: FORMERR with the request's id.
    let looped = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ];
    socket.send_to(&looped, server).expect("send");
    let (len, _) = socket.recv_from(&mut buffer).expect("an answer");
    let m = Message::from_vec(&buffer[..len]).expect("decode");
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    // Over TCP too, and the connection is answered, not hung.
    let mut stream = TcpStream::connect(server).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(&(looped.len() as u16).to_be_bytes())
        .expect("write");
    stream.write_all(&looped).expect("write");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("an answer over TCP");
    // Still serving.
    let m = ask(
        server,
        "dns-version.cluster.local.",
        TXT,
        Transport::Udp,
        None,
    );
    assert_eq!(m.answers.len(), 1);
}

/// Polls `server` until `name`'s A answer is `expected`, failing after 100 ms.
fn within_100ms(server: SocketAddr, name: &str, expected: &[&str], code: ResponseCode) {
    let started = Instant::now();
    loop {
        let m = ask(server, name, A, Transport::Udp, None);
        let got = (m.metadata.response_code, shown(&m.answers));
        if got.0 == code && got.1 == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{name}: still {got:?} after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn answers_follow_the_store_within_100_ms() {
    let agent = Agent::start(&[]);
    let server = agent.dns_addrs()[0];
    let svc = unique_name("fresh");
    let name = format!("{svc}.default.svc.cluster.local.");
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}}}\nspec: {{clusterIP: None, ports: [{{port: 80}}]}}\n"
    );
    let slice = |ready: bool| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
             addressType: IPv4\nports: [{{port: 80}}]\nendpoints: [{{addresses: [10.244.2.9], conditions: {{ready: {ready}}}}}]\n"
        )
    };
    assert_eq!(
        ask(server, &name, A, Transport::Udp, None)
            .metadata
            .response_code,
        NXDomain
    );
    // Service created (its endpoint not ready yet): the name exists, no address.
    agent.apply(&format!("{service}---\n{}", slice(false)));
    within_100ms(server, &name, &[], NoError);
    // The endpoint becomes ready.
    agent.apply(&slice(true));
    let ready = format!("{name} A 10.244.2.9");
    within_100ms(server, &name, &[ready.as_str()], NoError);
    // Service deleted.
    agent.ok(&["delete", "service", &svc]);
    within_100ms(server, &name, &[], NXDomain);
}

#[test]
fn dig_in_a_pod_namespace_resolves_a_short_name_through_the_cluster_dns_ip() {
    // DNS on the pods' gateway (as by default), and on loopback for the test.
    let agent = Agent::start_node(&[
        "--dns-addr",
        "10.244.0.1:53",
        "--dns-addr",
        "[fd00:10:244::1]:53",
        "--dns-addr",
        "127.0.0.1:0",
    ]);
    agent.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{clusterIP: 10.96.1.5, ports: [{{port: 80}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeName: {NODE_NAME}\n  \
         containers:\n  - {{name: c, image: 'busybox:1.36', command: [sleep, '3600']}}\n",
    ));
    let pod = agent
        .wait_pod("client", Duration::from_secs(30), |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Running")
        })
        .expect("running pod");
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let netns = std::path::PathBuf::from(format!("/run/netns/skiff-{uid}"));
    let resolv = agent
        .state_dir()
        .join("pods")
        .join(uid)
        .join("etc/resolv.conf");
    // The agent published its DNS behind the cluster DNS IPs.
    let slice: serde_json::Value = serde_json::from_str(&agent.ok(&[
        "get",
        "endpointslice",
        "kube-dns-ipv4-53",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]))
    .expect("JSON");
    assert_eq!(
        slice["endpoints"][0]["addresses"][0], "10.244.0.1",
        "{slice}"
    );
    let conf = std::fs::read_to_string(&resolv).expect("the pod's resolv.conf");
    assert!(conf.contains("nameserver 10.96.0.10"), "{conf}");
    // dig reads /etc/resolv.conf: give it the pod's in a mount namespace of its
    // own, inside the pod's network namespace and the cgroup the agent's
    // dataplane serves (the pod's own cgroup is outside the test agent's).
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec dig +search +short +tries=1 +timeout=2 web A",
        resolv.display()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent
            .cgroup
            .command_at(&netns, "unshare")
            .args(["--mount", "sh", "-c", &script])
            .output()
            .expect("run dig");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.trim() == "10.96.1.5" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dig: {} {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
