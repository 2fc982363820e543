//! The service tables as user space keeps them, and the order in which changes are
//! written to the kernel maps so that a program never sees a half-written service.
//!
//! [`ServiceTable`] is plain data (which id and table each service has, how many
//! slots each table holds); the kernel maps sit behind [`ServiceMaps`] so the write
//! protocol is unit-tested against a recording fake.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use skiff_ebpf_common::nodeport::MAGLEV_MAP;
use skiff_ebpf_common::{
    AFFINITY_BACKENDS_MAP, BACKENDS_MAP, Backend, BackendSlotKey, IPPROTO_TCP, IPPROTO_UDP,
    MAX_BACKEND_SLOTS, MAX_BACKENDS_PER_SERVICE, MAX_SERVICES, SERVICE_HTTP, SERVICES_MAP, Service,
    ServiceBackendKey, ServiceKey,
};

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub(super) fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    pub(super) fn from_number(number: u8) -> Option<Self> {
        match number {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// What clients connect to: a service's virtual IP and port for one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl Frontend {
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Self {
        Self { addr, protocol }
    }

    pub fn tcp(addr: SocketAddr) -> Self {
        Self::new(addr, Protocol::Tcp)
    }

    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            addr,
            protocol: Protocol::Udp,
        }
    }

    fn key(&self) -> ServiceKey {
        ServiceKey::from_socket_addr(self.addr, self.protocol.number())
    }
}

/// What a frontend balances to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balancing {
    /// One per slot: a backend appears as many times as its weight gives it slots.
    pub backends: Vec<SocketAddr>,
    /// ClientIP session affinity: seconds a client keeps its backend after its
    /// last connection.
    pub affinity_timeout: Option<NonZeroU32>,
    /// The port declares HTTP: connections from pods in the mesh keep the
    /// frontend, and the node proxy balances their requests ([`SERVICE_HTTP`]).
    pub http: bool,
}

impl From<Vec<SocketAddr>> for Balancing {
    fn from(backends: Vec<SocketAddr>) -> Self {
        Self {
            backends,
            affinity_timeout: None,
            http: false,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.protocol.to_string().to_lowercase();
        write!(f, "{}/{proto}", self.addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {frontend}: {reason}")]
    Invalid { frontend: Frontend, reason: String },
    #[error("service {frontend}: writing map {map}: {source}")]
    Map {
        frontend: Frontend,
        map: &'static str,
        source: io::Error,
    },
    #[error(
        "service {frontend}: map {map} is full ({in_use} of {capacity} entries in use, \
         {needed} more needed); raise {flag}"
    )]
    Full {
        frontend: Frontend,
        map: &'static str,
        capacity: u32,
        in_use: u32,
        needed: u32,
        flag: &'static str,
    },
    #[error("reading map {map} of the previous agent: {source}")]
    Adopt {
        map: &'static str,
        source: io::Error,
    },
}

/// How many entries the maps hold (their max_entries in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Frontends in SERVICES.
    pub services: u32,
    /// Backend slots in BACKENDS, over both tables of every service.
    pub backend_slots: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: MAX_SERVICES,
            backend_slots: MAX_BACKEND_SLOTS,
        }
    }
}

/// Writes to the kernel's service and backend maps. Removing an absent key succeeds.
pub trait ServiceMaps {
    fn put_service(&mut self, key: &ServiceKey, service: &Service) -> io::Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> io::Result<()>;
    fn put_backend(&mut self, key: &BackendSlotKey, backend: &Backend) -> io::Result<()>;
    fn remove_backend(&mut self, key: &BackendSlotKey) -> io::Result<()>;
    /// Everything in SERVICES (for adopting maps a previous agent left).
    fn services(&self) -> io::Result<Vec<(ServiceKey, Service)>>;
    /// Every key in BACKENDS.
    fn backend_slots(&self) -> io::Result<Vec<(BackendSlotKey, Backend)>>;
    /// A table's backends are written and it is about to be published: maps that
    /// index the table (the NodePort path's Maglev tables) are filled here. An
    /// error of kind `StorageFull` counts as a refusal of a full map.
    fn table_written(
        &mut self,
        _key: &ServiceKey,
        _id: u32,
        _table: u8,
        _backends: &[Backend],
    ) -> io::Result<()> {
        Ok(())
    }
    /// A service was unpublished and its slots cleared.
    fn service_removed(&mut self, _key: &ServiceKey, _id: u32) -> io::Result<()> {
        Ok(())
    }
    fn put_affinity_backend(&mut self, key: &ServiceBackendKey) -> io::Result<()>;
    fn remove_affinity_backend(&mut self, key: &ServiceBackendKey) -> io::Result<()>;
    /// Every key in AFFINITY_BACKENDS.
    fn affinity_backends(&self) -> io::Result<Vec<ServiceBackendKey>>;
}

