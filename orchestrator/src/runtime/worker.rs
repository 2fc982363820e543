//! One worker per pod bound to this node: a level-triggered loop that brings the
//! node in line with the pod's spec (network, volumes, init containers in order,
//! app containers with their restart policy and back-off), tears everything down
//! when the pod is deleted, and reports the pod's status.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use tokio::sync::watch;

use crate::api::registry::{ObjectRef, Propagation, Registry};
use crate::image::{ImageError, ImageStore, PullOptions};
use crate::model::{Container, ImagePullPolicy, Kind, Object, Pod, Probe, RestartPolicy};

use super::cni::Network;
use super::container::{self, Launch};
use super::holds::ReadinessHolds;
use super::oci::{Exit, Oci};
use super::paths::Paths;
use super::probes::{self, Tracker, Verdict};
use super::record::{ContainerRecord, PodRecord, Running, Terminated, Waiting};
use super::status::{pod_status, will_restart};
use super::volumes::{self, PreparedVolumes, VolumeError};
use super::{events, netns, pod_files};

/// Longest back-off between restarts, and how long a container must run for its
/// back-off to start over (Kubernetes' values).
const MAX_BACKOFF_SECONDS: u64 = 300;
const INITIAL_BACKOFF_SECONDS: u64 = 10;
const BACKOFF_RESET_SECONDS: i64 = 600;
/// How long a failed pull shows as ErrImagePull before ImagePullBackOff.
const ERR_IMAGE_PULL_SECONDS: i64 = 3;
/// How long a postStart hook may take.
const POST_START_LIMIT: Duration = Duration::from_secs(30);
/// How often running containers are checked for exits.
const POLL: Duration = Duration::from_secs(1);

/// What every pod worker of the node shares.
pub struct Context {
    pub registry: Registry,
    pub node_name: String,
    pub host_ip: Option<IpAddr>,
    pub paths: Paths,
    pub images: Arc<ImageStore>,
    /// How images missing from the store are pulled.
    pub pull: PullOptions,
    pub oci: Oci,
    pub network: Network,
    pub dns: pod_files::Dns,
    pub pids_limit: i64,
    pub log_max_bytes: u64,
    /// How often a running pod's network is checked with the CNI plugin.
    pub network_check: Duration,
    /// What keeps pods NotReady besides their containers (the mesh).
    pub holds: Arc<ReadinessHolds>,
}

/// What a reconcile pass asks for next.
enum Next {
    /// Look again after this long (or sooner, when the pod changes).
    After(Duration),
    /// The pod is gone from the node.
    Done,
}

