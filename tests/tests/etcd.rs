//! skiff on a real etcd (Debian's etcd-server, one member per test on loopback): the
//! store conformance suite against the etcd backend, watches that outlive an etcd
//! restart, and agents that keep their state in etcd.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use skiff::api::proto;
use skiff::store::etcd::EtcdStore;
use skiff::store::{Revision, Store, StoreError, Txn, WatchStream};
use skiff_tests::agent::{Agent, failed_start};
use skiff_tests::etcd::{EtcdServer, ServerTls};
use skiff_tests::unique_name;

/// A fresh etcd and a store connected to it.
async fn etcd_store() -> (EtcdStore, EtcdServer) {
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("start etcd");
    let store = EtcdStore::connect(&server.config())
        .await
        .expect("connect to etcd");
    (store, server)
}

mod conformance {
    skiff::store_conformance_tests!(super::etcd_store());
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// The revision of the stream's next event.
async fn next_revision(stream: &mut WatchStream) -> Revision {
    let event = tokio::time::timeout(TIMEOUT, stream.next()).await;
    let event = event.expect("an event in time").expect("the watch is open");
    event.expect("an event").kv.mod_revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_an_etcd_restart_without_gap_or_duplicate() {
    let (store, mut server) = etcd_store().await;
    let put = |key: String| {
        let store = store.clone();
        async move { store.txn(Txn::new().put(key, "v")).await.expect("put") }
    };
    let mut expected = Vec::new();
    for i in 0..3 {
        expected.push(put(format!("/resume/{i}")).await);
    }
    let mut stream = store.watch("/resume/", expected[0]).await.expect("watch");
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next_revision(&mut stream).await);
    }
    tokio::task::block_in_place(|| {
        server.kill();
        server.restart();
    });
    for i in 3..6 {
        expected.push(put(format!("/resume/{i}")).await);
    }
    while seen.len() < expected.len() {
        seen.push(next_revision(&mut stream).await);
    }
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_naming_etcd_while_it_is_down_and_succeed_once_it_is_back() {
    let (store, mut server) = etcd_store().await;
    let before = store
        .txn(Txn::new().put("/down/a", "1"))
        .await
        .expect("put");
    let mut stream = store.watch("/down/", before + 1).await.expect("watch");
    server.kill();
    let started = Instant::now();
    let failed = store.txn(Txn::new().put("/down/b", "2")).await;
    let Err(StoreError::Unreachable(message)) = failed else {
        panic!("a write to a dead etcd gave {failed:?}");
    };
    assert!(
        message.contains(&format!(
            "etcd at http://{} is unreachable",
            server.endpoint()
        )),
        "{message}"
    );
    assert!(
        started.elapsed() < TIMEOUT,
        "the write took {:?}",
        started.elapsed()
    );
    tokio::task::block_in_place(|| server.restart());
    let after = store
        .txn(Txn::new().put("/down/c", "3"))
        .await
        .expect("put once etcd is back");
    // The failed write did not land, and the watch that waited through it goes on.
    assert_eq!(after, before + 1);
    assert_eq!(next_revision(&mut stream).await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_over_etcds_limits_are_refused_saying_so() {
    let (store, _server) = etcd_store().await;
    let before = store.revision().await.expect("revision");
    let many = (0..129).fold(Txn::new(), |txn, i| txn.put(format!("/limits/{i}"), "v"));
    let huge = Txn::new().put("/limits/huge", vec![7u8; 2 * 1024 * 1024]);
    for (txn, says) in [(many, "129 writes"), (huge, "2097152 bytes")] {
        let Err(StoreError::Backend(message)) = store.txn(txn).await else {
            panic!("etcd took a transaction over its limits");
        };
        assert!(message.contains(says), "{message}");
        assert!(message.contains("--max-txn-ops"), "{message}");
    }
    assert_eq!(store.revision().await.expect("revision"), before);
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: default
data:
  color: blue
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

/// The name, resourceVersion and a field of each object the agent returns.
fn snapshot(agent: &Agent) -> Vec<(String, String, String)> {
    let field = |kind: &str, name: &str, pick: fn(&Value) -> &Value| {
        let object = agent
            .object(kind, name)
            .unwrap_or_else(|| panic!("{kind}/{name} is missing"));
        (
            format!("{kind}/{name}"),
            object["metadata"]["resourceVersion"]
                .as_str()
                .expect("a resourceVersion")
                .to_owned(),
            pick(&object).to_string(),
        )
    };
    vec![
        field("configmap", "settings", |o| &o["data"]["color"]),
        field("service", "web", |o| &o["spec"]["clusterIP"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_etcd_serves_apply_get_and_watch_and_its_state_outlives_it() {
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("start etcd");
    let url = etcd.store_url();
    let node = unique_name("etcd-node");
    let args = ["--store", url.as_str(), "--node-name", node.as_str()];
    let agent = tokio::task::block_in_place(|| {
        let agent = Agent::start(&args);
        agent.apply(OBJECTS);
        agent
    });
    let before = tokio::task::block_in_place(|| snapshot(&agent));
    assert_eq!(before[0].2, r#""blue""#);
    let cluster_ip: std::net::Ipv4Addr = before[1]
        .2
        .trim_matches('"')
        .parse()
        .expect("an IPv4 clusterIP");
    let service_cidr: ipnet::Ipv4Net = "10.96.0.0/12".parse().expect("a CIDR");
    assert!(service_cidr.contains(&cluster_ip), "{before:?}");

    // A watch from the listed version sees the next change.
    let mut client = agent.client().await;
    let listed = client
        .list(proto::ListRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let mut events = client
        .watch(proto::WatchRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            resource_version: listed.resource_version,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::task::block_in_place(|| agent.apply(&OBJECTS.replace("blue", "green")));
    let event = tokio::time::timeout(TIMEOUT, events.next())
        .await
        .expect("an event in time")
        .expect("the watch is open")
        .expect("an event");
    assert_eq!(event.r#type, proto::EventType::Modified as i32);
    let object: Value = serde_json::from_slice(&event.object).expect("JSON");
    assert_eq!(object["data"]["color"], "green");
    drop(events);
    let after = tokio::task::block_in_place(|| snapshot(&agent));

    // The state is in etcd: a restarted agent, and then one with a state directory
    // of its own, see the same objects at the same versions.
    tokio::task::block_in_place(|| {
        let mut agent = agent.kill_and_restart();
        assert_eq!(snapshot(&agent), after);
        agent.signal(libc::SIGTERM);
        assert!(agent.wait().success(), "{:#?}", agent.log);
        assert!(!agent.state_dir().join("store.redb").exists());
        let token = agent.join_token();
        let joining = [&args[..], &["--join", "--token", token.as_str()]].concat();
        let other = Agent::start(&joining);
        assert_eq!(snapshot(&other), after);
    });
}

#[test]
fn an_apply_over_etcds_transaction_limit_fails_whole_saying_so() {
    let etcd = EtcdServer::start();
    let url = etcd.store_url();
    let agent = Agent::start(&["--store", &url, "--node-name", &unique_name("txn-node")]);
    let prefix = unique_name("many");
    // One apply is one transaction: a compare and a put per object, all or nothing.
    let manifest = |count: usize| -> String {
        (0..count)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {prefix}-{i}}}\ndata: {{n: \"{i}\"}}\n---\n"
                )
            })
            .collect()
    };
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], manifest(129).as_bytes());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "129 objects in one etcd transaction");
    for says in ["129 writes", "--max-txn-ops", "apply fewer at once"] {
        assert!(stderr.contains(says), "{stderr}");
    }
    assert!(agent.object("configmap", &format!("{prefix}-0")).is_none());
    // etcd's limit, not a lower one of skiff's.
    agent.apply(&manifest(128));
    assert!(
        agent
            .object("configmap", &format!("{prefix}-127"))
            .is_some()
    );
}

#[test]
fn bad_store_values_are_refused_by_name() {
    for (value, why) in [
        ("http://127.0.0.1:2379", "must start with etcd://"),
        ("etcd://", "names no member"),
        ("etcd://127.0.0.1", "has no port"),
        ("etcd://127.0.0.1:2379,", "empty"),
        ("etcd://127.0.0.1:70000", "no valid port"),
        ("etcd://bad_host:2379", "no valid host"),
    ] {
        let (status, stderr) = failed_start(&["--store", value]);
        assert!(!status.success(), "{value} was accepted");
        assert!(stderr.contains(value), "{value}: {stderr}");
        assert!(stderr.contains(why), "{value}: {stderr}");
    }
    let (status, stderr) = failed_start(&["--etcd-ca", "/ca.pem"]);
    assert!(!status.success());
    assert!(stderr.contains("--store"), "{stderr}");
}

#[test]
fn an_unreachable_etcd_fails_the_start_naming_it() {
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("etcd://127.0.0.1:{port}");
    let (status, stderr) = failed_start(&["--store", &url]);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("etcd at http://127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// A CA, and PEM files in `dir` of the certificates it signs: etcd's (for
/// 127.0.0.1) and a client's, with their keys.
fn certificates(dir: &Path) -> (ServerTls, (String, String)) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "skiff test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let sign = |name: &str, names: &[&str], usages| {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.extended_key_usages = usages;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("sign a certificate");
        (
            write(&format!("{name}.crt"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    // etcd's own gateway connects to it with the server certificate, as a client.
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let (cert, key) = sign("etcd", &["127.0.0.1", "localhost"], both);
    let client = sign(
        "client",
        &["skiff"],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    let server = ServerTls {
        ca: write("ca.crt", ca.pem()),
        cert,
        key,
    };
    let text = |path: PathBuf| path.to_str().expect("a UTF-8 path").to_owned();
    (server, (text(client.0), text(client.1)))
}

#[test]
fn an_agent_reaches_etcd_over_tls_with_a_client_certificate() {
    let pki = tempfile::tempdir().expect("temp dir");
    let (server, (cert, key)) = certificates(pki.path());
    let ca = server.ca.to_str().expect("a UTF-8 path").to_owned();
    let etcd = EtcdServer::start_tls(server);
    let url = etcd.store_url();

    // etcd checks client certificates: without one, the start fails and says where.
    let (status, stderr) = failed_start(&["--store", &url, "--etcd-ca", &ca]);
    assert!(!status.success());
    let https = format!("etcd at https://{}", etcd.endpoint());
    assert!(stderr.contains(&https), "{stderr}");

    let node = unique_name("etcd-tls-node");
    let agent = Agent::start(&[
        "--store",
        &url,
        "--etcd-ca",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
        "--node-name",
        &node,
    ]);
    agent.apply(OBJECTS);
    assert_eq!(snapshot(&agent)[0].2, r#""blue""#);
}

/// The pod CIDRs in node `name`'s spec, as the agent shows them.
fn pod_cidrs(agent: &Agent, name: &str) -> Value {
    agent.object("node", name).expect("the node is registered")["spec"]["podCIDRs"].clone()
}

#[test]
fn agents_sharing_etcd_get_pod_cidrs_that_do_not_overlap_and_keep_them() {
    let etcd = EtcdServer::start();
    let url = etcd.store_url();
    let (a, b) = (unique_name("cidr-node"), unique_name("cidr-node"));
    let first = Agent::start(&["--store", &url, "--node-name", &a]);
    let token = first.join_token();
    let join = ["--join", "--token", token.as_str()];
    let second = Agent::start(&[&["--store", &url, "--node-name", &b][..], &join].concat());
    let a_cidrs = pod_cidrs(&second, &a);
    assert_eq!(
        a_cidrs,
        serde_json::json!(["10.244.0.0/24", "fd00:10:244::/64"])
    );
    assert_eq!(
        pod_cidrs(&first, &b),
        serde_json::json!(["10.244.1.0/24", "fd00:10:244:1::/64"])
    );
    // A restarted agent keeps its node's CIDRs, whatever started since.
    let c = unique_name("cidr-node");
    let third = Agent::start(&[&["--store", &url, "--node-name", &c][..], &join].concat());
    let first = first.kill_and_restart();
    assert_eq!(pod_cidrs(&first, &a), a_cidrs);
    drop((second, third));
}

/// Whether `term` has ended by now (its `lost` resolved).
async fn ended(term: &mut skiff::store::election::Term) -> bool {
    tokio::time::timeout(Duration::from_millis(10), term.lost())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_and_the_next_takes_over_when_it_dies_or_resigns() {
    let (first, mut server) = etcd_store().await;
    let connect = || async {
        EtcdStore::connect(&server.config())
            .await
            .expect("connect to etcd")
    };
    let (second, third) = (connect().await, connect().await);
    let election = unique_name("leader");
    let mut leading = first.campaign(&election, "node-1").await.expect("campaign");
    // The others wait in line while node-1 renews its lease.
    let waiting = tokio::spawn({
        let election = election.clone();
        async move { second.campaign(&election, "node-2").await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "two leaders at once");
    assert!(
        !ended(&mut leading).await,
        "the leader lost its lease while renewing it"
    );
    // node-1 dies: its renewals stop, nobody resigns. node-2 leads once the
    // lease runs out (its TTL is 2 s; the figure is printed, not asserted).
    let died = Instant::now();
    drop(leading);
    let second_term = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("node-2 leads in time")
        .expect("join")
        .expect("campaign");
    println!("new leader {:?} after the old one died", died.elapsed());
    // A resignation hands over at once.
    let waiting = tokio::spawn({
        let election = election.clone();
        async move { third.campaign(&election, "node-3").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "two leaders at once");
    let resigned = Instant::now();
    second_term.resign().await;
    let mut third_term = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("node-3 leads in time")
        .expect("join")
        .expect("campaign");
    println!("new leader {:?} after a resignation", resigned.elapsed());
    // etcd gone: the leader cannot renew, so its term ends rather than
    // leading blind.
    tokio::task::block_in_place(|| server.kill());
    tokio::time::timeout(Duration::from_secs(10), third_term.lost())
        .await
        .expect("the term ends when etcd is unreachable");
}
