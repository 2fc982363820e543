//! Starting, stopping and removing one attempt of one container: image to
//! overlay root file system to OCI bundle to conmon and runc. Blocking: the pod
//! worker calls these from `spawn_blocking`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::image::{ImageError, ImageStore};
use crate::model::{Container, Pod};

use super::bundle::{self, BindMount, BundleError, ContainerPlan};
use super::oci::{Exit, Oci, OciError};
use super::paths::{Paths, container_id};
use super::rootfs::{self, RootfsError};

/// Why a container could not be started, with the reason Kubernetes shows.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Config(#[from] BundleError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{0}")]
    Create(OciError),
    #[error("{0}")]
    Run(OciError),
    #[error("{0}")]
    Io(String),
}

impl StartError {
    /// The waiting reason of the container status.
    pub fn reason(&self) -> &'static str {
        match self {
            StartError::Image(_) => "ErrImagePull",
            StartError::Config(_) => "CreateContainerConfigError",
            StartError::Rootfs(_) | StartError::Create(_) | StartError::Io(_) => {
                "CreateContainerError"
            }
            StartError::Run(_) => "RunContainerError",
        }
    }
}

/// What one start needs.
pub struct Launch<'a> {
    pub paths: &'a Paths,
    pub oci: &'a Oci,
    pub images: &'a ImageStore,
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub attempt: u32,
    pub netns: &'a Path,
    pub env: Vec<String>,
    pub mounts: Vec<BindMount>,
    pub pids_limit: i64,
    pub log_max_bytes: u64,
}

/// A started container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub id: String,
    pub image_id: String,
}

pub fn start(launch: &Launch) -> Result<Started, StartError> {
    let pod = launch.pod;
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = &launch.container.name;
    let image = launch.images.resolve(&launch.container.image)?;
    let id = container_id(uid, name, launch.attempt);
    let dir = launch.paths.attempt(uid, name, launch.attempt);
    // A half-made earlier try of this attempt (agent killed mid-start) goes first.
    remove(launch.paths, launch.oci, uid, name, launch.attempt);
    let rootfs = rootfs::mount(&dir, &image.layers)?;
    let annotations = [
        ("io.skiff.pod.uid", uid.to_string()),
        ("io.skiff.pod.namespace", namespace.to_string()),
        ("io.skiff.pod.name", pod.metadata.name.clone()),
        ("io.skiff.container.name", name.clone()),
        ("io.skiff.container.attempt", launch.attempt.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let built = bundle::spec(&ContainerPlan {
        pod,
        container: launch.container,
        image_reference: &image.reference,
        image: &image.config,
        rootfs: &rootfs,
        netns: launch.netns,
        cgroups_path: format!("{}/{id}", launch.paths.pod_cgroup(uid)),
        env: launch.env.clone(),
        mounts: launch.mounts.clone(),
        annotations,
        pids_limit: launch.pids_limit,
    });
    let spec = match built {
        Ok(spec) => spec,
        Err(e) => {
            remove(launch.paths, launch.oci, uid, name, launch.attempt);
            return Err(e.into());
        }
    };
    let result = spec
        .save(dir.join("config.json"))
        .map_err(|e| StartError::Io(format!("writing {}/config.json: {e}", dir.display())))
        .and_then(|()| {
            let log = launch
                .paths
                .log(namespace, &pod.metadata.name, uid, name, launch.attempt);
            launch
                .oci
                .create(&id, &dir, &log, launch.log_max_bytes)
                .map_err(StartError::Create)
        })
        .and_then(|_pid| launch.oci.start(&id).map_err(StartError::Run));
    match result {
        Ok(()) => Ok(Started {
            id,
            image_id: image.id,
        }),
        Err(e) => {
            remove(launch.paths, launch.oci, uid, name, launch.attempt);
            Err(e)
        }
    }
}

/// Stops a container: SIGTERM, up to `grace` to exit, then SIGKILL. Returns how it
/// ended, when conmon recorded it.
pub fn stop(oci: &Oci, id: &str, grace: Duration) -> Option<Exit> {
    if let Some(exit) = oci.exit(id) {
        return Some(exit);
    }
    let _ = oci.kill(id, "TERM");
    if let Some(exit) = wait_for_exit(oci, id, grace) {
        return Some(exit);
    }
    let _ = oci.kill(id, "KILL");
    wait_for_exit(oci, id, Duration::from_secs(10))
}

fn wait_for_exit(oci: &Oci, id: &str, limit: Duration) -> Option<Exit> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(exit) = oci.exit(id) {
            return Some(exit);
        }
        // Gone without conmon noticing (e.g. never started): nothing to wait for.
        // Checked without spawning runc, as this runs every 50 ms.
        if !oci.exists(id) {
            return None;
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes what an attempt left: the runc container, its root file system and
/// bundle, and conmon's files. The log stays (for `logs --previous`).
pub fn remove(paths: &Paths, oci: &Oci, uid: &str, container: &str, attempt: u32) {
    let id = container_id(uid, container, attempt);
    let _ = oci.delete(&id, true);
    oci.forget(&id);
    let dir = paths.attempt(uid, container, attempt);
    let _ = rootfs::unmount(&dir);
    let _ = super::paths::remove_dir(&dir);
}
