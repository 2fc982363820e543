//! A pod's volumes, as the kubelet makes them, under the pod's volumes directory:
//!
//! - emptyDir: a directory shared by the pod's containers (0777, so any user can
//!   write), on a tmpfs when its medium is Memory (sizeLimit its size);
//! - hostPath: the host's path, checked against its type (or created);
//! - configMap and secret: the object's keys as files, written atomically (see
//!   `atomic`) and again whenever the object's resourceVersion changes; a
//!   secret's only ever on a tmpfs, never on disk.
//!
//! [`prepare`] makes (or brings up to date) every volume of a pod and is run on
//! each pass of the pod's worker: it is idempotent, so an adopted pod keeps its
//! volumes' contents. [`PreparedVolumes::mounts_for`] turns a container's
//! volumeMounts into bind mounts, and [`teardown`] unmounts and removes them all.
//!
//! - `plan`: what to make of each volume, as plain data (no disk).
//! - `atomic`: the kubelet's atomic writer for projected files.
//! - `disk`: directories, tmpfs mounts, host path checks, subPath directories.

mod atomic;
mod disk;
mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use log::warn;

use crate::api::registry::{ApiError, ObjectRef, Registry};
use crate::model::{Container, HostPathType, Object, Pod};

use super::bundle::BindMount;
use super::paths::Paths;
use plan::{Fetched, Plan, Projection};

/// By volume name: the resourceVersion of the ConfigMap or Secret a projected
/// volume was last written from ("" when the object did not exist).
pub type Versions = BTreeMap<String, String>;

/// Why a volume could not be made or mounted; each names the volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {problem}")]
    Invalid { volume: String, problem: String },
    #[error("volume {volume:?}: hostPath {} (type {}): {problem}", path.display(), host_path_type(*expect))]
    HostPath {
        volume: String,
        path: PathBuf,
        expect: Option<HostPathType>,
        problem: String,
    },
    #[error("volume {volume:?}: {kind} {name:?} not found")]
    MissingObject {
        volume: String,
        kind: &'static str,
        name: String,
    },
    #[error("volume {volume:?}: {kind} {name:?} has no key {key:?}")]
    MissingKey {
        volume: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("volume {volume:?}: reading {kind} {name:?}: {message}")]
    Read {
        volume: String,
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("volume {volume:?}: path {path:?}: {problem}")]
    BadPath {
        volume: String,
        path: String,
        problem: &'static str,
    },
    #[error("volume {volume:?}: subPath {sub_path:?}: {problem}")]
    SubPath {
        volume: String,
        sub_path: String,
        problem: String,
    },
    #[error("volume {volume:?}: the pod has no such volume")]
    NoSuchVolume { volume: String },
    #[error("volume {volume:?}: {what} {}: {source}", path.display())]
    Io {
        volume: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing the volumes in {}: {source}", path.display())]
    Teardown {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("preparing the volumes: {0}")]
    Task(String),
}

fn host_path_type(expect: Option<HostPathType>) -> String {
    expect.map_or_else(|| "unchecked".into(), |t| format!("{t:?}"))
}

/// A pod's volumes, made: where each one is on the host.
#[derive(Debug, Clone, Default)]
pub struct PreparedVolumes {
    volumes: BTreeMap<String, Prepared>,
}

#[derive(Debug, Clone)]
struct Prepared {
    root: PathBuf,
    kind: Made,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    EmptyDir,
    HostPath,
    /// ConfigMap and Secret volumes: always mounted read-only, as in Kubernetes.
    Projected,
}

/// Makes every volume of `pod`, or brings it up to date: ConfigMap and Secret
/// volumes are rewritten when their object's resourceVersion is not the one in
/// `versions`, which is updated. Once written, a projected volume whose object
/// goes missing or wrong keeps its files (as with the kubelet) and this is
/// logged; before that, it is an error. A volume that fails does not keep the
/// others from being made or updated; the first failure is returned.
pub async fn prepare(
    registry: &Registry,
    paths: &Paths,
    pod: &Pod,
    versions: &mut Versions,
) -> Result<PreparedVolumes, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let volumes_dir = paths.volumes(uid);
    let mut plans = Vec::with_capacity(pod.spec.volumes.len());
    for volume in &pod.spec.volumes {
        let object = match plan::projection(volume) {
            Some(projection) => fetch(registry, namespace, &volume.name, &projection).await,
            None => Ok(None),
        };
        let planned = object.and_then(|object| {
            let previous = versions.get(&volume.name);
            plan::plan(volume, &volumes_dir, object.as_ref(), previous)
        });
        plans.push((volume.name.clone(), planned));
    }
    let pod_name = format!("{namespace}/{}", pod.metadata.name);
    let outcome = tokio::task::spawn_blocking(move || make(&pod_name, plans))
        .await
        .map_err(|e| VolumeError::Task(e.to_string()))?;
    versions.extend(outcome.written);
    match outcome.failure {
        Some(failure) => Err(failure),
        None => Ok(outcome.prepared),
    }
}

