//! The dataplane benchmark: new connections per second (connect, one request and
//! response, close) to the same backends, in one run:
//!
//! - direct: to the backends' own addresses, nothing in between;
//! - skiff: to a service virtual IP that skiff's connect() programs rewrite;
//! - iptables: to a virtual IP that kube-proxy's iptables-mode rules DNAT (on this
//!   machine's default iptables, which drives nf_tables: iptables-nft);
//! - nftables: to a virtual IP that kube-proxy's nftables-mode rules DNAT (the
//!   stand-in for IPVS, which this kernel lacks);
//!
//! each with 100, 1,000 and 10,000 services programmed, the measured one last in
//! iptables order. The configurations alternate within every round (these
//! machines drift by about ±20%); the report gives medians and each mode's median
//! ratio to direct in the same round. Beside each rate it gives the CPU time per
//! connection (client and backends, kernel work included), which other load on the
//! machine disturbs far less, and the run time of skiff's program per connect().
//!
//! Then the time to program 10,000 services with 10 backends each: skiff's map
//! writes against `iptables-restore` and `nft -f` of the same services.
//!
//! Every load balancer lives in namespaces (and skiff in cgroups) of its own, made
//! for the run and removed at its end: direct and skiff clients share one namespace
//! without any netfilter rule, each iptables and nftables configuration has its
//! own. The backends are the same code in each: one thread per backend address.

mod lab;
mod rules;
mod store_latency;
mod traffic;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use skiff::dataplane::{self, Balancing, Dataplane, Frontend};

use crate::stats::{load_average, median};
use lab::{Cgroup, Netns};
use rules::{BACKEND_PORT, ServiceSet};
use store_latency::StoreLatency;
use traffic::{Backends, ClientSpec};

#[derive(clap::Args)]
pub struct Options {
    /// Numbers of services programmed, one column each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    services: Vec<usize>,
    /// Backends of the measured service: listeners in the namespace, one thread each.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=250))]
    backends: u8,
    /// Backends of every other service (addresses nothing listens on). A connection
    /// to the measured service never visits them in any mode, but iptables and
    /// nftables take longer to load more of them.
    #[arg(long, default_value_t = 1)]
    filler_backends: usize,
    /// Client threads, in one client process.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Seconds each measurement counts connections.
    #[arg(long, default_value_t = 1.5)]
    seconds: f64,
    /// Seconds of connections before counting starts.
    #[arg(long, default_value_t = 0.25)]
    warmup: f64,
    /// Rounds; every configuration is measured once in each. Many short rounds
    /// pair each mode with a direct measurement close in time.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Services programmed in the programming-time measurement.
    #[arg(long, default_value_t = 10_000)]
    program_services: usize,
    /// Backends of each of those.
    #[arg(long, default_value_t = 10)]
    program_backends: usize,
    /// Rounds of the programming-time measurement (0 skips it); one round of nft -f
    /// takes minutes here.
    #[arg(long, default_value_t = 1)]
    program_rounds: usize,
    /// The skiff binary whose agent the store-to-map latency is measured on.
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// Services (each with an EndpointSlice) in the store while the latency from an
    /// EndpointSlice change to the map update is measured.
    #[arg(long, default_value_t = 10_000)]
    latency_services: usize,
    /// EndpointSlice changes timed (0 skips the measurement).
    #[arg(long, default_value_t = 200)]
    latency_changes: usize,
    /// Internal: run as the client process against these addresses.
    #[arg(long, hide = true, value_delimiter = ',')]
    client_targets: Vec<SocketAddr>,
}

/// Where the measured service's backends listen (on the namespace's loopback, in
/// the pod CIDR); the client's source address is the one before them.
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const SERVICE_CIDR: &str = "10.96.0.0/12";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Skiff,
    Iptables,
    Nftables,
}

const MODES: [Mode; 4] = [Mode::Direct, Mode::Skiff, Mode::Iptables, Mode::Nftables];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Skiff => "skiff VIP",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

