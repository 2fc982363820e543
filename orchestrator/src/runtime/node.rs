//! The node side of the agent: registers this node, follows the pods bound to it
//! (one [`worker`](super::worker) each), and after an agent restart adopts the pods
//! it already runs and removes what belongs to pods deleted meanwhile.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use log::{info, warn};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::registry::{ApiError, EventType, Registry};
use crate::image::PullOptions;
use crate::model::{FieldSelector, Kind, NODE_LEASE_NAMESPACE, Object, Pod, Selector};

use super::oci::Oci;
use super::paths::Paths;
use super::record::PodRecord;
use super::worker::{self, Context};

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    /// The addresses other nodes reach this one at, at most one per family; the
    /// first is the pods' hostIP.
    pub host_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Kept back from pods: allocatable is capacity minus this.
    pub reserved: Reserved,
}

/// How the node runs pods.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub identity: NodeIdentity,
    /// The agent's state directory: pods, runc and conmon state, IPAM.
    pub state_dir: std::path::PathBuf,
    /// Where the CNI plugin binaries are.
    pub cni_bin_dirs: Vec<std::path::PathBuf>,
    pub netns_dir: std::path::PathBuf,
    pub log_dir: std::path::PathBuf,
    pub dns: super::pod_files::Dns,
    pub mtu: Option<u32>,
    pub pids_limit: i64,
    pub log_max_bytes: u64,
    /// How images are pulled from registries.
    pub pull: PullOptions,
    /// How often a running pod's network is checked (CNI CHECK).
    pub network_check: std::time::Duration,
    /// How often pods' and the node's resource usage is sampled and published.
    pub usage_interval: std::time::Duration,
    /// How often the node reports itself Ready: well within the grace period after
    /// which the node lifecycle controller declares it lost.
    pub heartbeat_interval: std::time::Duration,
}

/// What the node keeps back from pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_millis: i128,
    pub memory_bytes: i128,
}

/// What the API needs of the node to serve `logs`, `exec` and image pulls: its
/// name, where its pods' files are, the container runtime, and how it pulls.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub name: String,
    pub paths: Paths,
    pub oci: Oci,
    pub pull: PullOptions,
}

impl NodeConfig {
    pub fn handle(&self) -> NodeHandle {
        NodeHandle {
            name: self.identity.name.clone(),
            paths: Paths {
                pods: self.state_dir.join("pods"),
                netns: self.netns_dir.clone(),
                logs: self.log_dir.clone(),
                cgroup_parent: "/skiff".into(),
            },
            oci: Oci::new(&self.state_dir),
            pull: self.pull.clone(),
        }
    }

    /// The context the pod workers share; `holds` keep pods NotReady.
    pub fn context(
        &self,
        registry: Registry,
        images: Arc<crate::image::ImageStore>,
        holds: Arc<super::holds::ReadinessHolds>,
    ) -> Context {
        let NodeHandle {
            name,
            paths,
            oci,
            pull,
        } = self.handle();
        Context {
            pull,
            network_check: self.network_check,
            registry,
            node_name: name,
            host_ip: self.identity.host_ips.first().copied(),
            paths,
            images,
            oci,
            network: super::cni::skiff_network(
                self.cni_bin_dirs.clone(),
                &self.identity.pod_cidrs,
                &self.state_dir.join("cni"),
                self.mtu,
            ),
            dns: self.dns.clone(),
            pids_limit: self.pids_limit,
            log_max_bytes: self.log_max_bytes,
            holds,
        }
    }
}

/// The wait before listing this node's pods again after the store failed (it is
/// unreachable): pods keep running meanwhile, as last seen.
const RELIST_RETRY: Duration = Duration::from_secs(1);

/// Runs the node until `shutdown` resolves. Pods keep running after it returns,
/// and while the store is unreachable: their workers keep the last state they
/// were given until the store answers again.
pub async fn run(
    ctx: Arc<Context>,
    identity: NodeIdentity,
    heartbeat_interval: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    let node_uid = register(&ctx.registry, &identity).await?;
    let mut heartbeat = tokio::time::interval(heartbeat_interval);
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    tokio::pin!(shutdown);
    'relist: loop {
        let (pods, version) = match list_pods(&ctx).await {
            Ok(listed) => listed,
            Err(e) => {
                warn!(
                    "node {}: listing its pods: {e}; trying again",
                    identity.name
                );
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(RELIST_RETRY) => continue 'relist,
                }
            }
        };
        let listed: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        for pod in pods {
            dispatch(&ctx, &mut workers, &mut tasks, Some(pod), None);
        }
        sweep_orphan_containers(&ctx).await;
        // Pods this node ran that are no longer in the store: tear them down.
        for uid in local_pods(&ctx) {
            if !listed.contains(&uid) && !workers.contains_key(&uid) {
                info!("pod {uid}: deleted while the agent was away; cleaning up");
                dispatch(&ctx, &mut workers, &mut tasks, None, Some(uid));
            }
        }
        let watched = ctx
            .registry
            .watch(
                Kind::Pod,
                None,
                Selector::everything(),
                node_selector(&ctx.node_name),
                &version,
            )
            .await;
        let mut events = match watched {
            Ok(events) => events,
            Err(e) => {
                warn!(
                    "node {}: watching its pods: {e}; listing again",
                    identity.name
                );
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(RELIST_RETRY) => continue 'relist,
                }
            }
        };
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = heartbeat.tick() => {
                    if let Err(e) = heartbeat_once(&ctx.registry, &identity, &node_uid).await {
                        warn!("node {}: heartbeat: {e}", identity.name);
                    }
                }
                Some(done) = tasks.join_next() => {
                    if let Ok(uid) = done {
                        workers.remove(&uid);
                    }
                }
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        let Object::Pod(pod) = Object::clone(&event.object) else { continue };
                        match event.event_type {
                            EventType::Deleted => {
                                let uid = pod.metadata.uid.clone();
                                dispatch(&ctx, &mut workers, &mut tasks, None, uid);
                            }
                            _ => dispatch(&ctx, &mut workers, &mut tasks, Some(pod), None),
                        }
                    }
                    Some(Err(e)) => {
                        warn!("node {}: pod watch ended ({e}); listing again", identity.name);
                        continue 'relist;
                    }
                    None => continue 'relist,
                }
            }
        }
    }
}

