//! The result of ADD in the format of the version the runtime asked for (1.1.0 and
//! 1.0.0 share one; 0.4.0 adds a `version` to each IP), and the parsing of the
//! `prevResult` that CHECK compares against.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{Dns, NetConf};
use crate::netlink::Links;
use crate::wiring::Wiring;
use crate::{CniError, code};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for the pod's interface; absent for the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpConfig {
    /// "4" or "6"; only in 0.4.0 results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// Index of the pod's interface in the result's `interfaces`.
pub const POD_INTERFACE: usize = 1;

/// The result of an ADD, as the JSON to print.
pub fn render(conf: &NetConf, wiring: &Wiring, links: &Links) -> String {
    let legacy = conf.cni_version == "0.4.0";
    // Interface MTUs came with 1.1.0.
    let mtu = wiring.mtu.filter(|_| conf.cni_version == "1.1.0");
    let result = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: wiring.host_veth.clone(),
                mac: links.host_mac.clone(),
                mtu,
                sandbox: None,
            },
            Interface {
                name: wiring.pod_ifname.clone(),
                mac: links.pod_mac.clone(),
                mtu,
                sandbox: Some(wiring.netns.display().to_string()),
            },
        ],
        ips: wiring
            .addresses
            .iter()
            .map(|a| IpConfig {
                version: legacy.then(|| if a.ip.is_ipv4() { "4" } else { "6" }.to_string()),
                address: host_net(a.ip),
                gateway: Some(a.gateway),
                interface: Some(POD_INTERFACE),
            })
            .collect(),
        routes: wiring
            .addresses
            .iter()
            .map(|a| Route {
                dst: default_route(a.ip),
                gw: Some(a.gateway),
            })
            .collect(),
        dns: conf.dns.clone().unwrap_or_default(),
    };
    // Serialising plain data with string keys cannot fail.
    serde_json::to_string(&result).unwrap_or_default()
}

/// The `prevResult` of a configuration, for CHECK.
pub fn parse_previous(conf: &NetConf) -> Result<CniResult, CniError> {
    let value = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult: required for CHECK",
            "the runtime must pass the result of the ADD",
        )
    })?;
    serde_json::from_value(value).map_err(|e| {
        CniError::new(
            code::DECODE_FAILED,
            "prevResult does not decode",
            e.to_string(),
        )
    })
}

/// An address as a single-host network (/32 or /128).
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

pub fn default_route(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(_) => "0.0.0.0/0".parse().unwrap_or_else(|_| host_net(ip)),
        IpAddr::V6(_) => "::/0".parse().unwrap_or_else(|_| host_net(ip)),
    }
}
