//! What the maps should hold for one Service: its frontends (cluster IPs, and node
//! addresses for NodePort services, per port and protocol) and, for each, the
//! backends its EndpointSlices offer. Pure functions of the objects, so the rules
//! (which endpoints serve, how ports match) are tested without a kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use crate::model::{
    self, AddressType, DEFAULT_AFFINITY_TIMEOUT_SECONDS, Endpoint, EndpointSlice, Service,
    ServicePort, ServiceSpec, ServiceType, SessionAffinity,
};

use super::{Balancing, Frontend, Protocol};
use skiff_ebpf_common::MAX_BACKENDS_PER_SERVICE;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice annotation: the relative share of new connections each of its
/// endpoints gets (a whole number from 1 to [`MAX_WEIGHT`]; 1 when absent or
/// invalid). With a stable slice at 9 and a canary slice at 1, the canary gets 10%.
pub const WEIGHT_ANNOTATION: &str = "skiff.io/weight";
pub const MAX_WEIGHT: u32 = 1000;

/// Every frontend of `service` with its backends and session affinity, in a
/// stable order. Headless and ExternalName services have none: they exist only in
/// DNS.
pub fn frontends(
    service: &Service,
    slices: &[&EndpointSlice],
    node_addresses: &[IpAddr],
) -> BTreeMap<Frontend, Balancing> {
    let spec = &service.spec;
    let mut out = BTreeMap::new();
    let service_type = spec.r#type.unwrap_or(ServiceType::ClusterIP);
    if service_type == ServiceType::ExternalName {
        return out;
    }
    // The allocated addresses, one per family; a headless service's "None" parses
    // as no address.
    let cluster_ips: Vec<IpAddr> = if spec.cluster_ips.is_empty() {
        spec.cluster_ip
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect()
    } else {
        spec.cluster_ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect()
    };
    if cluster_ips.is_empty() {
        return out;
    }
    let affinity_timeout = affinity_timeout(spec);
    for port in &spec.ports {
        let Some(protocol) = protocol(port.protocol) else {
            continue;
        };
        for vip in &cluster_ips {
            let balancing = Balancing {
                backends: backends(slices, port, vip.is_ipv4()),
                affinity_timeout,
                http: port.declares_http(),
            };
            if let Ok(number) = u16::try_from(port.port) {
                let frontend = Frontend::new(SocketAddr::new(*vip, number), protocol);
                out.insert(frontend, balancing.clone());
            }
            let node_port = port
                .node_port
                .filter(|_| service_type == ServiceType::NodePort)
                .and_then(|p| u16::try_from(p).ok());
            if let Some(node_port) = node_port {
                for address in node_addresses
                    .iter()
                    .filter(|a| a.is_ipv4() == vip.is_ipv4())
                {
                    let frontend = Frontend::new(SocketAddr::new(*address, node_port), protocol);
                    // The mesh's L7 layer knows Services by their cluster IPs only.
                    let balancing = Balancing {
                        http: false,
                        ..balancing.clone()
                    };
                    out.insert(frontend, balancing);
                }
            }
        }
    }
    out
}

/// ClientIP affinity's timeout in seconds (the API server defaults it to 10800 and
/// validates 1-86400); none when the service has no affinity.
fn affinity_timeout(spec: &ServiceSpec) -> Option<NonZeroU32> {
    if spec.session_affinity != Some(SessionAffinity::ClientIP) {
        return None;
    }
    let seconds = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
    u32::try_from(seconds).ok().and_then(NonZeroU32::new)
}

/// The dataplane balances TCP and UDP; SCTP services get no frontend.
fn protocol(protocol: Option<model::Protocol>) -> Option<Protocol> {
    match protocol.unwrap_or(model::Protocol::Tcp) {
        model::Protocol::Tcp => Some(Protocol::Tcp),
        model::Protocol::Udp => Some(Protocol::Udp),
        model::Protocol::Sctp => None,
    }
}

/// The backends of one service port in one family: the ready endpoints of the
/// slices of that family, at the port the slice gives for this service port (matched
/// by name and protocol, as kube-proxy does). When no endpoint is ready, endpoints
/// that still serve while terminating take new connections rather than none, as
/// Kubernetes' ProxyTerminatingEndpoints does.
fn backends(slices: &[&EndpointSlice], port: &ServicePort, ipv4: bool) -> Vec<SocketAddr> {
    let family = if ipv4 {
        AddressType::IPv4
    } else {
        AddressType::IPv6
    };
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == Some(family)) {
        let Some(number) = slice_port(slice, port) else {
            continue;
        };
        let weight = weight(slice);
        for endpoint in &slice.endpoints {
            let list = match serves(endpoint) {
                Serves::Ready => &mut ready,
                Serves::Terminating => &mut terminating,
                Serves::No => continue,
            };
            // Endpoint addresses are interchangeable: the first is the backend.
            let address = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok());
            if let Some(ip) = address.filter(|ip| ip.is_ipv4() == ipv4) {
                list.push((SocketAddr::new(ip, number), weight));
            }
        }
    }
    let mut chosen = if ready.is_empty() { terminating } else { ready };
    chosen.sort();
    chosen.dedup_by_key(|(addr, _)| *addr);
    slots(&chosen)
}

