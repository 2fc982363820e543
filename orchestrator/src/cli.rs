//! The `skiff` command line: the node agent, and kubectl's everyday verbs against
//! the API (apply, get, describe, delete, create namespace, logs, exec, rollout,
//! scale).
//!
//! - [`config`]: where the API and token come from (flags, config file, defaults).
//! - [`print`]: tables and output formats.
//! - [`rollout`]: `rollout status|history|undo|pause|resume` and `scale`.

pub mod config;
pub mod print;
pub mod rollout;
pub mod top_services;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use log::LevelFilter;
use prost::Message;
use serde_json::Value;
use tonic::Code;

use crate::agent;
use crate::api::allocator::{PodCidr, ServiceNetworks};
use crate::api::client::{self, ApiClient, ClientError};
use crate::api::cluster_secrets::{JoinToken, Membership};
use crate::api::credentials;
use crate::api::proto::{self, exec_output::Output};
use crate::api::server::TlsListener;
use crate::controllers::cronjob::job_from_template;
use crate::model::{CronJob, Kind, Object, manifest};
use crate::runtime::node::{self, NodeConfig, NodeIdentity};
use crate::runtime::pod_files::Dns;
use crate::scheduler::Scoring;
use crate::store::etcd::{EtcdConfig, EtcdError, EtcdTls};
use config::{ConfigError, Overrides, Settings};
use print::{Format, Table};

