//! The pod start benchmark: how long skiff takes from `apply` of a pod to its
//! Ready condition, against bare runc starting the same process from the same
//! root file system (`runc create` + `runc start`), so the ratio says how much of
//! skiff's start time is the OCI runtime itself.
//!
//! Each round starts a fresh node agent (in a network namespace of its own) and
//! imports the busybox image; then, in alternating order:
//! - skiff: pods (busybox `sleep 3600`, no probes) applied one at a time, each
//!   timed from the return of its Apply call to the watch event that shows it
//!   Ready; the agent's log lines, stamped as they arrive, split that time into
//!   steps. Then the agent's and conmon's memory with every pod running, and the
//!   pods deleted one call after another (grace period 1 s), each timed until its
//!   Deleted event: the node removes a pod from the store once it stopped its
//!   container and removed its overlay, network (CNI DEL, namespace), cgroups
//!   and files.
//! - runc: as many containers, each on an overlay of the image's unpacked layer
//!   (as skiff mounts it, made before timing), with `runc spec`'s configuration
//!   (its own empty network namespace, no monitor process) running `sleep 3600`;
//!   then `runc delete --force` and the unmount of each, one after another.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use skiff::api::client::ApiClient;
use skiff::api::proto;
use skiff::image::ImageStore;
use skiff::runtime::oci::Oci;
use skiff::runtime::rootfs;
use tonic::Streaming;

use crate::agent::{Agent, NODE_NAME};
use crate::stats::{median, percentile, pss_mib, rss_mib};

#[derive(clap::Args)]
pub struct Options {
    /// The skiff binary (release build; skiff-cni beside it).
    #[arg(long)]
    skiff: PathBuf,
    /// The busybox-static binary the image is built from.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Pods (and bare runc containers) started per round.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Rounds; skiff and runc alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

pub(crate) const IMAGE: &str = "busybox:1.36";
/// How long one pod may take to become Ready, and every pod to go away.
const POD_TIMEOUT: Duration = Duration::from_secs(30);
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);
/// The grace period pods are deleted with. `sleep` as pid 1 ignores SIGTERM, so
/// the node waits it out before SIGKILL: every skiff deletion includes it.
const GRACE_SECONDS: i64 = 1;

/// One skiff pod's start, in milliseconds from sending its Apply call.
#[derive(Debug, Clone, Copy)]
struct PodStart {
    /// The Apply call returned: the pod is stored. Timing starts here.
    applied: f64,
    /// The agent logged the pod attached: network namespace, CNI ADD, /etc files.
    attached: f64,
    /// The agent logged its container started: overlay, bundle, conmon, runc.
    started: f64,
    /// The watch delivered the pod with Ready True.
    ready: f64,
}

/// One bare runc container's start, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct RuncStart {
    /// The overlay mount (not part of the timed start; skiff does it too).
    mount: f64,
    create: f64,
    start: f64,
}

/// One round's summary of skiff.
#[derive(Debug, Clone, Copy)]
struct SkiffFigures {
    /// Apply returned -> Ready seen, over the pods.
    p50: f64,
    p99: f64,
    /// Medians over the pods of each step.
    api: f64,
    network: f64,
    container: f64,
    status: f64,
    idle_rss_mib: f64,
    rss_mib: f64,
    /// Per pod: the pods' conmon processes' RSS (and PSS) summed, over the pods.
    conmon_rss_mib: f64,
    conmon_pss_mib: f64,
    deletion: Deletion,
}

/// Deleting every pod or container of a round, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Deletion {
    /// From the first deletion asked for to the last one done.
    all: f64,
    /// Each one's own time: for skiff from its Delete call to its Deleted event,
    /// for runc its `runc delete --force` and unmount.
    p50: f64,
}

/// One round's summary of bare runc.
#[derive(Debug, Clone, Copy)]
struct RuncFigures {
    p50: f64,
    p99: f64,
    /// Medians over the containers.
    mount: f64,
    create: f64,
    start: f64,
    deletion: Deletion,
}