/// Runs a pod's worker until the pod is gone from the node, or until the agent
/// stops (`desired` closes): then the pod's containers keep running.
pub async fn run(ctx: Arc<Context>, uid: String, mut desired: watch::Receiver<Option<Pod>>) {
    let record_path = ctx.paths.record(&uid);
    let mut record = PodRecord::load(&record_path).unwrap_or_else(|| PodRecord {
        uid: uid.clone(),
        ..PodRecord::default()
    });
    let mut probes = Probes::default();
    let mut network_check = Instant::now() + ctx.network_check;
    loop {
        let pod = desired.borrow_and_update().clone();
        let next = reconcile(&ctx, &mut record, &mut probes, pod.clone()).await;
        let Next::After(wait) = next else {
            return;
        };
        if Instant::now() >= network_check {
            if let Some(pod) = pod.filter(|p| p.metadata.deletion_timestamp.is_none()) {
                check_network(&ctx, &record, &pod).await;
            }
            network_check = Instant::now() + ctx.network_check;
        }
        let wait = wait.min(network_check.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn reconcile(
    ctx: &Context,
    record: &mut PodRecord,
    probes: &mut Probes,
    pod: Option<Pod>,
) -> Next {
    let pod = match pod {
        Some(pod) if pod.metadata.deletion_timestamp.is_none() => pod,
        deleting => return terminate(ctx, record, deleting.as_ref()).await,
    };
    if record.namespace.is_empty() {
        record.namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        record.name = pod.metadata.name.clone();
    }
    let before = record.clone();
    // Saved with the record (when it changed) for a deletion that leaves no pod.
    record.termination_grace_period_seconds = pod.spec.termination_grace_period_seconds;
    let mut wake = POLL;
    if record.ips.is_empty()
        && let Err(message) = attach(ctx, record, &pod).await
    {
        warn!("pod {}/{}: {message}", record.namespace, record.name);
        for c in pod.spec.init_containers.iter().chain(&pod.spec.containers) {
            record.container(&c.name).waiting = Some(Waiting {
                reason: "ContainerCreating".into(),
                message: Some(message.clone()),
            });
        }
        report(ctx, &pod, record).await;
        return Next::After(Duration::from_secs(5));
    }
    collect_exits(ctx, record, &pod).await;
    // On every pass: before the first container starts, and then so that ConfigMap
    // and Secret volumes follow their objects.
    let volumes =
        volumes::prepare(&ctx.registry, &ctx.paths, &pod, &mut record.volume_versions).await;
    let policy = pod.spec.restart_policy.unwrap_or(RestartPolicy::Always);
    if !record.initialized {
        wake = wake.min(run_init_containers(ctx, record, &pod, &volumes, policy).await);
    }
    if record.initialized {
        for container in &pod.spec.containers {
            if let Some(after) =
                ensure_running(ctx, record, &pod, container, &volumes, policy).await
            {
                wake = wake.min(after);
            }
        }
        wake = wake.min(run_probes(ctx, record, probes, &pod).await);
    }
    if *record != before
        && let Err(e) = record.save(&ctx.paths.record(&record.uid))
    {
        warn!(
            "pod {}/{}: saving its record: {e}",
            record.namespace, record.name
        );
    }
    report(ctx, &pod, record).await;
    Next::After(wake)
}

/// Creates the network namespace, attaches it through CNI and writes the pod's
/// /etc files.
async fn attach(ctx: &Context, record: &mut PodRecord, pod: &Pod) -> Result<(), String> {
    // Recorded before the namespace exists: an agent stopped between the two
    // still finds the pod on the node when it starts again, and removes its
    // namespace and addresses if the pod went away meanwhile.
    record
        .save(&ctx.paths.record(&record.uid))
        .map_err(|e| format!("saving the pod's record: {e}"))?;
    let uid = record.uid.clone();
    let netns_path = ctx.paths.netns(&uid);
    let network = ctx.network.clone();
    let attachment = blocking(move || {
        netns::create(&netns_path).map_err(|e| e.to_string())?;
        network.add(&uid, &netns_path).map_err(|e| e.to_string())
    })
    .await?;
    pod_files::write(&ctx.paths.etc(&record.uid), pod, &attachment.ips, &ctx.dns)
        .map_err(|e| format!("writing the pod's /etc files: {e}"))?;
    info!(
        "pod {}/{}: attached with {:?}",
        record.namespace, record.name, attachment.ips
    );
    record.ips = attachment.ips;
    record.cni_result = Some(attachment.result);
    record.started_at = Some(crate::api::registry::now());
    record
        .save(&ctx.paths.record(&record.uid))
        .map_err(|e| format!("saving the pod's record: {e}"))
}

fn waiting_for(entry: &ContainerRecord, reason: &str) -> bool {
    entry.waiting.as_ref().is_some_and(|w| w.reason == reason)
}

/// Puts a container in the waiting state `reason` because its image cannot be
/// used, with the kubelet's two warning events (`event_reason`, then "Failed")
/// when it enters that state.
async fn image_unusable(
    ctx: &Context,
    pod: &Pod,
    entry: &mut ContainerRecord,
    reason: &str,
    event_reason: &str,
    message: String,
) {
    if !waiting_for(entry, reason) {
        event(ctx, pod, events::Type::Warning, event_reason, &message).await;
        let failed = format!("Error: {reason}");
        event(ctx, pod, events::Type::Warning, "Failed", &failed).await;
    }
    entry.waiting = Some(Waiting {
        reason: reason.into(),
        message: Some(message),
    });
}

/// Asks the CNI plugin whether the pod's network is still as ADD left it (CNI
/// CHECK); a broken one is reported as a warning event on the pod. Its addresses
/// stay: a pod keeps its IPs for life, so repairing is the plugin's business.
async fn check_network(ctx: &Context, record: &PodRecord, pod: &Pod) {
    let Some(previous) = record.cni_result.clone() else {
        return;
    };
    let (network, uid) = (ctx.network.clone(), record.uid.clone());
    let netns = ctx.paths.netns(&uid);
    let checked = blocking(move || {
        network
            .check(&uid, &netns, &previous)
            .map_err(|e| e.to_string())
    })
    .await;
    if let Err(message) = checked {
        warn!(
            "pod {}/{}: network check: {message}",
            record.namespace, record.name
        );
        events::record(
            &ctx.registry,
            &ctx.node_name,
            pod,
            events::Type::Warning,
            "NetworkCheckFailed",
            &format!("CNI CHECK failed: {message}"),
        )
        .await;
    }
}

/// Notices containers that ended (conmon wrote their exit) and records how.
async fn collect_exits(ctx: &Context, record: &mut PodRecord, pod: &Pod) {
    let uid = record.uid.clone();
    let names: Vec<String> = record
        .containers
        .iter()
        .filter(|(_, c)| c.running.is_some())
        .map(|(name, _)| name.clone())
        .collect();
    for name in names {
        let entry = record.container(&name);
        let Some(running) = entry.running.clone() else {
            continue;
        };
        let oci = ctx.oci.clone();
        let id = running.id.clone();
        let exit = blocking(move || Ok::<_, String>(oci.exit(&id)))
            .await
            .ok()
            .flatten();
        if let Some(exit) = exit {
            finish(ctx, record, pod, &uid, &name, &running, exit).await;
        }
    }
}

/// Records a container's end, removes its runtime leftovers and sets its back-off.
async fn finish(
    ctx: &Context,
    record: &mut PodRecord,
    pod: &Pod,
    uid: &str,
    name: &str,
    running: &Running,
    exit: Exit,
) {
    let entry = record.container(name);
    let reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let finished_unix = exit
        .finished_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    info!(
        "pod {}/{}: container {name} exited with {} ({reason})",
        pod_namespace(pod),
        pod.metadata.name,
        exit.code
    );
    entry.terminated = Some(Terminated {
        id: running.id.clone(),
        exit_code: exit.code,
        reason: reason.into(),
        message: None,
        started_at: Some(running.started_at.clone()),
        finished_at: rfc3339(exit.finished_at),
    });
    entry.running = None;
    entry.ready = false;
    // Kubernetes: the first restart is immediate, then 10 s doubling up to 5 min,
    // and a container that ran 10 minutes starts over.
    if finished_unix - running.started_unix >= BACKOFF_RESET_SECONDS {
        entry.backoff_seconds = 0;
    }
    entry.backoff_until = Some(finished_unix + entry.backoff_seconds as i64);
    entry.backoff_seconds =
        (entry.backoff_seconds * 2).clamp(INITIAL_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS);
    let (paths, oci, uid, name, attempt) = (
        ctx.paths.clone(),
        ctx.oci.clone(),
        uid.to_string(),
        name.to_string(),
        entry.attempt,
    );
    let _ = blocking(move || {
        container::remove(&paths, &oci, &uid, &name, attempt);
        Ok::<_, String>(())
    })
    .await;
}

/// Runs the init containers one after the other; returns when to look again.
async fn run_init_containers(
    ctx: &Context,
    record: &mut PodRecord,
    pod: &Pod,
    volumes: &Result<PreparedVolumes, VolumeError>,
    policy: RestartPolicy,
) -> Duration {
    for container in &pod.spec.init_containers {
        let entry = record.container(&container.name);
        if entry.running.is_some() {
            return POLL;
        }
        match &entry.terminated {
            Some(t) if t.exit_code == 0 => continue,
            // Init containers restart on failure unless the pod never restarts.
            Some(t) if !will_restart(policy_for_init(policy), t.exit_code) => return POLL,
            _ => {}
        }
        return ensure_running(
            ctx,
            record,
            pod,
            container,
            volumes,
            policy_for_init(policy),
        )
        .await
        .unwrap_or(POLL);
    }
    record.initialized = true;
    POLL
}

/// Init containers run to success: with restartPolicy Always they are retried as
/// with OnFailure.
fn policy_for_init(policy: RestartPolicy) -> RestartPolicy {
    match policy {
        RestartPolicy::Never => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    }
}

/// Starts the container if it should run now; returns when to look again if it
/// is waiting for its back-off.
async fn ensure_running(
    ctx: &Context,
    record: &mut PodRecord,
    pod: &Pod,
    container: &Container,
    volumes: &Result<PreparedVolumes, VolumeError>,
    policy: RestartPolicy,
) -> Option<Duration> {
    let now = unix_now();
    let uid = record.uid.clone();
    let entry = record.container(&container.name);
    if entry.running.is_some() {
        return None;
    }
    if let Some(terminated) = &entry.terminated
        && !will_restart(policy, terminated.exit_code)
    {
        return None;
    }
    if let Some(until) = entry.backoff_until
        && until > now
    {
        let entering = entry
            .waiting
            .as_ref()
            .is_none_or(|w| w.reason != "CrashLoopBackOff");
        if entry.terminated.is_some() {
            entry.waiting = Some(Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    until - now,
                    container.name,
                    pod.metadata.name,
                    pod_namespace(pod),
                    uid
                )),
            });
        }
        if entering && entry.terminated.is_some() {
            let message = format!(
                "Back-off restarting failed container {} in pod {}_{}({uid})",
                container.name,
                pod.metadata.name,
                pod_namespace(pod)
            );
            events::record(
                &ctx.registry,
                &ctx.node_name,
                pod,
                events::Type::Warning,
                "BackOff",
                &message,
            )
            .await;
        }
        return Some(Duration::from_secs((until - now) as u64));
    }
    // The image first, as the kubelet does, then the container's configuration.
    let pulled_now = match ensure_image(ctx, record, pod, container).await {
        Ok(pulled_now) => pulled_now,
        Err(wake) => return Some(wake),
    };
    let resolved = environment::resolve(&ctx.registry, pod, container, &record.ips)
        .await
        .and_then(|env| {
            let volumes = volumes.as_ref().map_err(ToString::to_string)?;
            let mounts = volumes.mounts_for(container).map_err(|e| e.to_string())?;
            Ok((env, mounts))
        });
    let (env, mut mounts) = match resolved {
        Ok(resolved) => resolved,
        Err(message) => {
            let entry = record.container(&container.name);
            entry.waiting = Some(Waiting {
                reason: "CreateContainerConfigError".into(),
                message: Some(message),
            });
            return Some(Duration::from_secs(5));
        }
    };
    let attempt = record.container(&container.name).attempt + 1;
    // The pod's /etc files, unless the container mounts a volume there itself.
    let etc_files = pod_files::mounts(&ctx.paths.etc(&record.uid));
    let own: Vec<String> = mounts.iter().map(|m| m.destination.clone()).collect();
    mounts.extend(
        etc_files
            .into_iter()
            .filter(|m| !own.contains(&m.destination)),
    );
    let (paths, oci, images, pod_owned, container_owned, netns_path) = (
        ctx.paths.clone(),
        ctx.oci.clone(),
        ctx.images.clone(),
        pod.clone(),
        container.clone(),
        ctx.paths.netns(&record.uid),
    );
    let (pids_limit, log_max_bytes) = (ctx.pids_limit, ctx.log_max_bytes);
    let started = blocking(move || {
        container::start(&Launch {
            paths: &paths,
            oci: &oci,
            images: &images,
            pod: &pod_owned,
            container: &container_owned,
            attempt,
            netns: &netns_path,
            env,
            mounts,
            pids_limit,
            log_max_bytes,
        })
        .map_err(|e| Failure {
            reason: e.reason(),
            message: e.to_string(),
        })
    })
    .await;
    let entry = record.container(&container.name);
    match started {
        Ok(started) => {
            info!(
                "pod {}/{}: started container {} ({})",
                pod_namespace(pod),
                pod.metadata.name,
                container.name,
                started.id
            );
            // Recorded once the start succeeded, so that retries of a failing
            // start do not repeat it.
            let present = (!pulled_now).then(|| {
                (
                    "Pulled",
                    format!(
                        "Container image {:?} already present on machine",
                        container.image
                    ),
                )
            });
            for (reason, message) in present.into_iter().chain([
                ("Created", format!("Created container {}", container.name)),
                ("Started", format!("Started container {}", container.name)),
            ]) {
                events::record(
                    &ctx.registry,
                    &ctx.node_name,
                    pod,
                    events::Type::Normal,
                    reason,
                    &message,
                )
                .await;
            }
            if let Some(hook) = hook_probe(container, |l| l.post_start.as_ref(), POST_START_LIMIT)
                && let Some(ip) = record.ips.first().copied()
            {
                let (oci, id, spec) = (ctx.oci.clone(), started.id.clone(), container.clone());
                let grace = pod_grace_period(pod);
                let outcome = blocking(move || {
                    let result = probes::check(&hook, &spec, &id, ip, &oci);
                    // As the kubelet does: a failed postStart kills the container.
                    if result.is_err() {
                        container::stop(&oci, &id, grace);
                    }
                    Ok::<_, String>(result)
                })
                .await
                .unwrap_or_else(Err);
                if let Err(reason) = outcome {
                    let message = format!("PostStartHook failed: {reason}");
                    events::record(
                        &ctx.registry,
                        &ctx.node_name,
                        pod,
                        events::Type::Warning,
                        "FailedPostStartHook",
                        &message,
                    )
                    .await;
                }
            }
            let entry = record.container(&container.name);
            // A restart: how the attempt before ended becomes lastState.
            if let Some(previous) = entry.terminated.take() {
                entry.last_terminated = Some(previous);
                entry.restart_count += 1;
            }
            entry.attempt = attempt;
            entry.waiting = None;
            entry.image_id = started.image_id;
            entry.running = Some(Running {
                id: started.id,
                started_at: crate::api::registry::now(),
                started_unix: unix_now(),
            });
            // Without probes a running container is started and ready.
            entry.started = container.startup_probe.is_none();
            entry.ready = container.readiness_probe.is_none();
            None
        }
        Err(Failure { reason, message }) => {
            warn!(
                "pod {}/{}: container {}: {message}",
                pod_namespace(pod),
                pod.metadata.name,
                container.name
            );
            let failed = format!("Error: {reason}: {message}");
            events::record(
                &ctx.registry,
                &ctx.node_name,
                pod,
                events::Type::Warning,
                "Failed",
                &failed,
            )
            .await;
            entry.waiting = Some(Waiting {
                reason: reason.into(),
                message: Some(message),
            });
            entry.backoff_seconds =
                (entry.backoff_seconds * 2).clamp(INITIAL_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS);
            entry.backoff_until = Some(unix_now() + entry.backoff_seconds as i64);
            Some(Duration::from_secs(entry.backoff_seconds))
        }
    }
}

