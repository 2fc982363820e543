//! The API benchmark: skiff's whole control-plane write path (gRPC, decoding,
//! defaulting, validation, the embedded store's durable commit) against etcd's bare
//! key-value writes of the same bytes. The Kubernetes API server adds its own work
//! on top of etcd, so etcd alone is the strict side of the comparison.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use skiff::api::client::ApiClient;
use skiff::api::proto;

use crate::agent::Agent;
use crate::netns::free_port;
use crate::stats::{median, percentile, rss_mib};

#[derive(clap::Args)]
pub struct Options {
    /// The skiff binary (release build).
    #[arg(long)]
    skiff: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Objects stored before the watch phase.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Of those, how many are written by one client (the rest concurrently).
    #[arg(long, default_value_t = 1_000)]
    sequential: usize,
    /// Concurrent clients for the rest.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Updates whose watch events are timed.
    #[arg(long, default_value_t = 1_000)]
    watch_updates: usize,
    /// Rounds; the systems alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One round's figures for one system.
#[derive(Clone, Debug, Default)]
struct Figures {
    sequential_per_s: f64,
    concurrent_per_s: f64,
    watch_p50_us: f64,
    watch_p99_us: f64,
    rss_mib: f64,
}

pub async fn run(options: Options) -> Result<()> {
    let epoch = Instant::now();
    let mut skiff_rounds = Vec::new();
    let mut etcd_rounds = Vec::new();
    for round in 1..=options.rounds {
        // Alternate which goes first, so drift over the run hits both alike.
        let order = if round % 2 == 1 {
            ["skiff", "etcd"]
        } else {
            ["etcd", "skiff"]
        };
        for system in order {
            let figures = match system {
                "skiff" => {
                    let server =
                        Agent::start(&options.skiff, "warn,skiff::agent=info", &[]).await?;
                    let target = Target::Skiff(server.client.clone());
                    let figures = measure(&options, &target, server.pid(), epoch).await?;
                    server.stop()?;
                    skiff_rounds.push(figures.clone());
                    figures
                }
                _ => {
                    let server = EtcdServer::start(&options.etcd).await?;
                    let target = Target::Etcd(Box::new(server.client.clone()));
                    let figures = measure(&options, &target, server.pid(), epoch).await?;
                    server.stop()?;
                    etcd_rounds.push(figures.clone());
                    figures
                }
            };
            eprintln!("round {round} {system}: {figures:?}");
        }
    }
    print_report(&options, &skiff_rounds, &etcd_rounds);
    Ok(())
}

/// What the benchmark writes to and watches.
#[derive(Clone)]
enum Target {
    Skiff(ApiClient),
    Etcd(Box<etcd_client::Client>),
}

fn object(i: usize, sent_ns: u128) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": format!("bench-{i:05}"), "namespace": "default", "labels": {"app": "bench"}},
        "data": {"payload": "x".repeat(256), "sent": sent_ns.to_string()}
    })
}

