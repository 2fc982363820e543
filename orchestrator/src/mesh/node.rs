//! The node proxy: serves every enrolled pod on this node from inside the pod's
//! network namespace (Istio ambient's in-pod mode), kept in step with the mesh
//! view level-triggered, as a reconcile loop.
//!
//! For each such pod it opens, in the pod's namespace:
//! - the outbound listeners `127.0.0.1:15001` and `[::1]:15001`, where the
//!   kernel's connect hooks send the pod's TCP connections. Each accepted
//!   connection's original destination comes from the eBPF maps; an enrolled pod
//!   there is reached through HBONE (mutual TLS to `<its IP>:15008`, presenting
//!   this pod's certificate, expecting that pod's identity), anything else by a
//!   plain connection (passthrough). Either way the socket is made in the source
//!   pod's namespace, so what leaves the pod's link is the tunnel or the
//!   connection it would have made itself. A connection to the cluster IP of a
//!   Service port that declares HTTP (the kernel leaves those unbalanced for
//!   enrolled pods) goes to the node's [`L7Proxy`], which picks an endpoint for
//!   each request and reaches it the same way.
//! - the inbound HBONE listener `[::]:15008`: the tunnel's streams are authorized
//!   (the [`Authorize`] callback), must be for this pod's own addresses, and are
//!   delivered by a connection from inside the pod.
//!
//! Then the pod's namespace cookie goes into the capture map, and for a pod of a
//! strict namespace the strict program goes on its host-side link. A pod that
//! leaves the node or the mesh is taken out of the map, loses the strict
//! program and has its listeners closed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use log::{debug, info, warn};
use skiff_ebpf_common::mesh::MESH_OUTBOUND_PORT;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::ca::{CaError, Certificates};
use super::hbone::{Authorize, Dialer, HBONE_PORT, HboneClient, HboneError, HboneServer, Tunnel};
use super::identity::Identity;
use super::l7::{
    BudgetConfig, Connect, Downstream, Frontend, L7Proxy, L7View, OutlierConfig, l7_view,
};
use super::metrics::{MeshMetrics, TrafficLabels, Workload as MetricsWorkload};
use super::netns::{NetnsError, PodNetns};
use super::policy;
use super::view::{Enrolment, MeshView, PodEntry, Workload};
use crate::api::registry::typed::{cast, list_all, watch_all};
use crate::api::registry::{ApiError, EventType, ObjectRef, Registry, WatchEvent, WatchStream};
use crate::dataplane::{Dataplane, MeshMaps};
use crate::model::{
    AuthorizationPolicy, EndpointSlice, HTTPRoute, Kind, Namespace, Object, Pod, Service,
};
use crate::runtime::cni::host_device;
use crate::runtime::holds::{Hold, ReadinessHolds};
use crate::runtime::paths::Paths;
use crate::runtime::record::PodRecord;

/// How soon pods whose proxy could not start are tried again.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("the certificate of {identity}: {source}")]
    Certificate { identity: String, source: CaError },
    #[error("listening on {addr} in the pod: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("the mesh maps: {0}")]
    Maps(io::Error),
    #[error("strict mode: the pod's host-side link is not in its network record")]
    NoDevice,
    #[error("strict mode: {0}")]
    Strict(crate::dataplane::Error),
    #[error("a connection from {peer} has no original destination (not captured by skiff)")]
    NoOriginalDestination { peer: SocketAddr },
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error(transparent)]
    L7(#[from] super::l7::L7Error),
    #[error("connecting to {destination}: {source}")]
    Passthrough {
        destination: SocketAddr,
        source: io::Error,
    },
}

/// What the node proxy needs to know of its node.
pub struct Settings {
    pub node_name: String,
    /// Where the pods' network namespaces are.
    pub paths: Paths,
    /// The identities' trust domain: the cluster domain.
    pub trust_domain: String,
    /// Where a pod the proxy cannot serve is held NotReady.
    pub holds: Arc<ReadinessHolds>,
}

