//! Cluster DNS: the zone (cluster.local by default) as the Kubernetes DNS-Based
//! Service Discovery specification (schema 1.1.0) describes it, kept in step with
//! the store by a watch, and everything else forwarded to the host's resolvers.
//!
//! hickory-server owns the sockets, TCP framing, request decoding and response
//! sending; the zone is not one of its ZoneHandlers but a RequestHandler
//! of ours, as the answers need a per-client recursion decision, truncation
//! without partial record sets, and metrics around each answer.
//!
//! - [`records`]: the zone as plain data, a pure function of Services and
//!   EndpointSlices.
//! - [`handler`]: the RequestHandler: checks, answers, forwarding, metrics.
//! - [`server`]: sockets, and the upstream resolver.
//! - [`sync`]: the store watch that rebuilds the zone.
//! - [`publish`]: the kube-system/kube-dns Service whose cluster IPs reach the
//!   server through the dataplane.

pub mod handler;
pub mod metrics;
pub mod publish;
pub mod records;
pub mod server;
pub mod sync;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
    #[error("cluster DNS on {addr}: {source} (choose other addresses with --dns-addr)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream resolvers from {}: {reason}", path.display())]
    Upstream { path: PathBuf, reason: String },
}

/// How cluster DNS runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (UDP and TCP on each); port 0 picks a free port, the same
    /// for both protocols. Empty: port 53 on the pods' gateways.
    pub listen: Vec<SocketAddr>,
    pub cluster_domain: String,
    pub ttl: Duration,
    /// The resolv.conf whose nameservers get the names outside the zone.
    pub upstream_resolv_conf: PathBuf,
    /// Clients allowed recursion besides loopback, the node's own addresses and
    /// the pod CIDRs (everyone else gets REFUSED for names outside the zone).
    pub recursion_from: Vec<IpNet>,
    /// The cluster DNS virtual IPs published as kube-system/kube-dns.
    pub service_ips: Vec<IpAddr>,
}

/// Cluster DNS while it runs: it stops serving when this is dropped.
pub struct Running {
    /// hickory-server's tasks end when it is dropped.
    _server: hickory_server::Server<handler::Handler>,
    sync: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

/// The pods' gateways (the first address of each pod CIDR, on the node side of
/// every pod's link), port 53: where pods' packets to the cluster DNS IPs go.
fn pod_gateways(pod_cidrs: &[IpNet]) -> Vec<SocketAddr> {
    pod_cidrs
        .iter()
        .map(|cidr| {
            let ip = match cidr.network() {
                IpAddr::V4(n) => IpAddr::from(u32::from(n).wrapping_add(1).to_be_bytes()),
                IpAddr::V6(n) => IpAddr::from(u128::from(n).wrapping_add(1).to_be_bytes()),
            };
            SocketAddr::new(ip, 53)
        })
        .collect()
}

/// Binds every listen address, starts following the store, and publishes the
/// kube-dns Service. The node's addresses and its pod CIDRs may have names
/// outside the zone resolved without being configured (loopback always may).
pub async fn start(
    config: &Config,
    registry: crate::api::registry::Registry,
    node_addresses: &[IpAddr],
    pod_cidrs: &[IpNet],
    metrics: &mut prometheus_client::registry::Registry,
) -> Result<Running, Error> {
    let zone_name = hickory_proto::rr::Name::from_ascii(format!(
        "{}.",
        config.cluster_domain.trim_end_matches('.')
    ))
    .map_err(|e| Error::Domain {
        domain: config.cluster_domain.clone(),
        reason: e.to_string(),
    })?;
    let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
    let zone = sync::Zone::new(zone_name, ttl);
    let allowed: Vec<IpNet> = node_addresses
        .iter()
        .map(|ip| IpNet::from(*ip))
        .chain(pod_cidrs.iter().copied())
        .chain(config.recursion_from.iter().copied())
        .collect();
    let recursion = move |client: IpAddr| {
        client.is_loopback() || allowed.iter().any(|net| net.contains(&client))
    };
    let upstream = match server::upstream(&config.upstream_resolv_conf) {
        Ok(resolver) => Some(resolver),
        Err(e) => {
            log::warn!("cluster DNS: {e}; names outside the zone get SERVFAIL");
            None
        }
    };
    let dns_metrics = metrics::DnsMetrics::default();
    dns_metrics.register(metrics);
    let handler = handler::Handler::new(
        zone.current.clone(),
        Box::new(recursion),
        upstream,
        dns_metrics,
    );
    let listen = match config.listen.is_empty() {
        true => pod_gateways(pod_cidrs),
        false => config.listen.clone(),
    };
    // One UDP socket per core: hickory-server serves each from its own task.
    let udp_sockets = std::thread::available_parallelism().map_or(1, usize::from);
    let bound = listen
        .iter()
        .map(|addr| server::bind(*addr, udp_sockets))
        .collect::<Result<Vec<_>, _>>()?;
    let addresses: Vec<SocketAddr> = bound.iter().map(|b| b.address).collect();
    for address in &addresses {
        log::info!("cluster DNS on udp+tcp {address}");
    }
    let server = server::serve(handler, bound);
    publish::publish(&registry, &config.service_ips, &addresses).await;
    Ok(Running {
        _server: server,
        sync: tokio::spawn(sync::run(registry, zone)),
    })
}