/// The ConfigMap or Secret a projection names (None: it does not exist).
async fn fetch(
    registry: &Registry,
    namespace: &str,
    volume: &str,
    projection: &Projection<'_>,
) -> Result<Option<Fetched>, VolumeError> {
    let reference = ObjectRef {
        kind: projection.kind,
        namespace: Some(namespace.to_string()),
        name: projection.name.to_string(),
    };
    let error = |message: String| VolumeError::Read {
        volume: volume.to_string(),
        kind: projection.kind.name(),
        name: projection.name.to_string(),
        message,
    };
    let value = match registry.get(&reference).await {
        Ok(value) => value,
        Err(ApiError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(error(e.to_string())),
    };
    let (meta, data): (_, BTreeMap<String, Vec<u8>>) = match Object::decode_stored(value) {
        Ok(Object::ConfigMap(map)) => {
            let text = map.data.into_iter().map(|(k, v)| (k, v.into_bytes()));
            let binary = map.binary_data.into_iter().map(|(k, v)| (k, v.0));
            (map.metadata, text.chain(binary).collect())
        }
        Ok(Object::Secret(secret)) => (
            secret.metadata,
            secret.data.into_iter().map(|(k, v)| (k, v.0)).collect(),
        ),
        Ok(_) => return Err(error("the store returned another kind".into())),
        Err(e) => return Err(error(e.to_string())),
    };
    Ok(Some(Fetched {
        resource_version: meta.resource_version.unwrap_or_default(),
        data,
    }))
}

/// What carrying out a pod's plans gave.
struct Outcome {
    prepared: PreparedVolumes,
    /// The versions written, by volume.
    written: Vec<(String, String)>,
    /// The first volume that failed, if any.
    failure: Option<VolumeError>,
}

/// Carries out the plans (blocking: directories, mounts, files).
fn make(pod: &str, plans: Vec<(String, Result<Plan, VolumeError>)>) -> Outcome {
    let mut outcome = Outcome {
        prepared: PreparedVolumes::default(),
        written: Vec::new(),
        failure: None,
    };
    for (name, planned) in plans {
        match planned.and_then(|planned| make_one(pod, &name, planned)) {
            Ok((prepared, written)) => {
                outcome.prepared.volumes.insert(name.clone(), prepared);
                if let Some(version) = written {
                    outcome.written.push((name, version));
                }
            }
            Err(e) => {
                outcome.failure.get_or_insert(e);
            }
        }
    }
    outcome
}

/// Makes one volume; returns it, and the version written if it was (re)written.
fn make_one(
    pod: &str,
    name: &str,
    planned: Plan,
) -> Result<(Prepared, Option<String>), VolumeError> {
    let io = |what: &'static str, path: &Path| {
        let (volume, path) = (name.to_string(), path.to_path_buf());
        move |source| VolumeError::Io {
            volume,
            what,
            path,
            source,
        }
    };
    let (root, kind, written) = match planned {
        Plan::EmptyDir { dir, tmpfs } => {
            disk::make_dir(&dir, 0o777).map_err(io("creating", &dir))?;
            if let Some(size) = tmpfs {
                disk::mount_tmpfs(&dir, 0o777, size).map_err(io("mounting a tmpfs on", &dir))?;
            }
            (dir, Made::EmptyDir, None)
        }
        Plan::HostPath { path, expect } => {
            disk::host_path(&path, expect).map_err(|problem| VolumeError::HostPath {
                volume: name.to_string(),
                path: path.clone(),
                expect,
                problem,
            })?;
            (path, Made::HostPath, None)
        }
        Plan::Projected {
            dir,
            on_tmpfs,
            version,
            previous,
            files,
        } => {
            disk::make_dir(&dir, 0o755).map_err(io("creating", &dir))?;
            // Before anything is written: a secret's bytes never reach the disk.
            if on_tmpfs {
                disk::mount_tmpfs(&dir, 0o755, None).map_err(io("mounting a tmpfs on", &dir))?;
            }
            let is_written = atomic::is_written(&dir);
            let written = if is_written && previous.as_ref() == Some(&version) {
                None
            } else {
                match files {
                    Ok(payload) => atomic::write(&dir, &payload).map_err(io("writing", &dir))?,
                    Err(e) if is_written => warn!("pod {pod}: {e}; the volume keeps its files"),
                    Err(e) => return Err(e),
                }
                Some(version)
            };
            (dir, Made::Projected, written)
        }
    };
    Ok((Prepared { root, kind }, written))
}