/// Hands the latest state of a pod (None: gone) to its worker, starting one if
/// needed.
fn dispatch(
    ctx: &Arc<Context>,
    workers: &mut HashMap<String, watch::Sender<Option<Pod>>>,
    tasks: &mut JoinSet<String>,
    pod: Option<Pod>,
    uid: Option<String>,
) {
    let Some(uid) = uid.or_else(|| pod.as_ref().and_then(|p| p.metadata.uid.clone())) else {
        return;
    };
    if let Some(sender) = workers.get(&uid) {
        let _ = sender.send(pod);
        return;
    }
    let (sender, receiver) = watch::channel(pod);
    workers.insert(uid.clone(), sender);
    let ctx = ctx.clone();
    tasks.spawn(async move {
        worker::run(ctx, uid.clone(), receiver).await;
        uid
    });
}

fn node_selector(node: &str) -> FieldSelector {
    // A node name is a DNS subdomain, which the field selector syntax accepts as is.
    FieldSelector::parse(&format!("spec.nodeName={node}"))
        .unwrap_or_else(|_| FieldSelector::everything())
}

/// The pods bound to this node, and the revision of the list.
pub(super) async fn list_pods(ctx: &Context) -> Result<(Vec<Pod>, String), ApiError> {
    let (values, revision) = ctx
        .registry
        .list(
            Kind::Pod,
            None,
            &Selector::everything(),
            &node_selector(&ctx.node_name),
        )
        .await?;
    let pods = values
        .into_iter()
        .filter_map(|v| match Object::decode_stored(v) {
            Ok(Object::Pod(pod)) => Some(pod),
            _ => None,
        })
        .collect();
    Ok((pods, revision.to_string()))
}

/// Removes containers runc runs for pods this node has no record of (left by an
/// agent that died between creating a container and recording it, after which
/// the pod went away).
async fn sweep_orphan_containers(ctx: &Context) {
    let known: HashSet<String> = local_pods(ctx).into_iter().collect();
    let oci = ctx.oci.clone();
    let swept = tokio::task::spawn_blocking(move || {
        let mut removed = Vec::new();
        for state in oci.list().unwrap_or_default() {
            let Some(uid) = state.annotations.get("io.skiff.pod.uid") else {
                continue;
            };
            if !known.contains(uid) {
                let _ = oci.delete(&state.id, true);
                oci.forget(&state.id);
                removed.push(state.id);
            }
        }
        removed
    })
    .await
    .unwrap_or_default();
    for id in swept {
        info!("removed container {id}: its pod is not on this node");
    }
}

/// UIDs of the pods this node has a directory for.
fn local_pods(ctx: &Context) -> Vec<String> {
    std::fs::read_dir(&ctx.paths.pods)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| PodRecord::load(&entry.path().join("pod.json")).is_some())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect()
}

/// How long a node's Lease claims to hold (Kubernetes' default); the node
/// lifecycle controller's own grace period decides when a node is lost.
const LEASE_DURATION_SECONDS: i32 = 40;

/// How often the Node's status is written when nothing in it changed (its Lease
/// is the heartbeat in between).
const NODE_STATUS_REFRESH_SECONDS: i64 = 60;

/// Creates or updates this node's Node object and reports it ready; returns the
/// Node's uid.
async fn register(registry: &Registry, identity: &NodeIdentity) -> Result<String, ApiError> {
    let cidrs: Vec<String> = identity.pod_cidrs.iter().map(ToString::to_string).collect();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": identity.name, "labels": {
            "kubernetes.io/hostname": identity.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": architecture(),
        }},
        "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
    });
    let applied = registry.apply(vec![node]).await?;
    let uid = applied
        .first()
        .and_then(|a| a.object["metadata"]["uid"].as_str())
        .unwrap_or_default()
        .to_string();
    beat(registry, identity).await?;
    renew_lease(registry, identity, &uid).await?;
    info!("node {} registered", identity.name);
    Ok(uid)
}

