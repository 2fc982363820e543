//! What ADD builds for one attachment, as plain data: interface names, addresses
//! and routes, decided before the kernel is touched.

use std::path::PathBuf;

use crate::config::NetConf;
use crate::invocation::Invocation;
use crate::ipam::PodAddress;

/// Prefix of the node-side veth names, so they are recognisable in `ip link`.
const HOST_VETH_PREFIX: &str = "skf";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wiring {
    /// The node side of the veth pair.
    pub host_veth: String,
    /// The pod side's name when it is made in the pod's namespace, before it is
    /// renamed to CNI_IFNAME there: unique to the attachment, so making the pair
    /// never clashes with the pod's own interfaces (an existing eth0 is reported by
    /// the rename).
    pub transit_name: String,
    /// The pod side's final name (CNI_IFNAME).
    pub pod_ifname: String,
    pub netns: PathBuf,
    pub mtu: Option<u32>,
    pub addresses: Vec<PodAddress>,
}

impl Wiring {
    pub fn plan(conf: &NetConf, call: &Invocation, addresses: &[PodAddress]) -> Self {
        let host_veth = host_veth_name(&call.container_id, &call.ifname);
        Self {
            transit_name: format!("skt{}", &host_veth[HOST_VETH_PREFIX.len()..]),
            host_veth,
            pod_ifname: call.ifname.clone(),
            netns: call.netns.clone().unwrap_or_default(),
            mtu: conf.mtu,
            addresses: addresses.to_vec(),
        }
    }
}

/// The node-side veth of an attachment: derived from (container ID, interface), so
/// DEL and a retried ADD find it without any stored state. 15 bytes: the Linux limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{:012x}", hash & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_distinct_and_short() {
        let a = host_veth_name("c1", "eth0");
        assert_eq!(a, host_veth_name("c1", "eth0"));
        assert_ne!(a, host_veth_name("c1", "eth1"));
        // The separator keeps ("c1e", "th0") apart from ("c1", "eth0").
        assert_ne!(a, host_veth_name("c1e", "th0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("skf"));
    }
}
