//! Connections per service backend, from the per-CPU map the load-balancing hooks
//! count in: one per connect() rewrite (TCP, connected UDP) and one per sendmsg
//! rewrite (each datagram sent with sendto() to a UDP service).

use std::collections::HashMap;
use std::net::SocketAddr;

use skiff_ebpf_common::ServiceBackendKey;

use super::Frontend;

/// How many connections one backend of one service got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCount {
    pub frontend: Frontend,
    pub backend: SocketAddr,
    pub connections: u64,
}

/// Sums the per-CPU `entries` of the counters map per backend, for the services in
/// `frontends` (others are counters of services being removed), sorted by frontend
/// then backend.
pub fn summarize<V: IntoIterator<Item = u64>>(
    entries: impl IntoIterator<Item = (ServiceBackendKey, V)>,
    frontends: &HashMap<u32, Frontend>,
) -> Vec<BackendCount> {
    let mut sums: HashMap<(Frontend, SocketAddr), u64> = HashMap::new();
    for (key, per_cpu) in entries {
        let Some(frontend) = frontends.get(&key.service_id) else {
            continue;
        };
        let total = per_cpu.into_iter().fold(0u64, u64::wrapping_add);
        let sum = sums
            .entry((*frontend, key.backend().socket_addr()))
            .or_insert(0);
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
        let entries = vec![
            (key(2, "10.244.0.3:53"), vec![1, 2]),
            (key(1, "10.244.0.2:80"), vec![5, 0]),
            (key(1, "10.244.0.3:80"), vec![0, 7]),
            (key(9, "10.244.0.4:80"), vec![100, 100]), // a service being removed
        ];
        let counts = summarize(entries, &frontends);
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
