//! The service mesh benchmark: what skiff's node proxy adds to pod-to-pod HTTP.
//! One node agent; a namespace with a server pod and a client pod; skiff-bench's
//! own HTTP server and open-loop load generator ([`traffic`]) run in the pods'
//! network namespaces (the client also in the cgroup the agent's dataplane is
//! attached to). Modes, in an order rotated each round:
//! - plain: the namespace outside the mesh, the client to the server's pod IP;
//! - mesh (pod IP): the namespace labelled `skiff.io/mesh: enabled`: the client's
//!   connections are captured at connect() into the node proxy, which carries them
//!   in HBONE (mutual TLS + HTTP/2 CONNECT) to the server pod's proxy, which
//!   delivers them to the server;
//! - mesh (service VIP, appProtocol http): the same, to the VIP of a Service whose
//!   port declares `appProtocol: http`, by whatever path the agent takes for it.
//!
//! Each mode is checked to have taken its path: a captured connection is
//! connected to the proxy's listener on loopback, a plain one is not.
//! Per mode and rate: latency percentiles from the scheduled send time, the
//! agent's CPU time (the node proxy is in the agent; plain mode is the agent
//! idle with the same pods) and the whole node's, and the agent's resident memory.

mod scene;
pub mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::AsyncReadExt;

use crate::pods::IMAGE;
use crate::stats::{cpu_seconds, load_average, median, percentile, rss_mib};
use scene::{Scene, stdout_lines};
use traffic::{ClientOptions, ClientReport, MEASURED, MEASURING};

#[derive(clap::Args)]
pub struct Options {
    /// The skiff binary (release build; skiff-cni beside it).
    #[arg(long)]
    skiff: PathBuf,
    /// The busybox-static binary the pods' image is built from.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Offered requests per second, each measured in every mode and round.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    rates: Vec<u32>,
    /// Kept-alive HTTP/1.1 connections the client spreads its requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Rounds; every mode is measured once in each, in a rotated order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The floor, at 1,000 requests/s.
const FLOOR_RATE: u32 = 1_000;
const FLOOR_ADDED_P99_US: f64 = 500.0;
const FLOOR_PROXY_MIB: f64 = 20.0 * 1e6 / (1024.0 * 1024.0);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    Mesh,
    MeshService,
}

const MODES: [Mode; 3] = [Mode::Plain, Mode::Mesh, Mode::MeshService];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Mesh => "mesh (pod IP)",
            Mode::MeshService => "mesh (service VIP, appProtocol http)",
        }
    }

    fn enrolled(self) -> bool {
        self != Mode::Plain
    }

    fn target(self, scene: &Scene) -> SocketAddr {
        match self {
            Mode::Plain | Mode::Mesh => scene.pod_target(),
            Mode::MeshService => scene.service_target(),
        }
    }
}

/// One figure of a [`Sample`].
type Pick = fn(&Sample) -> f64;

/// One measured window.
#[derive(Clone, Copy, Debug)]
struct Sample {
    round: usize,
    mode: Mode,
    rate: u32,
    /// Latencies, µs.
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    /// Responses per second over the window (the offered rate when it keeps up).
    achieved: f64,
    /// Milliseconds of CPU (user + system) per second of the window: the
    /// agent's, and the client's and server's together. (Not the machine's: other
    /// work may run on it.)
    agent_cpu: f64,
    pods_cpu: f64,
    /// The agent's RSS at the end of the window.
    agent_rss_mib: f64,
}

pub async fn run(options: Options) -> Result<()> {
    validate(&options)?;
    let images = tempfile::Builder::new()
        .prefix("skiff-bench-image-")
        .tempdir()?;
    let archive = images.path().join("busybox.tar");
    skiff::image::build::build_busybox_oci_archive(&options.busybox, IMAGE, &archive)
        .context("building the busybox image (is busybox-static installed?)")?;
    let load_before = load_average();
    let mut scene = Scene::start(&options.skiff, &archive).await?;
    // The pods run, nothing has been enrolled yet.
    let rss_before_mib = rss_mib(scene.agent_pid())?;
    let mut samples = Vec::new();
    let measured = measure_rounds(&options, &mut scene, &mut samples).await;
    scene.stop().await?;
    measured?;
    print_report(&options, &samples, &load_before);
    print_memory(&samples, rss_before_mib);
    Ok(())
}

