//! What skiff-cni leaves behind, read the way tests check it: the allocations of a
//! network and the veths in a node namespace.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::netns::NetNs;

/// The allocations in `<data_dir>/<network>/allocations.json` (none if the file
/// does not exist yet).
pub fn allocations(data_dir: &Path, network: &str) -> Vec<Value> {
    let path = data_dir.join(network).join("allocations.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let state: Value = serde_json::from_slice(&bytes).expect("allocations are JSON");
            state["allocations"]
                .as_array()
                .expect("an allocations array")
                .clone()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// The node-side veths skiff-cni made in `node` (`skf…`), and pod sides not yet
/// moved to their pod (`skt…`).
pub fn veths(node: &NetNs) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", node.name(), "-o", "link", "show"])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip link show failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with("skf") || name.starts_with("skt"))
        .collect()
}
