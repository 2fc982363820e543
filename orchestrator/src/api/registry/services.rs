//! ClusterIPs and NodePorts for Services. Every allocated address or port has a
//! store key (`/registry/serviceips/<ip>`, `/registry/servicenodeports/<port>`)
//! holding its owner, created in the same transaction as the Service with a
//! create-only condition: two concurrent applies can never get the same one, and
//! deleting the Service releases them in the same transaction.
//!
//! The Service's spec is handled as JSON here so the allocation rules read like the
//! Kubernetes documentation of the fields they set.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::{ApiError, Registry, Violation};
use crate::api::allocator::Family;
use crate::model::Object;
use crate::store::Txn;

const IP_PREFIX: &str = "/registry/serviceips/";
const PORT_PREFIX: &str = "/registry/servicenodeports/";

/// Allocation changes of one request, folded into its transaction at the end.
#[derive(Default)]
pub(super) struct Plan {
    /// Allocations in the store: key -> owner ("namespace/name"); read once.
    existing: Option<HashMap<String, String>>,
    reserve: Vec<(String, String)>,
    release: Vec<String>,
}

impl Plan {
    pub(super) fn into_txn(self, mut txn: Txn) -> Txn {
        for (key, owner) in self.reserve {
            txn = txn.when(key.clone(), 0).put(key, owner);
        }
        for key in self.release {
            txn = txn.delete(key);
        }
        txn
    }

    /// Releases everything a Service being removed holds.
    pub(super) fn release_all(&mut self, service: &Object) {
        self.release.extend(allocation_keys(service));
    }

    fn taken_ips(&self) -> HashSet<IpAddr> {
        self.keys(IP_PREFIX)
            .filter_map(|k| k.parse().ok())
            .collect()
    }

    fn taken_ports(&self) -> HashSet<u16> {
        self.keys(PORT_PREFIX)
            .filter_map(|k| k.parse().ok())
            .collect()
    }

    /// Allocated keys under `prefix` (stored or reserved by this request), without
    /// the prefix.
    fn keys<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.existing
            .iter()
            .flat_map(|m| m.keys())
            .chain(self.reserve.iter().map(|(k, _)| k))
            .filter_map(move |k| k.strip_prefix(prefix))
    }

    fn owner(&self, key: &str) -> Option<&str> {
        self.reserve
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, o)| o.as_str())
            .or_else(|| self.existing.as_ref()?.get(key).map(String::as_str))
    }
}

fn ip_key(ip: IpAddr) -> String {
    format!("{IP_PREFIX}{ip}")
}

fn port_key(port: u16) -> String {
    format!("{PORT_PREFIX}{port}")
}

