//! What the node knows of a pod, as plain data kept in the pod's directory: its
//! network attachment and each container's attempts, exits and restarts. The
//! worker updates it as things happen; the pod's status is computed from it; and
//! after an agent restart it is read back to adopt the pod.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's addresses once attached, IPv4 first.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The CNI ADD result, for DEL and CHECK.
    #[serde(default)]
    pub cni_result: Option<Value>,
    pub started_at: Option<String>,
    /// All init containers completed.
    #[serde(default)]
    pub initialized: bool,
    /// By container name, init containers included.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// The pod's terminationGracePeriodSeconds, for stopping its containers after
    /// the pod was removed from the store at once (a deletion with grace period
    /// 0), which the kubelet also honours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// What the ConfigMap and Secret volumes were last written from, so they are
    /// rewritten only when their object changes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_versions: super::volumes::Versions,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// The attempt of the current (or last) container; 0 before the first.
    pub attempt: u32,
    pub running: Option<Running>,
    /// How the current attempt ended, when it has.
    pub terminated: Option<Terminated>,
    /// How the attempt before ended (Kubernetes' lastState).
    pub last_terminated: Option<Terminated>,
    /// Why the container is not running, when it is waiting.
    pub waiting: Option<Waiting>,
    pub restart_count: i32,
    /// Back-off before the next start, doubled per failure (10 s up to 5 min).
    pub backoff_seconds: u64,
    /// Unix seconds before which the container is not started again.
    pub backoff_until: Option<i64>,
    /// Back-off between failed pulls of its image, apart from the restart
    /// back-off as in the kubelet (10 s doubling up to 5 min).
    #[serde(default)]
    pub pull_backoff_seconds: u64,
    /// Unix seconds before which its image is not pulled again.
    #[serde(default)]
    pub pull_backoff_until: Option<i64>,
    pub image_id: String,
    /// Readiness as last probed (true without a readiness probe).
    pub ready: bool,
    /// The startup probe passed (true without one).
    pub started: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    /// The runc container ID.
    pub id: String,
    pub started_at: String,
    /// Unix seconds, for back-off resets and probe delays.
    pub started_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    pub id: String,
    pub exit_code: i32,
    /// Completed, Error, OOMKilled.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// ContainerCreating, PodInitializing, CrashLoopBackOff, ErrImagePull,
    /// ImagePullBackOff, ErrImageNeverPull, InvalidImageName,
    /// CreateContainerError, RunContainerError, CreateContainerConfigError.
    pub reason: String,
    pub message: Option<String>,
}

impl PodRecord {
    /// The record in `path`, or None when there is none (or it cannot be read,
    /// which the caller treats as a pod to clean up).
    pub fn load(path: &Path) -> Option<PodRecord> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let temporary = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }

    pub fn container(&mut self, name: &str) -> &mut ContainerRecord {
        self.containers.entry(name.to_string()).or_default()
    }
}

impl ContainerRecord {
    /// The first start of the container, or its restart after `attempt`.
    pub fn next_attempt(&self) -> u32 {
        self.attempt + 1
    }
}