#[derive(Parser, Debug)]
#[command(
    name = "skiff",
    version,
    about = "A small container orchestrator with an eBPF service network"
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GlobalArgs {
    /// Config file [default: $SKIFF_CONFIG or ~/.skiff/config.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// API address: unix:///path/to/skiff.sock or https://host:port
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// Bearer token for the API (for `skiff agent`: the cluster's join token)
    #[arg(long, global = true)]
    token: Option<String>,
    /// File holding the bearer token (for `skiff agent`: the cluster's join token)
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of an https API server
    #[arg(long, global = true, value_name = "FILE")]
    certificate_authority: Option<PathBuf>,
    /// Namespace [default: the config's, else "default"]
    #[arg(short, long, global = true)]
    namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TopResource {
    #[value(alias = "pod", alias = "po")]
    Pods,
    #[value(alias = "node", alias = "no")]
    Nodes,
    /// The mesh's traffic, from an agent's /metrics (see --metrics-url)
    #[value(alias = "service", alias = "svc")]
    Services,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent in the foreground (root): the API, the state store and the
    /// eBPF dataplane; SIGINT or SIGTERM stops it and detaches the dataplane.
    Agent(Box<AgentArgs>),
    /// Create or update objects from manifests (files, directories, or - for stdin)
    Apply {
        #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Descend into subdirectories
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// List objects of a kind, or show the named ones
    Get {
        kind: String,
        names: Vec<String>,
        /// Across all namespaces
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Label selector, e.g. app=web,tier!=db
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Field selector, e.g. spec.nodeName=node-1
        #[arg(long)]
        field_selector: Option<String>,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
        /// After listing, follow changes
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// CPU and memory in use by pods or nodes, as last sampled by their nodes; or
    /// the mesh's traffic to services, from an agent's /metrics
    Top {
        #[arg(value_enum)]
        resource: TopResource,
        /// Across all namespaces
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Label selector, e.g. app=web
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// For `top services`: the agent's Prometheus endpoint
        #[arg(
            long,
            value_name = "URL",
            default_value = "http://127.0.0.1:9962/metrics"
        )]
        metrics_url: String,
    },
    /// Show objects in detail
    Describe {
        kind: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete the named objects, or those in manifests
    Delete {
        kind: Option<String>,
        names: Vec<String>,
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Seconds a pod gets to stop (0 removes it at once)
        #[arg(long)]
        grace_period: Option<i64>,
        /// What happens to owned objects: background, foreground or orphan
        #[arg(long, value_enum, default_value = "background")]
        cascade: Cascade,
        /// Succeed when an object does not exist
        #[arg(long)]
        ignore_not_found: bool,
    },
    /// Create an object from arguments
    #[command(subcommand)]
    Create(CreateCommand),
    /// Follow, list, undo, pause or resume a Deployment's rollout
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Set the replicas of a Deployment or ReplicaSet: scale deployment/NAME --replicas N
    Scale {
        /// deployment/NAME or replicaset/NAME, or the kind alone followed by NAME
        target: String,
        name: Option<String>,
        #[arg(long, required = true, allow_negative_numbers = true)]
        replicas: i64,
    },
    /// The node's container images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print a container's log: its stdout and stderr, in the order written
    Logs {
        pod: String,
        /// The container [default: the pod's only one]
        #[arg(short, long)]
        container: Option<String>,
        /// Keep printing lines as they are written (across restarts), until the
        /// container ends for good
        #[arg(short, long)]
        follow: bool,
        /// The log of the container's run before the current one
        #[arg(short, long)]
        previous: bool,
        /// How many of the last lines to print; -1 prints all
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        tail: i64,
    },
    /// Run a command in a running container, printing its stdout and stderr and
    /// exiting with its exit code. Not interactive: no TTY, and no stdin.
    Exec {
        pod: String,
        /// The container [default: the pod's only one]
        #[arg(short, long)]
        container: Option<String>,
        /// The command and its arguments, after --
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import an OCI image layout or docker-archive tarball into the node's store
    Import { file: PathBuf },
    /// Pull an image from its registry into the node's store (anonymously),
    /// downloading only the layers the node lacks
    Pull { reference: String },
    /// List the node's images
    #[command(alias = "list")]
    Ls,
    /// Remove an image (its layers go once no image uses them)
    Rm { reference: String },
    /// Write a small busybox test image (from Debian's busybox-static) as an OCI archive
    BuildBusybox {
        /// Where to write the archive
        #[arg(long, short)]
        output: PathBuf,
        #[arg(long, default_value = "busybox:latest")]
        reference: String,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum CreateCommand {
    /// Create a namespace
    #[command(alias = "ns")]
    Namespace { name: String },
    /// Create a Job now from a CronJob's template: create job NAME --from=cronjob/CRON
    Job {
        name: String,
        /// The CronJob whose jobTemplate to use: cronjob/NAME
        #[arg(long, value_name = "cronjob/NAME")]
        from: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Cascade {
    Background,
    Foreground,
    Orphan,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// cgroup v2 directory to attach the socket load balancer to [default: the
    /// root of the cgroup v2 hierarchy]
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics) on this address
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9962")]
    metrics_addr: std::net::SocketAddr,
    /// Kernel-side eBPF log level: off, error, warn, info, debug or trace
    #[arg(long, value_name = "LEVEL", default_value = "off")]
    ebpf_log: LevelFilter,
    /// bpffs directory where the dataplane's maps and links are pinned, so that
    /// services keep working while the agent restarts (mounts bpffs at /sys/fs/bpf
    /// if needed); SIGINT/SIGTERM remove it
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/sys/fs/bpf/skiff",
        conflicts_with = "no_bpf_pin"
    )]
    bpf_pin_dir: PathBuf,
    /// Keep the dataplane's maps and links in the agent process only: they go when it does
    #[arg(long)]
    no_bpf_pin: bool,
    /// Capacity of the service map: frontends (VIP or node address, port, protocol)
    #[arg(long, value_name = "N", default_value_t = skiff_ebpf_common::MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..))]
    max_services: u32,
    /// Capacity of the backend map: backend slots over all services (each service
    /// takes up to twice its backends while an update switches tables)
    #[arg(long, value_name = "N", default_value_t = skiff_ebpf_common::MAX_BACKEND_SLOTS, value_parser = clap::value_parser!(u32).range(1..))]
    max_backend_slots: u32,
    /// A device where NodePort traffic from other hosts arrives as packets, served by
    /// tc programs (repeatable) [default: the default route's device]
    #[arg(
        long = "nodeport-device",
        value_name = "IFACE",
        conflicts_with = "no_nodeport"
    )]
    nodeport_devices: Vec<String>,
    /// No tc programs: NodePorts are served to this node's own clients only (by the
    /// socket load balancer)
    #[arg(long)]
    no_nodeport: bool,
    /// Size of each NodePort frontend's Maglev table (a prime; larger spreads more evenly)
    #[arg(long, value_name = "M", default_value_t = skiff_ebpf_common::nodeport::DEFAULT_MAGLEV_SIZE)]
    maglev_table_size: u32,
    /// Flows each NodePort conntrack map holds (least recently used ones make room)
    #[arg(long, value_name = "N", default_value_t = skiff_ebpf_common::nodeport::MAX_CONNTRACK, value_parser = clap::value_parser!(u32).range(1..))]
    nodeport_conntrack: u32,
    /// NodePort frontends (a NodePort device's address, port, protocol) whose
    /// Maglev tables the maps hold; each takes two tables of M entries
    #[arg(long, value_name = "N", default_value_t = skiff_ebpf_common::nodeport::MAX_NODEPORT_FRONTENDS, value_parser = clap::value_parser!(u32).range(1..))]
    max_nodeport_frontends: u32,
    /// Where the store, the API token and the encryption key live (on etcd: the
    /// cluster's join token and a copy of its API token)
    #[arg(long, value_name = "DIR", default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Keep the cluster's state in etcd, for several nodes sharing it:
    /// etcd://HOST:PORT[,HOST:PORT...] [default: the embedded store in --state-dir].
    /// The first agent creates the cluster and prints its join token
    #[arg(long, value_name = "URL", value_parser = parse_store)]
    store: Option<EtcdConfig>,
    /// Join the cluster on --store that another agent created, with its join token
    /// (--token or --token-file)
    #[arg(long, requires = "store")]
    join: bool,
    /// The CA certificate (PEM) that signed the etcd members' certificates; talks
    /// to etcd over TLS
    #[arg(long, value_name = "FILE", requires = "store")]
    etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd members that check clients (needs --etcd-key)
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// The API's unix socket
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also serve the API over TCP with TLS on this address (needs --tls-cert and --tls-key)
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    listen: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "FILE", requires = "listen")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "listen")]
    tls_key: Option<PathBuf>,
    /// IPv4 service CIDR
    #[arg(long, value_name = "CIDR", default_value = "10.96.0.0/12")]
    service_cidr_v4: ipnet::Ipv4Net,
    /// IPv6 service CIDR
    #[arg(long, value_name = "CIDR", default_value = "fd00:10:96::/112")]
    service_cidr_v6: ipnet::Ipv6Net,
    /// Watch history older than this is dropped, e.g. 5m or 30s
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    compaction_interval: std::time::Duration,
    /// This node's name [default: the host name]
    #[arg(long)]
    node_name: Option<String>,
    /// The addresses other nodes reach this one at, one per IP family, comma
    /// separated [default: the source address of each family's default route]
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    node_ip: Vec<std::net::IpAddr>,
    /// This node's pod CIDRs, one per IP family [default: free ones of --cluster-cidr,
    /// reserved in the store so that nodes sharing it never overlap]
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pod_cidrs: Vec<ipnet::IpNet>,
    /// The cluster's pod networks, one per IP family, that nodes get their pod CIDRs from
    #[arg(long = "cluster-cidr", value_name = "CIDR", default_values = ["10.244.0.0/16", "fd00:10:244::/56"])]
    cluster_cidrs: Vec<ipnet::IpNet>,
    /// The prefix length of each node's IPv4 pod CIDR taken from --cluster-cidr
    #[arg(long, value_name = "BITS", default_value_t = 24, value_parser = clap::value_parser!(u8).range(1..=32))]
    node_cidr_mask_size_ipv4: u8,
    /// The prefix length of each node's IPv6 pod CIDR taken from --cluster-cidr
    #[arg(long, value_name = "BITS", default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=128))]
    node_cidr_mask_size_ipv6: u8,
    /// Where the CNI plugins are [default: next to this binary, then /opt/cni/bin and /usr/lib/cni]
    #[arg(long = "cni-bin-dir", value_name = "DIR")]
    cni_bin_dirs: Vec<PathBuf>,
    /// Where pods' network namespaces are pinned
    #[arg(long, value_name = "DIR", default_value = "/run/netns")]
    netns_dir: PathBuf,
    /// Where containers' logs are written
    #[arg(long, value_name = "DIR", default_value = "/var/log/skiff/pods")]
    log_dir: PathBuf,
    /// The cluster DNS addresses pods are told to use
    #[arg(long = "cluster-dns", value_name = "IP", default_values = ["10.96.0.10", "fd00:10:96::a"])]
    cluster_dns: Vec<std::net::IpAddr>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Serve cluster DNS (UDP and TCP) on this address; repeatable; port 0 picks
    /// a free port [default: port 53 on the first address of each pod CIDR, the
    /// pods' gateway, where the cluster DNS IPs lead]
    #[arg(long = "dns-addr", value_name = "ADDR")]
    dns_addrs: Vec<std::net::SocketAddr>,
    /// TTL of cluster DNS answers, e.g. 5s
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    dns_ttl: std::time::Duration,
    /// The resolv.conf whose nameservers cluster DNS forwards other names to
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    dns_upstream_resolv_conf: PathBuf,
    /// Also resolve names outside the cluster zone for clients in this CIDR
    /// (loopback, the node's addresses and the pod CIDRs always may); repeatable
    #[arg(long = "dns-recursion-from", value_name = "CIDR")]
    dns_recursion_from: Vec<ipnet::IpNet>,
    /// MTU of pods' interfaces [default: the kernel's]
    #[arg(long)]
    pod_mtu: Option<u32>,
    /// Most processes in one container
    #[arg(long, default_value_t = 4096)]
    pod_pids_limit: i64,
    /// How often each running pod's network is checked with the CNI plugin (CNI
    /// CHECK), e.g. 60s
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pod_network_check_interval: std::time::Duration,
    /// How often the node's and its pods' CPU and memory usage is sampled and
    /// published as NodeMetrics and PodMetrics (`skiff top`, autoscaling)
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    usage_interval: std::time::Duration,
    /// What the node keeps for itself and the system: the node's allocatable
    /// (what the scheduler places pods against) is its capacity minus this
    #[arg(long, value_name = "cpu=Q,memory=Q", default_value = "cpu=100m,memory=256Mi", value_parser = parse_reserved)]
    system_reserved: crate::runtime::node::Reserved,
    /// A node that has not reported Ready for this long is lost: marked Unknown,
    /// tainted NoExecute, and its pods are replaced elsewhere
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often each HorizontalPodAutoscaler looks at its target
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    hpa_sync_period: std::time::Duration,
    /// How often this node reports itself Ready
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    node_heartbeat_interval: std::time::Duration,
    /// A container's log file is rotated past this many bytes
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    container_log_max_bytes: u64,
    /// A registry (HOST:PORT, as image references name it) to pull from over
    /// plain HTTP rather than HTTPS; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = parse_registry_host)]
    insecure_registries: Vec<String>,
    /// How the scheduler ranks the nodes a pod fits on: most-allocated packs pods
    /// onto the fullest nodes, least-allocated spreads them
    #[arg(long, value_name = "STRATEGY", value_enum, default_value_t = Scoring::MostAllocated)]
    scheduler_score: Scoring,
}