pub async fn run(options: Options) -> Result<()> {
    if !options.client_targets.is_empty() {
        return traffic::client_main(&ClientSpec {
            targets: &options.client_targets,
            threads: options.clients,
            warmup: seconds(options.warmup)?,
            seconds: seconds(options.seconds)?,
        });
    }
    validate(&options)?;
    catch_interrupts();
    let iptables = tool_version("iptables")?;
    let nft = tool_version("nft")?;
    tool_version("conntrack")?;
    eprintln!("[dataplane] {iptables}; {nft}");

    let started = Instant::now();
    let rates = measure_rates(&options)?;
    eprintln!(
        "[dataplane] connection rates measured in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let programming = measure_programming(&options)?;
    eprintln!(
        "[dataplane] programming times measured in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let latency = match (&options.skiff, options.latency_changes) {
        (_, 0) => None,
        (Some(skiff), changes) => {
            let started = Instant::now();
            let latency = store_latency::measure(skiff, options.latency_services, changes).await?;
            eprintln!(
                "[dataplane] store-to-map latency measured in {:.0}s",
                started.elapsed().as_secs_f64()
            );
            Some(latency)
        }
        (None, _) => None, // refused by validate()
    };
    print_report(&options, &iptables, &rates, &programming, latency.as_ref());
    Ok(())
}

fn seconds(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{s} is not a duration in seconds"))
}

fn validate(options: &Options) -> Result<()> {
    // The service CIDR 10.96.0.0/12 holds 2^20 - 2 virtual IPs from 10.96.0.1.
    const MAX_SERVICES: usize = (1 << 20) - 2;
    ensure!(!options.services.is_empty(), "--services names no size");
    for &n in options.services.iter().chain([&options.program_services]) {
        ensure!(
            (1..=MAX_SERVICES).contains(&n),
            "{n} services do not fit the service CIDR (1..={MAX_SERVICES})"
        );
    }
    ensure!(options.clients > 0, "--clients must be at least 1");
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    if options.latency_changes > 0 {
        ensure!(
            options.skiff.is_some(),
            "--skiff names no binary for the store-to-map latency (or pass --latency-changes 0)"
        );
        ensure!(
            options.latency_services > 0,
            "--latency-services must be at least 1 (the measured service)"
        );
    }
    ensure!(
        options.filler_backends > 0 && options.program_backends > 0,
        "services need at least one backend"
    );
    seconds(options.seconds)?;
    seconds(options.warmup)?;
    Ok(())
}

/// The first line of `tool --version`, failing when the tool is missing.
fn tool_version(tool: &str) -> Result<String> {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .with_context(|| format!("{tool} is missing: run `cargo xtask setup`"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or(tool).trim().to_string())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM end the run between measurements, so the guards still remove
/// every namespace and cgroup.
fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A namespace with the backends listening on its loopback and a route for the
/// service CIDR (iptables and nftables DNAT in the nat OUTPUT hook, after the route
/// lookup: without a route connect() to a virtual IP fails before NAT).
struct Site {
    // Dropped first: the backend threads stop before the namespace goes.
    backends: Backends,
    netns: Netns,
}

impl Site {
    fn create(tag: &str, backends: u8) -> Result<Self> {
        let netns = Netns::create(tag)?;
        let addrs: Vec<SocketAddrV4> = (1..=backends)
            .map(|i| {
                SocketAddrV4::new(
                    Ipv4Addr::from(u32::from(CLIENT_ADDR) + u32::from(i)),
                    BACKEND_PORT,
                )
            })
            .collect();
        for ip in std::iter::once(CLIENT_ADDR).chain(addrs.iter().map(|a| *a.ip())) {
            netns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        netns.ip(&[
            "route",
            "add",
            SERVICE_CIDR,
            "dev",
            "lo",
            "src",
            &CLIENT_ADDR.to_string(),
        ])?;
        let backends = Backends::start(&netns, &addrs)?;
        Ok(Self { backends, netns })
    }

    fn service_set(&self, count: usize, filler_backends: usize) -> ServiceSet {
        ServiceSet {
            count,
            filler_backends,
            measured_backends: Some(self.backends.addrs().to_vec()),
        }
    }
}

/// skiff's programs attached to a cgroup of their own, with one size's services.
struct SkiffSite {
    // Dropped first: detached before the cgroup is removed.
    dataplane: Dataplane,
    cgroup: Cgroup,
}

/// Everything the rate measurements connect through, one entry per size.
struct Bed {
    skiff: Vec<SkiffSite>,
    /// The clients of direct connections (and of iptables and nftables, each in
    /// their own namespace): a cgroup without programs.
    plain_cgroup: Cgroup,
    plain: Site,
    iptables: Vec<Site>,
    nftables: Vec<Site>,
}

fn build_bed(options: &Options) -> Result<Bed> {
    let plain = Site::create("plain", options.backends)?;
    let plain_cgroup = Cgroup::create("plain")?;
    let mut bed = Bed {
        skiff: Vec::new(),
        plain_cgroup,
        plain,
        iptables: Vec::new(),
        nftables: Vec::new(),
    };
    for &size in &options.services {
        check_interrupted()?;
        let services = bed.plain.service_set(size, options.filler_backends);

        let cgroup = Cgroup::create(&format!("skiff-{size}"))?;
        let mut dataplane = load_skiff(&cgroup)?;
        let took = program_skiff(&mut dataplane, &services)?;
        eprintln!(
            "[setup] skiff: {size} services in {:.2}s",
            took.as_secs_f64()
        );
        bed.skiff.push(SkiffSite { dataplane, cgroup });

        let site = Site::create(&format!("ipt-{size}"), options.backends)?;
        let services = site.service_set(size, options.filler_backends);
        let took = site.netns.timed(
            "iptables-restore",
            &[],
            services.iptables_restore().as_bytes(),
        )?;
        eprintln!(
            "[setup] iptables-restore: {size} services in {:.2}s",
            took.as_secs_f64()
        );
        bed.iptables.push(site);

        let site = Site::create(&format!("nft-{size}"), options.backends)?;
        let services = site.service_set(size, options.filler_backends);
        let took = site
            .netns
            .timed("nft", &["-f", "-"], services.nft_script().as_bytes())?;
        eprintln!(
            "[setup] nft -f: {size} services in {:.2}s",
            took.as_secs_f64()
        );
        bed.nftables.push(site);
    }
    Ok(bed)
}

/// skiff's dataplane on `cgroup`, owned by this process (nothing pinned), no
/// NodePort programs, logging off.
fn load_skiff(cgroup: &Cgroup) -> Result<Dataplane> {
    Dataplane::load(&dataplane::Config {
        cgroup: cgroup.path().to_path_buf(),
        ebpf_log: log::LevelFilter::Off,
        pin_dir: None,
        capacity: Default::default(),
        nodeport: Default::default(),
        socket_netns: Vec::new(),
    })
    .context("loading skiff's dataplane")
}

fn program_skiff(dataplane: &mut Dataplane, services: &ServiceSet) -> Result<Duration> {
    let started = Instant::now();
    for (vip, backends) in services.skiff_services() {
        dataplane.upsert_service(&Frontend::tcp(vip), &Balancing::from(backends.to_vec()))?;
    }
    Ok(started.elapsed())
}

/// One measurement of one configuration.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Connections completed per second of wall-clock time.
    per_second: f64,
    /// CPU time (user and system, of the client process and the backends' threads)
    /// per connection, in microseconds. On loopback the kernel's network work,
    /// netfilter's and skiff's programs included, runs in these tasks' context, so
    /// this is the whole cost of a connection, and it barely moves when other work
    /// on the machine takes CPU from the benchmark (which the rate does not escape).
    cpu_us: f64,
}

/// Samples by size index, mode and round.
struct Rates {
    by_size: Vec<[Vec<Sample>; 4]>,
    /// Nanoseconds skiff's connect4 program ran per connect(), by size.
    program_ns: Vec<f64>,
    load_before: String,
    load_after: String,
}

impl Rates {
    fn of(&self, size: usize, mode: Mode, pick: fn(&Sample) -> f64) -> f64 {
        median(self.by_size[size][mode as usize].iter().map(pick))
    }

    /// The median over rounds of `mode`'s figure over direct's in the same round.
    fn ratio(&self, size: usize, mode: Mode, pick: fn(&Sample) -> f64) -> f64 {
        let direct = &self.by_size[size][Mode::Direct as usize];
        median(
            self.by_size[size][mode as usize]
                .iter()
                .zip(direct)
                .map(|(m, d)| pick(m) / pick(d)),
        )
    }
}

fn client_spec<'a>(options: &Options, targets: &'a [SocketAddr]) -> ClientSpec<'a> {
    ClientSpec {
        targets,
        threads: options.clients,
        warmup: Duration::from_secs_f64(options.warmup),
        seconds: Duration::from_secs_f64(options.seconds),
    }
}

fn measure_rates(options: &Options) -> Result<Rates> {
    let bed = build_bed(options)?;
    let vips: Vec<[SocketAddr; 1]> = options
        .services
        .iter()
        .map(|&size| {
            [SocketAddr::V4(
                bed.plain.service_set(size, 1).measured_vip(),
            )]
        })
        .collect();
    let direct_targets: Vec<SocketAddr> = bed
        .plain
        .backends
        .addrs()
        .iter()
        .copied()
        .map(SocketAddr::V4)
        .collect();
    let mut rates = Rates {
        by_size: vec![Default::default(); options.services.len()],
        load_before: load_average(),
        load_after: String::new(),
        program_ns: Vec::new(),
    };
    let sizes = options.services.len();
    for round in 0..options.rounds {
        // Rotate both orders, so each size and each mode goes first in some round.
        for s in 0..sizes {
            let si = (s + round) % sizes;
            let size = options.services[si];
            let vip = &vips[si];
            for m in 0..MODES.len() {
                check_interrupted()?;
                let mode = MODES[(m + round) % MODES.len()];
                let (site, cgroup, targets) = match mode {
                    Mode::Direct => (&bed.plain, &bed.plain_cgroup, &direct_targets[..]),
                    Mode::Skiff => (&bed.plain, &bed.skiff[si].cgroup, &vip[..]),
                    Mode::Iptables => (&bed.iptables[si], &bed.plain_cgroup, &vip[..]),
                    Mode::Nftables => (&bed.nftables[si], &bed.plain_cgroup, &vip[..]),
                };
                let sample = measure_one(site, cgroup, &client_spec(options, targets))
                    .with_context(|| format!("{} with {size} services", mode.name()))?;
                eprintln!(
                    "round {} {size:>6} services {:<10} {:>8.0} connections/s {:>6.1} CPU µs/connection",
                    round + 1,
                    mode.name(),
                    sample.per_second,
                    sample.cpu_us,
                );
                rates.by_size[si][mode as usize].push(sample);
            }
        }
    }
    rates.load_after = load_average();
    rates.program_ns = program_run_time(options, &bed, &vips)?;
    Ok(rates)
}

/// How long skiff's connect4 program runs per connect(), by size: one more skiff
/// measurement each (not counted in the rates) with the kernel's run-time
/// statistics on. They are on only while the returned fd of BPF_ENABLE_STATS is
/// held, and cost every eBPF program two clock reads a run, hence their own phase.
fn program_run_time(options: &Options, bed: &Bed, vips: &[[SocketAddr; 1]]) -> Result<Vec<f64>> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling eBPF run-time statistics")?;
    let mut per_run = Vec::with_capacity(bed.skiff.len());
    for (si, skiff) in bed.skiff.iter().enumerate() {
        check_interrupted()?;
        let ids: Vec<u32> = skiff
            .dataplane
            .attached()
            .filter(|p| p.name == "skiff_connect4")
            .map(|p| p.id)
            .collect();
        let before = program_stats(&ids)?;
        measure_one(&bed.plain, &skiff.cgroup, &client_spec(options, &vips[si]))?;
        let after = program_stats(&ids)?;
        let runs = after.1 - before.1;
        ensure!(runs > 0, "skiff_connect4 never ran");
        per_run.push((after.0 - before.0).as_nanos() as f64 / runs as f64);
    }
    drop(stats);
    Ok(per_run)
}

