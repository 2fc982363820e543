//! The HTTP proxy for Service ports that declare appProtocol `http`: it serves
//! one captured client connection (HTTP/1.1 or HTTP/2), and for each request
//! picks a rule from the [`Routes`], a backend Service by weight and one of its
//! ready endpoints, forwards the request over HTTP/1.1 through a [`Connect`]
//! (the node proxy passes its HBONE client; tests pass plain TCP), retries within
//! the budget, answers 504 past the rule's timeout, feeds outlier detection and
//! counts the golden metrics. The chosen pod's AuthorizationPolicies are
//! checked with the request's method and path (a denial is a 403, counted and
//! logged), which the L4 tunnel cannot see.
//!
//! The caller keeps the [`L7View`] (routes and endpoints) current with
//! [`L7Proxy::update`]; nothing here watches the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use log::{debug, info};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::balance::{OutlierConfig, Outliers, pick_weighted, total_weight};
use super::budget::{BudgetConfig, RetryBudget};
use super::pool::Pool;
use super::routes::{RetryPolicy, Routes, Rule, ServicePort};
use crate::mesh::Identity;
use crate::mesh::metrics::{MeshMetrics, TrafficLabels, Workload};
use crate::mesh::policy::{self, HttpRequest, decide, policies_for};
use crate::model::AuthorizationPolicy;

/// How the proxy reaches a backend endpoint.
pub trait Connect: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    fn connect(&self, backend: SocketAddr)
    -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP to the endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnect;

impl Connect for TcpConnect {
    type Stream = TcpStream;

    async fn connect(&self, backend: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(backend).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A ready endpoint of a Service port: where to connect, and whose it is (for
/// the metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub workload: Workload,
    /// The pod's labels, which AuthorizationPolicies select by.
    pub labels: BTreeMap<String, String>,
}

/// What the proxy routes and authorizes by; the caller fills it from the API's
/// HTTPRoutes, Services, EndpointSlices, Pods and AuthorizationPolicies.
#[derive(Clone, Debug, Default)]
pub struct L7View {
    /// Every Service port by cluster IP and port.
    pub frontends: HashMap<SocketAddr, Frontend>,
    pub routes: Routes,
    pub endpoints: HashMap<ServicePort, Vec<Endpoint>>,
    pub policies: Vec<AuthorizationPolicy>,
}

/// A Service port at one of its cluster IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ServicePort,
    /// The port declares HTTP: the proxy takes connections to it.
    pub http: bool,
}

/// One client connection: who it is from and the Service port it was addressed to.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub source: Workload,
    /// The source's identity; None for a plaintext client from outside the mesh.
    pub identity: Option<Identity>,
    pub destination: ServicePort,
}