fn parse_registry_host(text: &str) -> Result<String, String> {
    // The host part of a reference that names it, parsed as references are.
    let parsed = crate::image::Reference::parse(&format!("{text}/probe"))
        .map_err(|_| format!("\"{text}\" is not a registry host like registry.local:5000"))?;
    match parsed.domain() == text {
        true => Ok(text.to_owned()),
        false => Err(format!(
            "\"{text}\" is not a registry host like registry.local:5000"
        )),
    }
}

/// What the node asks the store for: its --pod-cidr as given, or a subnet of each
/// --cluster-cidr.
fn pod_cidr_requests(args: &AgentArgs) -> Vec<PodCidr> {
    if !args.pod_cidrs.is_empty() {
        return args.pod_cidrs.iter().copied().map(PodCidr::Fixed).collect();
    }
    args.cluster_cidrs
        .iter()
        .map(|&cluster| PodCidr::Allocate {
            cluster,
            prefix_len: match cluster {
                ipnet::IpNet::V4(_) => args.node_cidr_mask_size_ipv4,
                ipnet::IpNet::V6(_) => args.node_cidr_mask_size_ipv6,
            },
        })
        .collect()
}

fn parse_store(text: &str) -> Result<EtcdConfig, EtcdError> {
    Ok(EtcdConfig {
        endpoints: crate::store::etcd::parse_url(text)?,
        // From --etcd-ca and its friends, once clap has them all.
        tls: None,
    })
}

fn parse_reserved(text: &str) -> Result<crate::runtime::node::Reserved, String> {
    let mut reserved = crate::runtime::node::Reserved::default();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (name, quantity) = pair
            .split_once('=')
            .ok_or_else(|| format!("\"{pair}\" is not NAME=QUANTITY (like cpu=100m)"))?;
        let parsed = crate::model::Quantity(quantity.into())
            .parse()
            .map_err(|e| format!("{name}: {e}"))?;
        if parsed.millis() < 0 {
            return Err(format!("{name}: {quantity} must not be negative"));
        }
        match name {
            "cpu" => reserved.cpu_millis = parsed.millis(),
            "memory" => reserved.memory_bytes = parsed.value(),
            other => return Err(format!("\"{other}\" cannot be reserved (cpu or memory)")),
        }
    }
    Ok(reserved)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("\"{text}\" is not a duration like 30s or 5m: {e}"))?;
    std::time::Duration::try_from(duration)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("\"{text}\" must be positive"))
}

