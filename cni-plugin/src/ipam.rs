//! Address allocation from the node's pod CIDRs, one address per family for each
//! (container ID, interface) attachment, as the spec keys plugin state.
//!
//! The allocations of a network live in `<dataDir>/<network>/allocations.json`,
//! rewritten whole (temporary file, fsync, rename, fsync of the directory) under an
//! exclusive `flock` on `<dataDir>/<network>/lock`: concurrent ADDs serialise on the
//! lock, and a crash leaves either the old file or the new one. The first address of
//! each CIDR is the gateway (the node side); IPv4's network and broadcast addresses
//! are never handed out. Allocation continues after the last address given, so a
//! released address is not reused at once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{Attachment, NetConf};
use crate::result::CniResult;
use crate::{CniError, code};

const STATE_FILE: &str = "allocations.json";
const LOCK_FILE: &str = "lock";

/// One pod address and the gateway it routes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: IpAddr,
    pub cidr: IpNet,
    pub gateway: IpAddr,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    allocations: Vec<Allocation>,
    /// The last address handed out, per CIDR.
    #[serde(default)]
    last: BTreeMap<String, IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Allocation {
    ip: IpAddr,
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The allocations of one network.
pub struct Store {
    dir: PathBuf,
    cidrs: Vec<IpNet>,
}

/// The state file, locked for as long as this lives.
struct Locked {
    _lock: File,
    state: State,
}

impl Store {
    pub fn open(conf: &NetConf) -> Result<Self, CniError> {
        let dir = conf.data_dir.join(&conf.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating", &dir, e))?;
        Ok(Self {
            dir,
            cidrs: conf.pod_cidrs.clone(),
        })
    }

    /// The addresses of an attachment: the ones it already has (ADD is idempotent),
    /// else new ones.
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Vec<PodAddress>, CniError> {
        let mut locked = self.lock()?;
        let mut addresses = Vec::with_capacity(self.cidrs.len());
        let mut changed = false;
        for cidr in &self.cidrs {
            let held = locked
                .state
                .allocations
                .iter()
                .find(|a| {
                    a.container_id == container_id && a.ifname == ifname && cidr.contains(&a.ip)
                })
                .map(|a| a.ip);
            let ip = match held {
                Some(ip) => ip,
                None => {
                    let ip = next_free(cidr, &locked.state)?;
                    locked.state.allocations.push(Allocation {
                        ip,
                        container_id: container_id.to_string(),
                        ifname: ifname.to_string(),
                    });
                    locked.state.last.insert(cidr.to_string(), ip);
                    changed = true;
                    ip
                }
            };
            addresses.push(PodAddress {
                ip,
                cidr: *cidr,
                gateway: gateway(cidr),
            });
        }
        if changed {
            self.save(&locked.state)?;
        }
        Ok(addresses)
    }

    /// Returns the addresses of an attachment; releasing an unknown one succeeds.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let mut locked = self.lock()?;
        let before = locked.state.allocations.len();
        locked
            .state
            .allocations
            .retain(|a| !(a.container_id == container_id && a.ifname == ifname));
        if locked.state.allocations.len() != before {
            self.save(&locked.state)?;
        }
        Ok(())
    }

    /// The attachments holding addresses that `valid` does not list.
    pub fn stale(&self, valid: &[Attachment]) -> Result<Vec<(String, String)>, CniError> {
        let locked = self.lock()?;
        let mut stale: Vec<(String, String)> = locked
            .state
            .allocations
            .iter()
            .filter(|a| {
                !valid
                    .iter()
                    .any(|v| v.container_id == a.container_id && v.ifname == a.ifname)
            })
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        stale.sort();
        stale.dedup();
        Ok(stale)
    }

    /// CHECK: every address of the previous result is still reserved for the attachment.
    pub fn check(
        &self,
        container_id: &str,
        ifname: &str,
        expected: &CniResult,
    ) -> Result<(), CniError> {
        let locked = self.lock()?;
        for ip in expected.ips.iter().map(|c| c.address.addr()) {
            let reserved = locked
                .state
                .allocations
                .iter()
                .any(|a| a.ip == ip && a.container_id == container_id && a.ifname == ifname);
            if !reserved {
                return Err(CniError::new(
                    code::CHECK_FAILED,
                    format!("address {ip} is no longer reserved for {container_id}/{ifname}"),
                    "",
                ));
            }
        }
        Ok(())
    }

    /// STATUS: the state can be locked and rewritten, and every CIDR has room.
    pub fn status(&self) -> Result<(), CniError> {
        let locked = self.lock()?;
        self.save(&locked.state).map_err(|e| {
            CniError::new(
                code::NOT_AVAILABLE,
                "the allocation store is not writable",
                e.msg,
            )
        })?;
        for cidr in &self.cidrs {
            next_free(cidr, &locked.state).map_err(|e| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    e.msg,
                    "release addresses or widen the pod CIDR",
                )
            })?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<Locked, CniError> {
        let path = self.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("opening", &path, e))?;
        // SAFETY: flock on an fd we own; it is released when the file closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_error("locking", &path, std::io::Error::last_os_error()));
        }
        let state_path = self.dir.join(STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("{} is corrupt", state_path.display()),
                    e.to_string(),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_error("reading", &state_path, e)),
        };
        Ok(Locked { _lock: lock, state })
    }

    /// Replaces the state file atomically and durably.
    fn save(&self, state: &State) -> Result<(), CniError> {
        let path = self.dir.join(STATE_FILE);
        let temporary = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| {
            CniError::new(code::IO_FAILURE, "encoding the allocations", e.to_string())
        })?;
        let mut file = File::create(&temporary).map_err(|e| io_error("creating", &temporary, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("writing", &temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| io_error("replacing", &path, e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io_error("syncing", &self.dir, e))
    }
}

/// The node side's address in a pod CIDR: its first host address.
pub fn gateway(cidr: &IpNet) -> IpAddr {
    offset(cidr, 1)
}

/// The next free address after the last one handed out, wrapping around.
fn next_free(cidr: &IpNet, state: &State) -> Result<IpAddr, CniError> {
    let (first, last) = match cidr {
        // .0 is the network, .1 the gateway, the last the broadcast address.
        IpNet::V4(_) => (2u128, host_count(cidr) - 2),
        IpNet::V6(_) => (2u128, host_count(cidr) - 1),
    };
    let start = state
        .last
        .get(&cidr.to_string())
        .map(|ip| index_of(cidr, *ip) + 1)
        .filter(|i| (first..=last).contains(i))
        .unwrap_or(first);
    let span = last - first + 1;
    (0..span)
        .map(|i| first + (start - first + i) % span)
        .map(|i| offset(cidr, i))
        .find(|ip| !state.allocations.iter().any(|a| a.ip == *ip))
        .ok_or_else(|| {
            CniError::new(
                code::ADDRESSES_EXHAUSTED,
                format!("no free address left in {cidr}"),
                format!("{span} addresses are allocated"),
            )
        })
}

/// How many addresses the CIDR spans (capped for huge IPv6 prefixes).
fn host_count(cidr: &IpNet) -> u128 {
    let bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

fn offset(cidr: &IpNet, index: u128) -> IpAddr {
    match cidr {
        IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(
            u32::from(net.network()).wrapping_add(index as u32),
        )),
        IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(
            u128::from(net.network()).wrapping_add(index),
        )),
    }
}