/// What user space knows of one service in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: u32,
    /// The table the kernel reads, once the service has been published.
    published: Option<u8>,
    /// Slots that may hold entries in each table (an upper bound after a failed write).
    slots: [u16; 2],
    /// The service's entries in AFFINITY_BACKENDS (those that may be there after a
    /// failed write): its distinct backends while it has session affinity.
    affinity_backends: BTreeSet<ServiceBackendKey>,
}

/// Every service this node has written to the maps.
#[derive(Debug, Default)]
pub struct ServiceTable {
    entries: HashMap<ServiceKey, Entry>,
    last_id: u32,
    capacity: Capacity,
    /// Backend slots that may hold entries, over all services and tables.
    slots_in_use: u32,
    /// Writes refused because a map was full (a metric).
    full_refusals: u64,
}

impl ServiceTable {
    pub fn new(capacity: Capacity) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Takes over maps a previous agent left: the published services are kept as
    /// they are (the kernel goes on using them), slots no published service can
    /// reach are cleared, and the published frontends are returned with their
    /// backends so the caller can leave unchanged ones alone.
    pub fn adopt(
        &mut self,
        maps: &mut impl ServiceMaps,
    ) -> Result<HashMap<Frontend, Balancing>, ServiceError> {
        let adopt_error = |map| move |source| ServiceError::Adopt { map, source };
        let services = maps.services().map_err(adopt_error(SERVICES_MAP))?;
        let slots = maps.backend_slots().map_err(adopt_error(BACKENDS_MAP))?;
        let affinity_backends = maps
            .affinity_backends()
            .map_err(adopt_error(AFFINITY_BACKENDS_MAP))?;
        let mut by_id: HashMap<u32, (ServiceKey, Service)> = HashMap::new();
        for (key, service) in services {
            by_id.insert(service.id, (key, service));
        }
        let mut slot_counts: HashMap<(u32, u8), u16> = HashMap::new();
        let mut published: HashMap<u32, Vec<(u16, Backend)>> = HashMap::new();
        for (slot, backend) in slots {
            let Some((_, service)) = by_id.get(&slot.service_id) else {
                // Written by an agent that died before publishing the service.
                maps.remove_backend(&slot)
                    .map_err(adopt_error(BACKENDS_MAP))?;
                continue;
            };
            let count = slot_counts
                .entry((slot.service_id, slot.table))
                .or_default();
            *count = (*count).max(slot.index.saturating_add(1));
            if slot.table == service.table && slot.index < service.backend_count {
                published
                    .entry(slot.service_id)
                    .or_default()
                    .push((slot.index, backend));
            }
        }
        let mut kept_affinity: HashMap<u32, BTreeSet<ServiceBackendKey>> = HashMap::new();
        for key in affinity_backends {
            match by_id.get(&key.service_id) {
                Some((_, service)) if service.affinity_timeout != 0 => {
                    kept_affinity.entry(key.service_id).or_default().insert(key);
                }
                // Left by a service since removed or without affinity now.
                _ => maps
                    .remove_affinity_backend(&key)
                    .map_err(adopt_error(AFFINITY_BACKENDS_MAP))?,
            }
        }
        let mut frontends = HashMap::new();
        for (id, (key, service)) in by_id {
            let slots = [0u8, 1].map(|t| slot_counts.get(&(id, t)).copied().unwrap_or(0));
            self.slots_in_use += u32::from(slots[0]) + u32::from(slots[1]);
            self.last_id = self.last_id.max(id);
            let mut backends = published.remove(&id).unwrap_or_default();
            backends.sort_by_key(|(index, _)| *index);
            let backends: Vec<SocketAddr> = backends.iter().map(|(_, b)| b.socket_addr()).collect();
            self.entries.insert(
                key,
                Entry {
                    id,
                    published: Some(service.table),
                    slots,
                    affinity_backends: kept_affinity.remove(&id).unwrap_or_default(),
                },
            );
            if let Some(protocol) = Protocol::from_number(key.protocol) {
                let balancing = Balancing {
                    backends,
                    affinity_timeout: NonZeroU32::new(service.affinity_timeout),
                    http: service.flags & SERVICE_HTTP != 0,
                };
                frontends.insert(Frontend::new(key.socket_addr(), protocol), balancing);
            }
        }
        Ok(frontends)
    }

