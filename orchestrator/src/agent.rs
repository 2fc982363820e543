//! The node agent's lifecycle: open the state store, serve the API, attach the
//! dataplane, run the scheduler and the controllers while this agent leads, run
//! until SIGINT or SIGTERM, then stop them and serving (removing the socket) and
//! detach everything it attached, so nothing it created at run time stays on
//! the host. The state directory (store, token, encryption key, the mesh CA of
//! an embedded store; on etcd the cluster's join token) persists by design.
//!
//! With the dataplane, the agent runs the mesh's node proxy (see [`crate::mesh`]),
//! fed by the cluster DNS's pod watch and the cluster's mesh CA.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aya_log::EbpfLogger;
use log::{LevelFilter, info, warn};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::api::allocator::{PodCidr, ServiceNetworks};
use crate::api::cluster_secrets::{self, ClusterSecretsError, Membership};
use crate::api::credentials::CredentialError;
use crate::api::encryption::{self, SecretBox};
use crate::api::registry::{ApiError, Registry};
use crate::api::server::{self, ServerConfig, ServerError, TlsListener};
use crate::image::ImageStore;
use crate::mesh::ca::{Ca, CaError, CaMaterial, Certificates, DEFAULT_TTL, system_clock};
use crate::runtime::{self, node::NodeConfig};
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::{EtcdConfig, EtcdStore};
use crate::store::{Store, StoreError};
use crate::{cgroup, dataplane};

