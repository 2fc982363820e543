//! EndpointSlices (discovery.k8s.io/v1): the backends of a Service, which the
//! dataplane loads into its maps and cluster DNS answers with. Written by the
//! endpoints controller, or by hand for services without a selector.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ObjectMeta;
use super::object::{Resource, enum_name, to_json};
use super::pod::Protocol;
use super::validation::{
    FieldErrors, Format, Path, check_format, check_name, check_port, check_unique,
};

/// One family's (or DNS names') endpoints. Like Kubernetes, the fields are at the top
/// level: there is no spec or status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: Option<AddressType>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressType {
    IPv4,
    IPv6,
    #[serde(rename = "FQDN")]
    Fqdn,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Addresses of one backend (interchangeable), of the slice's address type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    pub conditions: Option<EndpointConditions>,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// The pod behind the endpoint.
    pub target_ref: Option<ObjectReference>,
}

/// Unset means "unknown", which consumers read as ready/serving.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectReference {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPort {
    /// The service port's name ("" when the service has one unnamed port).
    pub name: Option<String>,
    pub protocol: Option<Protocol>,
    pub port: Option<i32>,
    pub app_protocol: Option<String>,
}

/// Kubernetes's limits: a slice stays small enough to ship around cheaply.
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;

impl Resource for EndpointSlice {
    fn apply_defaults(&mut self) {
        for port in &mut self.ports {
            port.protocol.get_or_insert(Protocol::Tcp);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if self.address_type.is_none() {
            errors.push("addressType", "required");
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            errors.push(
                "endpoints",
                format!(
                    "at most {MAX_ENDPOINTS} endpoints, found {}",
                    self.endpoints.len()
                ),
            );
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let path = Path::root().field("endpoints").index(i);
            let addresses = &endpoint.addresses;
            if addresses.is_empty() || addresses.len() > MAX_ADDRESSES {
                errors.push(
                    path.field("addresses"),
                    format!(
                        "must have 1 to {MAX_ADDRESSES} addresses, found {}",
                        addresses.len()
                    ),
                );
            }
            for (j, address) in addresses.iter().enumerate() {
                check_address(
                    errors,
                    &path.field("addresses").index(j),
                    self.address_type,
                    address,
                );
            }
            if let Some(hostname) = &endpoint.hostname {
                check_format(
                    errors,
                    &path.field("hostname"),
                    hostname,
                    Format::Dns1123Label,
                );
            }
            if let Some(node) = &endpoint.node_name {
                check_format(
                    errors,
                    &path.field("nodeName"),
                    node,
                    Format::Dns1123Subdomain,
                );
            }
            if let Some(target) = &endpoint.target_ref {
                check_name(
                    errors,
                    &path.field("targetRef").field("name"),
                    &target.name,
                    Format::Dns1123Subdomain,
                );
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            let path = Path::root().field("ports").index(i);
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                check_format(errors, &path.field("name"), name, Format::PortName);
            }
            if let Some(number) = port.port {
                check_port(errors, &path.field("port"), number);
            }
        }
        check_unique(
            errors,
            self.ports.iter().enumerate().map(|(i, port)| {
                let name = port.name.clone().unwrap_or_default();
                (
                    Path::root().field("ports").index(i).field("name"),
                    format!("name {name:?}"),
                )
            }),
        );
    }

    fn spec_value(&self) -> Value {
        to_json(
            &json!({ "addressType": self.address_type, "endpoints": self.endpoints, "ports": self.ports }),
        )
    }
}

/// An address must be of the slice's type.
fn check_address(
    errors: &mut FieldErrors,
    path: &Path,
    address_type: Option<AddressType>,
    address: &str,
) {
    let Some(address_type) = address_type else {
        return;
    };
    let valid = match address_type {
        AddressType::IPv4 => address.parse::<Ipv4Addr>().is_ok(),
        AddressType::IPv6 => address.parse::<Ipv6Addr>().is_ok(),
        AddressType::Fqdn => Format::Dns1123Subdomain.is_valid(address),
    };
    if !valid {
        errors.push(
            path,
            format!(
                "{address:?} is not a valid {} address",
                enum_name(&address_type)
            ),
        );
    }
}