    /// Writes refused so far because a map was full.
    pub fn full_refusals(&self) -> u64 {
        self.full_refusals
    }

    pub fn stats(&self) -> super::Stats {
        super::Stats {
            frontends: self.entries.len() as u32,
            backend_slots: self.slots_in_use,
            capacity: self.capacity,
            full_refusals: self.full_refusals,
        }
    }

    /// Fails with [`ServiceError::Full`] when writing `count` backends for
    /// `frontend` would take a map past its capacity; nothing is written then.
    fn check_capacity(&mut self, frontend: &Frontend, count: u16) -> Result<(), ServiceError> {
        let key = frontend.key();
        let (is_new, unpublished_slots) = match self.entries.get(&key) {
            Some(entry) => {
                let table = entry.published.map_or(0, |t| 1 - t);
                (false, entry.slots[usize::from(table)])
            }
            None => (true, 0),
        };
        let full = if is_new && self.entries.len() as u32 >= self.capacity.services {
            Some((
                SERVICES_MAP,
                self.capacity.services,
                self.entries.len() as u32,
                1,
                "--max-services",
            ))
        } else {
            let needed = u32::from(count.saturating_sub(unpublished_slots));
            (self.slots_in_use + needed > self.capacity.backend_slots).then_some((
                BACKENDS_MAP,
                self.capacity.backend_slots,
                self.slots_in_use,
                needed,
                "--max-backend-slots",
            ))
        };
        match full {
            Some((map, capacity, in_use, needed, flag)) => {
                self.full_refusals += 1;
                Err(ServiceError::Full {
                    frontend: *frontend,
                    map,
                    capacity,
                    in_use,
                    needed,
                    flag,
                })
            }
            None => Ok(()),
        }
    }

    /// Sets the backends of `frontend`, creating the service if needed. An empty
    /// backend list publishes a service that refuses connections.
    ///
    /// The new set goes into the table the kernel is not reading; the service value
    /// (count and table) is then replaced in one map update. The previously
    /// published table is left intact until the next change, so a program that read
    /// the old value just before the switch still finds its slot. With session
    /// affinity, new backends are listed in AFFINITY_BACKENDS before the switch and
    /// removed ones taken out after it, so no client is kept on a removed backend.
    pub fn upsert(
        &mut self,
        maps: &mut impl ServiceMaps,
        frontend: &Frontend,
        balancing: &Balancing,
    ) -> Result<(), ServiceError> {
        let backends = validate(frontend, &balancing.backends)?;
        self.check_capacity(frontend, backends.len() as u16)?;
        let key = frontend.key();
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => entry,
            None => {
                self.last_id += 1;
                self.entries.entry(key).or_insert(Entry {
                    id: self.last_id,
                    published: None,
                    slots: [0, 0],
                    affinity_backends: BTreeSet::new(),
                })
            }
        };

        let table = entry.published.map_or(0, |t| 1 - t);
        let count = backends.len() as u16; // validate() bounds it by MAX_BACKENDS_PER_SERVICE
        let stale = entry.slots[usize::from(table)];
        let grown = stale.max(count);
        entry.slots[usize::from(table)] = grown;
        self.slots_in_use += u32::from(grown - stale);
        for (index, backend) in (0..count).zip(&backends) {
            maps.put_backend(&BackendSlotKey::new(entry.id, table, index), backend)
                .map_err(map_error(frontend, BACKENDS_MAP))?;
        }
        // From the top, so the slot count stays an upper bound if a removal fails.
        for index in (count..stale).rev() {
            maps.remove_backend(&BackendSlotKey::new(entry.id, table, index))
                .map_err(map_error(frontend, BACKENDS_MAP))?;
            entry.slots[usize::from(table)] = index;
            self.slots_in_use -= 1;
        }

        let affinity_backends: BTreeSet<ServiceBackendKey> = match balancing.affinity_timeout {
            Some(_) => backends
                .iter()
                .map(|b| ServiceBackendKey::new(entry.id, b))
                .collect(),
            None => BTreeSet::new(),
        };
        for added in affinity_backends.difference(&entry.affinity_backends) {
            maps.put_affinity_backend(added)
                .map_err(map_error(frontend, AFFINITY_BACKENDS_MAP))?;
        }
        entry
            .affinity_backends
            .extend(affinity_backends.iter().copied());

