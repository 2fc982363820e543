//! The OCI runtime configuration (config.json) of one container of a pod: the
//! command Kubernetes would run (container command/args over the image's
//! Entrypoint/Cmd), its environment, user, capabilities, read-only root, mounts,
//! the pod's network namespace and the cgroup limits of its resources.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::image::ImageConfig;
use crate::model::{Container, Pod, Quantity};

/// Docker's and Kubernetes' default capability set.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// CFS period: quota is milli-CPUs scaled to it.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "container {container}: no command to run: neither the container nor the image {image} gives one"
    )]
    NoCommand { container: String, image: String },
    #[error("container {container}: {field}: {reason}")]
    Invalid {
        container: String,
        field: String,
        reason: String,
    },
    #[error("building the runtime configuration: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// Everything a container's configuration is made from.
pub struct ContainerPlan<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image_reference: &'a str,
    pub image: &'a ImageConfig,
    /// The container's root file system (an overlay of the image's layers).
    pub rootfs: &'a Path,
    /// The pod's network namespace.
    pub netns: &'a Path,
    /// cgroupfs path, e.g. /skiff/pod<uid>/<container id>.
    pub cgroups_path: String,
    /// The resolved environment (valueFrom looked up), `NAME=value`.
    pub env: Vec<String>,
    /// Bind mounts: volumes, /etc/hosts, /etc/resolv.conf, /etc/hostname.
    pub mounts: Vec<BindMount>,
    pub annotations: HashMap<String, String>,
    /// Processes per container, when the pod sets no limit of its own.
    pub pids_limit: i64,
}

/// A host path made visible in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

pub fn spec(plan: &ContainerPlan) -> Result<Spec, BundleError> {
    let container = plan.container;
    let invalid = |field: &str, reason: String| BundleError::Invalid {
        container: container.name.clone(),
        field: field.to_string(),
        reason,
    };
    let args = command(container, plan.image).ok_or_else(|| BundleError::NoCommand {
        container: container.name.clone(),
        image: plan.image_reference.to_string(),
    })?;
    let security = container.security_context.clone().unwrap_or_default();
    let (uid, gid) = user(&security, plan.image, plan.rootfs)
        .map_err(|r| invalid("securityContext.runAsUser", r))?;
    let capabilities =
        capabilities(&security).map_err(|r| invalid("securityContext.capabilities", r))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .args(args)
        .env(environment(plan))
        .cwd(
            container
                .working_dir
                .clone()
                .or_else(|| plan.image.working_dir.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into()),
        )
        .capabilities(
            oci_spec::runtime::LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                .build()?,
        )
        .no_new_privileges(security.allow_privilege_escalation != Some(true))
        .build()?;

    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts();
    for bind in &plan.mounts {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if bind.read_only { "ro" } else { "rw" }.into());
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(&bind.destination))
                .typ("bind")
                .source(bind.source.clone())
                .options(options)
                .build()?,
        );
    }

    let resources =
        resources(container, plan.pids_limit).map_err(|(field, reason)| invalid(&field, reason))?;
    let mut namespaces = oci_spec::runtime::get_default_namespaces();
    for namespace in namespaces.iter_mut() {
        if namespace.typ() == LinuxNamespaceType::Network {
            *namespace = LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(plan.netns.to_path_buf())
                .build()?;
        }
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&plan.cgroups_path))
        .resources(resources)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()?;

    let hostname = plan
        .pod
        .spec
        .hostname
        .clone()
        .unwrap_or_else(|| plan.pod.metadata.name.clone());
    let mut spec = Spec::default();
    spec.set_process(Some(process))
        .set_root(Some(
            RootBuilder::default()
                .path(plan.rootfs.to_path_buf())
                .readonly(security.read_only_root_filesystem == Some(true))
                .build()?,
        ))
        .set_hostname(Some(hostname))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .set_annotations(Some(plan.annotations.clone()));
    Ok(spec)
}