pub async fn run(options: Options) -> Result<()> {
    let images = tempfile::Builder::new()
        .prefix("skiff-bench-image-")
        .tempdir()?;
    let archive = images.path().join("busybox.tar");
    skiff::image::build::build_busybox_oci_archive(&options.busybox, IMAGE, &archive)
        .context("building the busybox image (is busybox-static installed?)")?;
    let mut skiff = Vec::new();
    let mut runc = Vec::new();
    for round in 1..=options.rounds {
        let mut agent = Agent::start_node(&options.skiff, "info").await?;
        import(&agent.client, &archive).await?;
        let layers = ImageStore::open(&agent.state_dir().join("images"))?
            .resolve(IMAGE)?
            .layers;
        // Alternate which goes first, so drift over the run hits both alike.
        let skiff_first = round % 2 == 1;
        for skiff_now in [skiff_first, !skiff_first] {
            if skiff_now {
                let figures = measure_skiff(&options, &mut agent).await?;
                eprintln!("round {round} skiff: {figures:?}");
                skiff.push(figures);
            } else {
                let figures = measure_runc(&options, &layers)?;
                eprintln!("round {round} runc: {figures:?}");
                runc.push(figures);
            }
        }
        agent.stop()?;
    }
    print_report(&options, &skiff, &runc);
    Ok(())
}

/// Imports the image archive through the API, as `skiff image import` does.
pub(crate) async fn import(client: &ApiClient, archive: &Path) -> Result<()> {
    let bytes = std::fs::read(archive)?;
    // Chunks well under gRPC's default 4 MiB message limit.
    let chunks: Vec<proto::ImageChunk> = bytes
        .chunks(1024 * 1024)
        .map(|c| proto::ImageChunk { data: c.to_vec() })
        .collect();
    client
        .clone()
        .import_image(futures::stream::iter(chunks))
        .await?;
    Ok(())
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"]}],
        },
    })
}

/// The name of pod (and bare runc container) `i`: with this process's id, so
/// that what a run leaves behind is told apart from others' in `ps` or `runc list`.
fn pod_name(i: usize) -> String {
    format!("bench-{}-{i:03}", std::process::id())
}