fn weight(slice: &EndpointSlice) -> u32 {
    slice
        .metadata
        .annotations
        .get(WEIGHT_ANNOTATION)
        .and_then(|w| w.parse::<u32>().ok())
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .unwrap_or(1)
}

/// The backend slots for weighted backends: the kernel picks a slot uniformly, so
/// each backend fills a share of slots proportional to its weight (weights
/// divided by their common divisor, and scaled down to the per-service slot limit
/// if they do not fit, keeping one slot each).
fn slots(weighted: &[(SocketAddr, u32)]) -> Vec<SocketAddr> {
    let divisor = weighted.iter().fold(0, |d, (_, w)| gcd(d, *w)).max(1);
    let total: u32 = weighted.iter().map(|(_, w)| w / divisor).sum();
    let limit = u32::from(MAX_BACKENDS_PER_SERVICE);
    let mut out = Vec::new();
    for (addr, w) in weighted {
        let share = w / divisor;
        let count = if total > limit {
            (u64::from(share) * u64::from(limit) / u64::from(total)).max(1) as usize
        } else {
            share as usize
        };
        out.extend(std::iter::repeat_n(*addr, count));
    }
    out.truncate(usize::from(MAX_BACKENDS_PER_SERVICE));
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn slice_port(slice: &EndpointSlice, port: &ServicePort) -> Option<u16> {
    let name = port.name.as_deref().unwrap_or_default();
    let protocol = port.protocol.unwrap_or(model::Protocol::Tcp);
    slice
        .ports
        .iter()
        .find(|p| {
            p.name.as_deref().unwrap_or_default() == name
                && p.protocol.unwrap_or(model::Protocol::Tcp) == protocol
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

enum Serves {
    Ready,
    Terminating,
    No,
}

/// Unset conditions mean ready (and serving), per the EndpointSlice API.
fn serves(endpoint: &Endpoint) -> Serves {
    let conditions = endpoint.conditions.clone().unwrap_or_default();
    let ready = conditions.ready.unwrap_or(true);
    let serving = conditions.serving.unwrap_or(ready);
    let terminating = conditions.terminating.unwrap_or(false);
    if ready && !terminating {
        Serves::Ready
    } else if serving && terminating {
        Serves::Terminating
    } else {
        Serves::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_saphyr::from_str(yaml).expect("service")
    }

    fn slice(yaml: &str) -> EndpointSlice {
        serde_saphyr::from_str(yaml).expect("slice")
    }

    fn show(frontends: &BTreeMap<Frontend, Balancing>) -> Vec<String> {
        frontends
            .iter()
            .map(|(f, b)| {
                let list: Vec<String> = b.backends.iter().map(ToString::to_string).collect();
                let affinity = match b.affinity_timeout {
                    Some(t) => format!(" (affinity {t}s)"),
                    None => String::new(),
                };
                format!("{f} -> {}{affinity}", list.join(" "))
            })
            .collect()
    }

    const DUAL_STACK: &str = "
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.5
  clusterIPs: [10.96.0.5, 'fd00:10:96::5']
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
  - {name: sctp, port: 9, protocol: SCTP}
";

    const V4_SLICE: &str = "
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.0.3]
- addresses: [10.244.0.2]
  conditions: {ready: true}
- addresses: [10.244.0.9]
  conditions: {ready: false}
- addresses: [10.244.0.7]
  conditions: {ready: false, serving: true, terminating: true}
";

    const V6_SLICE: &str = "
metadata: {name: web-b, namespace: shop}
addressType: IPv6
ports:
- {name: http, port: 8080}
endpoints:
- addresses: ['fd00:10:244::2']
";

    #[test]
    fn every_port_family_and_node_address_is_a_frontend_with_the_ready_endpoints() {
        let (v4, v6) = (slice(V4_SLICE), slice(V6_SLICE));
        let nodes: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap(), "fd00::10".parse().unwrap()];
        let out = frontends(&service(DUAL_STACK), &[&v4, &v6], &nodes);
        assert_eq!(
            show(&out),
            [
                "10.96.0.5:53/udp -> 10.244.0.2:5353 10.244.0.3:5353",
                "10.96.0.5:80/tcp -> 10.244.0.2:8080 10.244.0.3:8080",
                "192.168.1.10:30080/tcp -> 10.244.0.2:8080 10.244.0.3:8080",
                "[fd00::10]:30080/tcp -> [fd00:10:244::2]:8080",
                // The IPv6 slice has no dns port: the frontend refuses.
                "[fd00:10:96::5]:53/udp -> ",
                "[fd00:10:96::5]:80/tcp -> [fd00:10:244::2]:8080",
            ]
        );
    }

    #[test]
    fn client_ip_affinity_applies_to_every_frontend_with_its_timeout() {
        let v4 = slice(V4_SLICE);
        let nodes: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap()];
        let sticky = |extra: &str| {
            let manifest =
                DUAL_STACK.replace("  type: NodePort\n", &format!("  type: NodePort\n{extra}"));
            frontends(&service(&manifest), &[&v4], &nodes)
        };
        let configured = sticky(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        );
        assert_eq!(configured.len(), 5);
        assert!(
            configured
                .values()
                .all(|b| b.affinity_timeout == NonZeroU32::new(60))
        );
        // Without a timeout, Kubernetes' default of 3 hours.
        let defaulted = sticky("  sessionAffinity: ClientIP\n");
        assert!(
            defaulted
                .values()
                .all(|b| b.affinity_timeout == NonZeroU32::new(10_800))
        );
        let none = sticky("  sessionAffinity: None\n");
        assert!(none.values().all(|b| b.affinity_timeout.is_none()));
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let all_terminating = V4_SLICE.replace(
            "- addresses: [10.244.0.3]\n- addresses: [10.244.0.2]\n  conditions: {ready: true}\n",
            "",
        );
        let v4 = slice(&all_terminating);
        let out = frontends(&service(DUAL_STACK), &[&v4], &[]);
        let tcp = Frontend::new("10.96.0.5:80".parse().unwrap(), Protocol::Tcp);
        assert_eq!(out[&tcp].backends, ["10.244.0.7:8080".parse().unwrap()]);
    }

    #[test]
    fn weights_become_shares_of_the_slots() {
        let weighted = |name: &str, weight: &str, ip: &str| {
            slice(&format!(
                "metadata: {{name: {name}, annotations: {{skiff.io/weight: '{weight}'}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{ip}]}}]"
            ))
        };
        let (stable, canary) = (
            weighted("stable", "90", "10.244.0.2"),
            weighted("canary", "10", "10.244.0.3"),
        );
        let out = frontends(&service(DUAL_STACK), &[&stable, &canary], &[]);
        let tcp = Frontend::new("10.96.0.5:80".parse().unwrap(), Protocol::Tcp);
        let count = |ip: &str| {
            out[&tcp]
                .backends
                .iter()
                .filter(|a| a.ip().to_string() == ip)
                .count()
        };
        assert_eq!((count("10.244.0.2"), count("10.244.0.3")), (9, 1));

        // Invalid weights count as 1; shares too large for the slots are scaled.
        let (a, b) = (
            weighted("a", "0", "10.244.0.2"),
            weighted("b", "lots", "10.244.0.3"),
        );
        let out = frontends(&service(DUAL_STACK), &[&a, &b], &[]);
        assert_eq!(out[&tcp].backends.len(), 2);
        let many: Vec<(SocketAddr, u32)> = (0..10u8)
            .map(|i| {
                (
                    SocketAddr::from(([10, 244, 1, i], 80)),
                    if i == 0 { 1 } else { 999 },
                )
            })
            .collect();
        let slots = slots(&many);
        assert!(
            slots.len() <= usize::from(MAX_BACKENDS_PER_SERVICE),
            "{}",
            slots.len()
        );
        assert!(slots.contains(&many[0].0), "a small weight keeps one slot");
    }

    #[test]
    fn dns_only_services_have_no_frontends() {
        for yaml in [
            "spec: {clusterIP: None, ports: [{port: 80}]}",
            "spec: {type: ExternalName, externalName: example.com}",
            "spec: {ports: [{port: 80}]}",
        ] {
            let out = frontends(&service(yaml), &[&slice(V4_SLICE)], &[]);
            assert!(out.is_empty(), "{yaml}: {out:?}");
        }
    }

    #[test]
    fn unnamed_ports_match_unnamed_slice_ports_and_cluster_ip_only_services_skip_node_ports() {
        let svc = service("spec: {clusterIP: 10.96.0.6, ports: [{port: 80, nodePort: 30081}]}");
        let s = slice(
            "addressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.244.0.4]}]",
        );
        let out = frontends(&svc, &[&s], &["192.168.1.10".parse().unwrap()]);
        assert_eq!(show(&out), ["10.96.0.6:80/tcp -> 10.244.0.4:8080"]);
    }

    #[test]
    fn http_ports_are_flagged_on_their_cluster_ips_only() {
        let svc = service(
            "spec: {type: NodePort, clusterIP: 10.96.0.6, ports: [
               {name: web, port: 80, nodePort: 30081, appProtocol: http},
               {name: h2, port: 81, appProtocol: kubernetes.io/h2c},
               {name: grpc, port: 90, appProtocol: grpc},
               {name: dns, port: 53, protocol: UDP, appProtocol: http}]}",
        );
        let out = frontends(&svc, &[], &["192.168.1.10".parse().unwrap()]);
        let http: Vec<String> = out
            .iter()
            .filter(|(_, b)| b.http)
            .map(|(f, _)| f.to_string())
            .collect();
        assert_eq!(http, ["10.96.0.6:80/tcp", "10.96.0.6:81/tcp"]);
        assert_eq!(out.len(), 5, "{out:?}");
    }
}