/// The kernel side the proxy drives: the capture maps, and the dataplane that
/// attaches strict mode's program.
pub struct Kernel {
    pub maps: MeshMaps,
    pub dataplane: Arc<Mutex<Dataplane>>,
}

/// What every pod's proxy shares.
struct Shared {
    view: ArcSwap<MeshView>,
    maps: Mutex<MeshMaps>,
    /// Where strict mode's program is attached to pods' links.
    dataplane: Arc<Mutex<Dataplane>>,
    certificates: Arc<Certificates>,
    /// Every AuthorizationPolicy of the cluster.
    policies: ArcSwap<Vec<AuthorizationPolicy>>,
    /// Takes connections to Service ports that declare HTTP.
    l7: Arc<L7Proxy>,
    metrics: MeshMetrics,
}

impl Shared {
    fn maps(&self) -> std::sync::MutexGuard<'_, MeshMaps> {
        // A poisoned lock only means a thread panicked between two map calls;
        // each call is complete on its own.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dataplane(&self) -> std::sync::MutexGuard<'_, Dataplane> {
        // As above: each dataplane call is complete on its own.
        self.dataplane.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `destination`'s AuthorizationPolicies let `source` reach its `port`;
    /// a denial is logged and counted.
    fn allows(&self, destination: &Workload, source: &Identity, port: u16) -> bool {
        let policies = self.policies.load();
        let pod = &destination.pod;
        let decision = policy::decide(
            policy::policies_for(&policies, &pod.namespace, &pod.labels),
            &policy::Request {
                source: Some(source),
                destination_port: port,
                http: None,
            },
        );
        if !decision.allowed {
            let by = decision.policy.unwrap_or_default();
            info!(
                "mesh: denied {source} to {}/{} port {port} ({})",
                pod.namespace,
                pod.name,
                match by.as_str() {
                    "" => "no ALLOW policy matched",
                    deny => deny,
                }
            );
            let from = MetricsWorkload {
                namespace: source.namespace.clone(),
                name: String::new(),
            };
            let labels = TrafficLabels::new(&from, &pod.metrics_workload(), "");
            self.metrics.denied(&labels, &by);
        }
        decision.allowed
    }
}

/// One pod served: its namespace and the tasks of its listeners (aborted when
/// this is dropped).
struct ServedPod {
    workload: Arc<Workload>,
    netns: Arc<PodNetns>,
    /// The host-side link strict mode is attached to.
    strict_device: Option<String>,
    _tasks: JoinSet<()>,
}