/// Makes sure the container's image is in the store, pulling it as its
/// imagePullPolicy says, with the kubelet's events and waiting reasons: Pulling
/// and Pulled, or ErrImagePull and then ImagePullBackOff until the pull back-off
/// ends, ErrImageNeverPull, InvalidImageName. Ok: whether it was pulled now;
/// Err: not yet, look again after this long.
async fn ensure_image(
    ctx: &Context,
    record: &mut PodRecord,
    pod: &Pod,
    container: &Container,
) -> Result<bool, Duration> {
    let image = container.image.clone();
    let images = ctx.images.clone();
    let reference = image.clone();
    let found = blocking(move || Ok::<_, String>(images.resolve(&reference).map(drop))).await;
    let entry = record.container(&container.name);
    let present = match found {
        Ok(Ok(())) => true,
        Ok(Err(ImageError::InvalidReference { reason, .. })) => {
            let message = format!("Failed to apply default image tag {image:?}: {reason}");
            image_unusable(
                ctx,
                pod,
                entry,
                "InvalidImageName",
                "InspectFailed",
                message,
            )
            .await;
            // Only a change of the pod (which wakes the worker) can fix it.
            return Err(Duration::from_secs(60));
        }
        // Missing, or damaged (a pull stores it whole again).
        Ok(Err(_)) | Err(_) => false,
    };
    let policy = container.pull_policy();
    let pull = match policy {
        ImagePullPolicy::Always => true,
        ImagePullPolicy::IfNotPresent => !present,
        ImagePullPolicy::Never => false,
    };
    if !pull && present {
        return Ok(false);
    }
    if !pull {
        let message = format!("Container image {image:?} is not present with pull policy of Never");
        image_unusable(
            ctx,
            pod,
            entry,
            "ErrImageNeverPull",
            "ErrImageNeverPull",
            message,
        )
        .await;
        // An import may bring it.
        return Err(Duration::from_secs(5));
    }
    let now = unix_now();
    if let Some(until) = entry.pull_backoff_until
        && until > now
    {
        // ErrImagePull shows for a moment first, as it does until a kubelet's next
        // sync (this worker's next pass may come at once, on its own status update).
        let shown_until = until - entry.pull_backoff_seconds as i64 + ERR_IMAGE_PULL_SECONDS;
        if waiting_for(entry, "ErrImagePull") && now < shown_until {
            return Err(Duration::from_secs((shown_until - now) as u64));
        }
        if !waiting_for(entry, "ImagePullBackOff") {
            let last = entry
                .waiting
                .as_ref()
                .map(|w| {
                    format!(
                        ": {}: {}",
                        w.reason,
                        w.message.as_deref().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            entry.waiting = Some(Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(format!("Back-off pulling image {image:?}{last}")),
            });
            let message = format!("Back-off pulling image {image:?}");
            event(ctx, pod, events::Type::Normal, "BackOff", &message).await;
            event(
                ctx,
                pod,
                events::Type::Warning,
                "Failed",
                "Error: ImagePullBackOff",
            )
            .await;
        }
        return Err(Duration::from_secs((until - now) as u64));
    }
    event(
        ctx,
        pod,
        events::Type::Normal,
        "Pulling",
        &format!("Pulling image {image:?}"),
    )
    .await;
    let began = Instant::now();
    let pulled = ctx.images.pull(&image, &ctx.pull).await;
    let entry = record.container(&container.name);
    match pulled {
        Ok(pulled) => {
            // The kubelet's wording; milliseconds are enough.
            let took = Duration::from_millis(began.elapsed().as_millis() as u64);
            info!(
                "pod {}/{}: pulled {} in {took:?} ({} of {} layers downloaded)",
                pod_namespace(pod),
                pod.metadata.name,
                pulled.image.reference,
                pulled.layers_downloaded,
                pulled.layers
            );
            entry.pull_backoff_seconds = 0;
            entry.pull_backoff_until = None;
            let message = format!(
                "Successfully pulled image {image:?} in {took:?} ({took:?} including waiting). Image size: {} bytes.",
                pulled.image.size
            );
            event(ctx, pod, events::Type::Normal, "Pulled", &message).await;
            Ok(true)
        }
        Err(error) => {
            warn!(
                "pod {}/{}: container {}: {error}",
                pod_namespace(pod),
                pod.metadata.name,
                container.name
            );
            let reason = error.reason();
            entry.waiting = Some(Waiting {
                reason: reason.into(),
                message: Some(error.to_string()),
            });
            entry.pull_backoff_seconds = (entry.pull_backoff_seconds * 2)
                .clamp(INITIAL_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS);
            entry.pull_backoff_until = Some(unix_now() + entry.pull_backoff_seconds as i64);
            let message = format!("Failed to pull image {image:?}: {error}");
            event(ctx, pod, events::Type::Warning, "Failed", &message).await;
            event(
                ctx,
                pod,
                events::Type::Warning,
                "Failed",
                &format!("Error: {reason}"),
            )
            .await;
            // Soon, so that the back-off shows as ImagePullBackOff.
            Err(Duration::from_secs(ERR_IMAGE_PULL_SECONDS as u64))
        }
    }
}

async fn event(ctx: &Context, pod: &Pod, kind: events::Type, reason: &str, message: &str) {
    events::record(&ctx.registry, &ctx.node_name, pod, kind, reason, message).await;
}

/// Probe trackers of the pod's containers. In memory: after an agent restart
/// probing starts over, initial delays included, as after a kubelet restart.
#[derive(Default)]
struct Probes {
    trackers: HashMap<(String, probes::Kind), Tracker>,
}

/// Runs the probes that are due: the startup probe until it passes, then
/// liveness and readiness. Returns when the next one is due.
async fn run_probes(
    ctx: &Context,
    record: &mut PodRecord,
    probes: &mut Probes,
    pod: &Pod,
) -> Duration {
    let Some(pod_ip) = record.ips.first().copied() else {
        return POLL;
    };
    let mut wake = POLL;
    for container in &pod.spec.containers {
        let entry = record.container(&container.name);
        let Some(running) = entry.running.clone() else {
            probes
                .trackers
                .retain(|(name, _), _| *name != container.name);
            continue;
        };
        let active: Vec<(probes::Kind, &Probe)> = if entry.started {
            [
                (probes::Kind::Liveness, container.liveness_probe.as_ref()),
                (probes::Kind::Readiness, container.readiness_probe.as_ref()),
            ]
            .into_iter()
            .filter_map(|(kind, probe)| probe.map(|p| (kind, p)))
            .collect()
        } else {
            container
                .startup_probe
                .iter()
                .map(|p| (probes::Kind::Startup, p))
                .collect()
        };
        let running_for =
            Duration::from_secs(u64::try_from(unix_now() - running.started_unix).unwrap_or(0));
        let started = Instant::now()
            .checked_sub(running_for)
            .unwrap_or_else(Instant::now);
        for (kind, probe) in active {
            let key = (container.name.clone(), kind);
            let tracker = probes
                .trackers
                .entry(key)
                .or_insert_with(|| Tracker::new(&running.id, probe, started));
            if tracker.container_id != running.id {
                *tracker = Tracker::new(&running.id, probe, started);
            }
            let now = Instant::now();
            if tracker.next_run > now {
                wake = wake.min(tracker.next_run - now);
                continue;
            }
            let (oci, id, probe_owned, container_owned) = (
                ctx.oci.clone(),
                running.id.clone(),
                probe.clone(),
                container.clone(),
            );
            let result = blocking(move || {
                Ok::<_, String>(probes::check(
                    &probe_owned,
                    &container_owned,
                    &id,
                    pod_ip,
                    &oci,
                ))
            })
            .await
            .unwrap_or_else(Err);
            let verdict = tracker.record(probe, result, Instant::now());
            wake = wake.min(tracker.next_run.saturating_duration_since(Instant::now()));
            let entry = record.container(&container.name);
            match (kind, verdict) {
                (_, Verdict::Undecided) => {}
                (probes::Kind::Startup, Verdict::Passed) => entry.started = true,
                (probes::Kind::Readiness, Verdict::Passed) => entry.ready = true,
                (probes::Kind::Liveness, Verdict::Passed) => {}
                (probes::Kind::Readiness, Verdict::Failed(reason)) => {
                    if entry.ready {
                        entry.ready = false;
                        let message = format!("Readiness probe failed: {reason}");
                        events::record(
                            &ctx.registry,
                            &ctx.node_name,
                            pod,
                            events::Type::Warning,
                            "Unhealthy",
                            &message,
                        )
                        .await;
                    }
                }
                (probes::Kind::Startup | probes::Kind::Liveness, Verdict::Failed(reason)) => {
                    let message = format!("{} probe failed: {reason}", kind.name());
                    events::record(
                        &ctx.registry,
                        &ctx.node_name,
                        pod,
                        events::Type::Warning,
                        "Unhealthy",
                        &message,
                    )
                    .await;
                    let message = format!(
                        "Container {} failed {} probe, will be restarted",
                        container.name,
                        kind.name().to_lowercase()
                    );
                    events::record(
                        &ctx.registry,
                        &ctx.node_name,
                        pod,
                        events::Type::Normal,
                        "Killing",
                        &message,
                    )
                    .await;
                    // The exit is collected on a later pass, which restarts it per policy.
                    let grace = pod_grace_period(pod);
                    let (oci, id) = (ctx.oci.clone(), running.id.clone());
                    let _ =
                        blocking(move || Ok::<_, String>(container::stop(&oci, &id, grace))).await;
                    probes
                        .trackers
                        .retain(|(name, _), _| *name != container.name);
                    break;
                }
            }
        }
    }
    wake
}

/// A running container being stopped, with its preStop hook (as a probe) and spec.
struct Stopping {
    name: String,
    id: String,
    attempt: u32,
    pre_stop: Option<(Probe, Container)>,
}

/// A lifecycle hook as a one-shot probe (the same exec and HTTP handlers), bounded
/// by `limit`.
fn hook_probe(
    container: &Container,
    hook: impl Fn(&crate::model::Lifecycle) -> Option<&crate::model::LifecycleHandler>,
    limit: Duration,
) -> Option<Probe> {
    let handler = hook(container.lifecycle.as_ref()?)?;
    Some(Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        timeout_seconds: Some(i32::try_from(limit.as_secs()).unwrap_or(i32::MAX).max(1)),
        ..Probe::default()
    })
}

/// The deletion's grace period, else the pod's terminationGracePeriodSeconds,
/// else Kubernetes' default of 30 s.
fn grace_period(deletion: Option<i64>, termination: Option<i64>) -> Duration {
    let seconds = deletion
        .or(termination)
        .and_then(|g| u64::try_from(g).ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

fn pod_grace_period(pod: &Pod) -> Duration {
    grace_period(
        pod.metadata.deletion_grace_period_seconds,
        pod.spec.termination_grace_period_seconds,
    )
}

/// Stops every container (SIGTERM, the grace period, SIGKILL), detaches the
/// network, removes the pod's files, and removes the pod from the store when it is
/// still there (it was waiting for this node).
async fn terminate(ctx: &Context, record: &mut PodRecord, pod: Option<&Pod>) -> Next {
    // A pod already gone from the store: the grace period it last had.
    let grace = pod.map_or_else(
        || grace_period(None, record.termination_grace_period_seconds),
        pod_grace_period,
    );
    if let Some(pod) = pod {
        for name in record
            .containers
            .iter()
            .filter(|(_, c)| c.running.is_some())
            .map(|(n, _)| n)
        {
            let message = format!("Stopping container {name}");
            events::record(
                &ctx.registry,
                &ctx.node_name,
                pod,
                events::Type::Normal,
                "Killing",
                &message,
            )
            .await;
        }
    }
    // Each running container with its preStop hook (none when the pod is gone).
    let running: Vec<Stopping> = record
        .containers
        .iter()
        .filter_map(|(name, c)| {
            let spec = pod.and_then(|p| {
                p.spec
                    .containers
                    .iter()
                    .chain(&p.spec.init_containers)
                    .find(|spec| spec.name == *name)
            });
            let pre_stop = spec.and_then(|spec| {
                Some((
                    hook_probe(spec, |l| l.pre_stop.as_ref(), grace)?,
                    spec.clone(),
                ))
            });
            c.running.as_ref().map(|r| Stopping {
                name: name.clone(),
                id: r.id.clone(),
                attempt: c.attempt,
                pre_stop,
            })
        })
        .collect();
    let pod_ip = record.ips.first().copied();
    let (paths, oci, uid) = (ctx.paths.clone(), ctx.oci.clone(), record.uid.clone());
    let network = ctx.network.clone();
    let cni_result = record.cni_result.clone();
    let namespace_and_name = (record.namespace.clone(), record.name.clone());
    let torn_down = blocking(move || {
        // Stopped together, so the grace period is the pod's, not per container.
        std::thread::scope(|scope| {
            for Stopping {
                name,
                id,
                attempt,
                pre_stop,
            } in &running
            {
                let (paths, oci, uid) = (&paths, &oci, &uid);
                scope.spawn(move || {
                    // preStop first, within the grace period; then SIGTERM for what is left of it.
                    let begun = Instant::now();
                    if let (Some((hook, spec)), Some(ip)) = (pre_stop, pod_ip)
                        && let Err(e) = probes::check(hook, spec, id, ip, oci)
                    {
                        warn!("container {id}: preStop hook failed: {e}");
                    }
                    container::stop(oci, id, grace.saturating_sub(begun.elapsed()));
                    container::remove(paths, oci, uid, name, *attempt);
                });
            }
        });
        let netns_path = paths.netns(&uid);
        network
            .del(
                &uid,
                netns_path.exists().then_some(netns_path.as_path()),
                cni_result.as_ref(),
            )
            .map_err(|e| e.to_string())?;
        netns::remove(&netns_path).map_err(|e| e.to_string())?;
        crate::cgroup::remove_everywhere(&paths.pod_cgroup(&uid));
        let logs = paths.pod_logs(&namespace_and_name.0, &namespace_and_name.1, &uid);
        super::paths::remove_dir(&logs).map_err(|e| format!("removing {}: {e}", logs.display()))?;
        volumes::teardown(&paths, &uid).map_err(|e| e.to_string())?;
        let dir = paths.pod(&uid);
        super::paths::remove_dir(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))
    })
    .await;
    if let Err(message) = torn_down {
        warn!(
            "pod {}/{}: tearing down: {message}",
            record.namespace, record.name
        );
        return Next::After(Duration::from_secs(5));
    }
    info!(
        "pod {}/{}: removed from the node",
        record.namespace, record.name
    );
    if !record.name.is_empty() {
        let reference = ObjectRef {
            kind: Kind::Pod,
            namespace: Some(record.namespace.clone()),
            name: record.name.clone(),
        };
        // The pod waited for this node; it may already be gone (forced delete).
        if let Ok(value) = ctx.registry.get(&reference).await
            && value["metadata"]["uid"] == record.uid.as_str()
            && let Err(e) = ctx
                .registry
                .delete(&reference, Some(0), Propagation::Background)
                .await
        {
            warn!(
                "pod {}/{}: removing it from the store: {e}",
                record.namespace, record.name
            );
            return Next::After(Duration::from_secs(5));
        }
    }
    Next::Done
}

/// Writes the pod's status when it changed.
async fn report(ctx: &Context, pod: &Pod, record: &PodRecord) {
    let host_ip = ctx.host_ip.map(|ip| ip.to_string());
    let hold = ctx.holds.get(&record.uid);
    let status = pod_status(
        pod,
        record,
        host_ip.as_deref(),
        hold.as_ref(),
        &crate::api::registry::now(),
    );
    if status == pod.status {
        return;
    }
    let mut updated = pod.clone();
    updated.status = status;
    updated.metadata.resource_version = None;
    if let Err(e) = ctx
        .registry
        .update_status(Object::Pod(updated).to_value())
        .await
    {
        warn!(
            "pod {}/{}: reporting its status: {e}",
            pod_namespace(pod),
            pod.metadata.name
        );
    }
}

fn pod_namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A start that failed, with the waiting reason to show.
struct Failure {
    reason: &'static str,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            reason: "CreateContainerError",
            message,
        }
    }
}