/// One heartbeat: the Lease is renewed; the Node's status is written when it is
/// not Ready in the store (the node lifecycle controller marked it Unknown), or
/// was last written a while ago.
async fn heartbeat_once(
    registry: &Registry,
    identity: &NodeIdentity,
    node_uid: &str,
) -> Result<(), ApiError> {
    renew_lease(registry, identity, node_uid).await?;
    let stored = registry.get(&node_ref(identity)).await?;
    let ready = stored["status"]["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == "Ready"));
    let last_written = ready
        .filter(|c| c["status"] == "True")
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second());
    let now = jiff::Timestamp::now().as_second();
    match last_written {
        Some(at) if now - at < NODE_STATUS_REFRESH_SECONDS => Ok(()),
        _ => beat(registry, identity).await,
    }
}

/// Renews the node's Lease in `kube-node-lease`, owned by its Node.
async fn renew_lease(
    registry: &Registry,
    identity: &NodeIdentity,
    node_uid: &str,
) -> Result<(), ApiError> {
    let renewed = jiff::Timestamp::now()
        .round(jiff::Unit::Microsecond)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": identity.name,
            "namespace": NODE_LEASE_NAMESPACE,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": identity.name, "uid": node_uid,
            }],
        },
        "spec": {
            "holderIdentity": identity.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": renewed.to_string(),
        },
    });
    registry.apply(vec![lease]).await.map(drop)
}

fn node_ref(identity: &NodeIdentity) -> crate::api::registry::ObjectRef {
    crate::api::registry::ObjectRef {
        kind: Kind::Node,
        namespace: None,
        name: identity.name.clone(),
    }
}

/// Reports the node Ready, with its capacity and addresses.
async fn beat(registry: &Registry, identity: &NodeIdentity) -> Result<(), ApiError> {
    let now = crate::api::registry::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = memory_kib()
        .map(|kib| format!("{kib}Ki"))
        .unwrap_or_else(|| "0".into());
    let capacity = json!({"cpu": cpus.to_string(), "memory": memory, "pods": "110"});
    let allocatable = allocatable(cpus, memory_kib(), identity.reserved);
    let mut addresses: Vec<serde_json::Value> = identity
        .host_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": identity.name}));
    // Ready since when: unchanged while the node stays Ready.
    let stored = registry.get(&node_ref(identity)).await?;
    let ready_since = stored["status"]["conditions"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map_or_else(|| now.clone(), str::to_string);
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": identity.name},
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "addresses": addresses,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "skiff agent is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": ready_since,
            }],
            "nodeInfo": {
                "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": "runc",
                "kubeletVersion": concat!("skiff/", env!("CARGO_PKG_VERSION")),
                "operatingSystem": "linux",
                "architecture": architecture(),
            },
        },
    });
    registry.update_status(node).await.map(drop)
}

/// Capacity minus what is reserved, never below zero.
fn allocatable(cpus: usize, memory_kib: Option<u64>, reserved: Reserved) -> serde_json::Value {
    let cpu = (i128::try_from(cpus).unwrap_or(1) * 1000 - reserved.cpu_millis).max(0);
    let memory = (i128::from(memory_kib.unwrap_or(0)) * 1024 - reserved.memory_bytes).max(0);
    json!({"cpu": format!("{cpu}m"), "memory": memory.to_string(), "pods": "110"})
}

fn memory_kib() -> Option<u64> {
    meminfo_kib("MemTotal")
}

/// A /proc/meminfo field, in KiB ("MemTotal", "MemAvailable").
pub(super) fn meminfo_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// Kubernetes' architecture names.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The addresses other hosts reach this one at: the source address of the
/// default route of each family (found without sending anything), where there is
/// one.
pub fn default_host_ips() -> Vec<IpAddr> {
    // TEST-NET-1 and the IPv6 documentation prefix: routable in principle, never
    // contacted (a UDP connect sends nothing).
    [("0.0.0.0:0", "192.0.2.1:9"), ("[::]:0", "[2001:db8::1]:9")]
        .into_iter()
        .filter_map(|(local, remote)| {
            let socket = std::net::UdpSocket::bind(local).ok()?;
            socket.connect(remote).ok()?;
            let ip = socket.local_addr().ok()?.ip();
            (!ip.is_unspecified()).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_is_capacity_minus_reserved_never_negative() {
        let reserved = Reserved {
            cpu_millis: 100,
            memory_bytes: 256 << 20,
        };
        let a = allocatable(2, Some(1 << 20), reserved);
        assert_eq!(a["cpu"], "1900m");
        assert_eq!(a["memory"], ((1i64 << 30) - (256 << 20)).to_string());
        let a = allocatable(
            1,
            Some(1024),
            Reserved {
                cpu_millis: 5000,
                memory_bytes: 1 << 40,
            },
        );
        assert_eq!(
            (a["cpu"].as_str(), a["memory"].as_str()),
            (Some("0m"), Some("0"))
        );
    }
}