/// Runs the node proxy until `shutdown` resolves, then stops capturing and
/// closes every listener.
pub async fn run(
    settings: Settings,
    registry: Registry,
    certificates: Arc<Certificates>,
    kernel: Kernel,
    metrics: MeshMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let Kernel {
        mut maps,
        dataplane,
    } = kernel;
    if let Err(error) = maps.set_proxy(std::process::id()) {
        return warn!("mesh: the node proxy cannot register itself: {error}");
    }
    let shared = Arc::new(Shared {
        view: ArcSwap::default(),
        maps: Mutex::new(maps),
        dataplane,
        certificates,
        policies: ArcSwap::default(),
        l7: Arc::new(L7Proxy::new(
            metrics.clone(),
            OutlierConfig::default(),
            BudgetConfig::default(),
        )),
        metrics,
    });
    let mut served: HashMap<String, ServedPod> = HashMap::new();
    let mut retry = tokio::time::interval(RETRY);
    tokio::pin!(shutdown);
    'relist: loop {
        let mut followed = match list_and_watch(&registry).await {
            Ok(followed) => followed,
            Err(error) => {
                warn!("mesh: following pods, namespaces and policies: {error}; trying again");
                tokio::select! {
                    _ = &mut shutdown => break 'relist,
                    _ = tokio::time::sleep(RETRY) => continue 'relist,
                }
            }
        };
        loop {
            shared
                .policies
                .store(Arc::new(followed.policies.values().cloned().collect()));
            let enrolments: BTreeMap<String, Enrolment> = followed
                .namespaces
                .values()
                .map(|ns| (ns.metadata.name.clone(), Enrolment::of(ns)))
                .collect();
            // Without an enrolled namespace nothing is captured: the views stay
            // empty rather than being rebuilt from every pod on each change.
            let (view, l7) = match enrolments.values().any(|e| e.enrolled) {
                true => {
                    let pod_entries: Vec<PodEntry> = followed
                        .pods
                        .values()
                        .filter_map(PodEntry::from_pod)
                        .collect();
                    let view = MeshView::build(&settings.trust_domain, &enrolments, &pod_entries);
                    let routes: Vec<HTTPRoute> = followed.routes.values().cloned().collect();
                    let l7 = l7_view(
                        followed.services.values(),
                        followed.slices.values(),
                        &routes,
                        followed.policies.values().cloned().collect(),
                        &view,
                    );
                    (view, l7)
                }
                false => (MeshView::default(), L7View::default()),
            };
            shared.l7.update(l7);
            shared.view.store(Arc::new(view));
            reconcile(&settings, &shared, &mut served).await;
            let watched = tokio::select! {
                _ = &mut shutdown => break 'relist,
                event = followed.pod_events.next() => {
                    apply_burst(&mut followed.pods, &mut followed.pod_events, event)
                }
                event = followed.namespace_events.next() => {
                    apply_burst(&mut followed.namespaces, &mut followed.namespace_events, event)
                }
                event = followed.policy_events.next() => {
                    apply_burst(&mut followed.policies, &mut followed.policy_events, event)
                }
                event = followed.service_events.next() => {
                    apply_burst(&mut followed.services, &mut followed.service_events, event)
                }
                event = followed.slice_events.next() => {
                    apply_burst(&mut followed.slices, &mut followed.slice_events, event)
                }
                event = followed.route_events.next() => {
                    apply_burst(&mut followed.routes, &mut followed.route_events, event)
                }
                _ = retry.tick() => Ok(true),
            };
            match watched {
                Ok(true) => {}
                Ok(false) => continue 'relist,
                Err(error) => {
                    warn!("mesh: a watch ended ({error}); listing again");
                    continue 'relist;
                }
            }
        }
    }
    for (uid, pod) in served.drain() {
        stop(&shared, &uid, pod);
    }
    if let Err(error) = shared.maps().set_proxy(0) {
        warn!("mesh: unregistering the node proxy: {error}");
    }
}

/// What the proxy follows, by namespace/name, with their watches.
struct Followed {
    pods: BTreeMap<String, Pod>,
    pod_events: WatchStream,
    namespaces: BTreeMap<String, Namespace>,
    namespace_events: WatchStream,
    policies: BTreeMap<String, AuthorizationPolicy>,
    policy_events: WatchStream,
    services: BTreeMap<String, Service>,
    service_events: WatchStream,
    slices: BTreeMap<String, EndpointSlice>,
    slice_events: WatchStream,
    routes: BTreeMap<String, HTTPRoute>,
    route_events: WatchStream,
}

async fn list_and_watch(registry: &Registry) -> Result<Followed, ApiError> {
    let follow = async |kind| {
        let (objects, version) = list_all::<Object>(registry, kind).await?;
        Ok::<_, ApiError>((objects, watch_all(registry, kind, &version).await?))
    };
    let (pods, pod_events) = follow(Kind::Pod).await?;
    let (namespaces, namespace_events) = follow(Kind::Namespace).await?;
    let (policies, policy_events) = follow(Kind::AuthorizationPolicy).await?;
    let (services, service_events) = follow(Kind::Service).await?;
    let (slices, slice_events) = follow(Kind::EndpointSlice).await?;
    let (routes, route_events) = follow(Kind::HTTPRoute).await?;
    Ok(Followed {
        pods: keyed(pods),
        pod_events,
        namespaces: keyed(namespaces),
        namespace_events,
        policies: keyed(policies),
        policy_events,
        services: keyed(services),
        service_events,
        slices: keyed(slices),
        slice_events,
        routes: keyed(routes),
        route_events,
    })
}

