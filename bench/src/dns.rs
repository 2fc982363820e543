//! The cluster DNS benchmark: skiff's DNS server against dnsmasq (the engine of
//! the original kube-dns) and Knot DNS (an authoritative server in C, the
//! ceiling), all three serving the same A records for `--services` services on
//! loopback, queried over UDP by dnsperf (Debian's) with the same query file.
//!
//! Per round and server, in an order rotated each round: a throughput run (as many
//! queries as dnsperf's clients keep outstanding, for `--seconds`), then a latency
//! run at a fixed offered load (`--latency-qps`, the same for every server) with
//! every answer's latency recorded, for p50 and p99. Before timing, each server's
//! answers for a sample of the names are checked against the expected addresses.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::agent::Agent;
use crate::netns::free_port;
use crate::stats::{median, percentile};

#[derive(clap::Args)]
pub struct Options {
    /// The skiff binary (release build) whose agent serves DNS.
    #[arg(long)]
    skiff: PathBuf,
    /// Services (one A record each) every server holds.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    services: u32,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Offered queries per second in the latency runs.
    #[arg(long, default_value_t = 10_000)]
    latency_qps: u32,
    /// Seconds of each latency run.
    #[arg(long, default_value_t = 5.0)]
    latency_seconds: f64,
    /// Rounds; every server is measured once in each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The agent flag that names where its DNS server listens.
const SKIFF_DNS_FLAG: &str = "--dns-addr";
const ZONE: &str = "cluster.local";
const NAMESPACE: &str = "default";
const TTL: u32 = 5;
/// dnsperf: one thread per core, and enough clients and outstanding queries to
/// keep a server busy.
const DNSPERF_ARGS: [&str; 6] = ["-T", "2", "-c", "8", "-q", "200"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Skiff,
    Dnsmasq,
    Knot,
}

const SERVERS: [Server; 3] = [Server::Skiff, Server::Dnsmasq, Server::Knot];

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Skiff => "skiff",
            Server::Dnsmasq => "dnsmasq",
            Server::Knot => "Knot DNS",
        }
    }
}

/// One service's record: its name and cluster IP.
fn record(index: u32) -> (String, Ipv4Addr) {
    let name = format!("svc-{index:05}.{NAMESPACE}.svc.{ZONE}");
    // 10.100.0.0/16 is inside the default service CIDR and clear of the agent's
    // own allocations at its start (10.96.0.1 and the DNS addresses).
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + index);
    (name, ip)
}

/// A measurement of one server in one round.
struct Sample {
    qps: f64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run(options: Options) -> Result<()> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(options.latency_qps > 0, "--latency-qps must be at least 1");
    for tool in ["dnsperf", "dnsmasq", "knotd", "dig"] {
        which(tool)?;
    }
    let work = tempfile::Builder::new()
        .prefix("skiff-bench-dns-")
        .tempdir()?;
    let queries = work.path().join("queries");
    std::fs::write(&queries, query_file(options.services))?;

    let skiff = SkiffDns::start(&options.skiff, options.services).await?;
    let dnsmasq = Daemon::dnsmasq(work.path(), options.services)?;
    let knot = Daemon::knot(work.path(), options.services)?;
    let port = |server: Server| match server {
        Server::Skiff => skiff.port,
        Server::Dnsmasq => dnsmasq.port,
        Server::Knot => knot.port,
    };
    for server in SERVERS {
        check_answers(server, port(server), options.services)?;
    }

    let mut samples: Vec<Vec<Sample>> = SERVERS.iter().map(|_| Vec::new()).collect();
    for round in 0..options.rounds {
        for i in 0..SERVERS.len() {
            let index = (i + round) % SERVERS.len();
            let server = SERVERS[index];
            let sample = measure(&options, &queries, port(server))?;
            eprintln!(
                "round {} {:<9} {:>9.0} queries/s ({} lost), p50 {:.3} ms p99 {:.3} ms at {} q/s",
                round + 1,
                server.name(),
                sample.qps,
                sample.lost,
                sample.p50_ms,
                sample.p99_ms,
                options.latency_qps
            );
            samples[index].push(sample);
        }
    }
    let skiff_rss = crate::stats::rss_mib(skiff.agent.pid())?;
    let (dnsmasq_rss, knot_rss) = (dnsmasq.rss_mib()?, knot.rss_mib()?);
    skiff.stop().await?;
    report(&options, &samples, [skiff_rss, dnsmasq_rss, knot_rss]);
    Ok(())
}