const STORE_FILE: &str = "store.redb";
/// The mesh CA of an embedded store, in the state directory.
const MESH_CA_DIR: &str = "mesh-ca";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Dataplane(#[from] dataplane::Error),
    #[error("the dataplane is still in use at shutdown")]
    DataplaneInUse,
    #[error("state directory {}: {source}", path.display())]
    StateDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    ClusterSecrets(#[from] ClusterSecretsError),
    #[error("encryption key: {0}")]
    Encryption(#[from] encryption::EncryptionError),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("preparing the API: {0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("image store: {0}")]
    Images(crate::image::ImageError),
    #[error("node: {0}")]
    Node(ApiError),
    #[error("reserving the node's pod CIDRs: {0}")]
    PodCidrs(ApiError),
    #[error(transparent)]
    Dns(#[from] crate::dns::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("the mesh CA: {0}")]
    MeshCa(#[from] CaError),
    #[error("the cluster's shared secrets hold no mesh CA")]
    NoMeshCa,
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: io::Error,
    },
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cgroup v2 directory to attach to; the hierarchy's root when unset, so
    /// every process on the node (host and pods) is load-balanced.
    pub cgroup: Option<PathBuf>,
    /// Kernel-side eBPF log level (off by default).
    pub ebpf_log: LevelFilter,
    /// Where the dataplane's maps and links are pinned, so services keep working
    /// while the agent restarts; none ties them to the agent process.
    pub bpf_pin_dir: Option<PathBuf>,
    pub map_capacity: dataplane::Capacity,
    /// The packet-level NodePort path: devices (none: off), Maglev table size.
    pub nodeport: dataplane::nodeport::Settings,
    /// Where `GET /metrics` is served (Prometheus text format).
    pub metrics_addr: std::net::SocketAddr,
    /// Store file, API token and encryption key (created at first start, 0700).
    pub state_dir: PathBuf,
    /// The etcd cluster that holds the state; the embedded store in the state
    /// directory when unset.
    pub store: Option<EtcdConfig>,
    /// How this agent creates or joins the cluster on etcd (unused without `store`).
    pub membership: Membership,
    /// This node's pod CIDRs (one per IP family), reserved in the store at start.
    pub pod_cidrs: Vec<PodCidr>,
    /// The API's unix socket (0600).
    pub socket: PathBuf,
    /// The API over TCP with TLS as well.
    pub tls: Option<TlsListener>,
    pub networks: ServiceNetworks,
    /// How much watch history to keep: every interval, history older than one
    /// interval is compacted (the Kubernetes API server's default is 5 minutes).
    pub compaction_interval: Duration,
    /// How the scheduler ranks nodes.
    pub scheduler_score: crate::scheduler::Scoring,
    /// How this node runs pods.
    pub node: NodeConfig,
    pub dns: crate::dns::Config,
    pub controllers: crate::controllers::Settings,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), Error> {
    let cgroup = match config.cgroup.clone() {
        Some(path) => path,
        None => cgroup::v2_mount_point()?,
    };
    // Handlers first: a signal that arrives during start-up still gets a clean exit.
    let handler = |kind, name| {
        signal(kind).map_err(|source| Error::Signal {
            signal: name,
            source,
        })
    };
    let mut interrupt = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
    // The store before the dataplane: a store that cannot be opened (an etcd that does
    // not answer) fails the start before anything is attached.
    let (registry, store, api_token, mesh_ca) = open_registry(&config).await?;
    let certificates = Arc::new(Certificates::new(
        Arc::new(Ca::new(&mesh_ca)?),
        DEFAULT_TTL,
        system_clock(),
    ));
    let mut node_config = config.node.clone();
    node_config.identity.pod_cidrs = registry
        .reserve_pod_cidrs(&node_config.identity.name, &config.pod_cidrs)
        .await
        .map_err(Error::PodCidrs)?;
    let cidrs: Vec<String> = node_config
        .identity
        .pod_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    info!(
        "node {} has pod CIDRs {}",
        node_config.identity.name,
        cidrs.join(", ")
    );

    // From here on an early return drops the dataplane: what it owns is detached,
    // what it pinned stays (as after a crash) for the next agent.
    let mut dataplane = dataplane::Dataplane::load(&dataplane::Config {
        cgroup,
        ebpf_log: config.ebpf_log,
        pin_dir: config.bpf_pin_dir.clone(),
        capacity: config.map_capacity,
        nodeport: config.nodeport.clone(),
        // Pods' namespaces, where their connected UDP sockets live.
        socket_netns: vec![config.node.netns_dir.clone()],
    })?;
    for program in dataplane.attached() {
        info!(
            "attached {} (program id {}) to {}",
            program.name,
            program.id,
            dataplane.cgroup().display()
        );
    }
    for program in dataplane.nodeport_attached() {
        info!(
            "attached {} (tc program {}) to device {}",
            program.name, program.id, program.device
        );
    }
    let log_reader = dataplane
        .take_logger()
        .map(|l| tokio::spawn(read_ebpf_logs(l)));
    let mesh_maps = dataplane.take_mesh_maps();
    let dataplane = Arc::new(std::sync::Mutex::new(dataplane));

    let images =
        Arc::new(ImageStore::open(&config.state_dir.join("images")).map_err(Error::Images)?);
    let compactor = tokio::spawn(compact_history(store.clone(), config.compaction_interval));
    let listeners = server::bind(&ServerConfig {
        socket: config.socket.clone(),
        tls: config.tls.clone(),
        token: api_token,
    })?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut api = tokio::spawn(server::serve(
        registry.clone(),
        images.clone(),
        Arc::new(node_config.handle()),
        dataplane.clone(),
        listeners,
        async {
            let _ = api_stopped.await;
        },
    ));
    let mut metrics = prometheus_client::registry::Registry::default();
    metrics.register_collector(Box::new(dataplane::DataplaneMetrics(dataplane.clone())));
    let node_addresses = dataplane::node_addresses().unwrap_or_else(|e| {
        warn!("listing the node's addresses for NodePort services: {e}");
        Vec::new()
    });
    let cluster_dns = crate::dns::start(
        &config.dns,
        registry.clone(),
        &node_addresses,
        &node_config.identity.pod_cidrs,
        &mut metrics,
    )
    .await?;
    // What keeps pods NotReady besides their containers: the mesh, for pods it
    // cannot serve.
    let holds = Arc::new(crate::runtime::holds::ReadinessHolds::default());
    let mesh_metrics = crate::mesh::MeshMetrics::default();
    mesh_metrics.register(&mut metrics);
    let (stop_mesh, mesh_stopped) = tokio::sync::oneshot::channel::<()>();
    let mesh = mesh_maps.map(|maps| {
        tokio::spawn(crate::mesh::node::run(
            crate::mesh::node::Settings {
                node_name: node_config.identity.name.clone(),
                paths: node_config.handle().paths,
                trust_domain: config.dns.cluster_domain.clone(),
                holds: holds.clone(),
            },
            registry.clone(),
            certificates.clone(),
            crate::mesh::node::Kernel {
                maps,
                dataplane: dataplane.clone(),
            },
            mesh_metrics,
            async {
                let _ = mesh_stopped.await;
            },
        ))
    });
    let metrics_endpoint = crate::metrics::Endpoint::bind(config.metrics_addr).await?;
    let metrics_addr = metrics_endpoint.local_addr();
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = tokio::spawn(metrics_endpoint.serve(Arc::new(metrics), async {
        let _ = metrics_stopped.await;
    }));
    let (stop_sync, sync_stopped) = tokio::sync::oneshot::channel::<()>();
    let service_sync = tokio::spawn(dataplane::sync::run(
        registry.clone(),
        dataplane.clone(),
        node_addresses,
        async {
            let _ = sync_stopped.await;
        },
    ));
    let (stop_leading, leading_stopped) = tokio::sync::oneshot::channel::<()>();
    let leading = tokio::spawn(lead(
        store.clone(),
        registry.clone(),
        node_config.identity.name.clone(),
        ControlLoops {
            controllers: config.controllers,
            scheduler: config.scheduler_score,
        },
        async {
            let _ = leading_stopped.await;
        },
    ));
    let routes = tokio::spawn(crate::routes::run(
        registry.clone(),
        node_config.identity.name.clone(),
    ));
    let (stop_node, node_stopped) = tokio::sync::oneshot::channel::<()>();
    let node_context = Arc::new(node_config.context(registry.clone(), images.clone(), holds));
    let usage = tokio::spawn(runtime::usage::run(
        node_context.clone(),
        node_config.usage_interval,
    ));
    let identity = node_config.identity.clone();
    let heartbeat_interval = node_config.heartbeat_interval;
    let mut node = tokio::spawn(async move {
        runtime::node::run(node_context, identity, heartbeat_interval, async {
            let _ = node_stopped.await;
        })
        .await
    });
    info!("API listening on unix://{}", config.socket.display());
    if let Some(tls) = &config.tls {
        info!("API listening on https://{}", tls.addr);
    }
    if let Some(addr) = metrics_addr {
        info!("metrics on http://{addr}/metrics");
    }
    info!("skiff agent ready");

    let received = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
        ran = &mut node => {
            // The node stopped by itself: it could not register or follow its pods.
            return Err(match ran {
                Ok(Err(e)) => Error::Node(e),
                Ok(Ok(())) | Err(_) => Error::Node(ApiError::BadRequest("the node loop stopped unexpectedly".into())),
            });
        }
        served = &mut api => {
            // The API stopped by itself: it failed.
            return Err(match served {
                Ok(Err(e)) => e.into(),
                Ok(Ok(())) | Err(_) => Error::Server(ServerError::Io {
                    path: config.socket.clone(),
                    source: io::Error::other("the API server stopped unexpectedly"),
                }),
            });
        }
    };
    info!("{received} received, shutting down");
    compactor.abort();
    usage.abort();
    // The routes stay: pods keep running, and keep reaching other nodes.
    routes.abort();
    if let Some(task) = log_reader {
        task.abort();
    }
    let _ = stop_leading.send(());
    let _ = leading.await;
    // Pods keep running: a restarted agent adopts them.
    let _ = stop_node.send(());
    let _ = node.await;
    let _ = stop_api.send(());
    if let Ok(Err(e)) = api.await {
        warn!("API server: {e}");
    }
    let _ = stop_metrics.send(());
    if let Ok(Err(e)) = metrics_server.await {
        warn!("metrics endpoint: {e}");
    }
    let _ = stop_mesh.send(());
    if let Some(mesh) = mesh {
        let _ = mesh.await;
    }
    drop(cluster_dns);
    let _ = stop_sync.send(());
    let _ = service_sync.await;
    // The sync task, its only other holder, has ended.
    let dataplane = Arc::into_inner(dataplane)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .ok_or(Error::DataplaneInUse)?;
    let cgroup = dataplane.cgroup().to_path_buf();
    let detached = dataplane.detach()?;
    for program in detached.cgroup {
        info!(
            "detached {} (program id {}) from {}",
            program.name,
            program.id,
            cgroup.display()
        );
    }
    for program in detached.tc {
        info!(
            "detached {} (tc program {}) from device {}",
            program.name, program.id, program.device
        );
    }
    info!("skiff agent stopped");
    Ok(())
}

/// The election the agents sharing a store hold for the cluster's control loops.
const CONTROL_LOOPS: &str = "/skiff/leader/control-loops";

/// What the leader runs.
#[derive(Clone, Copy)]
struct ControlLoops {
    controllers: crate::controllers::Settings,
    scheduler: crate::scheduler::Scoring,
}

/// Runs the cluster's control loops (scheduler and controllers) while this agent
/// leads them, campaigning again whenever leadership is lost, until `shutdown`
/// resolves.
async fn lead(
    store: Arc<dyn Store>,
    registry: Registry,
    node: String,
    loops: ControlLoops,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let mut term = tokio::select! {
            _ = &mut shutdown => return,
            term = store.campaign(CONTROL_LOOPS, &node) => match term {
                Ok(term) => term,
                Err(e) => {
                    warn!("campaigning to lead the control loops: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        info!("{node} leads the control loops");
        let controllers = crate::controllers::start(&registry, &loops.controllers);
        let (stop_scheduler, scheduler_stopped) = tokio::sync::oneshot::channel::<()>();
        let scheduler = tokio::spawn(crate::scheduler::run(
            registry.clone(),
            loops.scheduler,
            async {
                let _ = scheduler_stopped.await;
            },
        ));
        let stopping = tokio::select! {
            _ = &mut shutdown => true,
            _ = term.lost() => false,
        };
        let _ = stop_scheduler.send(());
        let _ = scheduler.await;
        controllers.stop().await;
        if stopping {
            term.resign().await;
            return;
        }
        warn!("{node} lost the lead of the control loops; campaigning again");
    }
}

/// Opens the state directory and store, and the registry over them; returns the
/// API token and the mesh CA too. On etcd, the cluster's shared secrets (the mesh
/// CA among them) come from its bootstrap data (created by the cluster's first
/// agent) before anything is written locally.
async fn open_registry(
    config: &Config,
) -> Result<(Registry, Arc<dyn Store>, String, CaMaterial), Error> {
    let dir = &config.state_dir;
    let create_dir = || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::StateDir {
                path: dir.clone(),
                source,
            })
    };
    let (store, secrets): (Arc<dyn Store>, _) = match &config.store {
        Some(etcd) => {
            let store = EtcdStore::connect(etcd).await?;
            let cluster = format!("etcd://{}", etcd.endpoints.join(","));
            let obtained =
                cluster_secrets::obtain(&store, &cluster, &config.membership, dir).await?;
            // Before the token is saved: should saving fail, it is not lost.
            if obtained.created {
                info!(
                    "created the cluster at {cluster}; its join token (also in {}): {}",
                    dir.join(cluster_secrets::JOIN_TOKEN_FILE).display(),
                    obtained.token.expose()
                );
            }
            create_dir()?;
            obtained.save(dir)?;
            (Arc::new(store), obtained.secrets)
        }
        None => {
            create_dir()?;
            let store = EmbeddedStore::open(&dir.join(STORE_FILE))?;
            let mut secrets = cluster_secrets::load_or_create_local(dir)?;
            secrets.mesh_ca = Some(CaMaterial::load_or_create(
                &dir.join(MESH_CA_DIR),
                std::time::SystemTime::now(),
            )?);
            (Arc::new(store), secrets)
        }
    };
    // obtain() adds one to bootstrap data without it.
    let mesh_ca = secrets.mesh_ca.ok_or(Error::NoMeshCa)?;
    let registry = Registry::new(
        store.clone(),
        SecretBox::new(&secrets.encryption_key)?,
        config.networks.clone(),
    );
    registry.bootstrap().await?;
    Ok((registry, store, secrets.api_token, mesh_ca))
}

/// Every `interval`, drops the history older than the revision seen one interval
/// before, so watches can resume within an interval and the file stays bounded.
async fn compact_history(store: Arc<dyn Store>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = None;
    loop {
        ticker.tick().await;
        if let Some(revision) = previous
            && let Err(e) = store.compact(revision).await
        {
            warn!("compacting the store to revision {revision}: {e}");
        }
        match store.revision().await {
            Ok(revision) => previous = Some(revision),
            Err(e) => warn!("reading the store revision: {e}"),
        }
    }
}

/// Forwards kernel-side log records to the `log` crate as they arrive.
async fn read_ebpf_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd for as long as it lives, and the
    // AsyncFd owns the logger.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("eBPF logs unavailable: {e}"),
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => return warn!("eBPF log reader stopped: {e}"),
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
