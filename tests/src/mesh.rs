//! Helpers for the mesh's tests: pods as the API shows them (ready, their
//! network namespace and addresses), the agent's log and metrics.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{Agent, is_ready};
use crate::eventually;

/// How long pods get to start and the mesh to serve them.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// A pod (its JSON) in `namespace`, once it is Ready.
pub fn ready_pod(agent: &Agent, namespace: &str, name: &str) -> serde_json::Value {
    eventually(
        format!("pod {namespace}/{name} ready"),
        READY_WITHIN,
        || {
            let out = agent.cli(&["get", "pod", name, "-n", namespace, "-o", "json"]);
            let pod: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| format!("not found ({e})"))?;
            match is_ready(&pod) {
                true => Ok(pod),
                false => Err(pod["status"].to_string()),
            }
        },
    )
}

pub fn uid(pod: &serde_json::Value) -> &str {
    pod["metadata"]["uid"].as_str().expect("a pod uid")
}

/// The pod's network namespace, where the agent pins it.
pub fn netns_of(pod: &serde_json::Value) -> PathBuf {
    PathBuf::from(format!("/run/netns/skiff-{}", uid(pod)))
}

pub fn pod_ip(pod: &serde_json::Value) -> std::net::IpAddr {
    pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("a pod IP")
}

/// Waits until the agent has logged a line holding `needle` (in any order with
/// other waits).
pub fn wait_logged(agent: &mut Agent, needle: &str) {
    eventually(format!("the agent to log {needle:?}"), READY_WITHIN, || {
        let logged = agent.logged();
        match logged.iter().any(|l| l.contains(needle)) {
            true => Ok(()),
            false => Err(format!(
                "not yet; its mesh lines: {:#?}",
                mesh_lines(logged)
            )),
        }
    });
}

fn mesh_lines(log: &[String]) -> Vec<&String> {
    log.iter().filter(|l| l.contains("mesh")).collect()
}

/// The value of the metric `name` whose labels include every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}