fn validate(options: &Options) -> Result<()> {
    ensure!(
        !options.rates.is_empty() && options.rates.iter().all(|&r| r > 0),
        "--rates must name rates above 0"
    );
    ensure!(options.connections > 0, "--connections must be above 0");
    ensure!(options.seconds > 0.0, "--seconds must be above 0");
    ensure!(options.warmup >= 0.0, "--warmup must be 0 or more");
    ensure!(options.rounds > 0, "--rounds must be above 0");
    Ok(())
}

async fn measure_rounds(
    options: &Options,
    scene: &mut Scene,
    samples: &mut Vec<Sample>,
) -> Result<()> {
    for round in 1..=options.rounds {
        // Rotated, so that drift over the run hits every mode alike.
        let mut modes = MODES;
        modes.rotate_left((round - 1) % MODES.len());
        for mode in modes {
            scene.enrol(mode.enrolled()).await?;
            for &rate in &options.rates {
                let sample = measure(options, scene, round, mode, rate).await?;
                eprintln!("round {round} {} at {rate}/s: {sample:?}", mode.name());
                samples.push(sample);
            }
        }
    }
    Ok(())
}

/// CPU time counters at one moment.
struct CpuSnapshot {
    at: Instant,
    /// The agent's, in seconds.
    agent: f64,
    /// The client's and the server's, in seconds.
    pods: f64,
}

/// The processes whose CPU time a window counts.
#[derive(Clone, Copy)]
struct Pids {
    agent: u32,
    server: u32,
    client: u32,
}

impl CpuSnapshot {
    fn take(pids: Pids) -> Result<Self> {
        Ok(Self {
            at: Instant::now(),
            agent: cpu_seconds(pids.agent)?,
            pods: cpu_seconds(pids.server)? + cpu_seconds(pids.client)?,
        })
    }
}

async fn measure(
    options: &Options,
    scene: &Scene,
    round: usize,
    mode: Mode,
    rate: u32,
) -> Result<Sample> {
    let client = ClientOptions {
        target: mode.target(scene),
        rate,
        connections: options.connections,
        warmup: options.warmup,
        seconds: options.seconds,
        connect_within: 10.0,
    };
    let mut child = scene.start_client(&client)?;
    let mut lines = stdout_lines(&mut child)?;
    let pids = Pids {
        agent: scene.agent_pid(),
        server: scene.server_pid()?,
        client: child.id().context("the client's pid")?,
    };
    // The client's own connect and schedule give it at most this long.
    let give_up = Duration::from_secs_f64(options.warmup + options.seconds + 60.0);
    let run = async {
        let mut window = None;
        let mut end = None;
        while let Some(line) = lines.next_line().await? {
            match line.as_str() {
                MEASURING => window = Some(CpuSnapshot::take(pids)?),
                MEASURED => end = Some((CpuSnapshot::take(pids)?, rss_mib(pids.agent)?)),
                report => {
                    let report: ClientReport = serde_json::from_str(report)
                        .with_context(|| format!("the client's report: {report:?}"))?;
                    return Ok((window, end, report));
                }
            }
        }
        bail!("the client ended without a report")
    };
    let outcome = tokio::time::timeout(give_up, run).await;
    let status = match outcome {
        Ok(Ok(_)) => child.wait().await?,
        // The client failed or hung: what it said matters more than the symptom.
        _ => {
            let _ = child.start_kill();
            child.wait().await?
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).await?;
    }
    let (window, end, report) = outcome
        .with_context(|| format!("the client did not finish within {give_up:?}"))?
        .with_context(|| format!("the client ({status}): {}", stderr.trim()))?;
    ensure!(
        status.success(),
        "the client exited with {status}: {}",
        stderr.trim()
    );
    let (Some(start), Some((end, agent_rss_mib))) = (window, end) else {
        bail!("the client never announced its measured window");
    };
    check_path(mode, &report.local_addrs)?;

    let wall = end.at.duration_since(start.at).as_secs_f64();
    let per_second = |seconds: f64| seconds * 1_000.0 / wall;
    let mut latencies = report.latencies_us.clone();
    latencies.sort_by(f64::total_cmp);
    Ok(Sample {
        round,
        mode,
        rate,
        p50: percentile(&latencies, 0.50),
        p90: percentile(&latencies, 0.90),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or(f64::NAN),
        achieved: report.latencies_us.len() as f64 / report.measured_seconds,
        agent_cpu: per_second(end.agent - start.agent),
        pods_cpu: per_second(end.pods - start.pods),
        agent_rss_mib,
    })
}