fn index_of(cidr: &IpNet, ip: IpAddr) -> u128 {
    match (cidr, ip) {
        (IpNet::V4(net), IpAddr::V4(ip)) => {
            u128::from(u32::from(ip).wrapping_sub(u32::from(net.network())))
        }
        (IpNet::V6(net), IpAddr::V6(ip)) => u128::from(ip).wrapping_sub(u128::from(net.network())),
        _ => u128::MAX,
    }
}

fn io_error(action: &str, path: &Path, error: std::io::Error) -> CniError {
    CniError::new(
        code::IO_FAILURE,
        format!("{action} {}: {error}", path.display()),
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cidrs: &[&str]) -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conf = NetConf {
            cni_version: "1.1.0".into(),
            name: "test".into(),
            mtu: None,
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            data_dir: dir.path().to_path_buf(),
            dns: None,
            prev_result: None,
            valid_attachments: Vec::new(),
        };
        (Store::open(&conf).unwrap(), dir)
    }

    fn ips(addresses: &[PodAddress]) -> Vec<String> {
        addresses.iter().map(|a| a.ip.to_string()).collect()
    }

    #[test]
    fn one_address_per_family_with_the_first_as_gateway() {
        let (store, _dir) = store(&["10.244.0.0/24", "fd00:10:244::/64"]);
        let a = store.allocate("c1", "eth0").unwrap();
        assert_eq!(ips(&a), ["10.244.0.2", "fd00:10:244::2"]);
        assert_eq!(a[0].gateway.to_string(), "10.244.0.1");
        assert_eq!(a[1].gateway.to_string(), "fd00:10:244::1");
        // Idempotent for the same attachment; distinct for another interface.
        assert_eq!(ips(&store.allocate("c1", "eth0").unwrap()), ips(&a));
        assert_eq!(
            ips(&store.allocate("c1", "eth1").unwrap()),
            ["10.244.0.3", "fd00:10:244::3"]
        );
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let (store, _dir) = store(&["10.244.0.0/24"]);
        store.allocate("a", "eth0").unwrap();
        store.release("a", "eth0").unwrap();
        store.release("a", "eth0").unwrap(); // unknown: still fine
        assert_eq!(ips(&store.allocate("b", "eth0").unwrap()), ["10.244.0.3"]);
    }

    #[test]
    fn exhaustion_names_the_cidr() {
        // A /29 has .2 to .6 for pods.
        let (store, _dir) = store(&["10.244.0.0/29"]);
        for i in 0..5 {
            store.allocate(&format!("c{i}"), "eth0").unwrap();
        }
        let err = store.allocate("c9", "eth0").unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (
                code::ADDRESSES_EXHAUSTED,
                "no free address left in 10.244.0.0/29"
            )
        );
        assert_eq!(store.status().unwrap_err().code, code::NOT_AVAILABLE);
        store.release("c3", "eth0").unwrap();
        store.status().unwrap();
        assert_eq!(ips(&store.allocate("c9", "eth0").unwrap()), ["10.244.0.5"]);
    }

    #[test]
    fn garbage_is_what_the_runtime_no_longer_lists() {
        let (store, _dir) = store(&["10.244.0.0/24", "fd00::/64"]);
        for id in ["keep", "drop"] {
            store.allocate(id, "eth0").unwrap();
        }
        let valid = [Attachment {
            container_id: "keep".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(
            store.stale(&valid).unwrap(),
            [("drop".to_string(), "eth0".to_string())]
        );
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let (store, _dir) = store(&["10.244.0.0/24", "fd00::/64"]);
        let store = std::sync::Arc::new(store);
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || store.allocate(&format!("c{i}"), "eth0").unwrap())
            })
            .collect();
        let mut all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| ips(&h.join().unwrap()))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 32);
    }
}
