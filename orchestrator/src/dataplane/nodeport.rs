//! The packet-level NodePort path, user-space side: which devices the tc programs
//! run on, their conntrack maps, and the Maglev tables of NodePort frontends. (Its
//! packet and byte counters are read with the other counters, in `counters.rs`.)
//!
//! The kernel side (`ebpf/programs/src/nodeport.rs`) translates packets that arrive
//! on a NodePort device for a frontend that has a Maglev table. User space writes a
//! table for every frontend on one of the node's own (non-loopback) addresses, so
//! cluster IPs reached from outside are left alone. The tables are written through
//! the service write protocol ([`super::ServiceMaps::table_written`]): into the
//! unpublished table, before the switch.
//!
//! The programs are attached with TCX links (kernel 6.6 and later: no qdisc, and the
//! links can be pinned like the cgroup links) to ingress and egress of every device.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData};
use aya::programs::links::PinnedLink;
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use skiff_ebpf_common::nodeport::{
    CT_MAP, CT_REVERSE_MAP, CtForward, CtReverse, DEFAULT_MAGLEV_SIZE, FlowKey, MAGLEV_CHUNK,
    MAGLEV_MAP, MAX_CONNTRACK, MAX_NODEPORT_DEVICES, MAX_NODEPORT_FRONTENDS, MaglevChunk,
    MaglevKey, NODEPORT_CONFIG_MAP, NodePortConfig, maglev_chunks, write_reverse_entry,
};
use skiff_ebpf_common::{Backend, IPPROTO_UDP, Service, ServiceBackendKey, ServiceKey};

use super::maglev::{self, MaglevError};
use super::{Error, Frontend, absent_is_ok, into_io};

/// The programs, by their function names in the object, and where they attach.
const PROGRAMS: [(&str, TcAttachType); 2] = [
    ("skiff_nodeport_ingress", TcAttachType::Ingress),
    ("skiff_nodeport_egress", TcAttachType::Egress),
];

/// Prefix of the NodePort path's link pins in the pin directory's `links`.
const LINK_PIN_PREFIX: &str = "np-";

/// Maps of the NodePort path kept in bpffs with the service maps: the Maglev tables
/// belong to the published services, and conntrack keeps flows on their backends
/// across an agent restart.
const PINNED_MAPS: [&str; 4] = [MAGLEV_MAP, NODEPORT_CONFIG_MAP, CT_MAP, CT_REVERSE_MAP];

/// How the NodePort path runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The node's external devices; none turns the path off.
    pub devices: Vec<String>,
    /// M, the size of each Maglev table (a prime).
    pub maglev_size: u32,
    /// Flows each conntrack map holds (least recently used ones are evicted).
    pub conntrack: u32,
    /// NodePort frontends whose Maglev tables fit in the maps.
    pub frontends: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            maglev_size: DEFAULT_MAGLEV_SIZE,
            conntrack: MAX_CONNTRACK,
            frontends: MAX_NODEPORT_FRONTENDS,
        }
    }
}