/// Kubernetes' rule: `command` replaces the image's Entrypoint (and drops its Cmd),
/// `args` replaces its Cmd.
fn command(container: &Container, image: &ImageConfig) -> Option<Vec<String>> {
    let argv: Vec<String> = match (container.command.is_empty(), container.args.is_empty()) {
        (false, _) => container
            .command
            .iter()
            .chain(&container.args)
            .cloned()
            .collect(),
        (true, false) => image
            .entrypoint
            .iter()
            .chain(&container.args)
            .cloned()
            .collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    (!argv.is_empty()).then_some(argv)
}

/// The image's environment, overridden by the container's (already resolved) one.
fn environment(plan: &ContainerPlan) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let entries = plan.image.env.iter().chain(&plan.env);
    for entry in entries {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        match merged.iter_mut().find(|(n, _)| n == name) {
            Some(existing) => existing.1 = value.to_string(),
            None => merged.push((name.to_string(), value.to_string())),
        }
    }
    if !merged.iter().any(|(n, _)| n == "PATH") {
        merged.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    merged
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect()
}

/// runAsUser/runAsGroup, else the image's User (a number, or a name from the
/// image's /etc/passwd).
fn user(
    security: &crate::model::SecurityContext,
    image: &ImageConfig,
    rootfs: &Path,
) -> Result<(u32, u32), String> {
    let from_image = match image.user.as_deref().filter(|u| !u.is_empty()) {
        None => (0, 0),
        Some(user) => {
            let (name, group) = user
                .split_once(':')
                .map_or((user, None), |(u, g)| (u, Some(g)));
            let (uid, primary_gid) = match name.parse::<u32>() {
                Ok(uid) => (uid, uid),
                Err(_) => lookup(rootfs, "etc/passwd", name)
                    .and_then(|fields| {
                        Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
                    })
                    .ok_or_else(|| {
                        format!("the image's user {name:?} is not in its /etc/passwd")
                    })?,
            };
            let gid = match group {
                None => primary_gid,
                Some(group) => match group.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => lookup(rootfs, "etc/group", group)
                        .and_then(|fields| fields.get(2)?.parse().ok())
                        .ok_or_else(|| {
                            format!("the image's group {group:?} is not in its /etc/group")
                        })?,
                },
            };
            (uid, gid)
        }
    };
    let id = |value: Option<i64>, fallback: u32, what: &str| -> Result<u32, String> {
        match value {
            None => Ok(fallback),
            Some(v) => u32::try_from(v).map_err(|_| format!("{v} is not a valid {what}")),
        }
    };
    let uid = id(security.run_as_user, from_image.0, "user ID")?;
    let gid = id(security.run_as_group, from_image.1, "group ID")?;
    if security.run_as_non_root == Some(true) && uid == 0 {
        return Err("runAsNonRoot is set but the container would run as root (UID 0)".into());
    }
    Ok((uid, gid))
}

/// The fields of the line for `name` in a passwd-style file of the image.
fn lookup(rootfs: &Path, file: &str, name: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|fields| fields.first().is_some_and(|n| n == name))
}

/// The default set, minus `drop` ("ALL" allowed, as in Kubernetes), plus `add`.
/// Privileged containers and adding "ALL" are refused: the agent itself runs
/// without some capabilities (CAP_SYS_RESOURCE on these hosts), so "all" is not
/// something it can grant.
fn capabilities(security: &crate::model::SecurityContext) -> Result<Capabilities, String> {
    if security.privileged == Some(true) {
        return Err("privileged containers are not supported by skiff; add the capabilities the container needs".into());
    }
    let parse = |name: &String| -> Result<Option<Capability>, String> {
        let bare = name.strip_prefix("CAP_").unwrap_or(name);
        if bare == "ALL" {
            return Ok(None);
        }
        bare.parse::<Capability>()
            .map(Some)
            .map_err(|_| format!("{name:?} is not a Linux capability"))
    };
    let mut set: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    if let Some(requested) = &security.capabilities {
        for name in &requested.drop {
            match parse(name)? {
                Some(cap) => {
                    set.remove(&cap);
                }
                None => set.clear(),
            }
        }
        for name in &requested.add {
            match parse(name)? {
                Some(cap) => {
                    set.insert(cap);
                }
                None => return Err("adding \"ALL\" is not supported; name the capabilities".into()),
            }
        }
    }
    Ok(set)
}

/// cgroup limits from requests and limits: memory limit, CPU quota (limit) and
/// shares (request), and a pids limit. Devices: deny all but the defaults runc
/// always allows.
fn resources(
    container: &Container,
    pids_limit: i64,
) -> Result<oci_spec::runtime::LinuxResources, (String, String)> {
    let quantity = |map: &std::collections::BTreeMap<String, Quantity>, kind: &str, key: &str| {
        map.get(key)
            .map(|q| {
                q.parse()
                    .map_err(|reason| (format!("resources.{kind}[{key}]"), reason))
            })
            .transpose()
    };
    let limits = &container.resources.limits;
    let requests = &container.resources.requests;
    let mut builder = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(|e| ("resources".to_string(), e.to_string()))?,
    ]);
    if let Some(memory) = quantity(limits, "limits", "memory")? {
        let bytes = i64::try_from(memory.value()).unwrap_or(i64::MAX);
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .build()
                .map_err(|e| ("resources.limits[memory]".to_string(), e.to_string()))?,
        );
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut cpu_set = false;
    if let Some(limit) = quantity(limits, "limits", "cpu")? {
        let quota = (limit.millis() * i128::from(CPU_PERIOD_US) / 1000).max(1000);
        cpu = cpu
            .quota(i64::try_from(quota).unwrap_or(i64::MAX))
            .period(CPU_PERIOD_US);
        cpu_set = true;
    }
    if let Some(request) =
        quantity(requests, "requests", "cpu")?.or(quantity(limits, "limits", "cpu")?)
    {
        // Kubernetes' conversion: 1 CPU = 1024 shares, at least 2.
        let shares = (request.millis() * 1024 / 1000).max(2);
        cpu = cpu.shares(u64::try_from(shares).unwrap_or(2));
        cpu_set = true;
    }
    if cpu_set {
        builder = builder.cpu(
            cpu.build()
                .map_err(|e| ("resources.limits[cpu]".to_string(), e.to_string()))?,
        );
    }
    builder = builder.pids(
        LinuxPidsBuilder::default()
            .limit(pids_limit)
            .build()
            .map_err(|e| ("resources".to_string(), e.to_string()))?,
    );
    builder
        .build()
        .map_err(|e| ("resources".to_string(), e.to_string()))
}
