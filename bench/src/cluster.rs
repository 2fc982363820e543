//! The node-loss benchmark: a three-node cluster on a real etcd (the integration
//! tests' cluster: each node a network namespace with its own agent), six
//! replicas of a served Deployment spread over the nodes; node-3 is lost (agent
//! SIGKILLed, link cut) and the clock runs until its replicas run and are Ready on
//! the survivors, and until both survivors' dataplanes hold exactly the six
//! current backends for the Service. Each run starts a new cluster.
//!
//! Kubernetes, with its defaults, waits out the node monitor grace period (40 s)
//! and then the pods' default toleration of the unreachable taint (300 s) before
//! it replaces them: about 5 minutes 40 seconds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use skiff_tests::cluster::{Cluster, WEB_APP, dataplane_backends, node_name, ready_servers};

use crate::stats::{median, percentile};

/// Kubernetes' default: 40 s node-monitor-grace-period + 300 s default
/// tolerationSeconds for node.kubernetes.io/unreachable.
const KUBERNETES_DEFAULT_SECONDS: f64 = 340.0;
const NODES: usize = 3;
/// The node lost in each run.
const LOST: usize = 3;
const GIVE_UP: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct Options {
    /// Runs, each on a new cluster.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

struct Recovery {
    pods_seconds: f64,
    maps_seconds: f64,
    lost_led: bool,
}

pub async fn run(options: Options) -> Result<()> {
    let mut runs = Vec::new();
    for round in 1..=options.runs {
        // The harness is blocking (processes, polling): off the runtime's threads.
        let recovery = tokio::task::spawn_blocking(one_run).await??;
        eprintln!(
            "run {round}: replicas Ready elsewhere after {:.2} s, survivors' maps updated after {:.2} s{}",
            recovery.pods_seconds,
            recovery.maps_seconds,
            if recovery.lost_led {
                " (the lost node led)"
            } else {
                ""
            }
        );
        runs.push(recovery);
    }
    let mut done: Vec<f64> = runs
        .iter()
        .map(|r| r.pods_seconds.max(r.maps_seconds))
        .collect();
    done.sort_by(f64::total_cmp);
    let p50 = median(done.iter().copied());
    println!(
        "node loss on a 3-node cluster, {} runs; agents' default grace period (10 s)\n",
        options.runs
    );
    println!("| measure | skiff | Kubernetes defaults | skiff vs Kubernetes |");
    println!("|---|---|---|---|");
    println!(
        "| replicas Ready on the survivors, p50 (s) | {:.1} | | |",
        median(runs.iter().map(|r| r.pods_seconds))
    );
    println!(
        "| survivors' service maps updated, p50 (s) | {:.1} | | |",
        median(runs.iter().map(|r| r.maps_seconds))
    );
    println!(
        "| both, p50 (s) | {p50:.1} | {KUBERNETES_DEFAULT_SECONDS:.0} | {:.0}x sooner |",
        KUBERNETES_DEFAULT_SECONDS / p50
    );
    println!("| both, worst (s) | {:.1} | | |", percentile(&done, 1.0));
    Ok(())
}

fn one_run() -> Result<Recovery> {
    let mut cluster = Cluster::start(NODES, &["--scheduler-score", "least-allocated"]);
    let observer = cluster.node(1);
    observer.apply(WEB_APP);
    let deadline = Instant::now() + GIVE_UP;
    let servers = loop {
        match ready_servers(observer, None) {
            Ok(servers) => break servers,
            Err(state) if Instant::now() > deadline => bail!("replicas never Ready: {state}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    if !servers.iter().any(|s| s.node == node_name(LOST)) {
        bail!("no replica landed on {}: {servers:?}", node_name(LOST));
    }
    let lost_led = cluster.leader() == Some(LOST);
    let lost = Instant::now();
    cluster.lose(LOST);
    let survivors: Vec<usize> = (1..=NODES).filter(|&i| i != LOST).collect();
    let (mut pods_seconds, mut maps_seconds) = (None, None);
    while pods_seconds.is_none() || maps_seconds.is_none() {
        if lost.elapsed() > GIVE_UP {
            bail!("no recovery within {GIVE_UP:?}");
        }
        let Ok(current) = ready_servers(cluster.node(1), Some(&node_name(LOST))) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        pods_seconds.get_or_insert(lost.elapsed().as_secs_f64());
        let expected: BTreeSet<String> = current
            .iter()
            .flat_map(|s| s.ips.iter())
            .filter_map(|ip| ip.parse().ok())
            .map(|ip| SocketAddr::new(ip, 8080).to_string())
            .collect();
        if survivors
            .iter()
            .all(|&i| dataplane_backends(cluster.node(i), "web") == expected)
        {
            maps_seconds.get_or_insert(lost.elapsed().as_secs_f64());
        }
    }
    Ok(Recovery {
        pods_seconds: pods_seconds.unwrap_or_default(),
        maps_seconds: maps_seconds.unwrap_or_default(),
        lost_led,
    })
}