impl AgentArgs {
    /// The kernel-side log level, for the logger the binary sets up.
    pub fn ebpf_log(&self) -> LevelFilter {
        self.ebpf_log
    }
}

impl Cli {
    /// The agent's eBPF log level when this is `skiff agent`.
    pub fn agent_ebpf_log(&self) -> Option<LevelFilter> {
        match &self.command {
            Command::Agent(args) => Some(args.ebpf_log()),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("error: {0}")]
    Config(#[from] ConfigError),
    #[error("error: {0} (is `skiff agent` running?)")]
    Connect(#[from] ClientError),
    #[error("{}", .0.iter().map(|e| format!("error: {e}")).collect::<Vec<_>>().join("\n"))]
    Manifest(Vec<manifest::ManifestError>),
    #[error("{}", .0.iter().map(|e| format!("error: {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
    #[error("Error from server ({}): {}", reason(.0.code()), .0.message())]
    Server(tonic::Status),
    /// Several failures of one command, each already worded.
    #[error("{}", .0.join("\n"))]
    Failures(Vec<String>),
    #[error("error: {0}")]
    Usage(String),
    #[error("error: {0}")]
    Agent(#[from] agent::Error),
    #[error("error: writing the output: {0}")]
    Output(std::io::Error),
    #[error("error: reading the mesh metrics at {url}: {reason}")]
    Metrics { url: String, reason: String },
    /// `exec`'s command failed: its exit code becomes skiff's, as with kubectl.
    #[error("command terminated with exit code {0}")]
    CommandExit(i32),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::CommandExit(code) => u8::try_from(*code).unwrap_or(1),
            _ => 1,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Server(status)
    }
}

/// kubectl's names for server error reasons.
fn reason(code: Code) -> &'static str {
    match code {
        Code::NotFound => "NotFound",
        Code::Aborted => "Conflict",
        Code::InvalidArgument => "BadRequest",
        Code::Unauthenticated => "Unauthorized",
        Code::PermissionDenied => "Forbidden",
        Code::FailedPrecondition => "Invalid",
        Code::OutOfRange => "Expired",
        Code::ResourceExhausted => "ServiceUnavailable",
        Code::Unavailable => "ServiceUnavailable",
        _ => "InternalError",
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let overrides = Overrides {
        config: cli.global.config,
        server: cli.global.server,
        token: cli.global.token,
        token_file: cli.global.token_file,
        certificate_authority: cli.global.certificate_authority,
        namespace: cli.global.namespace,
    };
    match cli.command {
        Command::Agent(args) => {
            let membership = membership(&args, overrides.token, overrides.token_file)?;
            Ok(agent::run(agent_config(*args, membership)).await?)
        }
        Command::Apply { files, recursive } => {
            let documents = load(&files, recursive)?;
            let settings = config::resolve(&overrides)?;
            apply(&settings, documents, overrides.namespace.is_some()).await
        }
        Command::Get {
            kind,
            names,
            all_namespaces,
            selector,
            field_selector,
            output,
            watch,
        } => {
            let settings = config::resolve(&overrides)?;
            let query = Query {
                kind: parse_kind(&kind)?,
                namespace: (!all_namespaces).then(|| settings.namespace.clone()),
                labels: selector.unwrap_or_default(),
                fields: field_selector.unwrap_or_default(),
            };
            get(&settings, &query, &names, output, watch).await
        }
        Command::Top {
            resource: TopResource::Services,
            all_namespaces,
            metrics_url,
            ..
        } => {
            let namespace = config::namespace(&overrides)?;
            let metrics =
                top_services::fetch(&metrics_url)
                    .await
                    .map_err(|reason| CliError::Metrics {
                        url: metrics_url,
                        reason,
                    })?;
            let namespace = (!all_namespaces).then_some(namespace.as_str());
            print!("{}", top_services::table(&metrics, namespace));
            Ok(())
        }
        Command::Top {
            resource,
            all_namespaces,
            selector,
            metrics_url: _,
        } => {
            let settings = config::resolve(&overrides)?;
            let query = Query {
                kind: match resource {
                    TopResource::Nodes => Kind::NodeMetrics,
                    _ => Kind::PodMetrics,
                },
                namespace: (!all_namespaces).then(|| settings.namespace.clone()),
                labels: selector.unwrap_or_default(),
                fields: String::new(),
            };
            get(&settings, &query, &[], None, false).await
        }
        Command::Describe { kind, names } => {
            let settings = config::resolve(&overrides)?;
            let kind = parse_kind(&kind)?;
            let mut client = client::connect(&settings.connection).await?;
            let mut sections = Vec::new();
            for name in names {
                let object = get_one(&mut client, kind, &settings.namespace, &name).await?;
                let events = events_of(&mut client, &object).await?;
                sections.push(print::describe(kind, &object, &events));
            }
            print!("{}", sections.join("\n\n"));
            Ok(())
        }
        Command::Delete {
            kind,
            names,
            files,
            grace_period,
            cascade,
            ignore_not_found,
        } => {
            let targets = delete_targets(kind, names, &files, overrides.namespace.as_deref())?;
            let settings = config::resolve(&overrides)?;
            let options = DeleteOptions {
                grace_period,
                cascade,
                ignore_not_found,
            };
            delete(&settings, targets, options).await
        }
        Command::Image(command) => image(&overrides, command).await,
        Command::Rollout(command) => {
            let settings = config::resolve(&overrides)?;
            rollout::rollout(&settings, command).await
        }
        Command::Scale {
            target,
            name,
            replicas,
        } => {
            let settings = config::resolve(&overrides)?;
            rollout::scale(&settings, &target, name, replicas).await
        }
        Command::Logs {
            pod,
            container,
            follow,
            previous,
            tail,
        } => {
            let settings = config::resolve(&overrides)?;
            let request = proto::LogsRequest {
                key: Some(container_key(&settings, pod, container)),
                follow,
                previous,
                tail_lines: u64::try_from(tail).ok(),
            };
            logs(&settings, request).await
        }
        Command::Exec {
            pod,
            container,
            command,
        } => {
            let settings = config::resolve(&overrides)?;
            let request = proto::ExecRequest {
                key: Some(container_key(&settings, pod, container)),
                command,
            };
            exec(&settings, request).await
        }
        Command::Create(CreateCommand::Job { name, from }) => {
            let settings = config::resolve(&overrides)?;
            create_job_from(&settings, &name, &from).await
        }
        Command::Create(CreateCommand::Namespace { name }) => {
            let settings = config::resolve(&overrides)?;
            let namespace = serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
            });
            let mut client = client::connect(&settings.connection).await?;
            let existing = client
                .get(proto::GetRequest {
                    key: Some(proto::ObjectKey {
                        kind: "Namespace".into(),
                        namespace: String::new(),
                        name: name.clone(),
                    }),
                })
                .await;
            match existing {
                Ok(_) => Err(CliError::Server(tonic::Status::already_exists(format!(
                    "namespaces \"{name}\" already exists"
                )))),
                Err(status) if status.code() == Code::NotFound => {
                    client
                        .apply(proto::ApplyRequest {
                            objects: vec![json_bytes(&namespace)],
                        })
                        .await?;
                    println!("namespace/{name} created");
                    Ok(())
                }
                Err(status) => Err(status.into()),
            }
        }
    }
}

fn container_key(
    settings: &Settings,
    pod: String,
    container: Option<String>,
) -> proto::ContainerKey {
    proto::ContainerKey {
        namespace: settings.namespace.clone(),
        pod,
        container: container.unwrap_or_default(),
    }
}

/// Writes and flushes (a follower shows lines as they come); false when the
/// reader has gone (`skiff logs | head`), which ends the command quietly.
fn write_out(out: &mut impl Write, data: &[u8]) -> Result<bool, CliError> {
    match out.write_all(data).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Output(e)),
    }
}