impl Settings {
    pub fn enabled(&self) -> bool {
        !self.devices.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodePortError {
    #[error(transparent)]
    Maglev(#[from] MaglevError),
    #[error("NodePort device {device}: {source}")]
    Device { device: String, source: io::Error },
    #[error("{count} NodePort devices given; at most {MAX_NODEPORT_DEVICES} are supported")]
    TooManyDevices { count: usize },
    #[error("the conntrack size must be at least 1")]
    Conntrack,
    #[error(
        "Maglev tables of size {size} for {frontends} NodePort frontends do not fit in one map"
    )]
    MaglevCapacity { size: u32, frontends: u32 },
    #[error("eBPF program {name} on {device}: {source}")]
    Program {
        name: &'static str,
        device: String,
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    MapWrite {
        name: &'static str,
        source: io::Error,
    },
}

/// A NodePort program attached to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcProgram {
    pub name: &'static str,
    pub device: String,
    /// The kernel's program id.
    pub id: u32,
}

/// Prepares the loader: map capacities and, with a pin directory, pins. Pinned
/// conntrack and Maglev maps of another shape are dropped: flows then fall back to
/// Maglev, and the frontends get their tables again (see [`NodePortMaps::adopt`]).
pub(super) fn configure(
    loader: &mut EbpfLoader<'_>,
    settings: &Settings,
    pin_dir: Option<&Path>,
) -> Result<(), NodePortError> {
    if settings.enabled() {
        maglev::check_size(settings.maglev_size)?;
        if settings.conntrack == 0 {
            return Err(NodePortError::Conntrack);
        }
        if settings.devices.len() > MAX_NODEPORT_DEVICES {
            return Err(NodePortError::TooManyDevices {
                count: settings.devices.len(),
            });
        }
    }
    // Off, the LRU maps (preallocated) hold one entry rather than megabytes.
    let conntrack = if settings.enabled() {
        settings.conntrack
    } else {
        1
    };
    let chunks = maglev_chunk_capacity(settings)?;
    loader
        .map_max_entries(CT_MAP, conntrack)
        .map_max_entries(CT_REVERSE_MAP, conntrack)
        .map_max_entries(MAGLEV_MAP, chunks);
    if let Some(dir) = pin_dir {
        for (name, key, value, entries) in [
            (
                CT_MAP,
                size_of::<FlowKey>(),
                size_of::<CtForward>(),
                conntrack,
            ),
            (
                CT_REVERSE_MAP,
                size_of::<FlowKey>(),
                size_of::<CtReverse>(),
                conntrack,
            ),
            (
                MAGLEV_MAP,
                size_of::<MaglevKey>(),
                size_of::<MaglevChunk>(),
                chunks,
            ),
        ] {
            let path = dir.join(name);
            if let Ok(info) = aya::maps::MapInfo::from_pin(&path) {
                let found = (
                    info.key_size() as usize,
                    info.value_size() as usize,
                    info.max_entries(),
                );
                if found != (key, value, entries) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok(())
}

/// Chunks in the Maglev map: two tables for each frontend.
fn maglev_chunk_capacity(settings: &Settings) -> Result<u32, NodePortError> {
    maglev_chunks(settings.maglev_size)
        .checked_mul(2)
        .and_then(|c| c.checked_mul(settings.frontends))
        .ok_or(NodePortError::MaglevCapacity {
            size: settings.maglev_size,
            frontends: settings.frontends,
        })
}

/// The maps user space writes.
pub(super) struct NodePortMaps {
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    /// Conntrack, both directions.
    flows: HashMap<MapData, FlowKey, CtForward>,
    replies: HashMap<MapData, FlowKey, CtReverse>,
    /// The programs' settings (also held because a map taken from the object
    /// closes with its last holder).
    config: Array<MapData, NodePortConfig>,
    /// Frontend addresses that get Maglev tables (the NodePort devices' own, where
    /// the programs see packets for NodePorts); empty when the path is off.
    addresses: HashSet<IpAddr>,
    maglev_size: u32,
    /// The services (ids) that have Maglev tables, and how many fit (each may hold
    /// both of its tables).
    with_tables: HashSet<u32>,
    max_frontends: usize,
}

impl NodePortMaps {
    /// Takes the maps from the object and writes the programs' settings. A table
    /// size other than the previous agent's drops every Maglev table (see
    /// [`NodePortMaps::adopt`]).
    pub(super) fn take(ebpf: &mut Ebpf, settings: &Settings) -> Result<Self, Error> {
        let map_error = |name| move |source| Error::Map { name, source };
        let config: Array<MapData, NodePortConfig> = super::take_map(ebpf, NODEPORT_CONFIG_MAP)?;
        let previous = config.get(&0, 0).map_err(map_error(NODEPORT_CONFIG_MAP))?;
        let mut maps = Self {
            maglev: super::take_map(ebpf, MAGLEV_MAP)?,
            flows: super::take_map(ebpf, CT_MAP)?,
            replies: super::take_map(ebpf, CT_REVERSE_MAP)?,
            config,
            addresses: HashSet::new(),
            maglev_size: settings.maglev_size,
            with_tables: HashSet::new(),
            max_frontends: settings.frontends as usize,
        };
        if previous.maglev_size != settings.maglev_size {
            maps.clear_maglev(|_| true)?;
        }
        let mut devices = [0u32; MAX_NODEPORT_DEVICES];
        if settings.enabled() {
            for (slot, device) in devices.iter_mut().zip(&settings.devices) {
                *slot = ifindex(device)?;
            }
            maps.addresses = super::addresses::device_addresses(&settings.devices)
                .map_err(|source| NodePortError::Device {
                    device: settings.devices.join(","),
                    source,
                })?
                .into_iter()
                .collect();
        }
        let value = NodePortConfig {
            maglev_size: settings.maglev_size,
            device_count: settings.devices.len().min(MAX_NODEPORT_DEVICES) as u32,
            devices,
        };
        maps.config
            .set(0, value, 0)
            .map_err(map_error(NODEPORT_CONFIG_MAP))?;
        Ok(maps)
    }

    /// After the service table adopted a previous agent's maps: drops Maglev tables
    /// of services that are gone, and takes NodePort frontends without a table (the
    /// previous agent ran without the path, or with another table size) out of the
    /// adopted set, so the sync writes them again.
    pub(super) fn adopt<V>(
        &mut self,
        services: &[(ServiceKey, Service)],
        adopted: &mut StdHashMap<Frontend, V>,
    ) -> Result<(), NodePortError> {
        let ids: HashSet<u32> = services.iter().map(|(_, s)| s.id).collect();
        self.clear_maglev(|key| !ids.contains(&key.service_id))?;
        self.with_tables = self
            .maglev
            .keys()
            .filter_map(Result::ok)
            .map(|key| key.service_id)
            .collect();
        for (key, service) in services {
            let frontend = key.socket_addr();
            if !self.wants_table(&frontend) || service.backend_count == 0 {
                continue;
            }
            let first = MaglevKey::new(service.id, service.table, 0);
            if self.maglev.get(&first, 0).is_err() {
                adopted.retain(|f, _| f.addr != frontend || f.protocol.number() != key.protocol);
            }
        }
        Ok(())
    }

    fn wants_table(&self, frontend: &SocketAddr) -> bool {
        self.addresses.contains(&frontend.ip())
    }

    fn clear_maglev(&mut self, doomed: impl Fn(&MaglevKey) -> bool) -> Result<(), NodePortError> {
        let keys: Vec<MaglevKey> = self
            .maglev
            .keys()
            .filter_map(Result::ok)
            .filter(|k| doomed(k))
            .collect();
        for key in keys {
            absent_is_ok(self.maglev.remove(&key)).map_err(|source| NodePortError::MapWrite {
                name: MAGLEV_MAP,
                source,
            })?;
        }
        Ok(())
    }

    /// Writes the Maglev table of `table` for a NodePort frontend; fails, writing
    /// nothing, when a new frontend would take the map past its capacity.
    pub(super) fn table_written(
        &mut self,
        key: &ServiceKey,
        id: u32,
        table: u8,
        backends: &[Backend],
    ) -> io::Result<()> {
        if !self.wants_table(&key.socket_addr()) || backends.is_empty() {
            return Ok(());
        }
        if !self.with_tables.contains(&id) && self.with_tables.len() >= self.max_frontends {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "full: the Maglev tables of {} NodePort frontends are in use; raise \
                 --max-nodeport-frontends",
                    self.max_frontends
                ),
            ));
        }
        let slots: Vec<SocketAddr> = backends.iter().map(Backend::socket_addr).collect();
        let entries = maglev::table(&slots, self.maglev_size);
        for (index, part) in entries.chunks(MAGLEV_CHUNK).enumerate() {
            let mut chunk = MaglevChunk {
                slots: [0; MAGLEV_CHUNK],
            };
            chunk.slots[..part.len()].copy_from_slice(part);
            let chunk_key = MaglevKey::new(id, table, index as u16);
            self.maglev.insert(chunk_key, chunk, 0).map_err(into_io)?;
        }
        self.with_tables.insert(id);
        Ok(())
    }

    /// Forgets the UDP flows conntrack keeps on the backends `removed` (of their
    /// services), so that the next datagram of such a flow chooses a live backend,
    /// as connected UDP sockets of removed backends are destroyed on the socket
    /// path. TCP flows stay: an established connection keeps its backend while it
    /// terminates. Returns how many flows were forgotten.
    pub(super) fn forget_udp_flows(&mut self, removed: &[ServiceBackendKey]) -> io::Result<usize> {
        let doomed: Vec<(FlowKey, CtForward)> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(flow, forward)| {
                let backend = Backend {
                    addr: forward.backend,
                    port: forward.backend_port,
                    family: flow.family,
                    _pad: 0,
                };
                flow.protocol == IPPROTO_UDP
                    && removed.contains(&ServiceBackendKey::new(forward.service_id, &backend))
            })
            .collect();
        for (flow, forward) in &doomed {
            // The reply entry first: a datagram of the flow arriving in between
            // creates both again.
            let (mut reply, mut reverse) = (*flow, CtReverse::default());
            write_reverse_entry(flow, forward, &mut reply, &mut reverse);
            absent_is_ok(self.replies.remove(&reply))?;
            absent_is_ok(self.flows.remove(flow))?;
        }
        Ok(doomed.len())
    }

