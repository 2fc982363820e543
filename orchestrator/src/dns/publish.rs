//! How pods reach cluster DNS: the agent applies the Service kube-system/kube-dns
//! with the cluster DNS virtual IPs as its cluster IPs (port 53, UDP "dns" and TCP
//! "dns-tcp"), and an EndpointSlice per family whose endpoint is the agent's own
//! listen address. The dataplane's service sync then programs the VIPs like any
//! other service: a pod's packet to 10.96.0.10:53 is sent to the listen address
//! by the socket hooks (sendmsg/connect), and the reply's source is turned back
//! into the VIP (recvmsg). The endpoint must be an address pods reach, so
//! loopback and wildcard listen addresses are left out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use log::{info, warn};
use serde_json::{Value, json};

use crate::api::registry::Registry;
use crate::dataplane::desired::SERVICE_NAME_LABEL;

pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "kube-dns";

/// The objects for `service_ips` served at `listening` (the bound addresses);
/// none when no listen address is one pods reach, as a VIP without endpoints
/// would only refuse.
pub fn objects(service_ips: &[IpAddr], listening: &[SocketAddr]) -> Vec<Value> {
    let reachable: Vec<&SocketAddr> = listening
        .iter()
        .filter(|a| !a.ip().is_loopback() && !a.ip().is_unspecified())
        .collect();
    if service_ips.is_empty() || reachable.is_empty() {
        return Vec::new();
    }
    let policy = if service_ips.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let ips: Vec<String> = service_ips.iter().map(ToString::to_string).collect();
    let mut objects = vec![json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {"k8s-app": "kube-dns"}},
        "spec": {
            "clusterIP": ips.first(), "clusterIPs": ips, "ipFamilyPolicy": policy,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    })];
    // One slice per family and port: a slice's ports apply to all its endpoints.
    let mut groups: BTreeMap<(bool, u16), Vec<String>> = BTreeMap::new();
    for addr in reachable {
        groups
            .entry((addr.is_ipv4(), addr.port()))
            .or_default()
            .push(addr.ip().to_string());
    }
    for ((ipv4, port), addresses) in groups {
        let family = if ipv4 { "IPv4" } else { "IPv6" };
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        objects.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{SERVICE}-{}-{port}", family.to_lowercase()),
                "namespace": NAMESPACE,
                "labels": {SERVICE_NAME_LABEL: SERVICE},
            },
            "addressType": family,
            "ports": [
                {"name": "dns", "port": port, "protocol": "UDP"},
                {"name": "dns-tcp", "port": port, "protocol": "TCP"},
            ],
            "endpoints": endpoints,
        }));
    }
    objects
}

/// Applies the objects; a failure (say, the VIP outside the service CIDR) is
/// logged: DNS still serves on its listen addresses.
pub async fn publish(registry: &Registry, service_ips: &[IpAddr], listening: &[SocketAddr]) {
    let objects = objects(service_ips, listening);
    if objects.is_empty() {
        info!("cluster DNS: no listen address pods reach; {NAMESPACE}/{SERVICE} not published");
        return;
    }
    match registry.apply(objects).await {
        Ok(_) => info!(
            "cluster DNS: {NAMESPACE}/{SERVICE} at {service_ips:?} -> {:?}",
            listening
        ),
        Err(e) => warn!("cluster DNS: publishing {NAMESPACE}/{SERVICE}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listeners_are_not_endpoints_and_families_get_their_own_slices() {
        let objects = objects(
            &[
                "10.96.0.10".parse().unwrap(),
                "fd00:10:96::a".parse().unwrap(),
            ],
            &[
                "127.0.0.1:5353".parse().unwrap(),
                "10.244.0.1:53".parse().unwrap(),
                "[fd00:10:244::1]:53".parse().unwrap(),
            ],
        );
        let names: Vec<&str> = objects
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["kube-dns", "kube-dns-ipv6-53", "kube-dns-ipv4-53"]);
        assert_eq!(objects[2]["endpoints"][0]["addresses"][0], "10.244.0.1");
        assert_eq!(objects[0]["spec"]["ipFamilyPolicy"], "RequireDualStack");
        let vips = ["10.96.0.10".parse().unwrap()];
        assert!(super::objects(&vips, &["127.0.0.1:53".parse().unwrap()]).is_empty());
    }
}