async fn logs(settings: &Settings, request: proto::LogsRequest) -> Result<(), CliError> {
    let mut client = client::connect(&settings.connection).await?;
    let mut chunks = client.logs(request).await?.into_inner();
    while let Some(chunk) = chunks.message().await? {
        if !write_out(&mut std::io::stdout(), &chunk.data)? {
            break;
        }
    }
    Ok(())
}

async fn exec(settings: &Settings, request: proto::ExecRequest) -> Result<(), CliError> {
    let mut client = client::connect(&settings.connection).await?;
    let mut outputs = client.exec(request).await?.into_inner();
    while let Some(message) = outputs.message().await? {
        match message.output {
            Some(Output::Stdout(data)) => {
                write_out(&mut std::io::stdout(), &data)?;
            }
            Some(Output::Stderr(data)) => {
                write_out(&mut std::io::stderr(), &data)?;
            }
            Some(Output::ExitCode(0)) => return Ok(()),
            Some(Output::ExitCode(code)) => return Err(CliError::CommandExit(code)),
            None => {}
        }
    }
    Err(CliError::Server(tonic::Status::internal(
        "the command's output ended without its exit code",
    )))
}

/// How the agent creates or joins its cluster: --join, and the join token from
/// --token or --token-file, which mean that only with --store.
fn membership(
    args: &AgentArgs,
    token: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<Membership, CliError> {
    let token = match (token, token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) => Some(
            credentials::read_token(&path)
                .map_err(|e| CliError::Usage(format!("--token-file: {e}")))?,
        ),
        (None, None) => None,
    };
    if token.is_some() && args.store.is_none() {
        return Err(CliError::Usage(
            "--token and --token-file give `skiff agent` the join token of a cluster on etcd \
             (--store etcd://...); the embedded store has no cluster to join"
                .into(),
        ));
    }
    let token = token
        .map(|token| JoinToken::parse(&token))
        .transpose()
        .map_err(|e| CliError::Usage(format!("--token: {e}")))?;
    Ok(Membership {
        join: args.join,
        token,
    })
}

