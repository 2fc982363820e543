//! The address spaces the API hands out from: ClusterIPs from the service CIDRs (one
//! per family) and NodePorts from their port range. Choosing is plain data and
//! arithmetic here; the registry makes a choice stick with a create-only store key,
//! so two concurrent requests never get the same address.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::Rng;

/// Random picks tried before falling back to a scan (which finds the last free
/// address of a nearly full range).
const RANDOM_TRIES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The name Kubernetes uses in spec.ipFamilies.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "IPv4" => Some(Family::Ipv4),
            "IPv6" => Some(Family::Ipv6),
            _ => None,
        }
    }
}

/// The service network of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetworks {
    pub ipv4: Ipv4Net,
    pub ipv6: Ipv6Net,
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetworks {
    fn default() -> Self {
        Self {
            ipv4: Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).expect("valid prefix"),
            ipv6: Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0), 112)
                .expect("valid prefix"),
            node_ports: 30000..=32767,
        }
    }
}

impl ServiceNetworks {
    pub fn cidr(&self, family: Family) -> IpNet {
        match family {
            Family::Ipv4 => IpNet::V4(self.ipv4),
            Family::Ipv6 => IpNet::V6(self.ipv6),
        }
    }

    /// Whether `ip` may be a ClusterIP: inside its family's CIDR and not the network
    /// (or, for IPv4, broadcast) address.
    pub fn assignable(&self, ip: IpAddr) -> bool {
        let (first, last) = self.offsets(Family::of(ip));
        let offset = offset_of(self.cidr(Family::of(ip)), ip);
        offset.is_some_and(|o| (first..=last).contains(&o))
    }

    /// A free ClusterIP of `family`, or None when every address is taken.
    pub fn pick_ip(&self, family: Family, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
        let cidr = self.cidr(family);
        let (first, last) = self.offsets(family);
        pick(first, last, |offset| {
            let ip = address_at(cidr, offset);
            (!taken.contains(&ip)).then_some(ip)
        })
    }

    /// A free NodePort, or None when the range is used up.
    pub fn pick_node_port(&self, taken: &HashSet<u16>) -> Option<u16> {
        let (first, last) = (
            u128::from(*self.node_ports.start()),
            u128::from(*self.node_ports.end()),
        );
        pick(first, last, |offset| {
            let port = u16::try_from(offset).ok()?;
            (!taken.contains(&port)).then_some(port)
        })
    }

    /// The first and last assignable offsets into a family's CIDR.
    fn offsets(&self, family: Family) -> (u128, u128) {
        let cidr = self.cidr(family);
        let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
        let size = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
        match family {
            // Network and broadcast addresses are not hosts.
            Family::Ipv4 => (1, size.saturating_sub(2)),
            // The subnet-router anycast address (offset 0) is reserved.
            Family::Ipv6 => (1, size - 1),
        }
    }
}

/// Tries random offsets in [first, last], then scans from a random start.
fn pick<T>(first: u128, last: u128, mut free: impl FnMut(u128) -> Option<T>) -> Option<T> {
    if first > last {
        return None;
    }
    let mut rng = rand::rng();
    for _ in 0..RANDOM_TRIES {
        if let Some(found) = free(rng.random_range(first..=last)) {
            return Some(found);
        }
    }
    let span = last - first + 1;
    let start = rng.random_range(0..span);
    (0..span).find_map(|i| free(first + (start + i) % span))
}

fn address_at(cidr: IpNet, offset: u128) -> IpAddr {
    match cidr {
        IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(
            u32::from(net.network()).wrapping_add(offset as u32),
        )),
        IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(
            u128::from(net.network()).wrapping_add(offset),
        )),
    }
}

fn offset_of(cidr: IpNet, ip: IpAddr) -> Option<u128> {
    if !cidr.contains(&ip) {
        return None;
    }
    Some(match (cidr, ip) {
        (IpNet::V4(net), IpAddr::V4(ip)) => u128::from(u32::from(ip) - u32::from(net.network())),
        (IpNet::V6(net), IpAddr::V6(ip)) => u128::from(ip) - u128::from(net.network()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ServiceNetworks {
        ServiceNetworks {
            ipv4: "10.96.0.0/30".parse().unwrap(),
            ipv6: "fd00::/126".parse().unwrap(),
            node_ports: 30000..=30002,
        }
    }

    #[test]
    fn picks_are_inside_the_cidr_and_never_taken() {
        let nets = ServiceNetworks::default();
        let mut taken = HashSet::new();
        for _ in 0..500 {
            let ip = nets.pick_ip(Family::Ipv4, &taken).unwrap();
            assert!(
                IpNet::V4(nets.ipv4).contains(&ip) && nets.assignable(ip),
                "{ip}"
            );
            assert!(taken.insert(ip), "{ip} picked twice");
        }
        let v6 = nets.pick_ip(Family::Ipv6, &HashSet::new()).unwrap();
        assert!(IpNet::V6(nets.ipv6).contains(&v6));
    }

    #[test]
    fn a_full_range_is_exhausted_without_reusing_addresses() {
        let nets = tiny();
        let mut taken = HashSet::new();
        // A /30 has two hosts: .1 and .2.
        while let Some(ip) = nets.pick_ip(Family::Ipv4, &taken) {
            assert!(taken.insert(ip));
        }
        let mut hosts: Vec<String> = taken.iter().map(|ip| ip.to_string()).collect();
        hosts.sort();
        assert_eq!(hosts, ["10.96.0.1", "10.96.0.2"]);

        let mut v6 = HashSet::new();
        while let Some(ip) = nets.pick_ip(Family::Ipv6, &v6) {
            assert!(v6.insert(ip));
        }
        assert_eq!(v6.len(), 3, "{v6:?}");
    }

    #[test]
    fn node_ports_come_from_the_range() {
        let nets = tiny();
        let mut taken = HashSet::new();
        while let Some(port) = nets.pick_node_port(&taken) {
            assert!(nets.node_ports.contains(&port));
            assert!(taken.insert(port));
        }
        assert_eq!(taken.len(), 3);
    }

    #[test]
    fn assignable_excludes_network_broadcast_and_outsiders() {
        let nets = ServiceNetworks::default();
        for (ip, ok) in [
            ("10.96.0.10", true),
            ("10.96.0.0", false),
            ("10.111.255.255", false),
            ("10.112.0.1", false),
            ("fd00:10:96::a", true),
            ("fd00:10:96::", false),
            ("fd00:10:97::1", false),
        ] {
            assert_eq!(nets.assignable(ip.parse().unwrap()), ok, "{ip}");
        }
    }
}