/// The objects of `T`'s kind among `objects`, by namespace/name.
fn keyed<T: TryFrom<Object>>(objects: Vec<Object>) -> BTreeMap<String, T> {
    objects
        .into_iter()
        .filter_map(|o| {
            let key = ObjectRef::of(&o).key();
            Some((key, T::try_from(o).ok()?))
        })
        .collect()
}

/// Applies one watch event to `objects`; false when the watch ended.
fn apply<T: TryFrom<Object>>(
    objects: &mut BTreeMap<String, T>,
    event: Option<Result<WatchEvent, ApiError>>,
) -> Result<bool, ApiError> {
    let Some(event) = event.transpose()? else {
        return Ok(false);
    };
    let key = ObjectRef::of(&event.object).key();
    match (event.event_type, cast::<T>(&event.object)) {
        (EventType::Deleted, _) => {
            objects.remove(&key);
        }
        (EventType::Added | EventType::Modified, Some(object)) => {
            objects.insert(key, object);
        }
        (EventType::Added | EventType::Modified, None) => {}
    }
    Ok(true)
}

/// Applies `first` and the events of `events` that arrived after it: a burst of
/// changes (a rollout, a node lost) makes one view.
fn apply_burst<T: TryFrom<Object>>(
    objects: &mut BTreeMap<String, T>,
    events: &mut WatchStream,
    first: Option<Result<WatchEvent, ApiError>>,
) -> Result<bool, ApiError> {
    let mut applied = apply(objects, first);
    while let (Ok(true), Some(event)) = (&applied, events.next().now_or_never()) {
        applied = apply(objects, event);
    }
    applied
}

/// Serves exactly the enrolled pods of this node: stops the others, starts the
/// missing ones (those that fail are tried again on the next pass).
async fn reconcile(
    settings: &Settings,
    shared: &Arc<Shared>,
    served: &mut HashMap<String, ServedPod>,
) {
    let view = shared.view.load_full();
    let wanted: HashMap<&str, &Arc<Workload>> = view
        .enrolled_on(&settings.node_name)
        .map(|w| (w.pod.uid.as_str(), w))
        .collect();
    let stale: Vec<String> = served
        .iter()
        .filter(|(uid, pod)| {
            wanted
                .get(uid.as_str())
                .is_none_or(|w| ***w != *pod.workload)
        })
        .map(|(uid, _)| uid.clone())
        .collect();
    for uid in stale {
        if let Some(pod) = served.remove(&uid) {
            stop(shared, &uid, pod);
        }
    }
    // Pods no longer wanted (gone, or out of the mesh) are not the mesh's to hold.
    settings.holds.retain(|uid| wanted.contains_key(uid));
    for (uid, workload) in wanted {
        if served.contains_key(uid) {
            continue;
        }
        match start(settings, shared, workload.clone()).await {
            Ok(pod) => {
                info!(
                    "mesh: serving pod {}/{} as {}",
                    workload.pod.namespace, workload.pod.name, workload.identity
                );
                settings.holds.release(uid);
                served.insert(uid.to_string(), pod);
            }
            Err(error) => {
                warn!(
                    "mesh: pod {}/{}: {error}",
                    workload.pod.namespace, workload.pod.name
                );
                // Traffic to a pod the mesh cannot serve would arrive unprotected.
                if let ProxyError::Certificate { .. } = error {
                    settings.holds.hold(
                        uid,
                        Hold {
                            reason: "MeshCertificate".into(),
                            message: error.to_string(),
                        },
                    );
                }
            }
        }
    }
}

fn stop(shared: &Shared, uid: &str, pod: ServedPod) {
    if let Err(error) = shared.maps().unenroll(pod.netns.cookie()) {
        warn!("mesh: pod {uid}: releasing its capture: {error}");
    }
    if let Some(device) = &pod.strict_device
        && let Err(error) = shared.dataplane().detach_mesh_strict(device)
    {
        warn!("mesh: pod {uid}: lifting strict mode: {error}");
    }
    info!(
        "mesh: no longer serving pod {}/{}",
        pod.workload.pod.namespace, pod.workload.pod.name
    );
}

