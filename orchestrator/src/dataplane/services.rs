//! The service tables as user space keeps them, and the order in which changes are
//! written to the kernel maps so that a program never sees a half-written service.
//!
//! [`ServiceTable`] is plain data (which id and table each service has, how many
//! slots each table holds); the kernel maps sit behind [`ServiceMaps`] so the write
//! protocol is unit-tested against a recording fake.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;

use skiff_ebpf_common::{
    BACKENDS_MAP, Backend, BackendSlotKey, IPPROTO_TCP, IPPROTO_UDP, MAX_BACKENDS_PER_SERVICE,
    SERVICES_MAP, Service, ServiceKey,
};

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

/// What clients connect to: a service's virtual IP and port for one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl Frontend {
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            addr,
            protocol: Protocol::Tcp,
        }
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

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
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
}

/// Writes to the kernel's service and backend maps. Removing an absent key succeeds.
pub trait ServiceMaps {
    fn put_service(&mut self, key: &ServiceKey, service: &Service) -> io::Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> io::Result<()>;
    fn put_backend(&mut self, key: &BackendSlotKey, backend: &Backend) -> io::Result<()>;
    fn remove_backend(&mut self, key: &BackendSlotKey) -> io::Result<()>;
}

/// What user space knows of one service in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: u32,
    /// The table the kernel reads, once the service has been published.
    published: Option<u8>,
    /// Slots that may hold entries in each table (an upper bound after a failed write).
    slots: [u16; 2],
}

/// Every service this node has written to the maps.
#[derive(Debug, Default)]
pub struct ServiceTable {
    entries: HashMap<ServiceKey, Entry>,
    last_id: u32,
}

impl ServiceTable {
    /// Sets the backends of `frontend`, creating the service if needed. An empty
    /// backend list publishes a service that refuses connections.
    ///
    /// The new set goes into the table the kernel is not reading; the service value
    /// (count and table) is then replaced in one map update. The previously
    /// published table is left intact until the next change, so a program that read
    /// the old value just before the switch still finds its slot.
    pub fn upsert(
        &mut self,
        maps: &mut impl ServiceMaps,
        frontend: &Frontend,
        backends: &[SocketAddr],
    ) -> Result<(), ServiceError> {
        let backends = validate(frontend, backends)?;
        let key = frontend.key();
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => entry,
            None => {
                self.last_id += 1;
                self.entries.entry(key).or_insert(Entry {
                    id: self.last_id,
                    published: None,
                    slots: [0, 0],
                })
            }
        };

        let table = entry.published.map_or(0, |t| 1 - t);
        let count = backends.len() as u16; // validate() bounds it by MAX_BACKENDS_PER_SERVICE
        let stale = entry.slots[usize::from(table)];
        entry.slots[usize::from(table)] = stale.max(count);
        for (index, backend) in (0..count).zip(&backends) {
            maps.put_backend(&BackendSlotKey::new(entry.id, table, index), backend)
                .map_err(map_error(frontend, BACKENDS_MAP))?;
        }
        for index in count..stale {
            maps.remove_backend(&BackendSlotKey::new(entry.id, table, index))
                .map_err(map_error(frontend, BACKENDS_MAP))?;
        }
        entry.slots[usize::from(table)] = count;

        let service = Service {
            id: entry.id,
            backend_count: count,
            table,
            _pad: 0,
        };
        maps.put_service(&key, &service)
            .map_err(map_error(frontend, SERVICES_MAP))?;
        entry.published = Some(table);
        Ok(())
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
        for table in 0..2u8 {
            while entry.slots[usize::from(table)] > 0 {
                let index = entry.slots[usize::from(table)] - 1;
                maps.remove_backend(&BackendSlotKey::new(entry.id, table, index))
                    .map_err(map_error(frontend, BACKENDS_MAP))?;
                entry.slots[usize::from(table)] = index;
            }
        }
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
        log: Vec<String>,
        fail_at_write: Option<usize>,
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
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
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
                &addrs(&["10.244.0.2:8080", "10.244.0.3:8080"]),
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
                &addrs(&["10.244.0.2:80", "10.244.0.3:80", "10.244.0.4:80"]),
            )
            .unwrap();
        maps.log.clear();
        table
            .upsert(&mut maps, &vip(), &addrs(&["10.244.0.3:80"]))
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
            .upsert(&mut maps, &vip(), &addrs(&["10.244.0.9:80"]))
            .unwrap();
        assert_eq!(
            maps.log,
            [
                "backend t0[0]=10.244.0.9:80",
                "remove t0[1]",
                "remove t0[2]",
                "service count=1 table=0"
            ]
        );
    }

    #[test]
    fn a_failed_write_leaves_the_published_service_intact() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        let before = addrs(&["10.244.0.2:80", "10.244.0.3:80"]);
        table.upsert(&mut maps, &vip(), &before).unwrap();
        maps.fail_at_write = Some(maps.log.len() + 1);
        let err = table
            .upsert(
                &mut maps,
                &vip(),
                &addrs(&["10.244.0.7:80", "10.244.0.8:80", "10.244.0.9:80"]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("writing map BACKENDS"), "{err}");
        assert_eq!(maps.resolve(&vip().key()), Some(before));

        // A later update and a removal still clean every slot that was written.
        maps.fail_at_write = None;
        table
            .upsert(&mut maps, &vip(), &addrs(&["10.244.0.5:80"]))
            .unwrap();
        assert!(table.remove(&mut maps, &vip()).unwrap());
        assert!(maps.services.is_empty());
        assert!(maps.backends.is_empty(), "{:?}", maps.backends);
    }

    #[test]
    fn removal_unpublishes_before_clearing_slots() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        table
            .upsert(&mut maps, &vip(), &addrs(&["10.244.0.2:80"]))
            .unwrap();
        table
            .upsert(&mut maps, &vip(), &addrs(&["10.244.0.3:80"]))
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
            .upsert(&mut maps, &vip(), &addrs(&["10.244.0.2:80"]))
            .unwrap();
        table
            .upsert(&mut maps, &other, &addrs(&["[fd00:10:244::2]:8443"]))
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
    fn empty_backend_list_publishes_a_refusing_service() {
        let (mut table, mut maps) = (ServiceTable::default(), FakeMaps::default());
        table.upsert(&mut maps, &vip(), &[]).unwrap();
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
                .upsert(&mut maps, &frontend, &backends)
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