/// Runs blocking work (processes, mounts, netlink) off the async threads.
async fn blocking<T: Send + 'static, E: Send + 'static + From<String>>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(E::from(format!("a blocking task failed: {e}"))))
}

mod environment {
    //! A container's environment: `value`, or `valueFrom` a ConfigMap, a Secret or
    //! a field of the pod.

    use std::net::IpAddr;

    use crate::api::registry::{ObjectRef, Registry};
    use crate::model::{Container, Kind, Object, Pod};

    pub async fn resolve(
        registry: &Registry,
        pod: &Pod,
        container: &Container,
        ips: &[IpAddr],
    ) -> Result<Vec<String>, String> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut env = Vec::with_capacity(container.env.len());
        for var in &container.env {
            let value = match (&var.value, &var.value_from) {
                (_, Some(source)) => {
                    if let Some(key) = &source.config_map_key_ref {
                        lookup(
                            registry,
                            Kind::ConfigMap,
                            &namespace,
                            &key.name,
                            &key.key,
                            key.optional,
                        )
                        .await?
                    } else if let Some(key) = &source.secret_key_ref {
                        lookup(
                            registry,
                            Kind::Secret,
                            &namespace,
                            &key.name,
                            &key.key,
                            key.optional,
                        )
                        .await?
                    } else if let Some(field) = &source.field_ref {
                        Some(field_value(pod, &field.field_path, ips).ok_or_else(|| {
                            format!(
                                "env {}: fieldRef {:?} is not supported",
                                var.name, field.field_path
                            )
                        })?)
                    } else {
                        None
                    }
                }
                (value, None) => Some(value.clone().unwrap_or_default()),
            };
            if let Some(value) = value {
                env.push(format!("{}={value}", var.name));
            }
        }
        Ok(env)
    }

    /// A key of a ConfigMap or Secret; None when optional and missing.
    async fn lookup(
        registry: &Registry,
        kind: Kind,
        namespace: &str,
        name: &str,
        key: &str,
        optional: Option<bool>,
    ) -> Result<Option<String>, String> {
        let reference = ObjectRef {
            kind,
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        };
        let found = match registry.get(&reference).await {
            Ok(value) => match Object::decode_stored(value) {
                Ok(Object::ConfigMap(cm)) => cm.data.get(key).cloned().or_else(|| {
                    cm.binary_data
                        .get(key)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                }),
                Ok(Object::Secret(secret)) => secret
                    .data
                    .get(key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned()),
                _ => None,
            },
            Err(_) => None,
        };
        match (found, optional) {
            (Some(value), _) => Ok(Some(value)),
            (None, Some(true)) => Ok(None),
            (None, _) => Err(format!(
                "{} {namespace}/{name} has no key {key:?} (or does not exist)",
                kind.name()
            )),
        }
    }

    fn field_value(pod: &Pod, path: &str, ips: &[IpAddr]) -> Option<String> {
        let meta = &pod.metadata;
        Some(match path {
            "metadata.name" => meta.name.clone(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => pod.spec.node_name.clone().unwrap_or_default(),
            "spec.serviceAccountName" => pod.spec.service_account_name.clone().unwrap_or_default(),
            "status.podIP" => ips.first().map(ToString::to_string).unwrap_or_default(),
            "status.podIPs" => ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "status.hostIP" => pod.status.host_ip.clone().unwrap_or_default(),
            other => {
                let label = |prefix: &str| {
                    other
                        .strip_prefix(prefix)?
                        .strip_suffix("']")
                        .map(str::to_string)
                };
                if let Some(key) = label("metadata.labels['") {
                    meta.labels.get(&key).cloned().unwrap_or_default()
                } else if let Some(key) = label("metadata.annotations['") {
                    meta.annotations.get(&key).cloned().unwrap_or_default()
                } else {
                    return None;
                }
            }
        })
    }
}