impl PreparedVolumes {
    /// The bind mounts of a container's volumeMounts. A subPath mounts part of
    /// the volume (made if missing, in an emptyDir) and must stay inside it.
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<BindMount>, VolumeError> {
        container
            .volume_mounts
            .iter()
            .map(|mount| {
                let volume =
                    self.volumes
                        .get(&mount.name)
                        .ok_or_else(|| VolumeError::NoSuchVolume {
                            volume: mount.name.clone(),
                        })?;
                let source = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    Some(sub_path) => volume.sub_path(&mount.name, sub_path)?,
                    None => volume.root.clone(),
                };
                Ok(BindMount {
                    source,
                    destination: mount.mount_path.clone(),
                    read_only: mount.read_only == Some(true) || volume.kind == Made::Projected,
                })
            })
            .collect()
    }
}

impl Prepared {
    /// The host path of `sub_path` in this volume, symlinks resolved: a container
    /// may have planted one pointing out of the volume. (runc follows the path
    /// again when it mounts; the kubelet closes that gap by mounting through a
    /// file descriptor, which skiff does not do yet.)
    fn sub_path(&self, volume: &str, sub_path: &str) -> Result<PathBuf, VolumeError> {
        let error = |problem: String| VolumeError::SubPath {
            volume: volume.to_string(),
            sub_path: sub_path.to_string(),
            problem,
        };
        let relative = plan::relative_path(sub_path).map_err(|p| error(p.to_string()))?;
        if self.kind == Made::EmptyDir {
            disk::make_sub_dirs(&self.root, &relative)
                .map_err(|e| error(format!("creating it: {e}")))?;
        }
        let root = self
            .root
            .canonicalize()
            .map_err(|e| error(format!("resolving the volume: {e}")))?;
        let resolved = self.root.join(&relative).canonicalize().map_err(|e| {
            error(match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist in the volume".into(),
                _ => e.to_string(),
            })
        })?;
        if !resolved.starts_with(&root) {
            return Err(error("resolves to a path outside the volume".into()));
        }
        Ok(resolved)
    }
}

