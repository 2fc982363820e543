//! The network configuration a runtime writes on stdin: the plugin's own fields,
//! the ones the spec defines (cniVersion, name, type, prevResult, runtimeConfig,
//! args, GC's valid attachments), and nothing else.
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "skiff", "type": "skiff-cni", "mtu": 1500,
//!  "ipam": {"podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"],
//!           "dataDir": "/var/lib/cni/skiff"},
//!  "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}
//! ```

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{CniError, SUPPORTED_VERSIONS, code};

/// Where allocations are kept unless the configuration says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/skiff";

/// Fields this plugin understands, by object; anything else is refused with
/// code 2 (the spec asks for the key and value in the message).
const TOP_LEVEL_FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "mtu",
    "ipam",
    "dns",
    "prevResult",
    "runtimeConfig",
    "args",
    "capabilities",
    "cni.dev/valid-attachments",
];
const IPAM_FIELDS: &[&str] = &["podCIDRs", "dataDir"];
const DNS_FIELDS: &[&str] = &["nameservers", "domain", "search", "options"];

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub mtu: Option<u32>,
    /// At most one per family.
    pub pod_cidrs: Vec<IpNet>,
    pub data_dir: PathBuf,
    pub dns: Option<Dns>,
    pub prev_result: Option<Value>,
    pub valid_attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// One still-valid attachment named by GC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The typed form of the configuration, before the checks of [`NetConf::parse`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    _plugin_type: String,
    mtu: Option<u32>,
    ipam: RawIpam,
    dns: Option<Dns>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Vec<Attachment>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Vec<String>,
    data_dir: Option<PathBuf>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILED,
                "the network configuration on stdin is not JSON",
                e.to_string(),
            )
        })?;
        // The version first: an unknown version may have fields we do not know.
        let version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {version:?} is not supported"),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        refuse_unknown_fields(&value, "", TOP_LEVEL_FIELDS)?;
        refuse_unknown_fields(&value["ipam"], "ipam.", IPAM_FIELDS)?;
        refuse_unknown_fields(&value["dns"], "dns.", DNS_FIELDS)?;
        let raw: Raw = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                code::DECODE_FAILED,
                "the network configuration does not decode",
                e.to_string(),
            )
        })?;
        let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg, "");
        if raw.name.is_empty() {
            return Err(invalid("name: must not be empty".into()));
        }
        // The name names the allocation directory.
        if raw.name.contains('/') || raw.name == "." || raw.name == ".." {
            return Err(invalid(format!(
                "name: {:?} may not contain '/' or be . or ..",
                raw.name
            )));
        }
        let pod_cidrs = parse_cidrs(&raw.ipam.pod_cidrs).map_err(invalid)?;
        let data_dir = raw
            .ipam
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(invalid(format!(
                "ipam.dataDir: {} is not an absolute path",
                data_dir.display()
            )));
        }
        if let Some(mtu) = raw.mtu {
            let least = if pod_cidrs.iter().any(|c| matches!(c, IpNet::V6(_))) {
                1280
            } else {
                68
            };
            if !(least..=65535).contains(&mtu) {
                return Err(invalid(format!(
                    "mtu: {mtu} is not between {least} and 65535"
                )));
            }
        }
        Ok(Self {
            cni_version: raw.cni_version,
            name: raw.name,
            mtu: raw.mtu,
            pod_cidrs,
            data_dir,
            dns: raw.dns,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

fn refuse_unknown_fields(value: &Value, prefix: &str, known: &[&str]) -> Result<(), CniError> {
    let Some(fields) = value.as_object() else {
        return Ok(());
    };
    match fields
        .iter()
        .find(|(key, _)| !known.contains(&key.as_str()))
    {
        Some((key, found)) => Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported field {prefix}{key}: {found}"),
            format!("skiff-cni understands: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The pod CIDRs: valid, at most one per family, with room for a gateway and pods.
fn parse_cidrs(texts: &[String]) -> Result<Vec<IpNet>, String> {
    if texts.is_empty() {
        return Err("ipam.podCIDRs: at least one CIDR is required".into());
    }
    let mut cidrs: Vec<IpNet> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let field = format!("ipam.podCIDRs[{i}]");
        let cidr: IpNet = text
            .parse()
            .map_err(|_| format!("{field}: {text:?} is not a CIDR"))?;
        let cidr = cidr.trunc();
        let room = match cidr {
            IpNet::V4(net) => net.prefix_len() <= 30,
            IpNet::V6(net) => net.prefix_len() <= 126,
        };
        if !room {
            return Err(format!(
                "{field}: {cidr} is too small for a gateway and pods"
            ));
        }
        if cidrs
            .iter()
            .any(|c| c.addr().is_ipv4() == cidr.addr().is_ipv4())
        {
            return Err(format!("{field}: only one CIDR per IP family"));
        }
        cidrs.push(cidr);
    }
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.1.0","name":"skiff","type":"skiff-cni",
                "ipam":{{"podCIDRs":["10.244.0.0/24","fd00:10:244::/64"],"dataDir":"/tmp/x"}}{extra}}}"#
        )
    }

    fn err(text: &str) -> CniError {
        NetConf::parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_full_configuration_parses() {
        let parsed = NetConf::parse(
            conf(r#","mtu":1400,"dns":{"nameservers":["10.96.0.10"]},"runtimeConfig":{},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(parsed.pod_cidrs.len(), 2);
        assert_eq!(parsed.mtu, Some(1400));
        assert_eq!(parsed.valid_attachments[0].container_id, "a");
    }

    #[test]
    fn bad_configurations_get_the_spec_codes() {
        let cases: Vec<(String, u32, &str)> = vec![
            (
                "{not json".into(),
                code::DECODE_FAILED,
                "the network configuration on stdin is not JSON",
            ),
            (
                conf("").replace("1.1.0", "0.3.1"),
                code::INCOMPATIBLE_VERSION,
                "cniVersion \"0.3.1\" is not supported",
            ),
            (
                conf(r#","bridge":"cni0""#),
                code::UNSUPPORTED_FIELD,
                "unsupported field bridge: \"cni0\"",
            ),
            (
                conf("").replace(r#""dataDir""#, r#""type":"host-local","dataDir""#),
                code::UNSUPPORTED_FIELD,
                "unsupported field ipam.type: \"host-local\"",
            ),
            (
                conf("").replace("10.244.0.0/24", "10.244.0.0/33"),
                code::INVALID_CONFIG,
                "ipam.podCIDRs[0]: \"10.244.0.0/33\" is not a CIDR",
            ),
            (
                conf("").replace("fd00:10:244::/64", "10.1.0.0/16"),
                code::INVALID_CONFIG,
                "ipam.podCIDRs[1]: only one CIDR per IP family",
            ),
            (
                conf("").replace("10.244.0.0/24", "10.244.0.0/31"),
                code::INVALID_CONFIG,
                "ipam.podCIDRs[0]: 10.244.0.0/31 is too small for a gateway and pods",
            ),
            (
                conf(r#","mtu":1000"#),
                code::INVALID_CONFIG,
                "mtu: 1000 is not between 1280 and 65535",
            ),
            (
                conf("").replace("/tmp/x", "relative/dir"),
                code::INVALID_CONFIG,
                "ipam.dataDir: relative/dir is not an absolute path",
            ),
            (
                conf("").replace(r#""name":"skiff""#, r#""name":"""#),
                code::INVALID_CONFIG,
                "name: must not be empty",
            ),
        ];
        for (text, expected_code, msg) in cases {
            let e = err(&text);
            assert_eq!((e.code, e.msg.as_str()), (expected_code, msg), "{text}");
        }
    }
}
