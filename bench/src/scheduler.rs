//! The scheduler benchmark: 10,000 pods on 1,000 simulated nodes (Node objects
//! only, no containers).
//!
//! - Core: skiff's decision function on its snapshot (filters, scoring, then the
//!   pod placed on the snapshot), against a naive scheduler that decides from the
//!   API objects themselves, with no cache: for each pod it reads every node's
//!   allocatable and every bound pod's requests from their quantity strings, then
//!   applies the same resource fit and most-allocated score. kube-scheduler is not
//!   installable here; the naive one is what a scheduler without a cache costs.
//!   Memory is what the snapshot holds, counted by the allocator.
//! - End to end: a real agent (API, embedded store, the scheduler in the agent),
//!   twice: pods arriving (the nodes are applied and reported Ready, then the pods
//!   are applied without a node, and the time runs from the first apply until a
//!   watch has seen every pod bound), and pods pending (the same with the nodes
//!   cordoned until every pod waits, then opened in one Apply, the time running
//!   from that Apply); with the agent's resident memory before and after. Each
//!   runs `--e2e-rounds` times, a fresh agent each time, and the median is
//!   reported with every round's value; `--against` measures other skiff
//!   binaries (builds before a change) in the same rounds, alternating with the
//!   first, so that all see the same machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use skiff::api::proto;
use skiff::model::{Node, Object, Pod};
use skiff::scheduler::snapshot::{NodeSpecifics, PlacedPod, Resources, Snapshot, pod_requests};
use skiff::scheduler::{Decision, NextNode, Scoring, decide};

use crate::agent::Agent;
use crate::stats::{allocated_bytes, median, rss_mib};

/// The label every simulated node has and every pod selects, so that the agent's
/// own (real) node never gets a pod.
const SIMULATED: &str = "bench.skiff.dev/simulated";

#[derive(clap::Args)]
pub struct Options {
    /// The skiff binary (release build).
    #[arg(long)]
    skiff: PathBuf,
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Rounds of the core measurement; skiff and the naive scheduler alternate.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pods per Apply call in the end-to-end run.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Rounds of the end-to-end measurement, each with fresh agents.
    #[arg(long, default_value_t = 3)]
    e2e_rounds: usize,
    /// Other skiff binaries measured end to end in the same rounds, alternating
    /// with `--skiff` (builds from before a change, say); repeatable.
    #[arg(long)]
    against: Vec<PathBuf>,
}

/// A simulated node: 32 cpu, 128Gi, 110 pods, Ready; cordoned or open.
fn node(i: usize, cordoned: bool) -> Value {
    let name = format!("sim-{i:04}");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, SIMULATED: "true"}},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// A pod asking for 100m-1 cpu and 128Mi-1Gi, varied.
fn pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:05}"), "namespace": "default"},
        "spec": {
            "nodeSelector": {SIMULATED: "true"},
            "containers": [{
                "name": "main", "image": "busybox:1.36",
                "resources": {"requests": {
                    "cpu": format!("{}m", 100 + (i * 37 % 10) * 100),
                    "memory": format!("{}Mi", 128 + (i * 53 % 8) * 128),
                }},
            }],
        },
    })
}

/// The object as the API server would store it: decoded, defaulted, validated.
fn decode<T: TryFrom<Object, Error = Object>>(value: Value) -> Result<T> {
    let object = Object::from_value(value).map_err(|e| anyhow!("{e}"))?;
    T::try_from(object).map_err(|other| anyhow!("unexpected {}", other.kind()))
}