impl Registry {
    /// Fills in the ClusterIPs, IP families and NodePorts of `service` (keeping the
    /// ones `old` has) and records what to reserve and release in `plan`.
    pub(super) async fn allocate_service(
        &self,
        index: usize,
        service: &mut Object,
        old: Option<&Object>,
        plan: &mut Plan,
    ) -> Result<(), ApiError> {
        if plan.existing.is_none() {
            plan.existing = Some(self.allocations().await?);
        }
        let meta = service.metadata();
        let owner = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name
        );
        let mut value = service.to_value();
        let old_spec = old
            .map(|o| o.to_value()["spec"].clone())
            .unwrap_or(Value::Null);
        let spec = value
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid(index, "spec", "required".into()))?;

        let ips = self.cluster_ips(index, spec, &old_spec, &owner, plan)?;
        let ports = self.node_ports(index, spec, &old_spec, &owner, plan)?;
        for ip in allocated_ips(&old_spec) {
            if !ips.contains(&ip) {
                plan.release.push(ip_key(ip));
            }
        }
        for port in node_ports_of(&old_spec) {
            if !ports.contains(&port) {
                plan.release.push(port_key(port));
            }
        }
        *service = Object::decode(value).map_err(|e| ApiError::invalid(index, e))?;
        Ok(())
    }

    /// The allocation keys in the store with their owners.
    async fn allocations(&self) -> Result<HashMap<String, String>, ApiError> {
        let mut all = HashMap::new();
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            let (kvs, _) = self.store.list(prefix).await.map_err(ApiError::Store)?;
            all.extend(
                kvs.into_iter()
                    .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned())),
            );
        }
        Ok(all)
    }

    /// Sets clusterIP, clusterIPs, ipFamilies and ipFamilyPolicy; returns the
    /// addresses the Service holds.
    fn cluster_ips(
        &self,
        index: usize,
        spec: &mut Map<String, Value>,
        old_spec: &Value,
        owner: &str,
        plan: &mut Plan,
    ) -> Result<Vec<IpAddr>, ApiError> {
        let service_type = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP");
        if service_type == "ExternalName" {
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                spec.remove(field);
            }
            return Ok(Vec::new());
        }
        let mut requested = strings(spec.get("clusterIPs"));
        if requested.is_empty() {
            requested = strings(spec.get("clusterIP"))
                .into_iter()
                .filter(|ip| !ip.is_empty())
                .collect();
        }
        // ClusterIPs are immutable: an update that leaves them out keeps them.
        if requested.is_empty() {
            requested = strings(old_spec.get("clusterIPs"));
        }
        let headless = requested.first().is_some_and(|ip| ip == "None");
        let policy = spec
            .get("ipFamilyPolicy")
            .and_then(Value::as_str)
            .or_else(|| old_spec.get("ipFamilyPolicy").and_then(Value::as_str))
            .unwrap_or("SingleStack")
            .to_string();
        let families = self.families(index, spec, &requested, headless, &policy)?;

        let mut ips = Vec::new();
        if !headless {
            for (i, family) in families.iter().enumerate() {
                let ip = match requested.get(i) {
                    Some(text) => self.requested_ip(index, i, text, *family, owner, plan)?,
                    None => {
                        let ip = self
                            .networks
                            .pick_ip(*family, &plan.taken_ips())
                            .ok_or_else(|| {
                                ApiError::Exhausted(format!(
                                    "no free ClusterIP left in {}",
                                    self.networks.cidr(*family)
                                ))
                            })?;
                        plan.reserve.push((ip_key(ip), owner.to_string()));
                        ip
                    }
                };
                ips.push(ip);
            }
        }
        let listed: Vec<String> = if headless {
            vec!["None".into()]
        } else {
            ips.iter().map(ToString::to_string).collect()
        };
        spec.insert("clusterIP".into(), json!(listed[0]));
        spec.insert("clusterIPs".into(), json!(listed));
        spec.insert(
            "ipFamilies".into(),
            json!(families.iter().map(|f| f.name()).collect::<Vec<_>>()),
        );
        spec.insert("ipFamilyPolicy".into(), json!(policy));
        Ok(ips)
    }

    /// The IP families of a Service, from spec.ipFamilies, else the requested
    /// addresses, else the policy (IPv4 first: the cluster's primary family).
    fn families(
        &self,
        index: usize,
        spec: &Map<String, Value>,
        requested: &[String],
        headless: bool,
        policy: &str,
    ) -> Result<Vec<Family>, ApiError> {
        let mut families = Vec::new();
        for (i, name) in strings(spec.get("ipFamilies")).iter().enumerate() {
            let family = Family::from_name(name).ok_or_else(|| {
                invalid(
                    index,
                    &format!("spec.ipFamilies[{i}]"),
                    format!("\"{name}\" is not an IP family (IPv4 or IPv6)"),
                )
            })?;
            families.push(family);
        }
        if families.is_empty() && !headless {
            families = requested
                .iter()
                .filter_map(|ip| ip.parse().ok().map(Family::of))
                .collect();
        }
        if families.is_empty() {
            families.push(Family::Ipv4);
        }
        if families.len() == 2 && families[0] == families[1] {
            return Err(invalid(
                index,
                "spec.ipFamilies[1]",
                format!("{} is listed twice", families[1].name()),
            ));
        }
        if families.len() > 2 {
            return Err(invalid(
                index,
                "spec.ipFamilies",
                "at most two families (one of each)".into(),
            ));
        }
        match policy {
            "SingleStack" if families.len() > 1 => Err(invalid(
                index,
                "spec.ipFamilyPolicy",
                "SingleStack allows one IP family, but two are requested".into(),
            )),
            "PreferDualStack" | "RequireDualStack" if families.len() == 1 => {
                let other = match families[0] {
                    Family::Ipv4 => Family::Ipv6,
                    Family::Ipv6 => Family::Ipv4,
                };
                families.push(other);
                Ok(families)
            }
            _ => Ok(families),
        }
    }

    /// Checks a ClusterIP the manifest asks for and reserves it.
    fn requested_ip(
        &self,
        index: usize,
        i: usize,
        text: &str,
        family: Family,
        owner: &str,
        plan: &mut Plan,
    ) -> Result<IpAddr, ApiError> {
        let field = format!("spec.clusterIPs[{i}]");
        let ip: IpAddr = text
            .parse()
            .map_err(|_| invalid(index, &field, format!("\"{text}\" is not an IP address")))?;
        if Family::of(ip) != family {
            return Err(invalid(
                index,
                &field,
                format!("{ip} is not an {} address", family.name()),
            ));
        }
        if !self.networks.assignable(ip) {
            return Err(invalid(
                index,
                &field,
                format!(
                    "{ip} is not in the service CIDR {}",
                    self.networks.cidr(family)
                ),
            ));
        }
        match plan.owner(&ip_key(ip)) {
            Some(holder) if holder == owner => {}
            Some(holder) => {
                return Err(invalid(
                    index,
                    &field,
                    format!("{ip} is already allocated to service {holder}"),
                ));
            }
            None => plan.reserve.push((ip_key(ip), owner.to_string())),
        }
        Ok(ip)
    }

    /// Sets ports[].nodePort for NodePort Services (keeping the ones the stored
    /// Service has for the same port); returns the ports the Service holds.
    fn node_ports(
        &self,
        index: usize,
        spec: &mut Map<String, Value>,
        old_spec: &Value,
        owner: &str,
        plan: &mut Plan,
    ) -> Result<Vec<u16>, ApiError> {
        if spec.get("type").and_then(Value::as_str) != Some("NodePort") {
            return Ok(Vec::new());
        }
        let old_ports: Vec<Value> = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut held = Vec::new();
        let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
            return Ok(held);
        };
        for (i, port) in ports.iter_mut().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            let previous = old_ports
                .iter()
                .find(|p| p["port"] == port["port"] && p["protocol"] == port["protocol"])
                .and_then(|p| p["nodePort"].as_u64());
            let wanted = port.get("nodePort").and_then(Value::as_u64).or(previous);
            let node_port = match wanted {
                Some(n) => {
                    let n = u16::try_from(n)
                        .ok()
                        .filter(|n| self.networks.node_ports.contains(n))
                        .ok_or_else(|| {
                            invalid(
                                index,
                                &field,
                                format!(
                                    "{n} is not in the NodePort range {}-{}",
                                    self.networks.node_ports.start(),
                                    self.networks.node_ports.end()
                                ),
                            )
                        })?;
                    match plan.owner(&port_key(n)) {
                        Some(holder) if holder == owner => {}
                        Some(holder) => {
                            return Err(invalid(
                                index,
                                &field,
                                format!("{n} is already allocated to service {holder}"),
                            ));
                        }
                        None => plan.reserve.push((port_key(n), owner.to_string())),
                    }
                    n
                }
                None => {
                    let n = self
                        .networks
                        .pick_node_port(&plan.taken_ports())
                        .ok_or_else(|| ApiError::Exhausted("no free NodePort left".into()))?;
                    plan.reserve.push((port_key(n), owner.to_string()));
                    n
                }
            };
            if let Some(obj) = port.as_object_mut() {
                obj.insert("nodePort".into(), json!(node_port));
            }
            held.push(node_port);
        }
        Ok(held)
    }
}

/// The allocation keys a stored Service holds, for releasing them on delete.
pub(super) fn allocation_keys(service: &Object) -> Vec<String> {
    let spec = &service.to_value()["spec"];
    allocated_ips(spec)
        .into_iter()
        .map(ip_key)
        .chain(node_ports_of(spec).into_iter().map(port_key))
        .collect()
}

fn allocated_ips(spec: &Value) -> Vec<IpAddr> {
    strings(spec.get("clusterIPs"))
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

fn node_ports_of(spec: &Value) -> Vec<u16> {
    spec.get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort")?.as_u64()?.try_into().ok())
        .collect()
}

/// A string or list of strings as a list.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn invalid(index: usize, field: &str, reason: String) -> ApiError {
    ApiError::Invalid(vec![Violation {
        index,
        field: field.to_string(),
        reason,
    }])
}