fn agent_config(args: AgentArgs, membership: Membership) -> agent::Config {
    let pod_cidrs = pod_cidr_requests(&args);
    let dns = crate::dns::Config {
        listen: args.dns_addrs,
        cluster_domain: args.cluster_domain.clone(),
        ttl: args.dns_ttl,
        upstream_resolv_conf: args.dns_upstream_resolv_conf,
        recursion_from: args.dns_recursion_from,
        service_ips: args.cluster_dns.clone(),
    };
    agent::Config {
        pod_cidrs,
        dns,
        cgroup: args.cgroup,
        ebpf_log: args.ebpf_log,
        bpf_pin_dir: (!args.no_bpf_pin).then_some(args.bpf_pin_dir),
        metrics_addr: args.metrics_addr,
        map_capacity: crate::dataplane::Capacity {
            services: args.max_services,
            backend_slots: args.max_backend_slots,
        },
        nodeport: crate::dataplane::nodeport::Settings {
            devices: if args.no_nodeport {
                Vec::new()
            } else if args.nodeport_devices.is_empty() {
                crate::dataplane::nodeport::default_route_device()
                    .into_iter()
                    .collect()
            } else {
                args.nodeport_devices
            },
            maglev_size: args.maglev_table_size,
            conntrack: args.nodeport_conntrack,
            frontends: args.max_nodeport_frontends,
        },
        state_dir: args.state_dir.clone(),
        membership,
        store: args.store.map(|etcd| EtcdConfig {
            tls: args.etcd_ca.map(|ca| EtcdTls {
                ca,
                // clap's `requires` puts --etcd-cert and --etcd-key together.
                identity: args.etcd_cert.zip(args.etcd_key),
            }),
            ..etcd
        }),
        socket: args.socket,
        tls: args.listen.map(|addr| TlsListener {
            addr,
            // clap's `requires_all` guarantees both accompany --listen.
            cert: args.tls_cert.unwrap_or_default(),
            key: args.tls_key.unwrap_or_default(),
        }),
        networks: ServiceNetworks {
            ipv4: args.service_cidr_v4,
            ipv6: args.service_cidr_v6,
            ..ServiceNetworks::default()
        },
        compaction_interval: args.compaction_interval,
        controllers: crate::controllers::Settings {
            node_monitor_grace: args.node_monitor_grace_period,
            autoscaler_sync: args.hpa_sync_period,
        },
        scheduler_score: args.scheduler_score,
        node: NodeConfig {
            identity: NodeIdentity {
                name: args.node_name.unwrap_or_else(host_name),
                host_ips: if args.node_ip.is_empty() {
                    node::default_host_ips()
                } else {
                    args.node_ip
                },
                // Reserved in the store when the agent starts.
                pod_cidrs: Vec::new(),
                reserved: args.system_reserved,
            },
            cni_bin_dirs: if args.cni_bin_dirs.is_empty() {
                default_cni_bin_dirs()
            } else {
                args.cni_bin_dirs
            },
            state_dir: args.state_dir.clone(),
            netns_dir: args.netns_dir,
            log_dir: args.log_dir,
            dns: Dns {
                nameservers: args.cluster_dns,
                cluster_domain: args.cluster_domain,
            },
            mtu: args.pod_mtu,
            pids_limit: args.pod_pids_limit,
            log_max_bytes: args.container_log_max_bytes,
            network_check: args.pod_network_check_interval,
            usage_interval: args.usage_interval,
            heartbeat_interval: args.node_heartbeat_interval,
            pull: crate::image::PullOptions {
                insecure_registries: args.insecure_registries,
            },
        },
    }
}

async fn image(overrides: &Overrides, command: ImageCommand) -> Result<(), CliError> {
    if let ImageCommand::BuildBusybox {
        output,
        reference,
        busybox,
    } = &command
    {
        crate::image::build::build_busybox_oci_archive(busybox, reference, output)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        println!("wrote {reference} to {}", output.display());
        return Ok(());
    }
    let settings = config::resolve(overrides)?;
    let mut client = client::connect(&settings.connection).await?;
    match command {
        ImageCommand::Import { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| CliError::Usage(format!("reading {}: {e}", file.display())))?;
            // Chunks well under gRPC's default 4 MiB message limit.
            let chunks: Vec<proto::ImageChunk> = bytes
                .chunks(1024 * 1024)
                .map(|c| proto::ImageChunk { data: c.to_vec() })
                .collect();
            let imported = client
                .import_image(futures::stream::iter(chunks))
                .await?
                .into_inner();
            for image in imported.images {
                println!("imported {} ({})", image.reference, image.id);
            }
        }
        ImageCommand::Pull { reference } => {
            let pulled = client
                .pull_image(proto::PullImageRequest { reference })
                .await?
                .into_inner();
            let image = pulled.image.unwrap_or_default();
            println!("pulled {}", image.reference);
            println!("id: {}", image.id);
            println!("digest: {}", pulled.digest);
            println!(
                "layers: {} downloaded ({} bytes), {} already present",
                pulled.layers_downloaded,
                pulled.bytes_downloaded,
                pulled.layers.saturating_sub(pulled.layers_downloaded)
            );
        }
        ImageCommand::Ls => {
            let listed = client
                .list_images(proto::ListImagesRequest {})
                .await?
                .into_inner();
            println!("{}", print::images(&listed.images));
        }
        ImageCommand::Rm { reference } => {
            client
                .remove_image(proto::RemoveImageRequest {
                    reference: reference.clone(),
                })
                .await?;
            println!("removed {reference}");
        }
        ImageCommand::BuildBusybox { .. } => {}
    }
    Ok(())
}

/// The kernel's host name, as Kubernetes names nodes by default.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|n| n.trim().to_lowercase())
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// The directory of this binary (where `cargo xtask build` puts skiff-cni), then
/// the usual CNI directories.
fn default_cni_bin_dirs() -> Vec<PathBuf> {
    let beside_me = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from));
    beside_me
        .into_iter()
        .chain([PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")])
        .collect()
}

fn parse_kind(name: &str) -> Result<Kind, CliError> {
    Kind::from_cli_name(name).ok_or_else(|| {
        CliError::Usage(format!(
            "the server doesn't have a resource type \"{name}\""
        ))
    })
}

fn load(files: &[PathBuf], recursive: bool) -> Result<Vec<manifest::Document>, CliError> {
    manifest::load(files, recursive, &mut std::io::stdin()).map_err(CliError::Manifest)
}

fn json_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Applies the documents in one request; objects without a namespace get the
/// current one, and with `-n` an object naming another namespace is an error.
async fn apply(
    settings: &Settings,
    documents: Vec<manifest::Document>,
    explicit_namespace: bool,
) -> Result<(), CliError> {
    let mut objects = Vec::with_capacity(documents.len());
    let mut problems = Vec::new();
    for document in &documents {
        let mut object = document.object.clone();
        if object.kind().namespaced() {
            let meta = object.metadata_mut();
            match &meta.namespace {
                Some(ns) if *ns != settings.namespace && explicit_namespace => {
                    problems.push(format!(
                        "{} doc {}: the namespace from the object \"{ns}\" does not match the namespace \"{}\"",
                        document.source, document.index, settings.namespace
                    ));
                }
                Some(_) => {}
                None => meta.namespace = Some(settings.namespace.clone()),
            }
        }
        objects.push(json_bytes(&object.to_value()));
    }
    if !problems.is_empty() {
        return Err(CliError::Invalid(problems));
    }
    let mut client = client::connect(&settings.connection).await?;
    let response = match client.apply(proto::ApplyRequest { objects }).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(explain_apply_error(status, &documents)),
    };
    for (applied, document) in response.objects.iter().zip(&documents) {
        let outcome = match applied.outcome() {
            proto::ApplyOutcome::Created => "created",
            proto::ApplyOutcome::Configured => "configured",
            _ => "unchanged",
        };
        let value: Value = serde_json::from_slice(&applied.object).unwrap_or_default();
        println!(
            "{} {outcome}",
            print::name_of(document.object.kind(), &value)
        );
    }
    Ok(())
}

