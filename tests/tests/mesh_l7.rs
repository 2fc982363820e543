//! The mesh's L7 proxy on loopback, in front of real HTTP backends over plain
//! TCP: retries hide a flaky backend, a slow one hits its route's timeout, a
//! 90/10 split holds, an always-failing endpoint is ejected, HTTP/2 clients are
//! served, AuthorizationPolicies deny by identity, method and path, requests
//! travel through an HBONE tunnel as the node proxy will send them, and the
//! golden metrics count exactly what each test sent; `skiff top services`
//! shows them. Then the
//! AuthorizationPolicy and HTTPRoute kinds through a real agent: bad manifests
//! are refused naming the field, with nothing stored.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use serde_json::json;
use skiff::mesh::l7::{
    BudgetConfig, Connect, Downstream, Endpoint, L7Proxy, L7View, OutlierConfig, Routes,
    ServicePort, TcpConnect,
};
use skiff::mesh::{
    Authorize, Ca, CaMaterial, Certificates, HboneClient, HboneServer, Identity, MeshMetrics,
    Tunnel, Workload, system_clock,
};
use skiff::model::{AuthorizationPolicy, HTTPRoute, Object};
use skiff_tests::agent::Agent;
use skiff_tests::unique_name;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a backend answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 with the backend's name.
    Named,
    /// 500 for every other request it sees (the 2nd, 4th, ...).
    FailEveryOther,
    /// 500 always.
    Fail,
    /// Answers after ten seconds.
    Slow,
}