fn which(tool: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()?
        .success();
    ensure!(
        found,
        "{tool} is missing: run `cargo xtask setup` (as root) first"
    );
    Ok(())
}

/// Every service's A query once, in an order that is not the records' own.
fn query_file(services: u32) -> String {
    let mut out = String::new();
    // A stride coprime to the count visits every index once.
    let stride = (1..)
        .map(|k| 7919 * k % services.max(2))
        .find(|s| *s > 0 && gcd(*s, services) == 1)
        .unwrap_or(1);
    for i in 0..services {
        let (name, _) = record(i * stride % services);
        let _ = writeln!(out, "{name} A");
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A throughput run, then a latency run at the fixed offered load.
fn measure(options: &Options, queries: &Path, port: u16) -> Result<Sample> {
    let throughput = dnsperf(queries, port, &["-l", &options.seconds.to_string()], false)?;
    let latency = dnsperf(
        queries,
        port,
        &[
            "-l",
            &options.latency_seconds.to_string(),
            "-Q",
            &options.latency_qps.to_string(),
        ],
        true,
    )?;
    let mut latencies = latency.latencies_ms;
    ensure!(!latencies.is_empty(), "the latency run recorded no answers");
    latencies.sort_by(f64::total_cmp);
    Ok(Sample {
        qps: throughput.qps,
        lost: throughput.lost + latency.lost,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

struct DnsperfRun {
    qps: f64,
    lost: u64,
    latencies_ms: Vec<f64>,
}

fn dnsperf(queries: &Path, port: u16, args: &[&str], verbose: bool) -> Result<DnsperfRun> {
    let mut cmd = Command::new("dnsperf");
    cmd.args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args(DNSPERF_ARGS)
        .args(args);
    if verbose {
        cmd.arg("-v");
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "dnsperf failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("dnsperf printed no {label:?}: {text}"))
    };
    let qps: f64 = field("Queries per second:")?.parse()?;
    let lost: u64 = field("Queries lost:")?.parse()?;
    // `> NOERROR name A 0.000130`: rcode, name, type, seconds; `> T name A`:
    // no answer in time (dnsperf counts it as lost).
    let mut latencies_ms = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("> ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"T") {
            continue;
        }
        ensure!(words.first() == Some(&"NOERROR"), "answered {line:?}");
        if let Some(seconds) = words.last().and_then(|s| s.parse::<f64>().ok()) {
            latencies_ms.push(seconds * 1_000.0);
        }
    }
    Ok(DnsperfRun {
        qps,
        lost,
        latencies_ms,
    })
}

/// Asks `server` for a sample of the names with dig and compares the answers.
fn check_answers(server: Server, port: u16, services: u32) -> Result<()> {
    let sample = [0, services / 2, services - 1];
    for index in sample {
        let (name, ip) = record(index);
        let out = Command::new("dig")
            .args(["+short", "+tries=1", "+time=2", "-p", &port.to_string()])
            .args(["@127.0.0.1", &name, "A"])
            .output()?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            answer == ip.to_string(),
            "{} answered {name} A with {answer:?}, not {ip}",
            server.name()
        );
    }
    Ok(())
}

/// A skiff agent serving the records as Services in its store.
struct SkiffDns {
    agent: Agent,
    port: u16,
}

impl SkiffDns {
    async fn start(binary: &Path, services: u32) -> Result<Self> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut agent =
            Agent::start(binary, "warn,skiff::agent=info", &[SKIFF_DNS_FLAG, &listen]).await?;
        let objects: Vec<Value> = (0..services).map(service).collect();
        for batch in objects.chunks(200) {
            agent.apply(batch).await.context("applying the services")?;
        }
        // The server follows the store: wait until it has the last service.
        let (last, _) = record(services - 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while check_answers(Server::Skiff, port, services).is_err() {
            if Instant::now() > deadline {
                bail!("skiff's DNS did not answer {last} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { agent, port })
    }

    async fn stop(self) -> Result<()> {
        self.agent.stop()
    }
}

fn service(index: u32) -> Value {
    let (name, ip) = record(index);
    let short = name.split('.').next().unwrap_or_default().to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": short, "namespace": NAMESPACE},
        "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80}]},
    })
}

/// dnsmasq or knotd as a child process, stopped on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    /// dnsmasq answering from `host-record` lines, as kube-dns's dnsmasq answered
    /// from what it was given, with no upstream.
    fn dnsmasq(work: &Path, services: u32) -> Result<Self> {
        let port = free_port()?;
        let mut conf = String::new();
        for i in 0..services {
            let (name, ip) = record(i);
            let _ = writeln!(conf, "host-record={name},{ip}");
        }
        let path = work.join("dnsmasq.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args(["--listen-address=127.0.0.1", "--pid-file="])
            .arg(format!("--port={port}"))
            .arg(format!("--local-ttl={TTL}"))
            .arg(format!("--conf-file={}", path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq")?;
        Self::ready(child, port, Server::Dnsmasq, services)
    }

    /// knotd authoritative for the zone, from a zone file.
    fn knot(work: &Path, services: u32) -> Result<Self> {
        let port = free_port()?;
        let mut zone = format!(
            "$ORIGIN {ZONE}.\n$TTL {TTL}\n@ SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {TTL}\n\
             @ NS ns.dns.{ZONE}.\nns.dns A 10.96.0.10\n"
        );
        for i in 0..services {
            let (name, ip) = record(i);
            let _ = writeln!(zone, "{name}. A {ip}");
        }
        std::fs::write(work.join("zone"), zone)?;
        let dir = work.display();
        let conf = format!(
            "server:\n  rundir: \"{dir}\"\n  listen: 127.0.0.1@{port}\n\
             database:\n  storage: \"{dir}\"\n\
             log:\n  - target: stderr\n    any: error\n\
             zone:\n  - domain: {ZONE}\n    file: \"{dir}/zone\"\n    journal-content: none\n    zonefile-sync: -1\n"
        );
        let path = work.join("knot.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("knotd")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting knotd")?;
        Self::ready(child, port, Server::Knot, services)
    }

    /// Waits until the server answers correctly.
    fn ready(mut child: Child, port: u16, server: Server, services: u32) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited at start: {status}", server.name());
            }
            if check_answers(server, port, services).is_ok() {
                return Ok(Self { child, port });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{} did not answer within 20 s", server.name());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn rss_mib(&self) -> Result<f64> {
        crate::stats::rss_mib(self.child.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(options: &Options, samples: &[Vec<Sample>], rss_mib: [f64; 3]) {
    let med = |i: usize, pick: fn(&Sample) -> f64| median(samples[i].iter().map(pick));
    println!(
        "{} services, UDP on loopback, dnsperf {}; throughput runs of {} s, latency runs of {} s \
         at {} queries/s; median of {} rounds\n",
        options.services,
        DNSPERF_ARGS.join(" "),
        options.seconds,
        options.latency_seconds,
        options.latency_qps,
        options.rounds
    );
    println!("| server | queries/s | p50 ms | p99 ms | lost | RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for (i, server) in SERVERS.iter().enumerate() {
        let lost: u64 = samples[i].iter().map(|s| s.lost).sum();
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {lost} | {:.1} |",
            server.name(),
            med(i, |s| s.qps),
            med(i, |s| s.p50_ms),
            med(i, |s| s.p99_ms),
            rss_mib[i],
        );
    }
    let skiff_qps = med(0, |s| s.qps);
    let skiff_p99 = med(0, |s| s.p99_ms);
    println!("\n| skiff against | queries/s (skiff / other) | p99 (other / skiff) |");
    println!("|---|---|---|");
    for (i, server) in SERVERS.iter().enumerate().skip(1) {
        println!(
            "| {} | {:.2}x | {:.2}x |",
            server.name(),
            skiff_qps / med(i, |s| s.qps),
            med(i, |s| s.p99_ms) / skiff_p99,
        );
    }
    let floor = skiff_qps >= med(1, |s| s.qps);
    println!(
        "\nFloor: at least as many queries per second as dnsmasq: {}",
        if floor { "met" } else { "NOT met" }
    );
}