/// The summed run time and run count of the programs `ids`.
fn program_stats(ids: &[u32]) -> Result<(Duration, u64)> {
    let mut sums = (Duration::ZERO, 0);
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing eBPF programs")?;
        if ids.contains(&info.id()) {
            sums.0 += info.run_time();
            sums.1 += info.run_count();
        }
    }
    Ok(sums)
}

/// One measurement: conntrack flushed, the client run, and a check that every
/// connection it made was answered by the site's backends, all of them.
fn measure_one(site: &Site, cgroup: &Cgroup, spec: &ClientSpec) -> Result<Sample> {
    site.netns.flush_conntrack()?;
    let before = site.backends.answered();
    let cpu_before = cpu_seconds()?;
    let run = traffic::run_client(&site.netns, cgroup, spec)?;
    // A backend counts its answer just after writing it: let the last ones land.
    let mut answered: Vec<u64>;
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        answered = site
            .backends
            .answered()
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        if answered.iter().sum::<u64>() >= run.total || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu = cpu_seconds()? - cpu_before;
    ensure!(run.total > 0, "the client completed no connection");
    let sum: u64 = answered.iter().sum();
    ensure!(
        sum == run.total,
        "the client completed {} connections but the backends answered {sum}",
        run.total
    );
    if run.total >= 100 * answered.len() as u64 {
        ensure!(
            answered.iter().all(|&a| a > 0),
            "some backend got no connection: {answered:?}"
        );
    }
    let time_wait = site.netns.time_wait()?;
    if time_wait > 0 {
        eprintln!(
            "warning: {time_wait} sockets in TIME_WAIT in {}",
            site.netns.name()
        );
    }
    Ok(Sample {
        per_second: run.per_second(),
        cpu_us: cpu * 1e6 / run.total as f64,
    })
}