pub async fn run(options: Options) -> Result<()> {
    let nodes: Vec<Node> = (0..options.nodes)
        .map(|i| decode(node(i, false)))
        .collect::<Result<_>>()?;
    let pods: Vec<Pod> = (0..options.pods)
        .map(|i| decode(pod(i)))
        .collect::<Result<_>>()?;
    let mut skiff_rounds = Vec::new();
    let mut naive_rounds = Vec::new();
    for round in 1..=options.rounds {
        let skiff = core_skiff(&nodes, &pods)?;
        let naive = core_naive(&nodes, &pods)?;
        eprintln!(
            "round {round}: skiff {:.3} s ({} nodes used, {:.1} MiB), naive {:.3} s ({} nodes used)",
            skiff.seconds, skiff.nodes_used, skiff.memory_mib, naive.seconds, naive.nodes_used
        );
        skiff_rounds.push(skiff);
        naive_rounds.push(naive);
    }
    let binaries: Vec<&Path> = std::iter::once(options.skiff.as_path())
        .chain(options.against.iter().map(PathBuf::as_path))
        .collect();
    // Per binary: each round's run with pods arriving and with pods pending.
    let mut runs: Vec<Vec<(EndToEnd, EndToEnd)>> = binaries.iter().map(|_| Vec::new()).collect();
    for round in 1..=options.e2e_rounds {
        for (binary, rounds) in binaries.iter().zip(&mut runs) {
            eprintln!("end-to-end round {round}: {}", binary.display());
            let arriving = end_to_end(&options, binary, Arrival::WhileApplied).await?;
            let pending = end_to_end(&options, binary, Arrival::Pending).await?;
            rounds.push((arriving, pending));
        }
    }

    let seconds = median(skiff_rounds.iter().map(|r| r.seconds));
    let naive_seconds = median(naive_rounds.iter().map(|r| r.seconds));
    println!(
        "{} pods on {} simulated nodes; core: median of {} rounds\n",
        options.pods, options.nodes, options.rounds
    );
    println!("| measure | skiff | naive (no cache) | skiff vs naive |");
    println!("|---|---|---|---|");
    println!(
        "| core: time for all pods (s) | {seconds:.3} | {naive_seconds:.3} | {:.1}x faster |",
        naive_seconds / seconds
    );
    println!(
        "| core: pods scheduled/s | {:.0} | {:.0} | |",
        options.pods as f64 / seconds,
        options.pods as f64 / naive_seconds
    );
    println!(
        "| core: snapshot memory, all pods placed (MiB) | {:.1} | | |",
        median(skiff_rounds.iter().map(|r| r.memory_mib))
    );

    println!(
        "\nend to end: median of {} rounds (every round in brackets)\n",
        options.e2e_rounds
    );
    let columns: Vec<String> = binaries.iter().map(|b| b.display().to_string()).collect();
    println!("| measure | {} |", columns.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    let row = |measure: &str, figure: &dyn Fn(&(EndToEnd, EndToEnd)) -> f64, precision: usize| {
        let cells: Vec<String> = runs
            .iter()
            .map(|rounds| spread(rounds.iter().map(figure), precision))
            .collect();
        println!("| {measure} | {} |", cells.join(" | "));
    };
    row(
        "pods arriving: first apply to last pod bound (s)",
        &|(arriving, _)| arriving.seconds,
        2,
    );
    row(
        "pods arriving: of which applying the pods (s)",
        &|(arriving, _)| arriving.apply_seconds,
        2,
    );
    row(
        "pods pending: nodes opened to last pod bound (s)",
        &|(_, pending)| pending.seconds,
        2,
    );
    row(
        "pods pending: pods bound/s",
        &|(_, pending)| options.pods as f64 / pending.seconds,
        0,
    );
    row(
        "agent RSS, nodes only (MiB)",
        &|(arriving, _)| arriving.rss_before_mib,
        1,
    );
    row(
        "agent RSS, all pods bound (MiB)",
        &|(arriving, _)| arriving.rss_after_mib,
        1,
    );
    let verdict = |seconds: f64| if seconds < 2.0 { "met" } else { "NOT met" };
    let skiff_runs = &runs[0];
    println!(
        "\nfloor: {} pods in under 2 s: core {}, pending pods bound through the agent {} \
         (median), arriving through the API {} (median)",
        options.pods,
        verdict(seconds),
        verdict(median(skiff_runs.iter().map(|(_, p)| p.seconds))),
        verdict(median(skiff_runs.iter().map(|(a, _)| a.seconds))),
    );
    Ok(())
}

/// The median of `values`, then every value in brackets: "1.95 (2.01, 1.87, 1.95)".
fn spread(values: impl Iterator<Item = f64> + Clone, precision: usize) -> String {
    let every: Vec<String> = values.clone().map(|v| format!("{v:.precision$}")).collect();
    format!("{:.precision$} ({})", median(values), every.join(", "))
}

struct CoreFigures {
    seconds: f64,
    nodes_used: usize,
    memory_mib: f64,
}

/// skiff's snapshot and decision function, each pod placed as the loop assumes it.
fn core_skiff(nodes: &[Node], pods: &[Pod]) -> Result<CoreFigures> {
    let before = allocated_bytes();
    let started = Instant::now();
    let mut snapshot = Snapshot::default();
    for node in nodes {
        snapshot.set_node(&node.metadata.name, NodeSpecifics::of(node));
    }
    let mut next_node = NextNode::default();
    for pod in pods {
        match decide(pod, &snapshot, Scoring::MostAllocated, &mut next_node) {
            Decision::Bind { node } => snapshot.place(&node, PlacedPod::new(pod, 0)),
            other => bail!("pod {} was not bound: {other:?}", pod.metadata.name),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let memory_mib = allocated_bytes().saturating_sub(before) as f64 / (1024.0 * 1024.0);
    let nodes_used = snapshot
        .nodes
        .values()
        .filter(|n| !n.pods.is_empty())
        .count();
    Ok(CoreFigures {
        seconds,
        nodes_used,
        memory_mib,
    })
}

/// The naive scheduler: every decision reads the API objects afresh.
fn core_naive(nodes: &[Node], pods: &[Pod]) -> Result<CoreFigures> {
    let started = Instant::now();
    let mut bound: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for pod in pods {
        let wanted = pod_requests(&pod.spec);
        let mut best: Option<(&str, i128)> = None;
        for node in nodes {
            let labels = &node.metadata.labels;
            if !pod
                .spec
                .node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            {
                continue;
            }
            let allocatable = Resources::from_quantities(&node.status.allocatable);
            let on_node = bound.get(node.metadata.name.as_str());
            let used = on_node
                .into_iter()
                .flatten()
                .map(|p| pod_requests(&p.spec))
                .fold(Resources::default(), Resources::plus)
                .plus(wanted);
            if used.cpu_millis > allocatable.cpu_millis
                || used.memory_bytes > allocatable.memory_bytes
                || used.pods > allocatable.pods
            {
                continue;
            }
            let score = (i128::from(used.cpu_millis) * 100 / i128::from(allocatable.cpu_millis)
                + i128::from(used.memory_bytes) * 100 / i128::from(allocatable.memory_bytes))
                / 2;
            if best.is_none_or(|(_, top)| score > top) {
                best = Some((node.metadata.name.as_str(), score));
            }
        }
        let (node, _) =
            best.with_context(|| format!("naive: {} fits nowhere", pod.metadata.name))?;
        bound.entry(node).or_default().push(pod);
    }
    Ok(CoreFigures {
        seconds: started.elapsed().as_secs_f64(),
        nodes_used: bound.len(),
        memory_mib: 0.0,
    })
}

struct EndToEnd {
    seconds: f64,
    apply_seconds: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
}

/// How the pods meet the scheduler in an end-to-end run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Applied while every node is open: the scheduler binds while the API takes
    /// the pods in; the time runs from the first apply.
    WhileApplied,
    /// Applied while every node is cordoned, so all wait; then the nodes open in
    /// one Apply and the time runs from that Apply: the scheduler's own throughput,
    /// binds and their store writes included, without the API's intake of pods.
    Pending,
}

async fn end_to_end(options: &Options, skiff: &Path, arrival: Arrival) -> Result<EndToEnd> {
    // Simulated nodes have no agent to send heartbeats: without a long grace the
    // node lifecycle controller would find them lost after 10 s and evict their pods.
    let mut agent = Agent::start(
        skiff,
        "warn,skiff::agent=info",
        &["--node-monitor-grace-period", "1h"],
    )
    .await?;
    let cordoned = arrival == Arrival::Pending;
    let nodes: Vec<Value> = (0..options.nodes).map(|i| node(i, cordoned)).collect();
    for chunk in nodes.chunks(options.batch) {
        agent.apply(chunk).await?;
    }
    // Apply keeps the stored status; the nodes report theirs as a kubelet would.
    let client = agent.client.clone();
    let mut reports = futures::stream::iter(nodes.into_iter().map(|node| {
        let mut client = client.clone();
        async move {
            let object = serde_json::to_vec(&node)?;
            client
                .update_status(proto::UpdateStatusRequest { object })
                .await
                .context("UpdateStatus of a node")?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(16);
    while let Some(reported) = reports.next().await {
        reported?;
    }
    eprintln!("end to end: {} nodes registered and Ready", options.nodes);
    // Let the scheduler's node watch catch up before the pods come.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_mib = rss_mib(agent.pid())?;

    let version = agent
        .client
        .list(proto::ListRequest {
            kind: "Pod".into(),
            field_selector: "metadata.name=none".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .resource_version;
    let mut events = agent
        .client
        .watch(proto::WatchRequest {
            kind: "Pod".into(),
            resource_version: version,
            ..Default::default()
        })
        .await?
        .into_inner();
    let total = options.pods;
    // Counts the pods the scheduler has bound, and (for pending ones) the pods it
    // has marked as waiting, so the nodes open only once all wait.
    let (waiting_tx, mut waiting_rx) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut waiting = HashSet::new();
        let mut waiting_tx = Some(waiting_tx);
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        while bound.len() < total {
            let event = events.next().await.context("watch ended")??;
            let object: Value = serde_json::from_slice(&event.object)?;
            let name = object["metadata"]["name"].to_string();
            if let Some(node) = object["spec"]["nodeName"].as_str() {
                if bound.insert(name) {
                    *per_node.entry(node.to_string()).or_default() += 1;
                }
            } else if object["status"]["conditions"][0]["reason"] == "Unschedulable" {
                waiting.insert(name);
                if waiting.len() == total
                    && let Some(tx) = waiting_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        }
        anyhow::Ok((Instant::now(), per_node))
    });
    let applying = Instant::now();
    let pods: Vec<Value> = (0..options.pods).map(pod).collect();
    for chunk in pods.chunks(options.batch) {
        agent.apply(chunk).await?;
    }
    let apply_seconds = applying.elapsed().as_secs_f64();
    eprintln!(
        "end to end: {} pods applied in {apply_seconds:.2} s",
        options.pods
    );
    let started = match arrival {
        Arrival::WhileApplied => applying,
        Arrival::Pending => {
            tokio::time::timeout(Duration::from_secs(600), &mut waiting_rx)
                .await
                .context("the scheduler did not mark every pod as waiting within 600 s")?
                .context("the watch ended")?;
            eprintln!(
                "end to end: all {} pods wait; opening the nodes",
                options.pods
            );
            let started = Instant::now();
            let nodes: Vec<Value> = (0..options.nodes).map(|i| node(i, false)).collect();
            agent.apply(&nodes).await?;
            started
        }
    };
    let (finished, per_node) = tokio::time::timeout(Duration::from_secs(600), counter)
        .await
        .context("not every pod was bound within 600 s")???;
    let seconds = finished.duration_since(started).as_secs_f64();
    if per_node.keys().any(|n| !n.starts_with("sim-")) {
        bail!("a pod was bound to a node that is not simulated: {per_node:?}");
    }
    eprintln!(
        "end to end: {} pods bound on {} nodes in {seconds:.2} s",
        options.pods,
        per_node.len()
    );
    let rss_after_mib = rss_mib(agent.pid())?;
    agent.stop()?;
    Ok(EndToEnd {
        seconds,
        apply_seconds,
        rss_before_mib,
        rss_after_mib,
    })
}