/// Unmounts the pod's tmpfs volumes and removes its volumes directory (host
/// paths are the host's, and stay).
pub fn teardown(paths: &Paths, uid: &str) -> Result<(), VolumeError> {
    let dir = paths.volumes(uid);
    let error = |source| VolumeError::Teardown {
        path: dir.clone(),
        source,
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(e)),
    };
    for entry in entries {
        disk::unmount_all(&entry.map_err(error)?.path()).map_err(error)?;
    }
    super::paths::remove_dir(&dir).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VolumeMount;

    fn prepared(root: &Path, kind: Made) -> PreparedVolumes {
        PreparedVolumes {
            volumes: [(
                "data".to_string(),
                Prepared {
                    root: root.to_path_buf(),
                    kind,
                },
            )]
            .into(),
        }
    }

    fn container(mounts: &[(&str, &str, Option<&str>, bool)]) -> Container {
        Container {
            name: "c".into(),
            volume_mounts: mounts
                .iter()
                .map(|(name, path, sub_path, read_only)| VolumeMount {
                    name: name.to_string(),
                    mount_path: path.to_string(),
                    read_only: Some(*read_only),
                    sub_path: sub_path.map(str::to_string),
                })
                .collect(),
            ..Container::default()
        }
    }

    #[test]
    fn mounts_honour_read_only_and_sub_paths() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let volumes = prepared(&root, Made::EmptyDir);
        let mounts = volumes
            .mounts_for(&container(&[
                ("data", "/data", None, false),
                ("data", "/ro", None, true),
                ("data", "/logs", Some("app/logs"), false),
            ]))
            .unwrap();
        let canonical = root.canonicalize().unwrap();
        assert_eq!(
            mounts,
            [
                BindMount {
                    source: root.clone(),
                    destination: "/data".into(),
                    read_only: false
                },
                BindMount {
                    source: root.clone(),
                    destination: "/ro".into(),
                    read_only: true
                },
                BindMount {
                    source: canonical.join("app/logs"),
                    destination: "/logs".into(),
                    read_only: false
                },
            ]
        );
        assert!(
            root.join("app/logs").is_dir(),
            "an emptyDir subPath is made"
        );
    }

    #[test]
    fn projected_volumes_are_read_only_and_their_sub_paths_not_made() {
        let scratch = tempfile::tempdir().unwrap();
        let volumes = prepared(scratch.path(), Made::Projected);
        let mounts = volumes
            .mounts_for(&container(&[("data", "/etc/app", None, false)]))
            .unwrap();
        assert!(mounts[0].read_only);
        let err = volumes
            .mounts_for(&container(&[(
                "data",
                "/etc/app.conf",
                Some("app.conf"),
                false,
            )]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume \"data\": subPath \"app.conf\": does not exist in the volume"
        );
    }

    #[test]
    fn sub_paths_out_of_the_volume_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("data");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        let volumes = prepared(&root, Made::EmptyDir);
        for (sub_path, problem) in [
            ("../x", "'..' is not allowed"),
            ("/etc", "must be a relative path"),
            ("escape", "resolves to a path outside the volume"),
            ("escape/ssl", "resolves to a path outside the volume"),
        ] {
            let err = volumes
                .mounts_for(&container(&[("data", "/x", Some(sub_path), false)]))
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("volume \"data\": subPath {sub_path:?}: {problem}")
            );
        }
        assert!(!Path::new("/etc/ssl/x").exists());
        let err = volumes
            .mounts_for(&container(&[("other", "/x", None, false)]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume \"other\": the pod has no such volume"
        );
    }

    fn projected(dir: &Path, version: &str, previous: Option<&str>, content: &str) -> Plan {
        let file = plan::File {
            content: content.as_bytes().to_vec(),
            mode: 0o644,
        };
        Plan::Projected {
            dir: dir.to_path_buf(),
            on_tmpfs: false,
            version: version.into(),
            previous: previous.map(str::to_string),
            files: Ok([(PathBuf::from("key"), file)].into()),
        }
    }

    #[test]
    fn projections_are_written_once_per_version_and_kept_when_their_object_fails() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("config");
        let missing = || VolumeError::MissingObject {
            volume: "other".into(),
            kind: "ConfigMap",
            name: "gone".into(),
        };
        // One volume failing does not keep the other from being written.
        let outcome = make(
            "ns/pod",
            vec![
                ("config".into(), Ok(projected(&dir, "1", None, "one"))),
                ("other".into(), Err(missing())),
            ],
        );
        assert_eq!(outcome.written, [("config".to_string(), "1".to_string())]);
        assert!(matches!(
            outcome.failure,
            Some(VolumeError::MissingObject { .. })
        ));
        assert!(outcome.prepared.volumes.contains_key("config"));
        let link = std::fs::read_link(dir.join("..data")).unwrap();
        // The same version again: nothing is rewritten.
        let outcome = make(
            "ns/pod",
            vec![(
                "config".into(),
                Ok(projected(&dir, "1", Some("1"), "ignored")),
            )],
        );
        assert!(outcome.written.is_empty() && outcome.failure.is_none());
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), link);
        assert_eq!(std::fs::read_to_string(dir.join("key")).unwrap(), "one");
        // Its object gone: the files stay and the version is noted, not an error.
        let gone = Plan::Projected {
            dir: dir.clone(),
            on_tmpfs: false,
            version: String::new(),
            previous: Some("1".into()),
            files: Err(missing()),
        };
        let outcome = make("ns/pod", vec![("config".into(), Ok(gone))]);
        assert!(outcome.failure.is_none());
        assert_eq!(outcome.written, [("config".to_string(), String::new())]);
        assert_eq!(std::fs::read_to_string(dir.join("key")).unwrap(), "one");
    }

    #[test]
    fn teardown_removes_the_volumes_and_tolerates_their_absence() {
        let scratch = tempfile::tempdir().unwrap();
        let paths = Paths {
            pods: scratch.path().join("pods"),
            netns: scratch.path().join("netns"),
            logs: scratch.path().join("logs"),
            cgroup_parent: "/test".into(),
        };
        teardown(&paths, "uid-1").unwrap();
        let volume = paths.volumes("uid-1").join("data");
        std::fs::create_dir_all(volume.join("deep")).unwrap();
        std::fs::write(volume.join("deep/f"), "x").unwrap();
        teardown(&paths, "uid-1").unwrap();
        assert!(!paths.volumes("uid-1").exists());
        assert!(paths.pod("uid-1").exists(), "only the volumes go");
    }
}