#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    #[error("serving HTTP to {source_workload:?}: {error}")]
    Serve {
        source_workload: Workload,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why one attempt at a backend got no response.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("HTTP with {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("{addr} did not answer within the attempt timeout")]
    Timeout { addr: SocketAddr },
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The largest request body kept for retries (Linkerd's limit); requests with
/// larger or unknown-length bodies are streamed and not retried.
const MAX_RETRYABLE_BODY: u64 = 64 * 1024;

/// The proxy's state shared by all its connections: the view, outlier
/// detection, a retry budget per destination Service port, kept backend
/// connections, and the metrics.
pub struct L7Proxy {
    view: ArcSwap<L7View>,
    outliers: Outliers,
    budget_config: BudgetConfig,
    budgets: Mutex<HashMap<ServicePort, Arc<RetryBudget>>>,
    pool: Pool<ProxyBody>,
    metrics: MeshMetrics,
}

impl L7Proxy {
    pub fn new(metrics: MeshMetrics, outliers: OutlierConfig, budget: BudgetConfig) -> Self {
        Self {
            view: ArcSwap::from_pointee(L7View::default()),
            outliers: Outliers::new(outliers),
            budget_config: budget,
            budgets: Mutex::default(),
            pool: Pool::default(),
            metrics,
        }
    }

    /// Replaces the view; requests in flight keep the old one. What the proxy
    /// kept about endpoints and Services no longer in it is dropped.
    pub fn update(&self, view: L7View) {
        let addrs: HashSet<SocketAddr> =
            view.endpoints.values().flatten().map(|e| e.addr).collect();
        self.outliers.keep_only(&addrs);
        self.pool.keep_only(&addrs);
        self.budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|service, _| view.endpoints.contains_key(service));
        self.view.store(Arc::new(view));
    }

    /// The Service port at `frontend` (a cluster IP and port).
    pub fn frontend(&self, frontend: SocketAddr) -> Option<Frontend> {
        self.view.load().frontends.get(&frontend).cloned()
    }

    /// Serves one client connection until it closes.
    pub async fn serve<IO, C>(
        self: Arc<Self>,
        io: IO,
        downstream: Downstream,
        connect: Arc<C>,
    ) -> Result<(), L7Error>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        C: Connect,
    {
        let source_workload = downstream.source.clone();
        let downstream = Arc::new(downstream);
        let service = hyper::service::service_fn(move |request| {
            let (proxy, downstream, connect) = (self.clone(), downstream.clone(), connect.clone());
            async move { Ok::<_, Infallible>(proxy.handle(request, &downstream, &*connect).await) }
        });
        auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service)
            .await
            .map_err(|error| L7Error::Serve {
                source_workload,
                error,
            })
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        downstream: &Downstream,
        connect: &impl Connect,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let view = self.view.load_full();
        let rule = view
            .routes
            .rule(&downstream.destination, request.uri().path());
        let budget = self.budget(&downstream.destination);
        budget.request(start);
        // Linkerd's rule: a retry needs the body kept, so only small ones are.
        let retry = rule.retry.clone().filter(|_| {
            is_idempotent(request.method())
                && request
                    .body()
                    .size_hint()
                    .upper()
                    .is_some_and(|size| size <= MAX_RETRYABLE_BODY)
        });
        let (parts, body) = request.into_parts();
        let mut body = match &retry {
            Some(_) => match body.collect().await {
                Ok(collected) => RequestBody::Buffered(collected.to_bytes()),
                Err(e) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        &format!("reading the request: {e}"),
                    );
                }
            },
            None => RequestBody::Streaming(Some(body)),
        };
        let mut target = Target {
            workload: Workload::default(),
            service: downstream.destination.name.clone(),
        };
        let exchange = Exchange {
            view: &view,
            rule: &rule,
            retry: retry.as_ref(),
            budget: &budget,
            downstream,
            parts: &parts,
        };
        let attempts = self.attempts(&exchange, &mut body, connect, &mut target);
        let response = match rule.timeout {
            Some(limit) => tokio::time::timeout(limit, attempts)
                .await
                .unwrap_or_else(|_| plain(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")),
            None => attempts.await,
        };
        let labels = TrafficLabels::new(&downstream.source, &target.workload, &target.service);
        self.metrics
            .request(&labels, response.status().as_u16(), start.elapsed());
        response
    }

    /// Attempts until a response, a denial, a failure no retry may follow, or the
    /// budget is spent; `target` learns where the last attempt went.
    async fn attempts(
        &self,
        exchange: &Exchange<'_>,
        body: &mut RequestBody,
        connect: &impl Connect,
        target: &mut Target,
    ) -> Response<ProxyBody> {
        let Exchange {
            view,
            rule,
            retry,
            budget,
            downstream,
            parts,
        } = *exchange;
        let mut retries_left = retry.map_or(0, |r| r.attempts);
        loop {
            let (backend, endpoint, pool) = match self.choose(view, rule) {
                Ok(choice) => choice,
                // The Gateway API's answer to a rule with no weight to send by.
                Err(NoBackend::NoWeight) => {
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, "no backend to route to");
                }
                Err(NoBackend::NoEndpoints) => {
                    return plain(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
                }
            };
            *target = Target {
                workload: endpoint.workload.clone(),
                service: backend.name.clone(),
            };
            if let Some(denied) = self.authorize(view, downstream, parts, &endpoint, &backend) {
                return denied;
            }
            let request = upstream_request(parts, body.next());
            let attempt = forward(
                &self.pool,
                connect,
                downstream.identity.as_ref(),
                endpoint.addr,
                request,
            );
            let outcome = match rule.attempt_timeout {
                Some(limit) => tokio::time::timeout(limit, attempt).await.unwrap_or(Err(
                    AttemptError::Timeout {
                        addr: endpoint.addr,
                    },
                )),
                None => attempt.await,
            };
            let failed = outcome
                .as_ref()
                .map_or(true, |response| response.status().is_server_error());
            if self
                .outliers
                .record(endpoint.addr, failed, &pool, Instant::now())
            {
                info!(
                    "ejected {} of {}/{} after consecutive failures",
                    endpoint.addr, backend.namespace, backend.name
                );
            }
            let worth_retrying = retry.is_some_and(|retry| match &outcome {
                Ok(response) => retry.retries_status(response.status().as_u16()),
                Err(_) => true,
            });
            if worth_retrying && retries_left > 0 && budget.try_retry(Instant::now()) {
                retries_left -= 1;
                if let Some(retry) = retry {
                    tokio::time::sleep(retry.backoff).await;
                }
                continue;
            }
            return match outcome {
                Ok(response) => {
                    let mut response = response.map(|b| b.boxed());
                    strip_hop_by_hop(response.headers_mut());
                    response
                }
                Err(error) => {
                    debug!("{error}");
                    match error {
                        AttemptError::Connect { .. } => {
                            plain(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error")
                        }
                        AttemptError::Http { .. } => {
                            plain(StatusCode::BAD_GATEWAY, "upstream reset")
                        }
                        AttemptError::Timeout { .. } => {
                            plain(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                        }
                    }
                }
            };
        }
    }

    /// A backend Service by weight and one of its endpoints outlier detection
    /// has not ejected, with the backend's endpoint addresses.
    fn choose(
        &self,
        view: &L7View,
        rule: &Rule,
    ) -> Result<(ServicePort, Endpoint, Vec<SocketAddr>), NoBackend> {
        let mut rng = rand::rng();
        let total = total_weight(&rule.backends);
        let backend = pick_weighted(&rule.backends, rng.random_range(0..total.max(1)))
            .ok_or(NoBackend::NoWeight)?;
        let endpoints = view
            .endpoints
            .get(&backend.service)
            .filter(|endpoints| !endpoints.is_empty())
            .ok_or(NoBackend::NoEndpoints)?;
        let pool: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
        let available = self.outliers.available(&pool, Instant::now());
        let candidates = if available.is_empty() {
            &pool
        } else {
            &available
        };
        let addr = candidates[rng.random_range(0..candidates.len())];
        let endpoint = endpoints
            .iter()
            .find(|e| e.addr == addr)
            .ok_or(NoBackend::NoEndpoints)?
            .clone();
        Ok((backend.service.clone(), endpoint, pool))
    }

    /// The 403 for a request the destination pod's AuthorizationPolicies deny
    /// (counted and logged); None when they allow it.
    fn authorize(
        &self,
        view: &L7View,
        downstream: &Downstream,
        parts: &hyper::http::request::Parts,
        endpoint: &Endpoint,
        backend: &ServicePort,
    ) -> Option<Response<ProxyBody>> {
        let policies = policies_for(
            &view.policies,
            &endpoint.workload.namespace,
            &endpoint.labels,
        );
        let request = policy::Request {
            source: downstream.identity.as_ref(),
            destination_port: endpoint.addr.port(),
            http: Some(HttpRequest {
                method: parts.method.as_str(),
                path: parts.uri.path(),
            }),
        };
        let decision = decide(policies, &request);
        if decision.allowed {
            return None;
        }
        let policy = decision.policy.unwrap_or_default();
        let labels = TrafficLabels::new(&downstream.source, &endpoint.workload, &backend.name);
        self.metrics.denied(&labels, &policy);
        info!(
            "denied {} {} from {} to {} ({}): {}",
            parts.method,
            parts.uri.path(),
            downstream
                .identity
                .as_ref()
                .map_or_else(|| "a plaintext client".to_string(), |id| id.to_string()),
            endpoint.addr,
            endpoint.workload.name,
            if policy.is_empty() {
                "no ALLOW policy matches".to_string()
            } else {
                format!("policy {policy}")
            }
        );
        Some(plain(StatusCode::FORBIDDEN, "RBAC: access denied"))
    }

    fn budget(&self, destination: &ServicePort) -> Arc<RetryBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .entry(destination.clone())
            .or_insert_with(|| Arc::new(RetryBudget::new(self.budget_config)))
            .clone()
    }
}

/// One request's part of the proxy's state, for its attempts.
#[derive(Clone, Copy)]
struct Exchange<'a> {
    view: &'a L7View,
    rule: &'a Rule,
    retry: Option<&'a RetryPolicy>,
    budget: &'a RetryBudget,
    downstream: &'a Downstream,
    parts: &'a hyper::http::request::Parts,
}

/// Why a request has nowhere to go.
enum NoBackend {
    /// The rule has no backends, or all weigh 0.
    NoWeight,
    /// The chosen backend Service has no ready endpoints.
    NoEndpoints,
}

/// Where a request went, for its metrics.
struct Target {
    workload: Workload,
    service: String,
}

/// A request body: kept to be sent again when the request may be retried,
/// streamed once otherwise.
enum RequestBody {
    Buffered(Bytes),
    Streaming(Option<Incoming>),
}

impl RequestBody {
    fn next(&mut self) -> ProxyBody {
        match self {
            RequestBody::Buffered(bytes) => full(bytes.clone()),
            // Only one attempt is made with a streamed body.
            RequestBody::Streaming(body) => body
                .take()
                .map_or_else(|| full(Bytes::new()), |b| b.boxed()),
        }
    }
}

/// Methods a retry cannot repeat the effect of (RFC 9110 idempotent methods).
fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Sends `request` to `addr` on a kept connection of `source`'s, else on a new
/// one, and keeps the connection for the next request.
async fn forward(
    pool: &Pool<ProxyBody>,
    connect: &impl Connect,
    source: Option<&Identity>,
    addr: SocketAddr,
    mut request: Request<ProxyBody>,
) -> Result<Response<Incoming>, AttemptError> {
    let key = (source.cloned(), addr);
    let http = |source| AttemptError::Http { addr, source };
    if let Some(mut kept) = pool.take(&key) {
        match kept.try_send_request(request).await {
            Ok(response) => {
                pool.put(key, kept);
                return Ok(response);
            }
            // Closed before the request went out: a new connection gets it.
            Err(mut error) => match error.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(http(error.into_error())),
            },
        }
    }
    let stream = connect
        .connect(addr)
        .await
        .map_err(|source| AttemptError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!("connection to {addr}: {e}");
        }
    });
    let response = sender.send_request(request).await.map_err(http)?;
    pool.put(key, sender);
    Ok(response)
}

/// The request as HTTP/1.1 to a backend: origin-form target, a Host header
/// (HTTP/2 carries it as :authority), no hop-by-hop headers.
fn upstream_request(parts: &hyper::http::request::Parts, body: ProxyBody) -> Request<ProxyBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.version_mut() = Version::HTTP_11;
    *request.uri_mut() = parts
        .uri
        .path_and_query()
        .and_then(|p| p.as_str().parse().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    request
}

/// Connection-specific headers (RFC 9110 section 7.6.1), which HTTP/2 forbids.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A response of the proxy's own.
fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