        maps.table_written(&key, entry.id, table, &backends)
            .map_err(|e| {
                // The NodePort path's tables are full: a refusal like ours.
                if e.kind() == io::ErrorKind::StorageFull {
                    self.full_refusals += 1;
                }
                map_error(frontend, MAGLEV_MAP)(e)
            })?;
        let service = Service {
            id: entry.id,
            backend_count: count,
            table,
            flags: if balancing.http { SERVICE_HTTP } else { 0 },
            affinity_timeout: balancing.affinity_timeout.map_or(0, NonZeroU32::get),
        };
        maps.put_service(&key, &service)
            .map_err(map_error(frontend, SERVICES_MAP))?;
        entry.published = Some(table);
        clear_affinity_backends(maps, frontend, entry, &affinity_backends)
    }

    /// Removes `frontend` and its backends. Returns false when it was not present.
    pub fn remove(
        &mut self,
        maps: &mut impl ServiceMaps,
        frontend: &Frontend,
    ) -> Result<bool, ServiceError> {
        let key = frontend.key();
        let Some(entry) = self.entries.get_mut(&key) else {
            return Ok(false);
        };
        // Unpublish first: from then on no program looks at the slots.
        if entry.published.is_some() {
            maps.remove_service(&key)
                .map_err(map_error(frontend, SERVICES_MAP))?;
            entry.published = None;
        }
        clear_affinity_backends(maps, frontend, entry, &BTreeSet::new())?;
        for table in 0..2u8 {
            while entry.slots[usize::from(table)] > 0 {
                let index = entry.slots[usize::from(table)] - 1;
                maps.remove_backend(&BackendSlotKey::new(entry.id, table, index))
                    .map_err(map_error(frontend, BACKENDS_MAP))?;
                entry.slots[usize::from(table)] = index;
                self.slots_in_use -= 1;
            }
        }
        maps.service_removed(&key, entry.id)
            .map_err(map_error(frontend, MAGLEV_MAP))?;
        self.entries.remove(&key);
        Ok(true)
    }

    /// The id of `frontend`'s service in the maps (its backend slots, counters and
    /// reverse entries are keyed by it).
    pub fn service_id(&self, frontend: &Frontend) -> Option<u32> {
        self.entries.get(&frontend.key()).map(|entry| entry.id)
    }

    /// How many services (frontends) are in the maps or being written.
    pub fn service_count(&self) -> usize {
        self.entries.len()
    }
}

/// Takes `entry`'s AFFINITY_BACKENDS entries that are not in `keep` out of the map.
fn clear_affinity_backends(
    maps: &mut impl ServiceMaps,
    frontend: &Frontend,
    entry: &mut Entry,
    keep: &BTreeSet<ServiceBackendKey>,
) -> Result<(), ServiceError> {
    let stale: Vec<ServiceBackendKey> = entry.affinity_backends.difference(keep).copied().collect();
    for key in stale {
        maps.remove_affinity_backend(&key)
            .map_err(map_error(frontend, AFFINITY_BACKENDS_MAP))?;
        entry.affinity_backends.remove(&key);
    }
    Ok(())
}

/// Wraps a failed write to `map` for `frontend`.
fn map_error(frontend: &Frontend, map: &'static str) -> impl FnOnce(io::Error) -> ServiceError {
    let frontend = *frontend;
    move |source| ServiceError::Map {
        frontend,
        map,
        source,
    }
}

