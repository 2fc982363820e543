//! Counters per service backend, from per-CPU maps keyed by (service id, backend):
//! connections from the load-balancing hooks (one per connect() rewrite of TCP or
//! connected UDP, one per sendmsg rewrite of a datagram sent with sendto() to a UDP
//! service), and packets and bytes from the NodePort path's tc programs.

use std::collections::HashMap;
use std::net::SocketAddr;

use aya::maps::{MapData, MapError, PerCpuHashMap};
use skiff_ebpf_common::nodeport::{PACKET_COUNTERS_MAP, PacketCounters};
use skiff_ebpf_common::{COUNTERS_MAP, ServiceBackendKey};

use super::{Dataplane, Error, Frontend};

/// How many connections one backend of one service got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCount {
    pub frontend: Frontend,
    pub backend: SocketAddr,
    pub connections: u64,
}

/// Packets and bytes one backend of one service got on the NodePort path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPackets {
    pub frontend: Frontend,
    pub backend: SocketAddr,
    /// `_in`: client to backend; `_out`: backend to client.
    pub counters: PacketCounters,
}

/// A per-CPU counter value that sums over CPUs.
pub trait Counter: aya::Pod + Default {
    fn add(self, other: Self) -> Self;
}

impl Counter for u64 {
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
}

impl Counter for PacketCounters {
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
}

impl Dataplane {
    /// Connections per backend of the published services (connect rewrites plus
    /// sendmsg rewrites), summed over CPUs, sorted by frontend then backend.
    pub fn counters(&self) -> Result<Vec<BackendCount>, Error> {
        let sums = self.summed(&self.maps.counters, COUNTERS_MAP)?;
        Ok(sums
            .into_iter()
            .map(|(frontend, backend, connections)| BackendCount {
                frontend,
                backend,
                connections,
            })
            .collect())
    }

    /// Packets and bytes per backend of the published services on the NodePort
    /// path, summed over CPUs, sorted by frontend then backend.
    pub fn packet_counters(&self) -> Result<Vec<BackendPackets>, Error> {
        let sums = self.summed(&self.maps.packets, PACKET_COUNTERS_MAP)?;
        Ok(sums
            .into_iter()
            .map(|(frontend, backend, counters)| BackendPackets {
                frontend,
                backend,
                counters,
            })
            .collect())
    }

    fn summed<V: Counter>(
        &self,
        map: &PerCpuHashMap<MapData, ServiceBackendKey, V>,
        name: &'static str,
    ) -> Result<Vec<(Frontend, SocketAddr, V)>, Error> {
        let entries = map
            .iter()
            .map(|entry| entry.map(|(key, per_cpu)| (key, per_cpu.iter().copied().collect())))
            .collect::<Result<Vec<(ServiceBackendKey, Vec<V>)>, MapError>>()
            .map_err(|source| Error::Map { name, source })?;
        let published = self.published.by_backend();
        Ok(summarize(entries, |id, backend| {
            published.get(&(id, backend)).copied()
        }))
    }
}

/// Sums the per-CPU `entries` of a counters map per backend. `frontend_of` names
/// the service of a published backend; other entries (of backends or services just
/// removed) are left out. Sorted by frontend, then backend.
pub fn summarize<V: Counter, C: IntoIterator<Item = V>>(
    entries: impl IntoIterator<Item = (ServiceBackendKey, C)>,
    frontend_of: impl Fn(u32, SocketAddr) -> Option<Frontend>,
) -> Vec<(Frontend, SocketAddr, V)> {
    let mut sums: HashMap<(Frontend, SocketAddr), V> = HashMap::new();
    for (key, per_cpu) in entries {
        let backend = key.backend().socket_addr();
        let Some(frontend) = frontend_of(key.service_id, backend) else {
            continue;
        };
        let total = per_cpu.into_iter().fold(V::default(), V::add);
        let sum = sums.entry((frontend, backend)).or_default();
        *sum = sum.add(total);
    }
    let mut counts: Vec<(Frontend, SocketAddr, V)> = sums
        .into_iter()
        .map(|((frontend, backend), value)| (frontend, backend, value))
        .collect();
    counts.sort_by_key(|(frontend, backend, _)| (frontend.to_string(), *backend));
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_ebpf_common::Backend;

    fn key(id: u32, backend: &str) -> ServiceBackendKey {
        ServiceBackendKey::new(id, &Backend::from_socket_addr(backend.parse().unwrap()))
    }

    #[test]
    fn per_cpu_counts_are_summed_per_backend() {
        let tcp = Frontend::tcp("10.96.0.1:80".parse().unwrap());
        let udp = Frontend::udp("10.96.0.10:53".parse().unwrap());
        let frontends = HashMap::from([(1, tcp), (2, udp)]);
        let removed: SocketAddr = "10.244.0.5:80".parse().unwrap();
        let frontend_of =
            |id, backend| (backend != removed).then(|| frontends.get(&id).copied())?;
        let entries = vec![
            (key(2, "10.244.0.3:53"), vec![1, 2]),
            (key(1, "10.244.0.2:80"), vec![5, 0]),
            (key(1, "10.244.0.3:80"), vec![0, 7]),
            (key(1, "10.244.0.5:80"), vec![1, 0]), // a backend just removed
            (key(9, "10.244.0.4:80"), vec![100, 100]), // a service just removed
        ];
        let counts = summarize(entries, frontend_of);
        let flat: Vec<(String, String, u64)> = counts
            .iter()
            .map(|(frontend, backend, n)| (frontend.to_string(), backend.to_string(), *n))
            .collect();
        assert_eq!(
            flat,
            [
                ("10.96.0.10:53/udp".into(), "10.244.0.3:53".into(), 3),
                ("10.96.0.1:80/tcp".into(), "10.244.0.2:80".into(), 5),
                ("10.96.0.1:80/tcp".into(), "10.244.0.3:80".into(), 7),
            ]
        );
    }

    #[test]
    fn per_cpu_packet_counters_are_summed_field_by_field() {
        let node_port = Frontend::tcp("192.168.77.2:30080".parse().unwrap());
        let cpu = |packets_in, bytes_in, packets_out, bytes_out| PacketCounters {
            packets_in,
            bytes_in,
            packets_out,
            bytes_out,
        };
        let entries = vec![(
            key(1, "10.244.0.2:8080"),
            vec![cpu(3, 180, 2, 120), cpu(1, 60, u64::MAX, 0)],
        )];
        let sums = summarize(entries, |_, _| Some(node_port));
        assert_eq!(
            sums,
            [(
                node_port,
                "10.244.0.2:8080".parse().unwrap(),
                // Wrapping, as the kernel's per-CPU counters do.
                cpu(4, 240, 1, 120)
            )]
        );
    }
}