async fn measure_skiff(options: &Options, agent: &mut Agent) -> Result<SkiffFigures> {
    let mut client = agent.client.clone();
    let idle_rss_mib = rss_mib(agent.pid())?;
    // Watch from now: the version of the (empty) list of pods.
    let now = client
        .list(proto::ListRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .resource_version;
    let mut events = client
        .watch(proto::WatchRequest {
            kind: "Pod".into(),
            namespace: "default".into(),
            resource_version: now,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut starts = Vec::with_capacity(options.pods);
    for i in 0..options.pods {
        let name = pod_name(i);
        let bytes = serde_json::to_vec(&pod(&name))?;
        let sent = Instant::now();
        client
            .apply(proto::ApplyRequest {
                objects: vec![bytes],
            })
            .await?;
        let applied = Instant::now();
        tokio::time::timeout(POD_TIMEOUT, next_ready(&mut events, &name))
            .await
            .with_context(|| format!("pod {name} was not Ready within {POD_TIMEOUT:?}"))??;
        let ready = Instant::now();
        // Both lines were written before the status that made the pod Ready.
        let attached = logged(&agent.log, &format!("pod default/{name}: attached"))?;
        let started = logged(
            &agent.log,
            &format!("pod default/{name}: started container"),
        )?;
        let ms = |at: Instant| at.duration_since(sent).as_secs_f64() * 1_000.0;
        starts.push(PodStart {
            applied: ms(applied),
            attached: ms(attached),
            started: ms(started),
            ready: ms(ready),
        });
    }
    let busy_rss_mib = rss_mib(agent.pid())?;
    let conmons = conmon_pids(agent.state_dir());
    if conmons.len() != options.pods {
        bail!(
            "{} conmon processes for {} pods",
            conmons.len(),
            options.pods
        );
    }
    let per_pod = |of: fn(u32) -> Result<f64>| -> Result<f64> {
        Ok(conmons.iter().map(|&pid| of(pid)).sum::<Result<f64>>()? / options.pods as f64)
    };
    let conmon_rss_mib = per_pod(rss_mib)?;
    let conmon_pss_mib = per_pod(pss_mib)?;
    let deletion = delete_pods(&mut client, &mut events, options.pods).await?;
    check_node_empty(agent.state_dir(), &conmons)?;

    let step = |of: fn(&PodStart) -> f64| median(starts.iter().map(of));
    let mut totals: Vec<f64> = starts.iter().map(|s| s.ready - s.applied).collect();
    totals.sort_by(f64::total_cmp);
    Ok(SkiffFigures {
        p50: percentile(&totals, 0.50),
        p99: percentile(&totals, 0.99),
        api: step(|s| s.applied),
        network: step(|s| s.attached - s.applied),
        container: step(|s| s.started - s.attached),
        status: step(|s| s.ready - s.started),
        idle_rss_mib,
        rss_mib: busy_rss_mib,
        conmon_rss_mib,
        conmon_pss_mib,
        deletion,
    })
}

/// Waits for the watch event that shows pod `name` Ready.
async fn next_ready(events: &mut Streaming<proto::WatchEvent>, name: &str) -> Result<()> {
    loop {
        let event = events.next().await.context("the pod watch ended")??;
        let pod: Value = serde_json::from_slice(&event.object)?;
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready && pod["metadata"]["name"] == name {
            return Ok(());
        }
    }
}

/// When the agent's log line containing `needle` arrived (earlier lines skipped).
fn logged(log: &Receiver<(Instant, String)>, needle: &str) -> Result<Instant> {
    loop {
        let (at, line) = log
            .recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("the agent never logged {needle:?}"))?;
        if line.contains(needle) {
            return Ok(at);
        }
    }
}

/// The pids of the node's conmon processes, from the pidfiles in their bundles.
fn conmon_pids(state: &Path) -> Vec<u32> {
    let pods = std::fs::read_dir(state.join("pods"))
        .into_iter()
        .flatten()
        .flatten();
    pods.flat_map(|pod| {
        std::fs::read_dir(pod.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
    })
    .filter_map(|attempt| std::fs::read_to_string(attempt.path().join("conmon.pid")).ok())
    .filter_map(|pid| pid.trim().parse().ok())
    .collect()
}

/// Deletes the pods one call after another, each with the shortest grace period
/// that lets the node finish the pod (0 removes it from the store at once, and the
/// node then stops the containers with the default 30 s), and waits for each
/// pod's Deleted event: the node removes the pod from the store once it tore
/// everything down.
async fn delete_pods(
    client: &mut ApiClient,
    events: &mut Streaming<proto::WatchEvent>,
    pods: usize,
) -> Result<Deletion> {
    let names: Vec<String> = (0..pods).map(pod_name).collect();
    let first = Instant::now();
    let mut asked = Vec::with_capacity(pods);
    for name in &names {
        asked.push(Instant::now());
        client
            .delete(proto::DeleteRequest {
                key: Some(proto::ObjectKey {
                    kind: "Pod".into(),
                    namespace: "default".into(),
                    name: name.clone(),
                }),
                grace_period_seconds: Some(GRACE_SECONDS),
                ..Default::default()
            })
            .await?;
    }
    let mut gone: Vec<Option<Instant>> = vec![None; pods];
    let all_gone = async {
        while gone.iter().any(Option::is_none) {
            let event = events.next().await.context("the pod watch ended")??;
            if event.r#type() == proto::EventType::Deleted {
                let pod: Value = serde_json::from_slice(&event.object)?;
                if let Some(i) = names.iter().position(|n| pod["metadata"]["name"] == *n) {
                    gone[i] = Some(Instant::now());
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(DELETE_TIMEOUT, all_gone)
        .await
        .with_context(|| format!("the pods were not all gone within {DELETE_TIMEOUT:?}"))??;
    let gone: Vec<Instant> = gone.into_iter().flatten().collect();
    let last = gone.iter().max().copied().unwrap_or(first);
    let mut each: Vec<f64> = gone
        .iter()
        .zip(&asked)
        .map(|(done, asked)| ms_between(*asked, *done))
        .collect();
    each.sort_by(f64::total_cmp);
    Ok(Deletion {
        all: ms_between(first, last),
        p50: percentile(&each, 0.5),
    })
}

/// Fails unless the node has nothing left of its pods: conmon processes, runc
/// containers, pod directories.
fn check_node_empty(state: &Path, conmons: &[u32]) -> Result<()> {
    let alive: Vec<u32> = conmons.iter().copied().filter(|&pid| alive(pid)).collect();
    if !alive.is_empty() {
        bail!("conmon processes {alive:?} outlived their pods");
    }
    let containers = Oci::new(state).list()?;
    if !containers.is_empty() {
        bail!("{} runc containers outlived their pods", containers.len());
    }
    let pods = std::fs::read_dir(state.join("pods"))
        .into_iter()
        .flatten()
        .count();
    if pods != 0 {
        bail!("{pods} pod directories outlived their pods");
    }
    Ok(())
}

/// Whether `pid` runs: exists and is not a zombie. (A conmon that exited is
/// reparented to pid 1, which may take its time to reap it.)
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1_000.0
}

fn measure_runc(options: &Options, layers: &[PathBuf]) -> Result<RuncFigures> {
    let mut containers = RuncContainers::new()?;
    let template = containers.template()?;
    let mut starts = Vec::with_capacity(options.pods);
    for i in 0..options.pods {
        starts.push(containers.start(&pod_name(i), &template, layers)?);
    }
    let deletion = containers.remove()?;
    let step = |of: fn(&RuncStart) -> f64| median(starts.iter().map(of));
    let mut totals: Vec<f64> = starts.iter().map(|s| s.create + s.start).collect();
    totals.sort_by(f64::total_cmp);
    Ok(RuncFigures {
        p50: percentile(&totals, 0.50),
        p99: percentile(&totals, 0.99),
        mount: step(|s| s.mount),
        create: step(|s| s.create),
        start: step(|s| s.start),
        deletion,
    })
}

/// Bare runc containers with their bundles and overlays in a directory of their
/// own; removed (containers, mounts, cgroups) on drop.
struct RuncContainers {
    dir: tempfile::TempDir,
    /// runc with its state under `dir`.
    oci: Oci,
    /// The cgroup (in every hierarchy) the containers' cgroups are made under.
    cgroup: String,
    ids: Vec<String>,
}

impl RuncContainers {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-bench-runc-")
            .tempdir()?;
        let cgroup = format!(
            "/{}",
            dir.path()
                .file_name()
                .context("a temporary directory without a name")?
                .to_string_lossy()
        );
        Ok(Self {
            oci: Oci::new(dir.path()),
            dir,
            cgroup,
            ids: Vec::new(),
        })
    }

    /// `runc spec`'s configuration, running `sleep 3600` without a terminal on a
    /// writable root (as skiff's containers have).
    fn template(&self) -> Result<Value> {
        let out = Command::new(&self.oci.runc)
            .arg("spec")
            .arg("--bundle")
            .arg(self.dir.path())
            .output()
            .context("running runc spec")?;
        if !out.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
        }
        let path = self.dir.path().join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        std::fs::remove_file(&path)?;
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(["sleep", "3600"]);
        spec["root"] = json!({"path": "rootfs", "readonly": false});
        Ok(spec)
    }

    /// Mounts the container's overlay, then times `runc create` and `runc start`.
    fn start(&mut self, id: &str, template: &Value, layers: &[PathBuf]) -> Result<RuncStart> {
        let bundle = self.dir.path().join(id);
        let mut spec = template.clone();
        spec["linux"]["cgroupsPath"] = json!(format!("{}/{id}", self.cgroup));
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
        // runc hands its stdio to the container, which keeps it open: a file, not
        // a pipe, or waiting for runc would wait for the container.
        let errors = bundle.join("runc.err");
        let stderr = std::fs::File::create(&errors)?;
        self.ids.push(id.to_string());
        let mounting = Instant::now();
        rootfs::mount(&bundle, layers)?;
        let creating = Instant::now();
        let created = Command::new(&self.oci.runc)
            .arg("--root")
            .arg(&self.oci.root)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()?;
        if !created.success() {
            bail!(
                "runc create {id}: {}",
                std::fs::read_to_string(&errors).unwrap_or_default()
            );
        }
        let starting = Instant::now();
        self.oci.start(id)?;
        let done = Instant::now();
        let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1_000.0;
        Ok(RuncStart {
            mount: ms(mounting, creating),
            create: ms(creating, starting),
            start: ms(starting, done),
        })
    }

    /// Removes every container (`runc delete --force`, then its overlay), timed.
    fn remove(&mut self) -> Result<Deletion> {
        let first = Instant::now();
        let mut each = Vec::with_capacity(self.ids.len());
        for id in std::mem::take(&mut self.ids) {
            let started = Instant::now();
            let removed = self
                .oci
                .delete(&id, true)
                .map_err(anyhow::Error::from)
                .and_then(|()| Ok(rootfs::unmount(&self.dir.path().join(&id))?));
            each.push(ms_between(started, Instant::now()));
            if let Err(e) = removed {
                // Left for drop to try again.
                self.ids.push(id);
                return Err(e);
            }
        }
        let all = ms_between(first, Instant::now());
        skiff::cgroup::remove_everywhere(&self.cgroup);
        each.sort_by(f64::total_cmp);
        Ok(Deletion {
            all,
            p50: percentile(&each, 0.5),
        })
    }
}

impl Drop for RuncContainers {
    fn drop(&mut self) {
        // Only what a failed run left.
        for id in self.ids.drain(..) {
            let _ = self.oci.delete(&id, true);
            let _ = rootfs::unmount(&self.dir.path().join(&id));
        }
        skiff::cgroup::remove_everywhere(&self.cgroup);
    }
}

fn print_report(options: &Options, skiff: &[SkiffFigures], runc: &[RuncFigures]) {
    let s = |pick: fn(&SkiffFigures) -> f64| median(skiff.iter().map(pick));
    let r = |pick: fn(&RuncFigures) -> f64| median(runc.iter().map(pick));
    let pods = options.pods;
    println!(
        "{pods} pods (busybox sleep 3600) started one at a time per system and round, \
         median of {} rounds\n",
        options.rounds
    );
    println!("| measure | skiff | bare runc | runc / skiff |");
    println!("|---|---|---|---|");
    for (name, skiff, runc) in [
        ("start p50 (ms)", s(|f| f.p50), r(|f| f.p50)),
        ("start p99 (ms)", s(|f| f.p99), r(|f| f.p99)),
    ] {
        println!("| {name} | {skiff:.1} | {runc:.1} | {:.2}x |", runc / skiff);
    }
    println!(
        "\nstart: skiff from the Apply call's return to the watch event with Ready True; \
         runc `runc create` + `runc start`. Ratios: runc's time over skiff's, \
         above 1 means skiff is faster.\n"
    );
    let grace = GRACE_SECONDS as f64 * 1_000.0;
    println!("| deletion | skiff | skiff less the {GRACE_SECONDS} s grace period | bare runc |");
    println!("|---|---|---|---|");
    for (name, skiff, runc) in [
        (
            "one pod, p50 (ms)",
            s(|f| f.deletion.p50),
            r(|f| f.deletion.p50),
        ),
        (
            "all pods, until everything is gone (ms)",
            s(|f| f.deletion.all),
            r(|f| f.deletion.all),
        ),
    ] {
        println!("| {name} | {skiff:.1} | {:.1} | {runc:.1} |", skiff - grace);
    }
    println!(
        "\ndeletion: skiff from the Delete call (grace period {GRACE_SECONDS} s, which \
         `sleep` as pid 1 waits out: it ignores SIGTERM) to the pod's Deleted event, \
         which the node causes once it tore the pod down; the pods are deleted one \
         call after another and torn down in parallel. runc: `runc delete --force` \
         and the unmount, one container after another."
    );
    println!("\nskiff's start by step (median over pods, ms):\n");
    println!("| step | ms |");
    println!("|---|---|");
    for (name, ms) in [
        (
            "the Apply call (API write, store commit; not in start)",
            s(|f| f.api),
        ),
        (
            "to attached (node's watch, worker, netns, CNI ADD, /etc files, record)",
            s(|f| f.network),
        ),
        (
            "to container started (overlay mount, bundle, conmon + runc create, runc start)",
            s(|f| f.container),
        ),
        (
            "to Ready seen (events, status write, watch delivery)",
            s(|f| f.status),
        ),
    ] {
        println!("| {name} | {ms:.1} |");
    }
    println!("\nbare runc by step (median over containers, ms):\n");
    println!("| step | ms |");
    println!("|---|---|");
    for (name, ms) in [
        (
            "overlay mount (not in start; skiff does it too)",
            r(|f| f.mount),
        ),
        ("runc create", r(|f| f.create)),
        ("runc start", r(|f| f.start)),
    ] {
        println!("| {name} | {ms:.1} |");
    }
    println!("\nmemory (MiB):\n");
    println!("| measure | MiB |");
    println!("|---|---|");
    for (name, mib) in [
        (
            "agent RSS, image imported, no pods".to_string(),
            s(|f| f.idle_rss_mib),
        ),
        (format!("agent RSS, {pods} pods running"), s(|f| f.rss_mib)),
        (
            "conmon RSS per pod (summed over the pods, / pods)".to_string(),
            s(|f| f.conmon_rss_mib),
        ),
        (
            "conmon PSS per pod (shared pages counted once)".to_string(),
            s(|f| f.conmon_pss_mib),
        ),
    ] {
        println!("| {name} | {mib:.2} |");
    }
}
