//! Resource usage of this node and its pods, sampled from cgroups and /proc every
//! interval and written to the store as PodMetrics and NodeMetrics (what
//! metrics-server serves in Kubernetes). The autoscaler and `skiff top` read them
//! from there, whichever node they run on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde_json::{Value, json};

use super::node::{list_pods, meminfo_kib};
use super::record::PodRecord;
use super::worker::Context;
use crate::api::registry::now;
use crate::cgroup;
use crate::model::Pod;

/// A cumulative CPU counter read at an instant.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: Instant,
    cpu_nanos: u64,
}

/// Millicores used between two readings of the same counter.
fn millicores(before: Reading, after: Reading) -> Option<u64> {
    let wall = after.at.checked_duration_since(before.at)?.as_nanos();
    let used = u128::from(after.cpu_nanos.checked_sub(before.cpu_nanos)?);
    (wall > 0).then(|| u64::try_from(used * 1000 / wall).unwrap_or(u64::MAX))
}

/// The previous reading of every counter, so each sample is a rate over the last
/// interval (the first reading of a counter gives none).
#[derive(Default)]
struct Sampler {
    previous: HashMap<String, Reading>,
}

impl Sampler {
    fn rate(&mut self, counter: String, reading: Reading) -> Option<u64> {
        let before = self.previous.insert(counter, reading)?;
        millicores(before, reading)
    }

    /// The PodMetrics of `pod`, once each running container has two readings.
    fn pod_metrics(&mut self, ctx: &Context, pod: &Pod, window: &str) -> Option<Value> {
        let uid = pod.metadata.uid.as_deref()?;
        let record = PodRecord::load(&ctx.paths.record(uid))?;
        let mut containers = Vec::new();
        for (name, container) in &record.containers {
            let Some(running) = &container.running else {
                continue;
            };
            let path = format!("{}/{}", ctx.paths.pod_cgroup(uid), running.id);
            let usage = cgroup::usage(&path)?;
            let reading = Reading {
                at: Instant::now(),
                cpu_nanos: usage.cpu_nanos,
            };
            let cpu = self.rate(path, reading)?;
            containers.push(json!({
                "name": name,
                "usage": {"cpu": format!("{cpu}m"), "memory": usage.working_set_bytes.to_string()},
            }));
        }
        if containers.is_empty() {
            return None;
        }
        let meta = &pod.metadata;
        Some(json!({
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "PodMetrics",
            "metadata": {
                "name": meta.name,
                "namespace": meta.namespace,
                "labels": meta.labels,
                // Deleted with its pod.
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta.name, "uid": uid}],
            },
            "timestamp": now(),
            "window": window,
            "containers": containers,
        }))
    }

    /// The node's NodeMetrics from /proc: busy CPU time and memory not available.
    fn node_metrics(&mut self, node: &str, window: &str) -> Option<Value> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let reading = Reading {
            at: Instant::now(),
            cpu_nanos: busy_nanos(&stat)?,
        };
        let cpu = self.rate(String::new(), reading)?;
        let used = meminfo_kib("MemTotal")?.saturating_sub(meminfo_kib("MemAvailable")?);
        Some(json!({
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "NodeMetrics",
            "metadata": {"name": node},
            "timestamp": now(),
            "window": window,
            "usage": {"cpu": format!("{cpu}m"), "memory": format!("{used}Ki")},
        }))
    }
}

/// CPU time spent not idle, from /proc/stat's first line (in USER_HZ ticks, which
/// Linux fixes at 100 per second for user space).
fn busy_nanos(stat: &str) -> Option<u64> {
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle) * 10_000_000)
}

/// Samples every `interval` until the task is aborted.
pub async fn run(ctx: Arc<Context>, interval: Duration) {
    let window = format!("{}s", interval.as_secs().max(1));
    let mut sampler = Sampler::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let pods = match list_pods(&ctx).await {
            Ok((pods, _)) => pods,
            Err(e) => {
                warn!("resource usage: listing this node's pods: {e}");
                continue;
            }
        };
        let mut metrics: Vec<Value> = pods
            .iter()
            .filter_map(|pod| sampler.pod_metrics(&ctx, pod, &window))
            .collect();
        metrics.extend(sampler.node_metrics(&ctx.node_name, &window));
        // One write per object: a pod deleted meanwhile fails only its own.
        for object in metrics {
            if let Err(e) = ctx.registry.apply(vec![object]).await {
                debug!("resource usage: {e}");
            }
        }
        // Counters of containers that are gone are not read again.
        sampler
            .previous
            .retain(|_, r| r.at.elapsed() < interval * 3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_needs_two_readings_of_the_same_counter() {
        let mut sampler = Sampler::default();
        let start = Instant::now();
        let first = Reading {
            at: start,
            cpu_nanos: 1_000_000_000,
        };
        assert_eq!(sampler.rate("a".into(), first), None);
        // Half a core for two seconds.
        let second = Reading {
            at: start + Duration::from_secs(2),
            cpu_nanos: 2_000_000_000,
        };
        assert_eq!(sampler.rate("a".into(), second), Some(500));
        // A counter that went back (a new container under the same path) gives none.
        let reset = Reading {
            at: start + Duration::from_secs(3),
            cpu_nanos: 10,
        };
        assert_eq!(sampler.rate("a".into(), reset), None);
    }

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 0 50 1000 20 0 10 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(busy_nanos(stat), Some(160 * 10_000_000));
        assert_eq!(busy_nanos("intr 1 2\n"), None);
    }
}
