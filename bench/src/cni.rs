//! The CNI benchmark: how long a runtime waits for skiff-cni to attach and detach
//! a pod, against the standard `bridge` plugin with `host-local` IPAM (Debian's
//! containernetworking-plugins: podman's default CNI network, and what flannel
//! delegates to on each node), both dual stack with the same CIDRs and MTU.
//!
//! Each plugin call is timed as a runtime sees it: from spawning the executable
//! (inside the node's network namespace) to its exit. Every round gives each plugin
//! a fresh node namespace, fresh data directories and pod namespaces made before
//! timing starts; the pods are attached one after another, then detached.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::netns::Netns;
use crate::stats::{median, percentile};

#[derive(clap::Args)]
pub struct Options {
    /// The skiff-cni binary (release build).
    #[arg(long)]
    skiff_cni: PathBuf,
    /// Where the standard plugins (bridge, host-local) are.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_plugins: PathBuf,
    /// Pods attached and detached per plugin and round (a /24 holds 253).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=250))]
    pods: u16,
    /// Rounds; the plugins alternate within each.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const POD_CIDRS: [&str; 2] = ["10.244.0.0/24", "fd00:10:244::/64"];
/// The newest version the bridge plugin (1.1.1) speaks; both plugins answer in it.
const CNI_VERSION: &str = "1.0.0";
const MTU: u32 = 1400;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plugin {
    Skiff,
    Bridge,
}

impl Plugin {
    fn name(self) -> &'static str {
        match self {
            Plugin::Skiff => "skiff-cni",
            Plugin::Bridge => "bridge + host-local",
        }
    }

    fn binary(self, options: &Options) -> PathBuf {
        match self {
            Plugin::Skiff => options.skiff_cni.clone(),
            Plugin::Bridge => options.cni_plugins.join("bridge"),
        }
    }

    /// The network configuration, keeping all state under `data`.
    fn conf(self, data: &Path) -> Value {
        match self {
            Plugin::Skiff => json!({
                "cniVersion": CNI_VERSION, "name": "bench", "type": "skiff-cni", "mtu": MTU,
                "ipam": {"podCIDRs": POD_CIDRS, "dataDir": data},
            }),
            // isGateway: the bridge holds each family's gateway, as skiff-cni's node
            // side does; no ipMasq, since skiff-cni does not masquerade either.
            Plugin::Bridge => json!({
                "cniVersion": CNI_VERSION, "name": "bench", "type": "bridge",
                "bridge": "skbench0", "isGateway": true, "mtu": MTU,
                "ipam": {
                    "type": "host-local",
                    "ranges": POD_CIDRS.map(|subnet| json!([{"subnet": subnet}])),
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                    "dataDir": data.join("host-local"),
                },
            }),
        }
    }
}

/// One round's latencies of one plugin, in milliseconds, by pod.
struct Samples {
    add: Vec<f64>,
    del: Vec<f64>,
}

/// One round's summary of one plugin.
#[derive(Debug, Clone, Copy)]
struct Figures {
    add_p50: f64,
    add_p99: f64,
    del_p50: f64,
    del_p99: f64,
    add_del_p50: f64,
    add_del_p99: f64,
}

pub fn run(options: Options) -> Result<()> {
    for plugin in [Plugin::Skiff, Plugin::Bridge] {
        let binary = plugin.binary(&options);
        if !binary.exists() {
            bail!("{} is missing ({})", binary.display(), plugin.name());
        }
    }
    let mut skiff = Vec::new();
    let mut bridge = Vec::new();
    for round in 1..=options.rounds {
        // Alternate which goes first, so drift over the run hits both alike.
        let order = if round % 2 == 1 {
            [Plugin::Skiff, Plugin::Bridge]
        } else {
            [Plugin::Bridge, Plugin::Skiff]
        };
        for plugin in order {
            let figures = summarise(&measure(&options, plugin)?);
            eprintln!("round {round} {}: {figures:?}", plugin.name());
            match plugin {
                Plugin::Skiff => skiff.push(figures),
                Plugin::Bridge => bridge.push(figures),
            }
        }
    }
    print_report(&options, &skiff, &bridge);
    Ok(())
}