/// User and system CPU seconds of this process (the backends' threads) and of its
/// waited-for children (the clients).
fn cpu_seconds() -> Result<f64> {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage writes one rusage into the zeroed value given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::getrusage(who, &raw mut usage) } != 0 {
            return Err(std::io::Error::last_os_error()).context("getrusage");
        }
        for t in [usage.ru_utime, usage.ru_stime] {
            total += t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        }
    }
    Ok(total)
}

/// Seconds to program `program_services` services of `program_backends` backends,
/// by load balancer and round.
struct Programming {
    skiff: Vec<f64>,
    iptables: Vec<f64>,
    nftables: Vec<f64>,
}

fn measure_programming(options: &Options) -> Result<Programming> {
    let services = ServiceSet {
        count: options.program_services,
        filler_backends: options.program_backends,
        measured_backends: None,
    };
    let iptables_input = services.iptables_restore();
    let nft_input = services.nft_script();
    let mut times = Programming {
        skiff: Vec::new(),
        iptables: Vec::new(),
        nftables: Vec::new(),
    };
    for round in 0..options.program_rounds {
        for m in 0..3 {
            check_interrupted()?;
            match (m + round) % 3 {
                0 => {
                    let cgroup = Cgroup::create(&format!("program-{round}"))?;
                    let mut dataplane = load_skiff(&cgroup)?;
                    let took = program_skiff(&mut dataplane, &services)?.as_secs_f64();
                    eprintln!("round {} programming skiff maps: {took:.3}s", round + 1);
                    times.skiff.push(took);
                    drop(dataplane);
                }
                1 => {
                    let netns = Netns::create(&format!("program-ipt-{round}"))?;
                    let took = netns
                        .timed("iptables-restore", &[], iptables_input.as_bytes())?
                        .as_secs_f64();
                    eprintln!(
                        "round {} programming iptables-restore: {took:.3}s",
                        round + 1
                    );
                    times.iptables.push(took);
                    netns.flush_ruleset()?;
                }
                _ => {
                    let netns = Netns::create(&format!("program-nft-{round}"))?;
                    let took = netns
                        .timed("nft", &["-f", "-"], nft_input.as_bytes())?
                        .as_secs_f64();
                    eprintln!("round {} programming nft -f: {took:.3}s", round + 1);
                    times.nftables.push(took);
                    netns.flush_ruleset()?;
                }
            }
        }
    }
    Ok(times)
}

