//! skiff-cni: skiff's CNI plugin (CNI spec 1.1.0; also speaks 0.4.0 and 1.0.0),
//! usable by skiff's agent and by any other CNI runtime (podman, containerd).
//!
//! It wires a pod with a routed veth pair, no bridge: the pod's end gets the pod's
//! IPv4 and IPv6 addresses (/32, /128) and default routes via the node side; the
//! node side carries the gateway addresses (the first address of each pod CIDR) and
//! a host route to each pod address. Addresses come from the node's pod CIDRs
//! through a crash-safe allocation file.
//!
//! - [`invocation`]: the CNI_* environment of one call.
//! - [`config`]: the network configuration on stdin.
//! - [`ipam`]: address allocation.
//! - [`wiring`]: what ADD makes (names, addresses, routes) as plain data.
//! - [`netlink`]: making, checking and removing it in the kernel.
//! - [`result`]: the result format of each spec version.
//! - [`install`]: installing the plugin and its network for runtimes.

pub mod config;
pub mod install;
pub mod invocation;
pub mod ipam;
pub mod netlink;
pub mod result;
pub mod wiring;

use std::collections::HashMap;

use serde::Serialize;

use config::NetConf;
use invocation::{Command, Invocation};
use wiring::Wiring;

/// The CNI versions this plugin speaks; the last is its own.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
pub const CURRENT_VERSION: &str = "1.1.0";

/// The spec's well-known error codes (SPEC.md, "Error"), and skiff-cni's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILED: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific codes start at 100.
    pub const ADDRESSES_EXHAUSTED: u32 = 100;
    pub const KERNEL: u32 = 101;
    pub const CHECK_FAILED: u32 = 102;
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

    /// Answers in the version the runtime asked for.
    fn in_version(mut self, version: &str) -> Self {
        if SUPPORTED_VERSIONS.contains(&version) {
            self.cni_version = version.to_string();
        }
        self
    }
}

/// Runs one invocation: `env` holds the process environment, `stdin` what the
/// runtime wrote. Returns what to print on stdout on success (possibly nothing).
pub fn run(env: &HashMap<String, String>, stdin: &[u8]) -> Result<String, CniError> {
    let command = invocation::command(env)?;
    if command == Command::Version {
        return Ok(version_result());
    }
    let conf = NetConf::parse(stdin)?;
    let version = conf.cni_version.clone();
    execute(command, env, conf).map_err(|e| e.in_version(&version))
}

fn execute(
    command: Command,
    env: &HashMap<String, String>,
    conf: NetConf,
) -> Result<String, CniError> {
    let allocations = ipam::Store::open(&conf)?;
    match command {
        Command::Add => {
            let call = Invocation::from_env(command, env)?;
            let addresses = allocations.allocate(&call.container_id, &call.ifname)?;
            let wiring = Wiring::plan(&conf, &call, &addresses);
            match netlink::add(&wiring) {
                Ok(links) => Ok(result::render(&conf, &wiring, &links)),
                Err(e) => {
                    // Nothing half-made stays: the veth goes and the addresses return.
                    let _ = netlink::remove(&wiring.host_veth);
                    let _ = allocations.release(&call.container_id, &call.ifname);
                    Err(e.into())
                }
            }
        }
        Command::Del => {
            let call = Invocation::from_env(command, env)?;
            netlink::remove(&wiring::host_veth_name(&call.container_id, &call.ifname))?;
            allocations.release(&call.container_id, &call.ifname)?;
            Ok(String::new())
        }
        Command::Check => {
            let call = Invocation::from_env(command, env)?;
            let expected = result::parse_previous(&conf)?;
            allocations.check(&call.container_id, &call.ifname, &expected)?;
            netlink::check(&call, &expected)?;
            Ok(String::new())
        }
        Command::Status => {
            allocations.status()?;
            Ok(String::new())
        }
        Command::Gc => {
            // The veth first: a failure then leaves the addresses for the next GC.
            for (container_id, ifname) in allocations.stale(&conf.valid_attachments)? {
                netlink::remove(&wiring::host_veth_name(&container_id, &ifname))?;
                allocations.release(&container_id, &ifname)?;
            }
            Ok(String::new())
        }
        Command::Version => Ok(version_result()),
    }
}

fn version_result() -> String {
    serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}
