//! The cluster-scoped core/v1 kinds: Namespaces, and Nodes with their capacity,
//! taints and health.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::meta::Condition;
use super::object::{Resource, enum_name, is_default, spec_and_status};
use super::pod::TaintEffect;
use super::validation::{FieldErrors, Format, Path, check_format, check_name, check_unique};
use super::{ObjectMeta, Quantity};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Namespace {
    pub metadata: ObjectMeta,
    pub spec: NamespaceSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: NamespaceStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSpec {
    /// What must be cleaned up before the namespace can go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceStatus {
    pub phase: Option<NamespacePhase>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespacePhase {
    Active,
    Terminating,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub metadata: ObjectMeta,
    pub spec: NodeSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: NodeStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// The range the node's pod addresses come from (the first of `podCIDRs`).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// One range per IP family.
    #[serde(rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// Cordoned: no new pods are scheduled here.
    pub unschedulable: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

/// Repels pods that do not tolerate it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: Option<TaintEffect>,
    pub time_added: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
    /// Capacity minus what the system reserves: what pods can request.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: BTreeMap<String, Quantity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    pub node_info: Option<NodeSystemInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeAddress {
    /// "InternalIP", "ExternalIP" or "Hostname".
    pub r#type: String,
    pub address: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSystemInfo {
    pub kernel_version: String,
    pub os_image: String,
    pub container_runtime_version: String,
    pub kubelet_version: String,
    pub operating_system: String,
    pub architecture: String,
}

impl Resource for Namespace {
    fn validate(&self, errors: &mut FieldErrors) {
        for (i, finalizer) in self.spec.finalizers.iter().enumerate() {
            check_format(
                errors,
                &Path::root().field("spec").field("finalizers").index(i),
                finalizer,
                Format::QualifiedName,
            );
        }
    }

    spec_and_status!();
}

impl Resource for Node {
    fn validate(&self, errors: &mut FieldErrors) {
        let path = Path::root().field("spec");
        if let Some(cidr) = &self.spec.pod_cidr {
            check_cidr(errors, &path.field("podCIDR"), cidr);
        }
        for (i, cidr) in self.spec.pod_cidrs.iter().enumerate() {
            check_cidr(errors, &path.field("podCIDRs").index(i), cidr);
        }
        for (i, taint) in self.spec.taints.iter().enumerate() {
            let path = path.field("taints").index(i);
            check_name(
                errors,
                &path.field("key"),
                &taint.key,
                Format::QualifiedName,
            );
            if let Some(value) = &taint.value {
                check_format(errors, &path.field("value"), value, Format::LabelValue);
            }
            if taint.effect.is_none() {
                errors.push(path.field("effect"), "required");
            }
        }
        // A node has one taint per key and effect.
        check_unique(
            errors,
            self.spec.taints.iter().enumerate().map(|(i, taint)| {
                let effect = taint.effect.as_ref().map(enum_name).unwrap_or_default();
                (
                    path.field("taints").index(i),
                    format!("taint {}:{effect}", taint.key),
                )
            }),
        );
    }

    spec_and_status!();
}

/// An address range: an IP address and a prefix length that fits its family.
fn check_cidr(errors: &mut FieldErrors, path: &Path, cidr: &str) {
    let valid = cidr.split_once('/').is_some_and(|(ip, prefix)| {
        let max = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return false,
        };
        prefix.parse::<u8>().is_ok_and(|p| p <= max)
    });
    if !valid {
        errors.push(
            path,
            format!("{cidr:?} is not a valid CIDR (like 10.244.0.0/24)"),
        );
    }
}
