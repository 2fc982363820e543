//! Services (core/v1): a stable virtual address and ports in front of the pods a
//! selector picks, load-balanced by skiff's eBPF dataplane. Headless services (no
//! cluster IP) and external names only publish DNS records.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::object::{Resource, enum_name, is_default, spec_and_status};
use super::pod::{Protocol, check_port_reference};
use super::validation::{
    FieldErrors, Format, Path, check_format, check_immutable, check_ip, check_labels, check_port,
    check_range, check_unique,
};
use super::{IntOrString, ObjectMeta};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: ServiceStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub r#type: Option<ServiceType>,
    /// The virtual IP; "None" makes the service headless; unset or "" lets the server
    /// allocate one.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// One virtual IP per family; the first is `clusterIP`.
    #[serde(rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<IpFamily>,
    pub ip_family_policy: Option<IpFamilyPolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// The pods behind the service; without one, endpoints are managed by hand.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    pub session_affinity: Option<SessionAffinity>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// The DNS name an ExternalName service is an alias (CNAME) for.
    pub external_name: Option<String>,
    /// Publish endpoints of pods that are not ready too (for peer discovery).
    pub publish_not_ready_addresses: Option<bool>,
    pub internal_traffic_policy: Option<TrafficPolicy>,
    pub external_traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    /// Decoded so the user gets a clear error: skiff has no load balancers.
    LoadBalancer,
    ExternalName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAffinity {
    None,
    /// Connections from one client go to the same backend.
    ClientIP,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    Cluster,
    /// Only backends on the node the traffic arrives at.
    Local,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// Required when the service has more than one port.
    pub name: Option<String>,
    pub protocol: Option<Protocol>,
    pub port: i32,
    /// A port number on the pods, or the name of a container port.
    pub target_port: Option<IntOrString>,
    /// The port on every node (30000-32767), for NodePort services.
    pub node_port: Option<i32>,
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// Whether the port declares HTTP (appProtocol `http`, or Kubernetes'
    /// `kubernetes.io/h2c` for cleartext HTTP/2) over TCP: the mesh's L7 layer
    /// takes enrolled clients' requests to it.
    pub fn declares_http(&self) -> bool {
        self.protocol.unwrap_or(Protocol::Tcp) == Protocol::Tcp
            && matches!(
                self.app_protocol.as_deref(),
                Some("http" | "kubernetes.io/h2c")
            )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

/// Kubernetes' default ClientIP affinity timeout: 3 hours.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// How long a client sticks to its backend (1-86400, default 10800).
    pub timeout_seconds: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceStatus {
    pub load_balancer: Option<LoadBalancerStatus>,
}

/// Always empty: skiff has no load balancers, but clients expect the field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerStatus {}

/// The node port range, as in Kubernetes.
const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;

impl ServiceSpec {
    fn is_headless(&self) -> bool {
        self.cluster_ip.as_deref() == Some("None")
    }
}

impl Resource for Service {
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.r#type.get_or_insert(ServiceType::ClusterIP);
        let affinity = *spec.session_affinity.get_or_insert(SessionAffinity::None);
        if affinity == SessionAffinity::ClientIP {
            let config = spec
                .session_affinity_config
                .get_or_insert_with(Default::default);
            let client_ip = config.client_ip.get_or_insert_with(Default::default);
            client_ip
                .timeout_seconds
                .get_or_insert(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
        }
        for port in &mut spec.ports {
            port.protocol.get_or_insert(Protocol::Tcp);
            port.target_port.get_or_insert(IntOrString::Int(port.port));
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let spec = &self.spec;
        let path = Path::root().field("spec");
        let service_type = spec.r#type.unwrap_or(ServiceType::ClusterIP);
        if service_type == ServiceType::LoadBalancer {
            errors.push(
                path.field("type"),
                "\"LoadBalancer\" is not supported by skiff",
            );
        }
        self.validate_addresses(errors, &path, service_type);
        if spec.ports.is_empty() && !spec.is_headless() && service_type != ServiceType::ExternalName
        {
            errors.push(path.field("ports"), "required");
        }
        for (i, port) in spec.ports.iter().enumerate() {
            let path = path.field("ports").index(i);
            match &port.name {
                Some(name) => check_format(errors, &path.field("name"), name, Format::PortName),
                None if spec.ports.len() > 1 => errors.push(
                    path.field("name"),
                    "required when there is more than one port",
                ),
                None => {}
            }
            check_port(errors, &path.field("port"), port.port);
            if let Some(target) = &port.target_port {
                check_port_reference(errors, &path.field("targetPort"), target);
            }
            if let Some(node_port) = port.node_port {
                if service_type != ServiceType::NodePort {
                    errors.push(
                        path.field("nodePort"),
                        format!("may not be set when type is {}", enum_name(&service_type)),
                    );
                } else if !NODE_PORTS.contains(&node_port) {
                    errors.push(
                        path.field("nodePort"),
                        format!("{node_port} is not in the node port range (30000-32767)"),
                    );
                }
            }
        }
        let ports = spec.ports.iter().enumerate();
        check_unique(
            errors,
            ports.clone().filter_map(|(i, port)| {
                let name = port.name.as_ref()?;
                Some((
                    path.field("ports").index(i).field("name"),
                    format!("name {name:?}"),
                ))
            }),
        );
        check_unique(
            errors,
            ports.map(|(i, port)| {
                let protocol = enum_name(&port.protocol.unwrap_or(Protocol::Tcp));
                (
                    path.field("ports").index(i),
                    format!("port {}/{protocol}", port.port),
                )
            }),
        );
        check_labels(errors, &path.field("selector"), &spec.selector);
        let client_ip = spec.session_affinity != Some(SessionAffinity::ClientIP);
        match &spec.session_affinity_config {
            Some(_) if client_ip => errors.push(
                path.field("sessionAffinityConfig"),
                "may only be set when sessionAffinity is ClientIP",
            ),
            Some(config) => check_range(
                errors,
                &path
                    .field("sessionAffinityConfig")
                    .field("clientIP")
                    .field("timeoutSeconds"),
                config.client_ip.as_ref().and_then(|c| c.timeout_seconds),
                1,
                86400,
            ),
            None => {}
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        // Unset means "as stored": the server keeps the allocated addresses.
        let path = Path::root().field("spec");
        if self
            .spec
            .cluster_ip
            .as_deref()
            .is_some_and(|ip| !ip.is_empty())
            && old
                .spec
                .cluster_ip
                .as_deref()
                .is_some_and(|ip| !ip.is_empty())
        {
            check_immutable(
                errors,
                &path.field("clusterIP"),
                &self.spec.cluster_ip,
                &old.spec.cluster_ip,
            );
        }
        if !self.spec.cluster_ips.is_empty() && !old.spec.cluster_ips.is_empty() {
            check_immutable(
                errors,
                &path.field("clusterIPs"),
                &self.spec.cluster_ips,
                &old.spec.cluster_ips,
            );
        }
    }

    spec_and_status!();
}

impl Service {
    /// Cluster IPs, families and external names.
    fn validate_addresses(&self, errors: &mut FieldErrors, path: &Path, service_type: ServiceType) {
        let spec = &self.spec;
        let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if service_type == ServiceType::ExternalName {
            match spec.external_name.as_deref() {
                None | Some("") => errors.push(
                    path.field("externalName"),
                    "required when type is ExternalName",
                ),
                Some(name) => check_format(
                    errors,
                    &path.field("externalName"),
                    name,
                    Format::Dns1123Subdomain,
                ),
            }
            if !cluster_ip.is_empty() {
                errors.push(
                    path.field("clusterIP"),
                    "may not be set when type is ExternalName",
                );
            }
        }
        if spec.is_headless() && service_type == ServiceType::NodePort {
            errors.push(
                path.field("clusterIP"),
                "may not be \"None\" when type is NodePort",
            );
        }
        if !cluster_ip.is_empty() && cluster_ip != "None" && cluster_ip.parse::<IpAddr>().is_err() {
            errors.push(
                path.field("clusterIP"),
                format!("{cluster_ip:?} is not a valid IP address or \"None\""),
            );
        }
        for (i, ip) in spec.cluster_ips.iter().enumerate() {
            let path = path.field("clusterIPs").index(i);
            if ip != "None" {
                check_ip(errors, &path, ip);
            }
        }
        if let (Some(first), false) = (spec.cluster_ips.first(), cluster_ip.is_empty())
            && first != cluster_ip
        {
            errors.push(
                path.field("clusterIPs").index(0),
                format!("must be the same as clusterIP {cluster_ip:?}"),
            );
        }
        check_unique(
            errors,
            spec.ip_families.iter().enumerate().map(|(i, family)| {
                (
                    path.field("ipFamilies").index(i),
                    format!("family {}", enum_name(family)),
                )
            }),
        );
        let families = spec.ip_families.len();
        match spec.ip_family_policy {
            Some(IpFamilyPolicy::RequireDualStack) if families == 1 => errors.push(
                path.field("ipFamilies"),
                "must list both IPv4 and IPv6 when ipFamilyPolicy is RequireDualStack",
            ),
            Some(IpFamilyPolicy::SingleStack) | None if families > 1 => errors.push(
                path.field("ipFamilies"),
                "may list only one family unless ipFamilyPolicy is PreferDualStack or RequireDualStack",
            ),
            _ => {}
        }
    }
}
