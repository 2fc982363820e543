//! From an EndpointSlice change in the store to the kernel map: a real agent with
//! `services` Services and EndpointSlices in its store; one of them has its
//! EndpointSlice applied again and again with a different number of endpoints,
//! and each time the benchmark reads the agent's SERVICES map (found among the
//! agent's file descriptors) until the service's entry shows the new backend set.
//!
//! The clock starts when the Apply call is sent, so each figure includes the API
//! call and the store's durable commit, then the agent's watch, reconcile and map
//! writes; the Apply call's own duration, and the time from its return to the
//! map showing the change, are reported beside it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, Map, MapData, MapError};
use serde_json::{Value, json};
use skiff_ebpf_common::{IPPROTO_TCP, SERVICES_MAP, Service, ServiceKey};

use crate::agent::Agent;
use crate::stats::percentile;

/// The measured service's cluster IP: set in its manifest, so the benchmark knows
/// the frontend to look up; the other services get theirs from the allocator.
const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const PORT: u16 = 80;
/// Objects per Apply call while filling the store.
const BATCH: usize = 200;
/// How long one change may take to reach the map before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two reads of the map: short against the figures measured (milliseconds)
/// while leaving the agent the CPU (the machine has 2 cores).
const POLL: Duration = Duration::from_micros(50);

pub struct StoreLatency {
    pub services: usize,
    pub changes: usize,
    /// Apply sent to the map showing the change, p50 and p99 in milliseconds.
    pub to_map_p50_ms: f64,
    pub to_map_p99_ms: f64,
    /// The Apply call alone (API and durable store commit), p50 and p99.
    pub apply_p50_ms: f64,
    pub apply_p99_ms: f64,
    /// From the Apply call's return to the map showing the change, p50 and p99;
    /// negative when the map changed before the response reached the benchmark.
    pub after_apply_p50_ms: f64,
    pub after_apply_p99_ms: f64,
}

pub async fn measure(skiff: &Path, services: usize, changes: usize) -> Result<StoreLatency> {
    let mut agent = Agent::start(skiff, "warn,skiff::agent=info", &[]).await?;
    fill_store(&mut agent, services - 1).await?;
    let map = services_map(agent.pid())?;
    let key =
        ServiceKey::from_socket_addr(SocketAddr::new(IpAddr::V4(MEASURED_VIP), PORT), IPPROTO_TCP);
    agent
        .apply(&[measured_service(), measured_slice(2)])
        .await?;
    let mut published = wait_for(&map, &key, 2, None)?.0;

    let mut to_map = Vec::with_capacity(changes);
    let mut apply_calls = Vec::with_capacity(changes);
    let mut after_apply = Vec::with_capacity(changes);
    for change in 0..changes {
        // 3 and 4 endpoints in turn: every change moves the service to new backends.
        let backends = 3 + (change % 2) as u16;
        let sent = Instant::now();
        agent.apply(&[measured_slice(backends)]).await?;
        let returned = sent.elapsed();
        let (service, seen) = wait_for(&map, &key, backends, Some(published))
            .with_context(|| format!("change {} of {changes}", change + 1))?;
        let seen = seen.duration_since(sent);
        apply_calls.push(ms(returned));
        to_map.push(ms(seen));
        after_apply.push(ms(seen) - ms(returned));
        published = service;
    }
    agent.stop()?;
    for samples in [&mut to_map, &mut apply_calls, &mut after_apply] {
        samples.sort_by(f64::total_cmp);
    }
    Ok(StoreLatency {
        services,
        changes,
        to_map_p50_ms: percentile(&to_map, 0.5),
        to_map_p99_ms: percentile(&to_map, 0.99),
        apply_p50_ms: percentile(&apply_calls, 0.5),
        apply_p99_ms: percentile(&apply_calls, 0.99),
        after_apply_p50_ms: percentile(&after_apply, 0.5),
        after_apply_p99_ms: percentile(&after_apply, 0.99),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// `count` Services, each with an EndpointSlice of one endpoint, as many as the
/// store and the dataplane hold besides the measured one.
async fn fill_store(agent: &mut Agent, count: usize) -> Result<()> {
    let objects: Vec<Value> = (0..count)
        .flat_map(|i| {
            let name = format!("filler-{i:05}");
            let endpoint = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 128, 0)) + i as u32);
            [service(&name, None), slice(&name, &[endpoint])]
        })
        .collect();
    for batch in objects.chunks(BATCH) {
        agent.apply(batch).await?;
    }
    Ok(())
}

fn service(name: &str, cluster_ip: Option<Ipv4Addr>) -> Value {
    let mut spec = json!({"ports": [{"name": "http", "port": PORT, "targetPort": 8080}]});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip.to_string());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

fn slice(service: &str, endpoints: &[Ipv4Addr]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn measured_service() -> Value {
    service("measured", Some(MEASURED_VIP))
}

fn measured_slice(backends: u16) -> Value {
    let endpoints: Vec<Ipv4Addr> = (1..=backends)
        .map(|i| Ipv4Addr::new(10, 244, 0, 10 + i as u8))
        .collect();
    slice("measured", &endpoints)
}

/// The agent's SERVICES map, opened by id from its file descriptors (the agent
/// runs without pinning, so nothing else names it).
fn services_map(pid: u32) -> Result<HashMap<MapData, ServiceKey, Service>> {
    let fdinfo = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&fdinfo).with_context(|| format!("reading {fdinfo}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed since the listing
        };
        let Some(id) = text
            .lines()
            .find_map(|line| line.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse().ok())
        else {
            continue;
        };
        let data = MapData::from_id(id)?;
        if data.info()?.name_as_str() == Some(SERVICES_MAP) {
            return Ok(HashMap::try_from(Map::HashMap(data))?);
        }
    }
    bail!("the agent (pid {pid}) holds no map named {SERVICES_MAP}")
}

/// Reads the service's entry until it has `backends` backends in a table other
/// than `before`'s; returns it and when it was seen.
fn wait_for(
    map: &HashMap<MapData, ServiceKey, Service>,
    key: &ServiceKey,
    backends: u16,
    before: Option<Service>,
) -> Result<(Service, Instant)> {
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        match map.get(key, 0) {
            Ok(service)
                if service.backend_count == backends
                    && before.is_none_or(|b| b.table != service.table) =>
            {
                return Ok((service, Instant::now()));
            }
            Ok(_) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading SERVICES"),
        }
        if Instant::now() > deadline {
            bail!("the service map did not show {backends} backends within {CHANGE_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}
