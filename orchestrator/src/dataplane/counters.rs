//! Connections per service backend, from the per-CPU map the load-balancing hooks
//! count in: one per connect() rewrite (TCP, connected UDP) and one per sendmsg
//! rewrite (each datagram sent with sendto() to a UDP service).

use std::collections::HashMap;
use std::net::SocketAddr;

use aya::maps::MapError;
use skiff_ebpf_common::{COUNTERS_MAP, ServiceBackendKey};

use super::{Dataplane, Error, Frontend};

/// How many connections one backend of one service got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCount {
    pub frontend: Frontend,
    pub backend: SocketAddr,
    pub connections: u64,
}

impl Dataplane {
    /// Connections per backend of the published services (connect rewrites plus
    /// sendmsg rewrites), summed over CPUs, sorted by frontend then backend.
    pub fn counters(&self) -> Result<Vec<BackendCount>, Error> {
        let entries = self
            .maps
            .counters
            .iter()
            .map(|entry| entry.map(|(key, per_cpu)| (key, per_cpu.iter().copied().collect())))
            .collect::<Result<Vec<(ServiceBackendKey, Vec<u64>)>, MapError>>()
            .map_err(|source| Error::Map {
                name: COUNTERS_MAP,
                source,
            })?;
        let published = self.published.by_backend();
        Ok(summarize(entries, |id, backend| {
            published.get(&(id, backend)).copied()
        }))
    }
}

/// Sums the per-CPU `entries` of the counters map per backend. `frontend_of` names
/// the service of a published backend; other entries (of backends or services just
/// removed) are left out.
pub fn summarize<V: IntoIterator<Item = u64>>(
    entries: impl IntoIterator<Item = (ServiceBackendKey, V)>,
    frontend_of: impl Fn(u32, SocketAddr) -> Option<Frontend>,
) -> Vec<BackendCount> {
    let mut sums: HashMap<(Frontend, SocketAddr), u64> = HashMap::new();
    for (key, per_cpu) in entries {
        let backend = key.backend().socket_addr();
        let Some(frontend) = frontend_of(key.service_id, backend) else {
            continue;
        };
        let total = per_cpu.into_iter().fold(0u64, u64::wrapping_add);
        let sum = sums.entry((frontend, backend)).or_insert(0);
        *sum = sum.wrapping_add(total);
    }
    let mut counts: Vec<BackendCount> = sums
        .into_iter()
        .map(|((frontend, backend), connections)| BackendCount {
            frontend,
            backend,
            connections,
        })
        .collect();
    counts.sort_by_key(|c| (c.frontend.to_string(), c.backend));
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
            .map(|c| (c.frontend.to_string(), c.backend.to_string(), c.connections))
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
}