    /// Removes the Maglev tables of a removed service (its counters go with its
    /// backends, see `changes.rs`).
    pub(super) fn service_removed(&mut self, key: &ServiceKey, id: u32) -> io::Result<()> {
        if self.wants_table(&key.socket_addr()) {
            for table in 0..2u8 {
                for chunk in 0..maglev_chunks(self.maglev_size) {
                    let chunk_key = MaglevKey::new(id, table, chunk as u16);
                    absent_is_ok(self.maglev.remove(&chunk_key))?;
                }
            }
            self.with_tables.remove(&id);
        }
        Ok(())
    }
}

/// How a program stays attached to a device.
enum Attachment {
    Owned(SchedClassifierLinkId),
    Pinned(PinnedLink),
}

/// The programs attached to the NodePort devices.
pub(super) struct NodePortLinks {
    links: Vec<(TcProgram, Attachment)>,
    pin_dir: Option<PathBuf>,
}

impl NodePortLinks {
    /// Loads the programs and attaches them to every device (TCX links, appended
    /// after other programs). With a pin directory the links are pinned, replacing
    /// a previous agent's, and pins of devices no longer configured are removed
    /// (which detaches those links).
    pub(super) fn attach(
        ebpf: &mut Ebpf,
        settings: &Settings,
        pin_dir: Option<&Path>,
    ) -> Result<Self, Error> {
        let mut links = Vec::new();
        let mut pinned = HashSet::new();
        if settings.enabled() {
            for (name, direction) in PROGRAMS {
                let program = super::typed_program::<SchedClassifier>(ebpf, name)?;
                let program_error = |device: &str| {
                    let device = device.to_string();
                    move |source| NodePortError::Program {
                        name,
                        device,
                        source,
                    }
                };
                let load_error = |source| Error::Program { name, source };
                program.load().map_err(load_error)?;
                let id = program.info().map_err(load_error)?.id();
                for device in &settings.devices {
                    let link = program
                        .attach_with_options(
                            device,
                            direction,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(program_error(device))?;
                    let attachment = match pin_dir {
                        None => Attachment::Owned(link),
                        Some(dir) => {
                            let owned = program.take_link(link).map_err(program_error(device))?;
                            let pin = pin_name(name, device);
                            let link = super::pin_link(name, &pin, owned.try_into(), dir)?;
                            pinned.insert(pin);
                            Attachment::Pinned(link)
                        }
                    };
                    let program = TcProgram {
                        name,
                        device: device.clone(),
                        id,
                    };
                    links.push((program, attachment));
                }
            }
        }
        if let Some(dir) = pin_dir {
            remove_stale_pins(&dir.join("links"), &pinned);
        }
        Ok(Self {
            links,
            pin_dir: pin_dir.map(Path::to_path_buf),
        })
    }

    /// Nothing attached (what is left after a detach).
    pub(super) fn none() -> Self {
        Self {
            links: Vec::new(),
            pin_dir: None,
        }
    }

    pub(super) fn attached(&self) -> impl Iterator<Item = &TcProgram> {
        self.links.iter().map(|(program, _)| program)
    }

    /// Detaches every program, reporting the first failure.
    pub(super) fn detach(self, ebpf: &mut Ebpf) -> Result<Vec<TcProgram>, Error> {
        let mut detached = Vec::with_capacity(self.links.len());
        for (tc, attachment) in self.links {
            let device = tc.device.clone();
            match attachment {
                Attachment::Owned(link) => super::typed_program::<SchedClassifier>(ebpf, tc.name)?
                    .detach(link)
                    .map_err(|source| NodePortError::Program {
                        name: tc.name,
                        device,
                        source,
                    })?,
                // Without its pin, the link goes with the last descriptor, dropped here.
                Attachment::Pinned(link) => drop(link.unpin().map_err(|source| Error::Pin {
                    path: self.pin_dir.clone().unwrap_or_default(),
                    source,
                })?),
            }
            detached.push(tc);
        }
        Ok(detached)
    }
}

/// The pin file name of `program` on `device` (bpffs refuses dots in names).
fn pin_name(program: &str, device: &str) -> String {
    let direction = program.rsplit('_').next().unwrap_or(program);
    let device: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{LINK_PIN_PREFIX}{direction}-{device}")
}

/// Removes NodePort link pins a previous agent left for devices this one does not
/// use: their links go with the pins.
fn remove_stale_pins(links: &Path, keep: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(links) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PIN_PREFIX) && !keep.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The interface index of `device`.
fn ifindex(device: &str) -> Result<u32, NodePortError> {
    let error = |source| NodePortError::Device {
        device: device.to_string(),
        source,
    };
    let name = std::ffi::CString::new(device).map_err(|e| error(io::Error::other(e)))?;
    // SAFETY: name is NUL-terminated.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(error(io::Error::last_os_error())),
        index => Ok(index),
    }
}