fn print_report(
    options: &Options,
    iptables: &str,
    rates: &Rates,
    programming: &Programming,
    latency: Option<&StoreLatency>,
) {
    let per_second: fn(&Sample) -> f64 = |s| s.per_second;
    let cpu_us: fn(&Sample) -> f64 = |s| s.cpu_us;
    println!(
        "New connections per second (connect, one request/response, close; {} client threads, \
         {} backends), median of {} rounds of {}s; {iptables}; load average {} before, {} after\n",
        options.clients,
        options.backends,
        options.rounds,
        options.seconds,
        rates.load_before,
        rates.load_after,
    );
    println!(
        "| services | direct | skiff VIP | iptables | nftables | skiff / direct | iptables / direct | nftables / direct |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (si, size) in options.services.iter().enumerate() {
        let rate = |mode| rates.of(si, mode, per_second);
        let ratio = |mode| rates.ratio(si, mode, per_second);
        println!(
            "| {size} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3}x | {:.3}x | {:.3}x |",
            rate(Mode::Direct),
            rate(Mode::Skiff),
            rate(Mode::Iptables),
            rate(Mode::Nftables),
            ratio(Mode::Skiff),
            ratio(Mode::Iptables),
            ratio(Mode::Nftables),
        );
    }
    println!(
        "\nCPU time per connection (µs, client and backends, kernel included), median; \
         ratios are direct's over each mode's (above 1 is better, as for the rates):\n"
    );
    println!(
        "| services | direct | skiff VIP | iptables | nftables | direct / skiff | direct / iptables | direct / nftables |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (si, size) in options.services.iter().enumerate() {
        let cost = |mode| rates.of(si, mode, cpu_us);
        let ratio = |mode| 1.0 / rates.ratio(si, mode, cpu_us);
        println!(
            "| {size} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3}x | {:.3}x | {:.3}x |",
            cost(Mode::Direct),
            cost(Mode::Skiff),
            cost(Mode::Iptables),
            cost(Mode::Nftables),
            ratio(Mode::Skiff),
            ratio(Mode::Iptables),
            ratio(Mode::Nftables),
        );
    }
    println!("\nskiff's connect4 program, run time per connect() (kernel run-time statistics):");
    for (si, size) in options.services.iter().enumerate() {
        let ns = rates.program_ns[si];
        println!(
            "- {size} services: {ns:.0} ns, {:.2}% of direct's CPU time per connection",
            ns / 10.0 / rates.of(si, Mode::Direct, cpu_us)
        );
    }
    println!("\nFloors (on the connection rates):");
    if let Some(largest) = (0..options.services.len()).max_by_key(|&si| options.services[si]) {
        let ratio = rates.ratio(largest, Mode::Skiff, per_second);
        println!(
            "- skiff VIP >= 0.95x direct at {} services: {ratio:.3}x, {}",
            options.services[largest],
            if ratio >= 0.95 { "met" } else { "MISSED" }
        );
    }
    for (si, size) in options.services.iter().enumerate() {
        let ratio = |mode| rates.ratio(si, mode, per_second);
        let (skiff, ipt, nft) = (
            ratio(Mode::Skiff),
            ratio(Mode::Iptables),
            ratio(Mode::Nftables),
        );
        println!(
            "- skiff ahead of iptables and nftables at {size} services: {skiff:.3}x vs {ipt:.3}x and {nft:.3}x, {}",
            if skiff > ipt && skiff > nft {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    if options.program_rounds > 0 {
        println!(
            "\nTime to program {} services with {} backends each (s), median of {} rounds:\n",
            options.program_services, options.program_backends, options.program_rounds
        );
        println!("| skiff maps | iptables-restore | nft -f |");
        println!("|---|---|---|");
        println!(
            "| {:.3} | {:.3} | {:.3} |",
            median(programming.skiff.iter().copied()),
            median(programming.iptables.iter().copied()),
            median(programming.nftables.iter().copied()),
        );
    }
    if let Some(l) = latency {
        println!(
            "\nFrom an EndpointSlice Apply sent to the SERVICES map showing it ({} changes, {} \
             services in the store): p50 {:.2} ms, p99 {:.2} ms; the Apply call alone (API and \
             durable store commit): p50 {:.2} ms, p99 {:.2} ms; from its return to the map: \
             p50 {:.3} ms, p99 {:.3} ms",
            l.changes,
            l.services,
            l.to_map_p50_ms,
            l.to_map_p99_ms,
            l.apply_p50_ms,
            l.apply_p99_ms,
            l.after_apply_p50_ms,
            l.after_apply_p99_ms,
        );
    }
}