/// Server-side validation failures, named by the file and document they came from.
fn explain_apply_error(status: tonic::Status, documents: &[manifest::Document]) -> CliError {
    if status.code() != Code::InvalidArgument {
        return CliError::Server(status);
    }
    match proto::ValidationFailure::decode(status.details()) {
        Ok(failure) if !failure.violations.is_empty() => CliError::Invalid(
            failure
                .violations
                .iter()
                .map(|v| {
                    let place = documents
                        .get(v.object_index as usize)
                        .map(|d| format!("{} doc {}", d.source, d.index))
                        .unwrap_or_else(|| format!("object {}", v.object_index));
                    if v.field.is_empty() {
                        format!("{place}: {}", v.reason)
                    } else {
                        format!("{place}: {}: {}", v.field, v.reason)
                    }
                })
                .collect(),
        ),
        _ => CliError::Server(status),
    }
}

struct Query {
    kind: Kind,
    /// None: every namespace.
    namespace: Option<String>,
    labels: String,
    fields: String,
}

async fn get(
    settings: &Settings,
    query: &Query,
    names: &[String],
    output: Option<Format>,
    watch: bool,
) -> Result<(), CliError> {
    let mut client = client::connect(&settings.connection).await?;
    let namespace = query.namespace.clone().unwrap_or_default();
    let (objects, resource_version) = if names.is_empty() {
        let list = client
            .list(proto::ListRequest {
                kind: query.kind.name().into(),
                namespace: namespace.clone(),
                label_selector: query.labels.clone(),
                field_selector: query.fields.clone(),
            })
            .await?
            .into_inner();
        let objects: Vec<Value> = list
            .objects
            .iter()
            .filter_map(|o| serde_json::from_slice(o).ok())
            .collect();
        (objects, list.resource_version)
    } else {
        let mut objects = Vec::new();
        for name in names {
            objects.push(get_one(&mut client, query.kind, &settings.namespace, name).await?);
        }
        (objects, String::new())
    };
    let wide = output == Some(Format::Wide);
    let now = jiff::Timestamp::now().as_second();
    match output {
        Some(format @ (Format::Yaml | Format::Json)) => {
            print!("{}", print::serialize(&objects, format, names.len() != 1));
        }
        Some(Format::Name) => {
            for object in &objects {
                println!("{}", print::name_of(query.kind, object));
            }
        }
        _ if objects.is_empty() && !watch => match &query.namespace {
            Some(ns) if query.kind.namespaced() => {
                eprintln!("No resources found in {ns} namespace.")
            }
            _ => eprintln!("No resources found"),
        },
        _ if wide && query.kind == Kind::Service => {
            // Services show their backends as this node's dataplane holds them.
            let frontends = client
                .list_frontends(proto::ListFrontendsRequest {})
                .await?
                .into_inner()
                .frontends;
            let mut table =
                Table::new(query.kind, wide, query.namespace.is_none()).with_column("BACKENDS");
            for object in &objects {
                let backends = print::service_backends(object, &frontends);
                table.push_with(query.kind, object, wide, now, [backends]);
            }
            print!("{}", table.render(true));
        }
        _ => {
            let mut table = Table::new(query.kind, wide, query.namespace.is_none());
            for object in &objects {
                table.push(query.kind, object, wide, now);
            }
            print!("{}", table.render(true));
        }
    }
    if watch {
        follow(&mut client, query, output, resource_version).await?;
    }
    Ok(())
}

/// Prints changes as they happen, until the stream ends or fails.
async fn follow(
    client: &mut ApiClient,
    query: &Query,
    output: Option<Format>,
    resource_version: String,
) -> Result<(), CliError> {
    let mut events = client
        .watch(proto::WatchRequest {
            kind: query.kind.name().into(),
            namespace: query.namespace.clone().unwrap_or_default(),
            label_selector: query.labels.clone(),
            field_selector: query.fields.clone(),
            resource_version,
        })
        .await?
        .into_inner();
    let wide = output == Some(Format::Wide);
    while let Some(event) = events.next().await {
        let event = event?;
        let object: Value = serde_json::from_slice(&event.object).unwrap_or_default();
        match output {
            Some(format @ (Format::Yaml | Format::Json)) => {
                print!("{}", print::serialize(&[object], format, false))
            }
            Some(Format::Name) => println!("{}", print::name_of(query.kind, &object)),
            _ => {
                let mut table = Table::new(query.kind, wide, query.namespace.is_none());
                table.push(
                    query.kind,
                    &object,
                    wide,
                    jiff::Timestamp::now().as_second(),
                );
                print!("{}", table.render(false));
            }
        }
    }
    Ok(())
}

