//! Where a node keeps each pod's things: one directory per pod (its record, its
//! /etc files, its volumes, one directory per container attempt), its network
//! namespace, its containers' logs and cgroups.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    /// `<state>/pods`: one directory per pod UID.
    pub pods: PathBuf,
    /// Pinned network namespaces (`/run/netns`, so `ip netns` shows them).
    pub netns: PathBuf,
    /// Container logs, `<namespace>_<pod>_<uid>/<container>/<attempt>.log` as the kubelet lays them out.
    pub logs: PathBuf,
    /// The cgroupfs parent of every pod's cgroups.
    pub cgroup_parent: String,
}

impl Paths {
    pub fn pod(&self, uid: &str) -> PathBuf {
        self.pods.join(uid)
    }

    pub fn record(&self, uid: &str) -> PathBuf {
        self.pod(uid).join("pod.json")
    }

    /// /etc/hosts, /etc/resolv.conf and /etc/hostname of the pod.
    pub fn etc(&self, uid: &str) -> PathBuf {
        self.pod(uid).join("etc")
    }

    pub fn volumes(&self, uid: &str) -> PathBuf {
        self.pod(uid).join("volumes")
    }

    /// One attempt of one container: its bundle, and its overlay's upper and work dirs.
    pub fn attempt(&self, uid: &str, container: &str, attempt: u32) -> PathBuf {
        self.pod(uid)
            .join("containers")
            .join(format!("{container}-{attempt}"))
    }

    pub fn netns(&self, uid: &str) -> PathBuf {
        self.netns.join(format!("skiff-{uid}"))
    }

    pub fn pod_logs(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.logs.join(format!("{namespace}_{name}_{uid}"))
    }

    pub fn log(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        attempt: u32,
    ) -> PathBuf {
        self.pod_logs(namespace, name, uid)
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// The pod's cgroup (relative to each hierarchy's root), parent of its containers'.
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("{}/pod{uid}", self.cgroup_parent)
    }
}

/// The runc container ID of one attempt of a container: unique on the node, and
/// readable in `runc list`.
pub fn container_id(uid: &str, container: &str, attempt: u32) -> String {
    format!("{uid}-{container}-{attempt}")
}

/// Removes `dir` if it exists.
pub fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
