//! The agent as a CNI runtime: it runs the network plugin binary with the CNI
//! protocol only (environment, configuration on stdin, result or error object on
//! stdout), exactly as containerd or podman would.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// Pod-facing interface name, as Kubernetes runtimes use.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("running the CNI plugin {}: {source}", plugin.display())]
    Spawn {
        plugin: PathBuf,
        source: std::io::Error,
    },
    /// The plugin's own error object.
    #[error("CNI {command} failed with code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        command: &'static str,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("CNI {command}: the plugin's output is not a CNI result: {reason}")]
    Output {
        command: &'static str,
        reason: String,
    },
}

/// What the runtime needs from an ADD result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The pod's addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// The raw result, passed back as prevResult on DEL and CHECK.
    pub result: Value,
}

/// The node-side device of an attachment, from its CNI result: the interface
/// outside every sandbox (CNI spec 1.1.0, "interfaces").
pub fn host_device(result: &Value) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|interface| {
            interface
                .get("sandbox")
                .is_none_or(|s| s.as_str() == Some(""))
        })
        .and_then(|interface| interface["name"].as_str())
        .map(str::to_string)
}

/// One network (a plugin and its configuration) the agent attaches pods to.
#[derive(Debug, Clone)]
pub struct Network {
    /// Directories searched for the plugin binary, as CNI_PATH.
    pub bin_dirs: Vec<PathBuf>,
    /// The plugin's configuration, with cniVersion, name and type.
    pub config: Value,
}

impl Network {
    fn plugin(&self) -> PathBuf {
        let kind = self.config["type"].as_str().unwrap_or("skiff-cni");
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(kind))
            .find(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(kind))
    }

    pub fn add(&self, container_id: &str, netns: &Path) -> Result<Attachment, CniError> {
        let result = self.invoke("ADD", container_id, Some(netns), None)?;
        let mut ips: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        if ips.is_empty() {
            return Err(CniError::Output {
                command: "ADD",
                reason: format!("no addresses in {result}"),
            });
        }
        ips.sort_by_key(|ip| ip.is_ipv6());
        Ok(Attachment { ips, result })
    }

    /// Detaches a pod; the plugin treats an unknown attachment as done.
    pub fn del(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        previous: Option<&Value>,
    ) -> Result<(), CniError> {
        self.invoke("DEL", container_id, netns, previous).map(drop)
    }

    pub fn check(
        &self,
        container_id: &str,
        netns: &Path,
        previous: &Value,
    ) -> Result<(), CniError> {
        self.invoke("CHECK", container_id, Some(netns), Some(previous))
            .map(drop)
    }

    fn invoke(
        &self,
        command: &'static str,
        container_id: &str,
        netns: Option<&Path>,
        previous: Option<&Value>,
    ) -> Result<Value, CniError> {
        let plugin = self.plugin();
        let mut config = self.config.clone();
        if let Some(previous) = previous {
            config["prevResult"] = previous.clone();
        }
        let cni_path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let mut cmd = Command::new(&plugin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(netns) = netns {
            cmd.env("CNI_NETNS", netns);
        }
        let spawn = |source| CniError::Spawn {
            plugin: plugin.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(config.to_string().as_bytes())
                .map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let error = parsed.unwrap_or(Value::Null);
            return Err(CniError::Plugin {
                command,
                code: error["code"].as_u64().unwrap_or(0),
                msg: error["msg"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string()),
                details: error["details"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(parsed.unwrap_or(Value::Null))
    }
}

/// The skiff-cni configuration for a node's pod CIDRs.
pub fn skiff_network(
    bin_dirs: Vec<PathBuf>,
    pod_cidrs: &[ipnet::IpNet],
    data_dir: &Path,
    mtu: Option<u32>,
) -> Network {
    let mut config = json!({
        "cniVersion": "1.1.0",
        "name": "skiff",
        "type": "skiff-cni",
        "ipam": {
            "podCIDRs": pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "dataDir": data_dir,
        },
    });
    if let Some(mtu) = mtu {
        config["mtu"] = json!(mtu);
    }
    Network { bin_dirs, config }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_device_is_the_interface_outside_the_sandbox() {
        let result = serde_json::json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "eth0", "sandbox": "/run/netns/skiff-u1"},
                {"name": "skiff0123abcd", "mac": "02:00:00:00:00:01"},
            ],
        });
        assert_eq!(host_device(&result).as_deref(), Some("skiff0123abcd"));
        assert_eq!(host_device(&serde_json::json!({"interfaces": []})), None);
        assert_eq!(host_device(&serde_json::json!({})), None);
    }
}
