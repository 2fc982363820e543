//! skiff-cni: skiff's CNI plugin (CNI spec 1.1.0), usable by skiff's agent and by
//! other CNI runtimes.
//!
//! This is the protocol skeleton: the environment and stdin contract, version
//! negotiation and the spec's error object. VERSION is complete; the verbs that wire
//! a pod (ADD, DEL, CHECK, GC) and STATUS report that this build cannot serve them
//! yet, with the spec's codes, rather than pretending to succeed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The CNI versions this plugin speaks; the last is the one it answers in.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
const CURRENT_VERSION: &str = "1.1.0";

/// The spec's well-known error codes (SPEC.md, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILED: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific codes start at 100.
    pub const NOT_IMPLEMENTED: u32 = 100;
}

/// The spec's error object, printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            cni_version: CURRENT_VERSION.into(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// The verbs of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            _ => return None,
        })
    }

    /// CNI_* variables the runtime must set for this verb (beyond CNI_COMMAND).
    fn required_env(self) -> &'static [&'static str] {
        match self {
            Self::Add | Self::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Self::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Self::Status | Self::Version | Self::Gc => &[],
        }
    }
}

/// The part of a network configuration every verb reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
}

/// Runs one invocation: `env` holds the process environment, `stdin` what the
/// runtime wrote. Returns the JSON to print on success.
pub fn run(env: &HashMap<String, String>, stdin: &[u8]) -> Result<String, CniError> {
    let command = env
        .get("CNI_COMMAND")
        .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set", ""))?;
    let command = Command::parse(command).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {command:?} is not a CNI verb"),
            "expected ADD, DEL, CHECK, STATUS, VERSION or GC",
        )
    })?;
    if command == Command::Version {
        return Ok(version_result());
    }
    for var in command.required_env() {
        if env.get(*var).is_none_or(|v| v.is_empty()) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{var} is not set"),
                "",
            ));
        }
    }
    let conf = parse_config(stdin)?;
    match command {
        Command::Status => Err(CniError::new(
            code::NOT_AVAILABLE,
            "skiff-cni cannot serve ADD yet",
            format!(
                "network {:?}: pod wiring is not built into this version",
                conf.name
            ),
        )),
        other => Err(CniError::new(
            code::NOT_IMPLEMENTED,
            format!("{other:?} is not implemented by this version of skiff-cni"),
            format!("network {:?}", conf.name),
        )),
    }
}

fn version_result() -> String {
    serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILED,
            "network configuration on stdin is not valid",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {:?} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "name: must not be empty",
            "",
        ));
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CONF: &[u8] = br#"{"cniVersion":"1.1.0","name":"skiff","type":"skiff-cni"}"#;
    const ADD_ENV: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn version_lists_supported_versions() {
        let out = run(&env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn missing_or_unknown_command_is_an_environment_error() {
        assert_eq!(
            run(&env(&[]), CONF).unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
        let err = run(&env(&[("CNI_COMMAND", "PLUG")]), CONF).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("\"PLUG\""), "{err}");
    }

    #[test]
    fn add_without_netns_names_the_variable() {
        let mut e = env(&ADD_ENV);
        e.remove("CNI_NETNS");
        let err = run(&e, CONF).unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (code::INVALID_ENVIRONMENT, "CNI_NETNS is not set")
        );
    }

    #[test]
    fn undecodable_config_is_code_6() {
        let err = run(&env(&ADD_ENV), b"{not json").unwrap_err();
        assert_eq!(err.code, code::DECODE_FAILED);
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let conf = br#"{"cniVersion":"0.3.1","name":"skiff","type":"skiff-cni"}"#;
        let err = run(&env(&ADD_ENV), conf).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(err.msg.contains("0.3.1"), "{err}");
    }

    #[test]
    fn verbs_not_built_yet_say_so_with_spec_codes() {
        assert_eq!(
            run(&env(&ADD_ENV), CONF).unwrap_err().code,
            code::NOT_IMPLEMENTED
        );
        let status = run(&env(&[("CNI_COMMAND", "STATUS")]), CONF).unwrap_err();
        assert_eq!(status.code, code::NOT_AVAILABLE);
    }

    #[test]
    fn error_object_has_the_spec_fields() {
        let err = CniError::new(code::INVALID_CONFIG, "bad", "");
        let json: serde_json::Value = serde_json::to_value(&err).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad"})
        );
    }
}