impl Target {
    async fn write(&self, i: usize, sent_ns: u128) -> Result<()> {
        let bytes = serde_json::to_vec(&object(i, sent_ns))?;
        match self {
            Target::Skiff(client) => {
                client
                    .clone()
                    .apply(proto::ApplyRequest {
                        objects: vec![bytes],
                    })
                    .await?;
            }
            Target::Etcd(client) => {
                client
                    .kv_client()
                    .put(
                        format!("/registry/configmaps/default/bench-{i:05}"),
                        bytes,
                        None,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Receives change events and sends each one's latency (from the write's send
    /// time, carried in the object) until `count` arrived.
    async fn watch_latencies(
        &self,
        count: usize,
        epoch: Instant,
    ) -> Result<tokio::task::JoinHandle<Result<Vec<f64>>>> {
        let sent_of = |value: &[u8]| -> Option<u128> {
            let object: Value = serde_json::from_slice(value).ok()?;
            object["data"]["sent"].as_str()?.parse().ok()
        };
        match self {
            Target::Skiff(client) => {
                // Watch from now: the version of an (empty) list.
                let now = client
                    .clone()
                    .list(proto::ListRequest {
                        kind: "ConfigMap".into(),
                        namespace: "default".into(),
                        field_selector: "metadata.name=none".into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .resource_version;
                let mut events = client
                    .clone()
                    .watch(proto::WatchRequest {
                        kind: "ConfigMap".into(),
                        namespace: "default".into(),
                        resource_version: now,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(count);
                    while latencies.len() < count {
                        let event = events.next().await.context("watch ended")??;
                        let now = epoch.elapsed().as_nanos();
                        if let Some(sent) = sent_of(&event.object) {
                            latencies.push((now - sent) as f64 / 1_000.0);
                        }
                    }
                    Ok(latencies)
                }))
            }
            Target::Etcd(client) => {
                let (_watcher, mut stream) = client
                    .watch_client()
                    .watch(
                        "/registry/configmaps/",
                        Some(etcd_client::WatchOptions::new().with_prefix()),
                    )
                    .await?;
                Ok(tokio::spawn(async move {
                    let _keep = _watcher;
                    let mut latencies = Vec::with_capacity(count);
                    while latencies.len() < count {
                        let response = stream.message().await?.context("watch ended")?;
                        let now = epoch.elapsed().as_nanos();
                        for event in response.events() {
                            if let Some(sent) = event.kv().and_then(|kv| sent_of(kv.value())) {
                                latencies.push((now - sent) as f64 / 1_000.0);
                            }
                        }
                    }
                    Ok(latencies)
                }))
            }
        }
    }
}

async fn measure(options: &Options, target: &Target, pid: u32, epoch: Instant) -> Result<Figures> {
    let target = Arc::new(target.clone());
    // Phase 1: one client, one object per request.
    let started = Instant::now();
    for i in 0..options.sequential {
        target.write(i, epoch.elapsed().as_nanos()).await?;
    }
    let sequential_per_s = options.sequential as f64 / started.elapsed().as_secs_f64();

    // Phase 2: the rest from concurrent clients.
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(options.sequential));
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (target, next, total) = (target.clone(), next.clone(), options.objects);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                target.write(i, epoch.elapsed().as_nanos()).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let concurrent = options.objects - options.sequential;
    let concurrent_per_s = concurrent as f64 / started.elapsed().as_secs_f64();

    // Phase 3: updates of stored objects, each timed from write to watch event.
    let watcher = target.watch_latencies(options.watch_updates, epoch).await?;
    for i in 0..options.watch_updates {
        target
            .write(i % options.objects, epoch.elapsed().as_nanos())
            .await?;
    }
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .context("watch events did not all arrive in 60 s")???;
    latencies.sort_by(f64::total_cmp);
    Ok(Figures {
        sequential_per_s,
        concurrent_per_s,
        watch_p50_us: percentile(&latencies, 0.50),
        watch_p99_us: percentile(&latencies, 0.99),
        rss_mib: rss_mib(pid)?,
    })
}

fn print_report(options: &Options, skiff: &[Figures], etcd: &[Figures]) {
    type Pick = fn(&Figures) -> f64;
    let rows: [(&str, Pick, bool); 5] = [
        ("applies/s, 1 client", |f| f.sequential_per_s, true),
        ("applies/s, concurrent", |f| f.concurrent_per_s, true),
        ("watch latency p50 (µs)", |f| f.watch_p50_us, false),
        ("watch latency p99 (µs)", |f| f.watch_p99_us, false),
        ("RSS holding the objects (MiB)", |f| f.rss_mib, false),
    ];
    println!(
        "{} objects ({} by 1 client, the rest by {} clients), {} timed watch updates, median of {} rounds\n",
        options.objects,
        options.sequential,
        options.concurrency,
        options.watch_updates,
        options.rounds
    );
    println!("| measure | skiff (API + store) | etcd 3.4 (store only) | skiff vs etcd |");
    println!("|---|---|---|---|");
    for (name, pick, higher_is_better) in rows {
        let (s, e) = (
            median(skiff.iter().map(pick)),
            median(etcd.iter().map(pick)),
        );
        let ratio = if higher_is_better { s / e } else { e / s };
        println!(
            "| {name} | {s:.1} | {e:.1} | {ratio:.2}x {} |",
            if ratio >= 1.0 { "better" } else { "worse" }
        );
    }
}

/// A single-member etcd on loopback with its own data directory.
struct EtcdServer {
    child: Child,
    client: etcd_client::Client,
    _data: tempfile::TempDir,
}

impl EtcdServer {
    async fn start(binary: &Path) -> Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("skiff-bench-etcd-")
            .tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(binary)
            .args(["--name", "bench", "--data-dir"])
            .arg(data.path())
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            if let Ok(mut client) = etcd_client::Client::connect([client_url.as_str()], None).await
                && client.status().await.is_ok()
            {
                break client;
            }
            if Instant::now() > deadline {
                bail!("etcd did not start within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Self {
            child,
            client,
            _data: data,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}