/// Fails unless every connection took `mode`'s path: captured ones are
/// connected to the node proxy's listener on loopback inside the pod.
fn check_path(mode: Mode, local_addrs: &[SocketAddr]) -> Result<()> {
    let captured = local_addrs.iter().filter(|a| a.ip().is_loopback()).count();
    let expected = match mode.enrolled() {
        true => local_addrs.len(),
        false => 0,
    };
    ensure!(
        captured == expected,
        "{}: {captured} of the client's connections went to the node proxy, expected \
         {expected} (local addresses {local_addrs:?})",
        mode.name()
    );
    Ok(())
}

fn print_report(options: &Options, samples: &[Sample], load_before: &str) {
    let of = |mode: Mode, rate: u32| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.mode == mode && s.rate == rate)
            .collect()
    };
    // The median over rounds of `pick(mesh) - pick(plain)` (or of the ratio, when
    // plain's is above 0), the two measured in the same round.
    let paired = |mode: Mode, rate: u32, pick: Pick, ratio: bool| -> f64 {
        let plain = of(Mode::Plain, rate);
        median(of(mode, rate).iter().filter_map(|s| {
            let p = plain.iter().find(|p| p.round == s.round)?;
            match ratio {
                true => (pick(p) > 0.0).then(|| pick(s) / pick(p)),
                false => Some(pick(s) - pick(p)),
            }
        }))
    };
    let meshed = [Mode::Mesh, Mode::MeshService];
    println!(
        "HTTP/1.1 GET (3-byte responses) from a client pod to a server pod on one node, \
         open loop over {} kept-alive connections; {} s measured after {} s of warm-up \
         per mode, rate and round; median of {} rounds. Latency from each request's \
         scheduled send time to its whole response. Load average (1, 5, 15 min) \
         before: {load_before}, after: {}.",
        options.connections,
        options.seconds,
        options.warmup,
        options.rounds,
        load_average()
    );
    for &rate in &options.rates {
        let m = |mode: Mode, pick: Pick| median(of(mode, rate).into_iter().map(pick));
        println!("\n### {rate} requests/s\n");
        println!(
            "| measure | {} | {} | {} |",
            MODES[0].name(),
            MODES[1].name(),
            MODES[2].name()
        );
        println!("|---|---|---|---|");
        let rows: [(&str, Pick, usize); 8] = [
            ("latency p50 (µs)", |s| s.p50, 0),
            ("latency p90 (µs)", |s| s.p90, 0),
            ("latency p99 (µs)", |s| s.p99, 0),
            ("latency max (µs)", |s| s.max, 0),
            ("responses/s", |s| s.achieved, 0),
            ("agent CPU (ms per s)", |s| s.agent_cpu, 1),
            ("client + server CPU (ms per s)", |s| s.pods_cpu, 1),
            ("agent RSS (MiB)", |s| s.agent_rss_mib, 1),
        ];
        for (name, pick, digits) in rows {
            let cells: Vec<String> = MODES
                .iter()
                .map(|&mode| format!("{:.*}", digits, m(mode, pick)))
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
        println!(
            "\nadded by the mesh (per round: mesh less plain, and mesh / plain; median of the rounds):\n"
        );
        println!(
            "| measure | {} | ratio | {} | ratio |",
            meshed[0].name(),
            meshed[1].name()
        );
        println!("|---|---|---|---|---|");
        let per_thousand = 1_000.0 / f64::from(rate);
        // (name, figure, scale, whether a ratio means anything: the agent idles
        // without the mesh).
        let added: [(&str, Pick, f64, bool); 5] = [
            ("latency p50 (µs)", |s| s.p50, 1.0, true),
            ("latency p90 (µs)", |s| s.p90, 1.0, true),
            ("latency p99 (µs)", |s| s.p99, 1.0, true),
            (
                "proxy CPU per 1,000 requests/s (agent, ms per s)",
                |s| s.agent_cpu,
                per_thousand,
                false,
            ),
            (
                "agent + client + server CPU per 1,000 requests/s (ms per s)",
                |s| s.agent_cpu + s.pods_cpu,
                per_thousand,
                true,
            ),
        ];
        for (name, pick, scale, has_ratio) in added {
            let cells: Vec<String> = meshed
                .iter()
                .map(|&mode| {
                    let ratio = match paired(mode, rate, pick, true) {
                        r if r.is_nan() || !has_ratio => "-".to_string(),
                        r => format!("{r:.2}x"),
                    };
                    format!("{:.1} | {ratio}", paired(mode, rate, pick, false) * scale)
                })
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
        if rate == FLOOR_RATE {
            println!(
                "\nthe issue's floor at {FLOOR_RATE} requests/s, p99 added under {FLOOR_ADDED_P99_US:.0} µs:\n"
            );
            for mode in meshed {
                let p99 = paired(mode, rate, |s| s.p99, false);
                println!(
                    "- {}: {p99:.0} µs, {}",
                    mode.name(),
                    verdict(p99 < FLOOR_ADDED_P99_US)
                );
            }
            let plain_p99 = m(Mode::Plain, |s| s.p99);
            if plain_p99 > FLOOR_ADDED_P99_US {
                println!(
                    "\n(not decided by this run: plain's own p99 is {plain_p99:.0} µs, above \
                     the floor; the tail is the machine's other load, not the mesh)"
                );
            }
        }
    }
}

/// The agent's memory: before any pod was enrolled, and the most it held while
/// serving the mesh under load (at the end of a measured window).
fn print_memory(samples: &[Sample], rss_before_mib: f64) {
    let serving = samples
        .iter()
        .filter(|s| s.mode.enrolled())
        .map(|s| s.agent_rss_mib)
        .fold(f64::NAN, f64::max);
    let proxy = serving - rss_before_mib;
    println!("\nmemory (MiB):\n");
    println!("| measure | MiB |");
    println!("|---|---|");
    println!("| agent RSS with the pods, before any was enrolled | {rss_before_mib:.1} |");
    println!("| agent RSS serving the mesh under load (highest of the windows) | {serving:.1} |");
    println!("| proxy memory (the difference) | {proxy:.1} |");
    println!(
        "\nthe issue's floor, proxy memory under 20 MB ({FLOOR_PROXY_MIB:.1} MiB): {}",
        verdict(proxy < FLOOR_PROXY_MIB)
    );
}

fn verdict(met: bool) -> &'static str {
    match met {
        true => "met",
        false => "NOT met",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_takes_its_path_only_when_every_connection_did() {
        let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let pod: SocketAddr = "10.244.0.7:40001".parse().unwrap();
        assert!(check_path(Mode::Mesh, &[proxy, proxy]).is_ok());
        assert!(check_path(Mode::MeshService, &[proxy]).is_ok());
        assert!(check_path(Mode::Plain, &[pod, pod]).is_ok());
        assert!(check_path(Mode::Mesh, &[proxy, pod]).is_err());
        assert!(check_path(Mode::Plain, &[pod, proxy]).is_err());
    }
}