/// The events about `object`, oldest first.
async fn events_of(client: &mut ApiClient, object: &Value) -> Result<Vec<Value>, CliError> {
    let uid = &object["metadata"]["uid"];
    let listed = client
        .list(proto::ListRequest {
            kind: "Event".into(),
            namespace: object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut events: Vec<Value> = listed
        .objects
        .iter()
        .filter_map(|o| serde_json::from_slice::<Value>(o).ok())
        .filter(|e| e["involvedObject"]["uid"] == *uid)
        .collect();
    events.sort_by(|a, b| {
        a["lastTimestamp"]
            .as_str()
            .cmp(&b["lastTimestamp"].as_str())
    });
    Ok(events)
}

/// `create job NAME --from=cronjob/CRON`: the CronJob's Job, made now and marked
/// as made by hand (as kubectl marks it). An existing Job is not replaced.
async fn create_job_from(settings: &Settings, name: &str, from: &str) -> Result<(), CliError> {
    let cronjob_name = from
        .split_once('/')
        .filter(|(kind, _)| Kind::from_cli_name(kind) == Some(Kind::CronJob))
        .map(|(_, name)| name)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--from={from}: expected cronjob/NAME (from a CronJob)"
            ))
        })?;
    let namespace = &settings.namespace;
    let mut client = client::connect(&settings.connection).await?;
    let value = get_one(&mut client, Kind::CronJob, namespace, cronjob_name).await?;
    let cronjob = Object::decode(value)
        .ok()
        .and_then(|o| CronJob::try_from(o).ok())
        .ok_or_else(|| CliError::Usage("the server sent an unreadable CronJob".into()))?;
    let mut job = job_from_template(&cronjob, name);
    job.metadata
        .annotations
        .insert("cronjob.kubernetes.io/instantiate".into(), "manual".into());
    match get_one(&mut client, Kind::Job, namespace, name).await {
        Ok(_) => {
            return Err(CliError::Server(tonic::Status::already_exists(format!(
                "jobs.batch \"{name}\" already exists"
            ))));
        }
        Err(CliError::Server(status)) if status.code() == Code::NotFound => {}
        Err(error) => return Err(error),
    }
    let job = Object::from(job).to_value();
    client
        .apply(proto::ApplyRequest {
            objects: vec![json_bytes(&job)],
        })
        .await?;
    println!("job.batch/{name} created");
    Ok(())
}

async fn get_one(
    client: &mut ApiClient,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Value, CliError> {
    let response = client
        .get(proto::GetRequest {
            key: Some(proto::ObjectKey {
                kind: kind.name().into(),
                namespace: namespace.into(),
                name: name.into(),
            }),
        })
        .await?
        .into_inner();
    serde_json::from_slice(&response.object)
        .map_err(|e| CliError::Usage(format!("the server sent an unreadable object: {e}")))
}

/// An object to delete.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: String,
}

struct DeleteOptions {
    grace_period: Option<i64>,
    cascade: Cascade,
    ignore_not_found: bool,
}

fn delete_targets(
    kind: Option<String>,
    names: Vec<String>,
    files: &[PathBuf],
    namespace: Option<&str>,
) -> Result<Vec<Target>, CliError> {
    match (kind, files.is_empty()) {
        (Some(kind), true) => {
            if names.is_empty() {
                return Err(CliError::Usage(
                    "name what to delete: skiff delete KIND NAME... or skiff delete -f FILE".into(),
                ));
            }
            let kind = parse_kind(&kind)?;
            Ok(names
                .into_iter()
                .map(|name| Target {
                    kind,
                    namespace: namespace.map(str::to_string),
                    name,
                })
                .collect())
        }
        // In reverse order: manifests list a namespace before what goes in it.
        (None, false) => Ok(load(files, false)?
            .into_iter()
            .rev()
            .map(|d| Target {
                kind: d.object.kind(),
                namespace: d
                    .object
                    .metadata()
                    .namespace
                    .clone()
                    .or_else(|| namespace.map(str::to_string)),
                name: d.object.metadata().name.clone(),
            })
            .collect()),
        (Some(_), false) => Err(CliError::Usage(
            "give either KIND NAME... or -f FILE, not both".into(),
        )),
        (None, true) => Err(CliError::Usage(
            "name what to delete: skiff delete KIND NAME... or skiff delete -f FILE".into(),
        )),
    }
}

async fn delete(
    settings: &Settings,
    targets: Vec<Target>,
    options: DeleteOptions,
) -> Result<(), CliError> {
    let mut client = client::connect(&settings.connection).await?;
    let propagation = match options.cascade {
        Cascade::Background => proto::Propagation::Background,
        Cascade::Foreground => proto::Propagation::Foreground,
        Cascade::Orphan => proto::Propagation::Orphan,
    };
    let mut failures = Vec::new();
    for target in targets {
        let result = client
            .delete(proto::DeleteRequest {
                key: Some(proto::ObjectKey {
                    kind: target.kind.name().into(),
                    namespace: target
                        .namespace
                        .unwrap_or_else(|| settings.namespace.clone()),
                    name: target.name.clone(),
                }),
                grace_period_seconds: options.grace_period,
                propagation: propagation as i32,
            })
            .await;
        match result {
            Ok(_) => println!(
                "{} \"{}\" deleted",
                print::singular(target.kind),
                target.name
            ),
            Err(status) if status.code() == Code::NotFound && options.ignore_not_found => {}
            Err(status) => failures.push(CliError::Server(status).to_string()),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failures(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registries_are_hosts_as_references_name_them() {
        for good in ["127.0.0.1:5000", "registry.local", "localhost:5000"] {
            assert_eq!(parse_registry_host(good).as_deref(), Ok(good));
        }
        for bad in [
            "myhost",
            "http://registry.local:5000",
            "registry.local/x",
            "",
        ] {
            let error = parse_registry_host(bad).unwrap_err();
            assert!(error.contains("is not a registry host"), "{bad}: {error}");
        }
    }
}