fn validate(frontend: &Frontend, backends: &[SocketAddr]) -> Result<Vec<Backend>, ServiceError> {
    let invalid = |reason: String| ServiceError::Invalid {
        frontend: *frontend,
        reason,
    };
    if frontend.addr.port() == 0 {
        return Err(invalid(
            "port 0 is not a valid service port (1-65535)".into(),
        ));
    }
    if frontend.addr.ip().is_unspecified() {
        return Err(invalid(format!(
            "{} is not a valid virtual IP",
            frontend.addr.ip()
        )));
    }
    if backends.len() > usize::from(MAX_BACKENDS_PER_SERVICE) {
        return Err(invalid(format!(
            "{} backends is more than the {MAX_BACKENDS_PER_SERVICE} a service may have",
            backends.len()
        )));
    }
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if b.is_ipv4() != frontend.addr.is_ipv4() {
                let family = |a: &SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(invalid(format!(
                    "backends[{i}]: {b} is {} but the service address is {}",
                    family(b),
                    family(&frontend.addr)
                )));
            }
            if b.port() == 0 {
                return Err(invalid(format!(
                    "backends[{i}]: {b}: port 0 is not a valid port (1-65535)"
                )));
            }
            if b.ip().is_unspecified() {
                return Err(invalid(format!(
                    "backends[{i}]: {b}: the unspecified address is not a backend"
                )));
            }
            Ok(Backend::from_socket_addr(*b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Keeps the maps' contents and the order of writes; can fail the n-th write.
    #[derive(Default)]
    struct FakeMaps {
        services: HashMap<ServiceKey, Service>,
        backends: BTreeMap<(u32, u8, u16), Backend>,
        affinity_backends: BTreeSet<ServiceBackendKey>,
        log: Vec<String>,
        fail_at_write: Option<usize>,
        /// Whether the table hooks are logged (and can fail) like writes.
        record_hooks: bool,
        /// Whether the table hook says its map is full.
        hook_full: bool,
    }

    impl FakeMaps {
        fn write(&mut self, what: String) -> io::Result<()> {
            if self.fail_at_write == Some(self.log.len()) {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            self.log.push(what);
            Ok(())
        }

        /// What a program would resolve for `key`: the published backends.
        fn resolve(&self, key: &ServiceKey) -> Option<Vec<SocketAddr>> {
            let s = self.services.get(key)?;
            Some(
                (0..s.backend_count)
                    .map(|i| self.backends[&(s.id, s.table, i)].socket_addr())
                    .collect(),
            )
        }
    }

    impl ServiceMaps for FakeMaps {
        fn put_service(&mut self, key: &ServiceKey, s: &Service) -> io::Result<()> {
            self.write(format!(
                "service count={} table={}",
                s.backend_count, s.table
            ))?;
            self.services.insert(*key, *s);
            Ok(())
        }
        fn remove_service(&mut self, key: &ServiceKey) -> io::Result<()> {
            self.write("remove service".into())?;
            self.services.remove(key);
            Ok(())
        }
        fn put_backend(&mut self, k: &BackendSlotKey, b: &Backend) -> io::Result<()> {
            self.write(format!(
                "backend t{}[{}]={}",
                k.table,
                k.index,
                b.socket_addr()
            ))?;
            self.backends.insert((k.service_id, k.table, k.index), *b);
            Ok(())
        }
        fn remove_backend(&mut self, k: &BackendSlotKey) -> io::Result<()> {
            self.write(format!("remove t{}[{}]", k.table, k.index))?;
            self.backends.remove(&(k.service_id, k.table, k.index));
            Ok(())
        }
        fn services(&self) -> io::Result<Vec<(ServiceKey, Service)>> {
            Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn table_written(
            &mut self,
            _key: &ServiceKey,
            _id: u32,
            table: u8,
            backends: &[Backend],
        ) -> io::Result<()> {
            if self.hook_full {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "full"));
            }
            if self.record_hooks {
                self.write(format!("table t{table} written ({})", backends.len()))?;
            }
            Ok(())
        }
        fn service_removed(&mut self, _key: &ServiceKey, _id: u32) -> io::Result<()> {
            if self.record_hooks {
                self.write("service removed".into())?;
            }
            Ok(())
        }
        fn backend_slots(&self) -> io::Result<Vec<(BackendSlotKey, Backend)>> {
            Ok(self
                .backends
                .iter()
                .map(|(&(id, table, index), b)| (BackendSlotKey::new(id, table, index), *b))
                .collect())
        }
        fn put_affinity_backend(&mut self, k: &ServiceBackendKey) -> io::Result<()> {
            self.write(format!("affinity +{}", k.backend().socket_addr()))?;
            self.affinity_backends.insert(*k);
            Ok(())
        }
        fn remove_affinity_backend(&mut self, k: &ServiceBackendKey) -> io::Result<()> {
            self.write(format!("affinity -{}", k.backend().socket_addr()))?;
            self.affinity_backends.remove(k);
            Ok(())
        }
        fn affinity_backends(&self) -> io::Result<Vec<ServiceBackendKey>> {
            Ok(self.affinity_backends.iter().copied().collect())
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn pool(list: &[&str]) -> Balancing {
        addrs(list).into()
    }

    fn vip() -> Frontend {
        Frontend::tcp("10.96.0.1:80".parse().unwrap())
    }

    #[test]
    fn backends_are_written_before_the_service_is_published() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        table
            .upsert(
                &mut maps,
                &vip(),
                &pool(&["10.244.0.2:8080", "10.244.0.3:8080"]),
            )
            .unwrap();
        assert_eq!(
            maps.log,
            [
                "backend t0[0]=10.244.0.2:8080",
                "backend t0[1]=10.244.0.3:8080",
                "service count=2 table=0"
            ]
        );
        assert_eq!(
            maps.resolve(&vip().key()),
            Some(addrs(&["10.244.0.2:8080", "10.244.0.3:8080"]))
        );
    }

    #[test]
    fn an_update_fills_the_other_table_then_switches() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        table
            .upsert(
                &mut maps,
                &vip(),
                &pool(&["10.244.0.2:80", "10.244.0.3:80", "10.244.0.4:80"]),
            )
            .unwrap();
        maps.log.clear();
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.3:80"]))
            .unwrap();
        // The published table 0 is untouched until the switch (and after it).
        assert_eq!(
            maps.log,
            ["backend t1[0]=10.244.0.3:80", "service count=1 table=1"]
        );
        assert_eq!(maps.resolve(&vip().key()), Some(addrs(&["10.244.0.3:80"])));

        // The third version reuses table 0 and clears its leftover slots first.
        maps.log.clear();
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.9:80"]))
            .unwrap();
        assert_eq!(
            maps.log,
            [
                "backend t0[0]=10.244.0.9:80",
                "remove t0[2]",
                "remove t0[1]",
                "service count=1 table=0"
            ]
        );
    }

    #[test]
    fn a_failed_write_leaves_the_published_service_intact() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        let before = addrs(&["10.244.0.2:80", "10.244.0.3:80"]);
        table
            .upsert(&mut maps, &vip(), &before.clone().into())
            .unwrap();
        maps.fail_at_write = Some(maps.log.len() + 1);
        let err = table
            .upsert(
                &mut maps,
                &vip(),
                &pool(&["10.244.0.7:80", "10.244.0.8:80", "10.244.0.9:80"]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("writing map BACKENDS"), "{err}");
        assert_eq!(maps.resolve(&vip().key()), Some(before));

        // A later update and a removal still clean every slot that was written.
        maps.fail_at_write = None;
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.5:80"]))
            .unwrap();
        assert!(table.remove(&mut maps, &vip()).unwrap());
        assert!(maps.services.is_empty());
        assert!(maps.backends.is_empty(), "{:?}", maps.backends);
    }

    #[test]
    fn removal_unpublishes_before_clearing_slots() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.2:80"]))
            .unwrap();
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.3:80"]))
            .unwrap();
        maps.log.clear();
        assert!(table.remove(&mut maps, &vip()).unwrap());
        assert_eq!(maps.log, ["remove service", "remove t0[0]", "remove t1[0]"]);
        assert!(maps.backends.is_empty());
        assert!(
            !table.remove(&mut maps, &vip()).unwrap(),
            "second removal is a no-op"
        );
        assert_eq!(table.service_count(), 0);
    }

    #[test]
    fn services_get_distinct_ids() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        let other = Frontend::tcp("[fd00:10:96::1]:443".parse().unwrap());
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.2:80"]))
            .unwrap();
        table
            .upsert(&mut maps, &other, &pool(&["[fd00:10:244::2]:8443"]))
            .unwrap();
        let ids: Vec<u32> = maps.services.values().map(|s| s.id).collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        let (a, b) = (table.service_id(&vip()), table.service_id(&other));
        assert!(a.is_some_and(|id| ids.contains(&id)), "{a:?}");
        assert!(b.is_some_and(|id| ids.contains(&id)) && a != b, "{b:?}");
        assert_eq!(table.service_id(&Frontend::udp(vip().addr)), None);
        assert_eq!(
            maps.resolve(&other.key()),
            Some(addrs(&["[fd00:10:244::2]:8443"]))
        );
    }

    #[test]
    fn a_full_map_refuses_the_write_and_leaves_the_maps_as_they_were() {
        let capacity = Capacity {
            services: 2,
            backend_slots: 5,
        };
        let (mut table, mut maps) = (ServiceTable::new(capacity), FakeMaps::default());
        let two = addrs(&["10.244.0.2:80", "10.244.0.3:80"]);
        table
            .upsert(&mut maps, &vip(), &two.clone().into())
            .unwrap();
        let other = Frontend::tcp("10.96.0.2:80".parse().unwrap());
        table
            .upsert(&mut maps, &other, &two.clone().into())
            .unwrap();
        let log = maps.log.clone();

        let third = Frontend::tcp("10.96.0.3:80".parse().unwrap());
        let err = table
            .upsert(&mut maps, &third, &Balancing::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "map SERVICES is full (2 of 2 entries in use, 1 more needed); raise --max-services"
            ),
            "{err}"
        );
        // vip's other table needs 2 slots; only 1 is left.
        let err = table
            .upsert(&mut maps, &vip(), &two.clone().into())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("map BACKENDS is full (4 of 5 entries in use, 2 more needed); raise --max-backend-slots"),
            "{err}"
        );
        assert_eq!(maps.log, log, "nothing was written");
        assert_eq!(table.full_refusals(), 2);
        // Fewer backends fit, and removing a service frees its slots.
        table
            .upsert(&mut maps, &vip(), &two[..1].to_vec().into())
            .unwrap();
        assert!(table.remove(&mut maps, &other).unwrap());
        table
            .upsert(&mut maps, &third, &two.clone().into())
            .unwrap();
        assert_eq!(maps.resolve(&third.key()), Some(two));
    }

    #[test]
    fn affinity_backends_are_listed_before_the_switch_and_cleared_after() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        let sticky = |list: &[&str]| Balancing {
            affinity_timeout: NonZeroU32::new(30),
            ..pool(list)
        };
        // Weighted slots repeat a backend; it is listed once.
        table
            .upsert(
                &mut maps,
                &vip(),
                &sticky(&["10.244.0.2:80", "10.244.0.2:80", "10.244.0.3:80"]),
            )
            .unwrap();
        assert_eq!(maps.services[&vip().key()].affinity_timeout, 30);
        assert_eq!(
            maps.log[3..],
            [
                "affinity +10.244.0.2:80",
                "affinity +10.244.0.3:80",
                "service count=3 table=0"
            ]
        );
        maps.log.clear();
        table
            .upsert(
                &mut maps,
                &vip(),
                &sticky(&["10.244.0.3:80", "10.244.0.4:80"]),
            )
            .unwrap();
        assert_eq!(
            maps.log,
            [
                "backend t1[0]=10.244.0.3:80",
                "backend t1[1]=10.244.0.4:80",
                "affinity +10.244.0.4:80",
                "service count=2 table=1",
                "affinity -10.244.0.2:80",
            ]
        );
        // Turning affinity off, then removing the service, leaves nothing behind.
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.3:80"]))
            .unwrap();
        assert_eq!(maps.services[&vip().key()].affinity_timeout, 0);
        assert!(maps.affinity_backends.is_empty());
        table
            .upsert(&mut maps, &vip(), &sticky(&["10.244.0.3:80"]))
            .unwrap();
        assert_eq!(maps.affinity_backends.len(), 1);
        assert!(table.remove(&mut maps, &vip()).unwrap());
        assert!(maps.affinity_backends.is_empty());
    }

    #[test]
    fn adoption_keeps_affinity_and_flags_of_published_services_only() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        let sticky = Balancing {
            affinity_timeout: NonZeroU32::new(60),
            http: true,
            ..pool(&["10.244.0.2:80"])
        };
        table.upsert(&mut maps, &vip(), &sticky).unwrap();
        // Left by a service that is gone.
        let gone = Backend::from_socket_addr("10.244.0.9:80".parse().unwrap());
        maps.affinity_backends
            .insert(ServiceBackendKey::new(99, &gone));

        let mut table = ServiceTable::default();
        let adopted = table.adopt(&mut maps).unwrap();
        assert_eq!(adopted, HashMap::from([(vip(), sticky)]));
        assert_eq!(maps.affinity_backends.len(), 1);
        // The adopted entry knows its affinity backends: dropping affinity clears them.
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.2:80"]))
            .unwrap();
        assert!(maps.affinity_backends.is_empty());
    }

    #[test]
    fn adoption_rebuilds_the_table_and_clears_unreachable_slots() {
        let mut maps = FakeMaps::default();
        let mut before = ServiceTable::default();
        before
            .upsert(
                &mut maps,
                &vip(),
                &pool(&["10.244.0.2:80", "10.244.0.3:80"]),
            )
            .unwrap();
        before
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.4:80"]))
            .unwrap();
        // A backend written for a service that was never published.
        maps.backends.insert(
            (99, 0, 0),
            Backend::from_socket_addr("10.244.0.9:80".parse().unwrap()),
        );

        let mut table = ServiceTable::default();
        let adopted = table.adopt(&mut maps).unwrap();
        assert_eq!(adopted, HashMap::from([(vip(), pool(&["10.244.0.4:80"]))]));
        assert!(!maps.backends.contains_key(&(99, 0, 0)));
        // The adopted service updates like one of its own: into the other table,
        // clearing that table's leftovers, and new services get fresh ids.
        maps.log.clear();
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.5:80"]))
            .unwrap();
        assert_eq!(
            maps.log,
            [
                "backend t0[0]=10.244.0.5:80",
                "remove t0[1]",
                "service count=1 table=0"
            ]
        );
        let other = Frontend::tcp("10.96.0.2:80".parse().unwrap());
        table
            .upsert(&mut maps, &other, &Balancing::default())
            .unwrap();
        let ids: std::collections::HashSet<u32> = maps.services.values().map(|s| s.id).collect();
        assert_eq!(ids.len(), 2);
        assert!(table.remove(&mut maps, &vip()).unwrap());
        assert!(maps.backends.is_empty(), "{:?}", maps.backends);
    }

    #[test]
    fn the_table_hook_runs_after_the_backends_and_before_the_switch() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        maps.record_hooks = true;
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.2:80"]))
            .unwrap();
        table
            .upsert(
                &mut maps,
                &vip(),
                &pool(&["10.244.0.3:80", "10.244.0.4:80"]),
            )
            .unwrap();
        assert!(table.remove(&mut maps, &vip()).unwrap());
        assert_eq!(
            maps.log,
            [
                "backend t0[0]=10.244.0.2:80",
                "table t0 written (1)",
                "service count=1 table=0",
                "backend t1[0]=10.244.0.3:80",
                "backend t1[1]=10.244.0.4:80",
                "table t1 written (2)",
                "service count=2 table=1",
                "remove service",
                "remove t0[0]",
                "remove t1[1]",
                "remove t1[0]",
                "service removed",
            ]
        );

        // A failing hook keeps the previous table published.
        let mut maps = FakeMaps {
            record_hooks: true,
            ..FakeMaps::default()
        };
        let mut table = ServiceTable::default();
        let before = addrs(&["10.244.0.2:80"]);
        table
            .upsert(&mut maps, &vip(), &before.clone().into())
            .unwrap();
        maps.fail_at_write = Some(maps.log.len() + 1);
        let err = table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.3:80"]))
            .unwrap_err();
        assert!(err.to_string().contains("writing map NP_MAGLEV"), "{err}");
        assert_eq!(maps.resolve(&vip().key()), Some(before.clone()));
        assert_eq!(table.full_refusals(), 0, "a failed write is no refusal");
        // A full hook map is a refusal, counted like a full service map.
        (maps.fail_at_write, maps.hook_full) = (None, true);
        table
            .upsert(&mut maps, &vip(), &pool(&["10.244.0.3:80"]))
            .unwrap_err();
        assert_eq!(table.full_refusals(), 1);
        assert_eq!(maps.resolve(&vip().key()), Some(before));
    }

    #[test]
    fn empty_backend_list_publishes_a_refusing_service() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        table
            .upsert(&mut maps, &vip(), &Balancing::default())
            .unwrap();
        assert_eq!(maps.log, ["service count=0 table=0"]);
    }

    #[test]
    fn bad_input_is_rejected_before_any_write() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        let cases: Vec<(Frontend, Vec<SocketAddr>, &str)> = vec![
            (
                vip(),
                addrs(&["10.244.0.2:80", "[fd00::2]:80"]),
                "backends[1]: [fd00::2]:80 is IPv6 but the service address is IPv4",
            ),
            (
                vip(),
                addrs(&["10.244.0.2:0"]),
                "backends[0]: 10.244.0.2:0: port 0 is not a valid port",
            ),
            (
                vip(),
                addrs(&["0.0.0.0:80"]),
                "backends[0]: 0.0.0.0:80: the unspecified address",
            ),
            (
                Frontend::tcp("10.96.0.1:0".parse().unwrap()),
                vec![],
                "port 0 is not a valid service port",
            ),
            (
                Frontend::tcp("[::]:80".parse().unwrap()),
                vec![],
                ":: is not a valid virtual IP",
            ),
            (
                vip(),
                vec!["10.244.0.2:80".parse().unwrap(); usize::from(MAX_BACKENDS_PER_SERVICE) + 1],
                "4097 backends is more than the 4096",
            ),
        ];
        for (frontend, backends, expected) in cases {
            let err = table
                .upsert(&mut maps, &frontend, &backends.into())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
            assert!(
                err.contains(&frontend.to_string()),
                "{err:?} names no service"
            );
        }
        assert!(maps.log.is_empty(), "{:?}", maps.log);
        assert_eq!(table.service_count(), 0);
    }
}