/// Attaches every pod, then detaches every pod, timing each call.
fn measure(options: &Options, plugin: Plugin) -> Result<Samples> {
    let data = tempfile::Builder::new()
        .prefix("skiff-bench-cni-")
        .tempdir()?;
    let node = Netns::create()?;
    let pods = (0..options.pods)
        .map(|_| Netns::create())
        .collect::<Result<Vec<_>>>()?;
    let conf = plugin.conf(data.path()).to_string();
    let call = |command: &str, pod_index: usize| -> Result<(f64, Vec<u8>)> {
        run_plugin(
            &node,
            &plugin.binary(options),
            &options.cni_plugins,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", &format!("pod-{pod_index:03}")),
                ("CNI_NETNS", &pods[pod_index].path().display().to_string()),
                ("CNI_IFNAME", "eth0"),
            ],
            conf.as_bytes(),
        )
    };
    let mut add = Vec::with_capacity(pods.len());
    for i in 0..pods.len() {
        let (ms, stdout) = call("ADD", i)?;
        // Same outcome from both: one address per family.
        let result: Value = serde_json::from_slice(&stdout)
            .with_context(|| format!("{} ADD printed no JSON result", plugin.name()))?;
        let addresses = result["ips"].as_array().map_or(0, Vec::len);
        if addresses != POD_CIDRS.len() {
            bail!("{} ADD gave {addresses} addresses: {result}", plugin.name());
        }
        add.push(ms);
    }
    let mut del = Vec::with_capacity(pods.len());
    for i in 0..pods.len() {
        del.push(call("DEL", i)?.0);
    }
    Ok(Samples { add, del })
}

fn summarise(samples: &Samples) -> Figures {
    let sorted = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (percentile(values, 0.50), percentile(values, 0.99))
    };
    let mut add_del: Vec<f64> = samples
        .add
        .iter()
        .zip(&samples.del)
        .map(|(a, d)| a + d)
        .collect();
    let (add_p50, add_p99) = sorted(&mut samples.add.clone());
    let (del_p50, del_p99) = sorted(&mut samples.del.clone());
    let (add_del_p50, add_del_p99) = sorted(&mut add_del);
    Figures {
        add_p50,
        add_p99,
        del_p50,
        del_p99,
        add_del_p50,
        add_del_p99,
    }
}

fn print_report(options: &Options, skiff: &[Figures], bridge: &[Figures]) {
    type Pick = fn(&Figures) -> f64;
    let rows: [(&str, Pick); 6] = [
        ("ADD p50 (ms)", |f| f.add_p50),
        ("ADD p99 (ms)", |f| f.add_p99),
        ("DEL p50 (ms)", |f| f.del_p50),
        ("DEL p99 (ms)", |f| f.del_p99),
        ("ADD+DEL p50 (ms)", |f| f.add_del_p50),
        ("ADD+DEL p99 (ms)", |f| f.add_del_p99),
    ];
    println!(
        "{} pods per plugin and round, attached one after another then detached, dual stack, median of {} rounds\n",
        options.pods, options.rounds
    );
    println!(
        "| measure | {} | {} | bridge / skiff |",
        Plugin::Skiff.name(),
        Plugin::Bridge.name()
    );
    println!("|---|---|---|---|");
    for (name, pick) in rows {
        let (s, b) = (
            median(skiff.iter().map(pick)),
            median(bridge.iter().map(pick)),
        );
        println!("| {name} | {s:.2} | {b:.2} | {:.2}x |", b / s);
    }
}

/// Runs a CNI plugin inside the node namespace `node` with the CNI variables `env`
/// and `conf` on stdin; returns the milliseconds from spawn to exit and its stdout.
fn run_plugin(
    node: &Netns,
    plugin: &Path,
    cni_path: &Path,
    env: &[(&str, &str)],
    conf: &[u8],
) -> Result<(f64, Vec<u8>)> {
    let mut cmd = node.command(plugin)?;
    cmd.env_clear()
        .env("CNI_PATH", cni_path)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf)?;
    let out = child.wait_with_output()?;
    let ms = started.elapsed().as_secs_f64() * 1_000.0;
    if !out.status.success() {
        bail!(
            "{} {env:?} failed ({}): {}{}",
            plugin.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((ms, out.stdout))
}