/// Opens the pod's listeners inside its namespace, then captures its traffic
/// (and refuses plaintext to it, in strict mode).
async fn start(
    settings: &Settings,
    shared: &Arc<Shared>,
    workload: Arc<Workload>,
) -> Result<ServedPod, ProxyError> {
    let uid = workload.pod.uid.as_str();
    let netns = Arc::new(PodNetns::enter(&settings.paths.netns(uid))?);
    let identity = workload.identity.clone();
    // Issued now, so a pod whose certificate cannot be issued is never captured.
    shared
        .certificates
        .get(&identity)
        .map_err(|source| ProxyError::Certificate {
            identity: identity.to_string(),
            source,
        })?;
    let listen = async |addr: SocketAddr| {
        netns
            .listen(addr)
            .await
            .map_err(|source| ProxyError::Listen { addr, source })
    };
    let outbound4 = listen((Ipv4Addr::LOCALHOST, MESH_OUTBOUND_PORT).into()).await?;
    // A pod without IPv6 loopback has no IPv6 to capture.
    let outbound6 = listen((Ipv6Addr::LOCALHOST, MESH_OUTBOUND_PORT).into())
        .await
        .inspect_err(|e| debug!("mesh: pod {}: {e}", workload.pod.name))
        .ok();
    let inbound = listen((Ipv6Addr::UNSPECIFIED, HBONE_PORT).into()).await?;

    let dialer: Dialer = {
        let netns = netns.clone();
        Arc::new(move |addr| {
            let netns = netns.clone();
            Box::pin(async move { netns.connect(addr).await })
        })
    };
    // Streams may only be for this pod: the tunnel is not a way into its network.
    let authorize: Authorize = {
        let (shared, workload) = (shared.clone(), workload.clone());
        Arc::new(move |source: &Identity, destination: SocketAddr| {
            workload.pod.ips.contains(&destination.ip())
                && shared.allows(&workload, source, destination.port())
        })
    };
    let server = HboneServer::new(
        inbound,
        shared.certificates.clone(),
        identity.clone(),
        authorize,
        dialer.clone(),
    )?;
    let outbound = Arc::new(Outbound {
        shared: shared.clone(),
        netns: netns.clone(),
        source: workload.pod.metrics_workload(),
        identity,
        client: HboneClient::with_dialer(shared.certificates.clone(), dialer),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(server.serve());
    for listener in std::iter::once(outbound4).chain(outbound6) {
        tasks.spawn(outbound.clone().serve(listener));
    }
    let strict_device = match workload.enrolment.strict {
        true => {
            let device = PodRecord::load(&settings.paths.record(uid))
                .and_then(|record| record.cni_result)
                .and_then(|result| host_device(&result))
                .ok_or(ProxyError::NoDevice)?;
            shared
                .dataplane()
                .attach_mesh_strict(&device)
                .map_err(ProxyError::Strict)?;
            Some(device)
        }
        false => None,
    };
    if let Err(error) = shared.maps().enroll(netns.cookie()) {
        if let Some(device) = &strict_device {
            let _ = shared.dataplane().detach_mesh_strict(device);
        }
        return Err(ProxyError::Maps(error));
    }
    Ok(ServedPod {
        workload,
        netns,
        strict_device,
        _tasks: tasks,
    })
}

/// The outbound side of one pod's proxy.
struct Outbound {
    shared: Arc<Shared>,
    netns: Arc<PodNetns>,
    /// The pod's identity: what it presents to peers.
    identity: Identity,
    /// The pod's workload, as the metrics name it.
    source: MetricsWorkload,
    client: HboneClient,
}

impl Outbound {
    async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let outbound = self.clone();
                        connections.spawn(async move {
                            if let Err(error) = outbound.clone().forward(stream, peer).await {
                                debug!("mesh: outbound from {}: {error}", outbound.identity);
                            }
                        });
                    }
                    Err(error) => warn!("mesh: accepting a captured connection: {error}"),
                },
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    /// Carries one captured connection to where it was going: an HTTP Service's
    /// requests through the L7 proxy, anything else as a stream.
    async fn forward(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), ProxyError> {
        let _ = stream.set_nodelay(true);
        let original = self
            .shared
            .maps()
            .take_original_destination(self.netns.cookie(), peer)
            .map_err(ProxyError::Maps)?
            .ok_or(ProxyError::NoOriginalDestination { peer })?;
        let destination = original.addr;
        // The kernel leaves an HTTP Service's cluster IP as the destination.
        if let Some(Frontend {
            service,
            http: true,
        }) = self.shared.l7.frontend(destination)
        {
            let downstream = Downstream {
                source: self.source.clone(),
                identity: Some(self.identity.clone()),
                destination: service,
            };
            let l7 = self.shared.l7.clone();
            return Ok(l7.serve(stream, downstream, self).await?);
        }
        let service = original
            .frontend
            .and_then(|frontend| self.shared.l7.frontend(frontend))
            .map(|frontend| frontend.service.name)
            .unwrap_or_default();
        let view = self.shared.view.load();
        // Metrics count the mesh's own traffic: connections it carries in a tunnel.
        let meshed = view
            .workload(destination.ip())
            .filter(|w| w.enrolment.enrolled)
            .map(|w| {
                let labels = TrafficLabels::new(&self.source, &w.pod.metrics_workload(), &service);
                (w.identity.clone(), labels)
            });
        drop(view);
        let copied = match meshed {
            Some((peer_identity, labels)) => {
                let mut tunnel = self.tunnel(destination, &peer_identity).await?;
                let metrics = &self.shared.metrics;
                metrics.tcp_opened(&labels);
                let copied = tokio::io::copy_bidirectional(&mut stream, &mut tunnel).await;
                let (sent, received) = copied.as_ref().map_or((0, 0), |bytes| *bytes);
                metrics.tcp_closed(&labels, sent, received);
                copied
            }
            None => {
                let mut upstream = self.passthrough(destination).await?;
                tokio::io::copy_bidirectional(&mut stream, &mut upstream).await
            }
        };
        if let Err(error) = copied {
            debug!("mesh: connection to {destination} ended: {error}");
        }
        Ok(())
    }

    /// A stream to `destination` through HBONE to its pod's proxy, which must
    /// present `peer_identity`.
    async fn tunnel(
        &self,
        destination: SocketAddr,
        peer_identity: &Identity,
    ) -> Result<Tunnel, ProxyError> {
        let proxy = SocketAddr::new(destination.ip(), HBONE_PORT);
        Ok(self
            .client
            .connect(&self.identity, proxy, peer_identity, destination)
            .await?)
    }

    /// A plain connection to `destination` from the pod.
    async fn passthrough(&self, destination: SocketAddr) -> Result<TcpStream, ProxyError> {
        self.netns
            .connect(destination)
            .await
            .map_err(|source| ProxyError::Passthrough {
                destination,
                source,
            })
    }
}

/// A stream the L7 proxy forwards requests over: a tunnel or a plain connection.
pub trait Upstream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Upstream for T {}

/// The L7 proxy reaches an endpoint as the pod's other connections go: through
/// HBONE when the endpoint's pod is in the mesh, else directly, from the pod.
impl Connect for Outbound {
    type Stream = Box<dyn Upstream>;

    async fn connect(&self, backend: SocketAddr) -> io::Result<Box<dyn Upstream>> {
        let peer_identity = self
            .shared
            .view
            .load()
            .workload(backend.ip())
            .filter(|w| w.enrolment.enrolled)
            .map(|w| w.identity.clone());
        let stream: Box<dyn Upstream> = match peer_identity {
            Some(identity) => Box::new(
                self.tunnel(backend, &identity)
                    .await
                    .map_err(io::Error::other)?,
            ),
            None => Box::new(self.passthrough(backend).await.map_err(io::Error::other)?),
        };
        Ok(stream)
    }
}
