//! The dataplane's metrics, read from it at each scrape.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use skiff_ebpf_common::nodeport::PacketCounters;
use skiff_ebpf_common::{BACKENDS_MAP, SERVICES_MAP};

use super::Dataplane;

/// What the maps hold and how full they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub frontends: u32,
    pub backend_slots: u32,
    pub capacity: super::Capacity,
    /// Writes refused because a map was full.
    pub full_refusals: u64,
}

/// Registers with the agent's metrics registry.
#[derive(Debug)]
pub struct DataplaneMetrics(pub Arc<Mutex<Dataplane>>);

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

impl Collector for DataplaneMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (stats, counts, packets) = {
            let dataplane = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // A failed read leaves the per-backend series out of this scrape.
            (
                dataplane.stats(),
                dataplane.counters().unwrap_or_default(),
                dataplane.packet_counters().unwrap_or_default(),
            )
        };
        let gauge = ConstGauge::new(i64::from(stats.frontends));
        gauge.encode(encoder.encode_descriptor(
            "skiff_dataplane_frontends",
            "Service frontends (address, port, protocol) in the maps",
            None,
            gauge.metric_type(),
        )?)?;
        for (name, help, values) in [
            (
                "skiff_dataplane_map_entries",
                "Entries in use per map",
                [stats.frontends, stats.backend_slots],
            ),
            (
                "skiff_dataplane_map_capacity",
                "Entries each map can hold",
                [stats.capacity.services, stats.capacity.backend_slots],
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for (map, value) in [SERVICES_MAP, BACKENDS_MAP].into_iter().zip(values) {
                ConstGauge::new(i64::from(value)).encode(family.encode_family(&[("map", map)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "skiff_service_backend_connections",
            "Connections (and unconnected UDP datagrams) balanced to each backend of each frontend",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for count in counts {
            let labels = [
                ("frontend", count.frontend.to_string()),
                ("backend", count.backend.to_string()),
            ];
            ConstCounter::new(count.connections).encode(family.encode_family(&labels)?)?;
        }
        type Pick = fn(&PacketCounters) -> [u64; 2];
        let per_direction: [(&str, &str, Pick); 2] = [
            (
                "skiff_service_backend_packets",
                "Packets translated on the NodePort path to (in) and from (out) each backend of each frontend",
                |c| [c.packets_in, c.packets_out],
            ),
            (
                "skiff_service_backend_bytes",
                "Bytes (IP packets) translated on the NodePort path to (in) and from (out) each backend of each frontend",
                |c| [c.bytes_in, c.bytes_out],
            ),
        ];
        for (name, help, pick) in per_direction {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for count in &packets {
                let (frontend, backend) = (count.frontend.to_string(), count.backend.to_string());
                for (direction, value) in ["in", "out"].into_iter().zip(pick(&count.counters)) {
                    let labels = [
                        ("frontend", frontend.as_str()),
                        ("backend", backend.as_str()),
                        ("direction", direction),
                    ];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let full = ConstCounter::new(stats.full_refusals);
        full.encode(encoder.encode_descriptor(
            "skiff_dataplane_map_full",
            "Service writes refused because a map was full",
            None,
            full.metric_type(),
        )?)?;
        Ok(())
    }
}