/// The device of this network namespace's default route (IPv4, else IPv6), where
/// NodePort traffic from other hosts arrives; None when there is no default route.
pub fn default_route_device() -> Option<String> {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_device_v4(&v4).or_else(|| default_device_v6(&v6))
}

/// From /proc/net/route: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`.
fn default_device_v4(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000")
            .then(|| fields[0].to_string())
    })
}

/// From /proc/net/ipv6_route: destination, prefix length, ..., device (last).
fn default_device_v6(table: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let device = *fields.last()?;
        (fields.len() == 10
            && fields[0].bytes().all(|b| b == b'0')
            && fields[1] == "00"
            && device != "lo")
            .then(|| device.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_devices_are_read_from_proc() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_device_v4(v4).as_deref(), Some("eth0"));
        assert_eq!(default_device_v4("Iface\tDestination\n"), None);
        let v6 = "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     ens3\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_device_v6(v6).as_deref(), Some("ens3"));
    }

    #[test]
    fn pin_names_have_no_dots() {
        assert_eq!(
            pin_name("skiff_nodeport_ingress", "eth0.100"),
            "np-ingress-eth0_100"
        );
        assert_eq!(pin_name("skiff_nodeport_egress", "np0"), "np-egress-np0");
    }

    #[test]
    fn settings_check_the_table_size_and_devices() {
        let mut loader = EbpfLoader::new();
        let bad = Settings {
            devices: vec!["eth0".into()],
            maglev_size: 1000,
            ..Settings::default()
        };
        assert!(matches!(
            configure(&mut loader, &bad, None),
            Err(NodePortError::Maglev(MaglevError::Size(1000)))
        ));
        let many = Settings {
            devices: (0..9).map(|i| format!("eth{i}")).collect(),
            ..Settings::default()
        };
        let err = configure(&mut loader, &many, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "9 NodePort devices given; at most 8 are supported"
        );
        assert!(
            configure(&mut loader, &Settings::default(), None).is_ok(),
            "off"
        );
    }
}