/// An HTTP/1.1 server on 127.0.0.1 counting the connections and requests it
/// saw; stops on drop.
struct Backend {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(name: &str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let hits = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let task = {
            let (hits, connections, name) = (hits.clone(), connections.clone(), name.to_string());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (hits, name) = (hits.clone(), name.clone());
                    let service = hyper::service::service_fn(move |_request| {
                        let seen = hits.fetch_add(1, Ordering::SeqCst);
                        let name = name.clone();
                        async move {
                            let status = match behaviour {
                                Behaviour::Named => StatusCode::OK,
                                Behaviour::FailEveryOther if seen % 2 == 1 => {
                                    StatusCode::INTERNAL_SERVER_ERROR
                                }
                                Behaviour::FailEveryOther => StatusCode::OK,
                                Behaviour::Fail => StatusCode::INTERNAL_SERVER_ERROR,
                                Behaviour::Slow => {
                                    tokio::time::sleep(Duration::from_secs(10)).await;
                                    StatusCode::OK
                                }
                            };
                            let mut response = Response::new(Full::new(Bytes::from(name)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            })
        };
        Backend {
            name: name.to_string(),
            addr,
            hits,
            connections,
            task,
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// The connections it accepted.
    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The L7 proxy on 127.0.0.1, taking every connection as one from the workload
/// `client` to `destination`; stops on drop.
struct Mesh {
    namespace: String,
    addr: SocketAddr,
    registry: Arc<Registry>,
    task: JoinHandle<()>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a test's proxy serves.
struct Setup<'a> {
    /// The Service the client connects to.
    destination: &'a str,
    /// Each Service's endpoints (the backends), all labelled app=web.
    services: &'a [(&'a str, &'a [&'a Backend])],
    /// HTTPRoute and AuthorizationPolicy specs by name.
    routes: Vec<(&'a str, serde_json::Value)>,
    policies: Vec<(&'a str, serde_json::Value)>,
    /// The ServiceAccount the client runs as.
    account: &'a str,
    outliers: OutlierConfig,
}

impl<'a> Setup<'a> {
    fn new(destination: &'a str, services: &'a [(&'a str, &'a [&'a Backend])]) -> Self {
        Self {
            destination,
            services,
            routes: Vec::new(),
            policies: Vec::new(),
            account: "client",
            outliers: OutlierConfig::default(),
        }
    }
}

impl Mesh {
    /// A proxy reaching backends over plain TCP.
    async fn start(setup: Setup<'_>) -> Mesh {
        Self::start_with(setup, Arc::new(TcpConnect)).await
    }

    async fn start_with<C: Connect>(setup: Setup<'_>, connect: Arc<C>) -> Mesh {
        let namespace = unique_name("shop");
        let port = |name: &str| ServicePort {
            namespace: namespace.clone(),
            name: name.to_string(),
            port: 80,
        };
        let routes: Vec<HTTPRoute> = setup
            .routes
            .into_iter()
            .map(|(name, spec)| decode(&namespace, "HTTPRoute", name, spec))
            .collect();
        let policies: Vec<AuthorizationPolicy> = setup
            .policies
            .into_iter()
            .map(|(name, spec)| decode(&namespace, "AuthorizationPolicy", name, spec))
            .collect();
        let endpoints: HashMap<ServicePort, Vec<Endpoint>> = setup
            .services
            .iter()
            .map(|(service, backends)| {
                let endpoints = backends
                    .iter()
                    .map(|b| Endpoint {
                        addr: b.addr,
                        workload: workload(&namespace, &b.name),
                        labels: [("app".to_string(), "web".to_string())].into(),
                    })
                    .collect();
                (port(service), endpoints)
            })
            .collect();
        let metrics = MeshMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let proxy = Arc::new(L7Proxy::new(
            metrics,
            setup.outliers,
            BudgetConfig::default(),
        ));
        proxy.update(L7View {
            routes: Routes::new(&routes),
            endpoints,
            policies,
            ..L7View::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let downstream = Downstream {
            source: workload(&namespace, "client"),
            identity: Some(Identity::new("cluster.local", &namespace, setup.account)),
            destination: port(setup.destination),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let serving = proxy
                    .clone()
                    .serve(stream, downstream.clone(), connect.clone());
                tokio::spawn(async move {
                    if let Err(e) = serving.await {
                        log::warn!("{e}");
                    }
                });
            }
        });
        Mesh {
            namespace,
            addr,
            registry: Arc::new(registry),
            task,
        }
    }

    /// An HTTP/1.1 connection to the proxy.
    async fn client(&self) -> Client {
        let stream = TcpStream::connect(self.addr)
            .await
            .expect("connect to the proxy");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        Client(sender)
    }

    /// The requests the metrics counted from `client` to `workload` of
    /// `service`, by status class.
    fn requests(&self, workload: &str, service: &str, class: &str) -> u64 {
        self.count(
            "skiff_mesh_requests_total",
            workload,
            service,
            &format!("status_class=\"{class}\""),
        )
    }

    /// The requests to `workload` (of the Service of the same name) the
    /// metrics counted as denied by `policy`.
    fn denials(&self, workload: &str, policy: &str) -> u64 {
        self.count(
            "skiff_mesh_authorization_denials_total",
            workload,
            workload,
            &format!("policy=\"{policy}\""),
        )
    }

    fn count(&self, family: &str, workload: &str, service: &str, label: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        let series = format!(
            "{family}{{source_namespace=\"{ns}\",source_workload=\"client\",\
             destination_namespace=\"{ns}\",destination_workload=\"{workload}\",\
             destination_service=\"{service}\",{label}}} ",
            ns = self.namespace
        );
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |n| n.parse().expect("a count"))
    }
}

struct Client(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn send(&mut self, method: Method, path: &str) -> (StatusCode, String) {
        self.send_body(method, path, Vec::new()).await
    }

    async fn send_body(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "web")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        self.0.ready().await.expect("connection ready");
        let response = self.0.send_request(request).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&mut self, path: &str) -> (StatusCode, String) {
        self.send(Method::GET, path).await
    }
}

fn workload(namespace: &str, name: &str) -> Workload {
    Workload {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// An object of a mesh kind, validated as the API would.
fn decode<T: TryFrom<Object, Error = Object>>(
    namespace: &str,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) -> T {
    let api_version = match kind {
        "HTTPRoute" => "gateway.networking.k8s.io/v1",
        _ => "mesh.skiff.io/v1",
    };
    let value = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    let object = Object::from_value(value).unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
    T::try_from(object).unwrap_or_else(|other| panic!("{kind} {name}: decoded as {other:?}"))
}

#[tokio::test]
async fn retries_hide_a_flaky_backend_from_idempotent_requests() {
    let flaky = Backend::start("flaky", Behaviour::FailEveryOther).await;
    let route = json!({
        "parentRefs": [{"name": "flaky"}],
        "rules": [{
            "backendRefs": [{"name": "flaky", "port": 80}],
            "retry": {"attempts": 1, "codes": [500], "backoff": "1ms"}
        }]
    });
    let mesh = Mesh::start(Setup {
        routes: vec![("flaky", route)],
        ..Setup::new("flaky", &[("flaky", &[&flaky])])
    })
    .await;
    let mut client = mesh.client().await;
    for i in 0..20 {
        assert_eq!(
            client.get("/").await,
            (StatusCode::OK, "flaky".into()),
            "GET {i}"
        );
    }
    // The first request succeeded; each of the other 19 failed once, then passed.
    assert_eq!(flaky.hits(), 39);
    // A POST is not retried: the next one fails, the one after passes.
    assert_eq!(
        client.send(Method::POST, "/").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(client.send(Method::POST, "/").await.0, StatusCode::OK);
    // A PUT is retried unless its body is too large to keep (over 64 KiB).
    let large = vec![b'x'; 100 * 1024];
    assert_eq!(
        client.send_body(Method::PUT, "/", large).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(client.get("/").await.0, StatusCode::OK);
    let small = vec![b'x'; 1024];
    assert_eq!(
        client.send_body(Method::PUT, "/", small).await.0,
        StatusCode::OK
    );
    assert_eq!(flaky.hits(), 45);
    assert_eq!(mesh.requests("flaky", "flaky", "2xx"), 23);
    assert_eq!(mesh.requests("flaky", "flaky", "5xx"), 2);
}

#[tokio::test]
async fn a_slow_backend_hits_the_route_timeout() {
    let slow = Backend::start("slow", Behaviour::Slow).await;
    let route = json!({
        "parentRefs": [{"name": "slow"}],
        "rules": [{
            "backendRefs": [{"name": "slow", "port": 80}],
            "timeouts": {"request": "200ms"}
        }]
    });
    let mesh = Mesh::start(Setup {
        routes: vec![("slow", route)],
        ..Setup::new("slow", &[("slow", &[&slow])])
    })
    .await;
    let (status, body) = mesh.client().await.get("/").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n")
    );
    assert_eq!(slow.hits(), 1);
    assert_eq!(mesh.requests("slow", "slow", "5xx"), 1);
}

#[tokio::test]
async fn a_90_10_split_holds_over_2000_requests() {
    let v1 = Backend::start("web-v1", Behaviour::Named).await;
    let v2 = Backend::start("web-v2", Behaviour::Named).await;
    let route = json!({
        "parentRefs": [{"name": "web", "port": 80}],
        "rules": [{"backendRefs": [
            {"name": "web-v1", "port": 80, "weight": 90},
            {"name": "web-v2", "port": 80, "weight": 10}
        ]}]
    });
    let mesh = Mesh::start(Setup {
        routes: vec![("canary", route)],
        ..Setup::new("web", &[("web-v1", &[&v1]), ("web-v2", &[&v2])])
    })
    .await;
    let mut client = mesh.client().await;
    let mut to_v2 = 0;
    for _ in 0..2_000 {
        let (status, body) = client.get("/").await;
        assert_eq!(status, StatusCode::OK);
        if body == "web-v2" {
            to_v2 += 1;
        }
    }
    // 10% is 200; three percentage points either way is 60.
    assert!((140..=260).contains(&to_v2), "web-v2 got {to_v2} of 2000");
    assert_eq!((v1.hits(), v2.hits()), (2_000 - to_v2, to_v2));
    // Kept-alive backend connections carry the requests, not one each.
    let connections = v1.connections() + v2.connections();
    assert!(connections < 100, "{connections} backend connections");
    assert_eq!(mesh.requests("web-v1", "web-v1", "2xx"), 2_000 - to_v2);
    assert_eq!(mesh.requests("web-v2", "web-v2", "2xx"), to_v2);
}

#[tokio::test]
async fn an_always_failing_endpoint_is_ejected() {
    let good = Backend::start("good", Behaviour::Named).await;
    let bad = Backend::start("bad", Behaviour::Fail).await;
    // An hour's ejection: the test never sees it end.
    let outliers = OutlierConfig {
        consecutive_failures: 5,
        base_ejection: Duration::from_secs(3600),
        max_ejection: Duration::from_secs(3600),
    };
    let mesh = Mesh::start(Setup {
        outliers,
        ..Setup::new("pool", &[("pool", &[&good, &bad])])
    })
    .await;
    let mut client = mesh.client().await;
    let mut failures = 0;
    for _ in 0..200 {
        if client.get("/").await.0 != StatusCode::OK {
            failures += 1;
        }
    }
    // Five consecutive 5xx, then no more requests to it.
    assert_eq!((bad.hits(), failures), (5, 5));
    assert_eq!(good.hits(), 195);
    assert_eq!(mesh.requests("bad", "pool", "5xx"), 5);
    assert_eq!(mesh.requests("good", "pool", "2xx"), 195);
}

#[tokio::test]
async fn requests_with_nowhere_to_go_get_500_or_503() {
    let web = Backend::start("web", Behaviour::Named).await;
    let route = json!({
        "parentRefs": [{"name": "web"}],
        "rules": [
            {"matches": [{"path": {"value": "/off"}}],
             "backendRefs": [{"name": "web", "port": 80, "weight": 0}]},
            {"matches": [{"path": {"value": "/gone"}}],
             "backendRefs": [{"name": "gone", "port": 80}]}
        ]
    });
    let mesh = Mesh::start(Setup {
        routes: vec![("web", route)],
        ..Setup::new("web", &[("web", &[&web])])
    })
    .await;
    let mut client = mesh.client().await;
    assert_eq!(
        client.get("/off").await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no backend to route to\n".into()
        )
    );
    assert_eq!(
        client.get("/gone").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream\n".into()
        )
    );
    assert_eq!(client.get("/").await, (StatusCode::OK, "web".into()));
    assert_eq!(web.hits(), 1);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let web = Backend::start("web", Behaviour::Named).await;
    let mesh = Mesh::start(Setup::new("web", &[("web", &[&web])])).await;
    let stream = TcpStream::connect(mesh.addr)
        .await
        .expect("connect to the proxy");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let request = Request::get("http://web/index.html")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "web");
    assert_eq!(mesh.requests("web", "web", "2xx"), 1);
}

#[tokio::test]
async fn authorization_policies_see_method_and_path() {
    let web = Backend::start("web", Behaviour::Named).await;
    let policies = || {
        vec![
            (
                "deny-admin",
                json!({"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                       "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]}),
            ),
            (
                "allow-clients",
                json!({"rules": [{"from": [{"source": {"principals": ["*/sa/client"]}}],
                                  "to": [{"operation": {"methods": ["GET"]}}]}]}),
            ),
        ]
    };
    let mesh = Mesh::start(Setup {
        policies: policies(),
        ..Setup::new("web", &[("web", &[&web])])
    })
    .await;
    let mut client = mesh.client().await;
    assert_eq!(client.get("/").await, (StatusCode::OK, "web".into()));
    let denied = (StatusCode::FORBIDDEN, "RBAC: access denied\n".to_string());
    assert_eq!(client.get("/admin/users").await, denied);
    assert_eq!(client.send(Method::DELETE, "/").await, denied);
    let stranger = Mesh::start(Setup {
        policies: policies(),
        account: "stranger",
        ..Setup::new("web", &[("web", &[&web])])
    })
    .await;
    assert_eq!(stranger.client().await.get("/").await, denied);
    // Only the allowed request reached the backend.
    assert_eq!(web.hits(), 1);
    assert_eq!(
        mesh.denials("web", &format!("{}/deny-admin", mesh.namespace)),
        1
    );
    assert_eq!(mesh.denials("web", ""), 1);
    assert_eq!(stranger.denials("web", ""), 1);
}

#[tokio::test]
async fn top_services_shows_the_traffic_from_metrics() {
    let web = Backend::start("web", Behaviour::Named).await;
    let mesh = Mesh::start(Setup::new("web", &[("web", &[&web])])).await;
    let mut client = mesh.client().await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.0, StatusCode::OK);
    }
    // The registry served as the agent serves its own.
    let endpoint = skiff::metrics::Endpoint::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind /metrics");
    let addr = endpoint.local_addr().expect("metrics address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(endpoint.serve(mesh.registry.clone(), async {
        let _ = stopped.await;
    }));
    let out = tokio::process::Command::new(skiff_tests::workspace_bin("skiff"))
        .args(["top", "services", "-n", &mesh.namespace, "--metrics-url"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .await
        .expect("run skiff top services");
    let _ = stop.send(());
    let _ = serving.await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let ns = &mesh.namespace;
    assert_eq!(lines.len(), 2, "{table}");
    assert_eq!(
        lines[0],
        ["SOURCE", "DESTINATION", "REQUESTS", "SUCCESS", "P50", "P99"]
    );
    assert_eq!(
        lines[1][..4],
        [
            format!("{ns}/client").as_str(),
            format!("{ns}/web").as_str(),
            "10",
            "100.00%"
        ]
    );
    assert!(
        lines[1][4].ends_with("ms") && lines[1][5].ends_with("ms"),
        "{table}"
    );

    let out = tokio::process::Command::new(skiff_tests::workspace_bin("skiff"))
        .args([
            "top",
            "services",
            "--metrics-url",
            "http://127.0.0.1:1/metrics",
        ])
        .output()
        .await
        .expect("run skiff top services");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(
            "error: reading the mesh metrics at http://127.0.0.1:1/metrics: connecting to 127.0.0.1:1: "
        ),
        "{}",
        stderr(&out)
    );
}

/// The node proxy's seam as it will fill it: each backend reached through an
/// HBONE tunnel (mutual TLS, HTTP/2 CONNECT) to the proxy in front of it.
struct HboneConnect {
    client: HboneClient,
    source: Identity,
    peer: SocketAddr,
    peer_identity: Identity,
}

impl Connect for HboneConnect {
    type Stream = Tunnel;

    async fn connect(&self, backend: SocketAddr) -> std::io::Result<Tunnel> {
        self.client
            .connect(&self.source, self.peer, &self.peer_identity, backend)
            .await
            .map_err(std::io::Error::other)
    }
}

#[tokio::test]
async fn requests_reach_backends_through_an_hbone_tunnel() {
    let web = Backend::start("web", Behaviour::Named).await;
    let material = CaMaterial::generate(std::time::SystemTime::now()).expect("CA");
    let ca = Ca::new(&material).expect("CA from material");
    let day = Duration::from_secs(24 * 3600);
    let certificates = Arc::new(Certificates::new(Arc::new(ca), day, system_clock()));
    let peer_identity = Identity::new("cluster.local", "mesh", "node-proxy");
    let allow_all: Authorize = Arc::new(|_, _| true);
    let server = HboneServer::bind(
        "127.0.0.1:0".parse().expect("address"),
        certificates.clone(),
        peer_identity.clone(),
        allow_all,
    )
    .await
    .expect("HBONE server");
    let peer = server.local_addr().expect("HBONE address");
    let stats = server.stats();
    let serving = tokio::spawn(server.serve());
    let connect = Arc::new(HboneConnect {
        client: HboneClient::new(certificates),
        source: Identity::new("cluster.local", "shop", "client"),
        peer,
        peer_identity,
    });
    let mesh = Mesh::start_with(Setup::new("web", &[("web", &[&web])]), connect).await;
    let mut client = mesh.client().await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await, (StatusCode::OK, "web".into()));
    }
    serving.abort();
    // One tunnel, one stream in it, carrying the kept-alive backend connection.
    assert_eq!(stats.connections.load(Ordering::SeqCst), 1);
    assert_eq!(stats.connected.load(Ordering::SeqCst), 1);
    assert_eq!((web.connections(), web.hits()), (1, 5));
    assert_eq!(mesh.requests("web", "web", "2xx"), 5);
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn policies_and_routes_are_validated_listed_and_bad_ones_not_stored() {
    let agent = Agent::start(&[]);
    let bad_policy = "apiVersion: mesh.skiff.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
                      name: readers\nspec:\n  action: MAYBE\n";
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], bad_policy.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: <stdin> doc 1: spec.action: \"MAYBE\" is not ALLOW or DENY\n"
    );
    let bad_route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  \
                     name: canary\nspec:\n  parentRefs: [{name: web}]\n  rules:\n  - backendRefs: \
                     [{name: web-v2, port: 80}]\n    timeouts: {request: soon}\n";
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], bad_route.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(
            "error: <stdin> doc 1: spec.rules[0].timeouts.request: \"soon\" is not a duration"
        ),
        "{}",
        stderr(&out)
    );
    for kind in ["authorizationpolicies", "httproutes"] {
        let out = agent.cli(&["get", kind]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "{kind} stored a bad manifest");
    }

    let good = format!(
        "{}\n---\n{}",
        bad_policy.replace("MAYBE", "DENY"),
        bad_route.replace("soon", "2s")
    );
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], good.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = agent.ok(&["get", "ap"]);
    assert!(
        listed.starts_with("NAME      ACTION   AGE\nreaders   DENY     "),
        "{listed}"
    );
    let listed = agent.ok(&["get", "httproutes"]);
    assert!(
        listed.starts_with("NAME     PARENTS   AGE\ncanary   web       "),
        "{listed}"
    );
}
