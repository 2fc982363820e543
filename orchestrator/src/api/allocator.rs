//! The address spaces the API hands out from: ClusterIPs from the service CIDRs (one
//! per family), NodePorts from their port range, and each node's pod CIDRs from the
//! cluster's pod networks. Choosing is plain data and arithmetic here; the registry
//! makes a choice stick with a create-only store key, so two concurrent requests (or
//! two nodes starting at once) never get the same addresses.

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

/// The pod CIDR a node asks for in one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodCidr {
    /// Exactly this one (`--pod-cidr`).
    Fixed(IpNet),
    /// A free subnet of `cluster` with this prefix length.
    Allocate { cluster: IpNet, prefix_len: u8 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodCidrError {
    #[error("a node's pod CIDR cannot be /{prefix_len} inside {cluster}: it must be /{} to /{}", .cluster.prefix_len(), .cluster.max_prefix_len())]
    PrefixLength { cluster: IpNet, prefix_len: u8 },
    #[error("every /{prefix_len} of {cluster} is taken by another node")]
    Exhausted { cluster: IpNet, prefix_len: u8 },
    #[error("a node has one pod CIDR per IP family, not {first} and {second}")]
    SameFamily { first: IpNet, second: IpNet },
    #[error("pod CIDR {wanted} overlaps {held}, node {owner}'s")]
    Taken {
        wanted: IpNet,
        held: IpNet,
        owner: String,
    },
}

impl PodCidr {
    /// Checks that `wanted` asks for at most one CIDR per IP family, as Kubernetes'
    /// `spec.podCIDRs` holds.
    pub fn one_per_family(wanted: &[PodCidr]) -> Result<(), PodCidrError> {
        for (i, first) in wanted.iter().enumerate() {
            if let Some(second) = wanted[i + 1..]
                .iter()
                .find(|other| other.network().max_prefix_len() == first.network().max_prefix_len())
            {
                return Err(PodCidrError::SameFamily {
                    first: first.network(),
                    second: second.network(),
                });
            }
        }
        Ok(())
    }

    /// The network asked for, or allocated from.
    fn network(&self) -> IpNet {
        match *self {
            PodCidr::Fixed(net) | PodCidr::Allocate { cluster: net, .. } => net,
        }
    }

    /// The CIDR for node `node`, given every node's (`held`: CIDR and owner). A node
    /// keeps what it already holds inside the cluster network, so restarts do not
    /// renumber its pods; otherwise it gets the lowest subnet that overlaps nothing
    /// held, so nodes pack from the start of the network.
    pub fn choose(&self, node: &str, held: &[(IpNet, String)]) -> Result<IpNet, PodCidrError> {
        let overlapping = |net: &IpNet| {
            held.iter()
                .find(|(other, _)| other.contains(&net.network()) || net.contains(&other.network()))
        };
        match *self {
            PodCidr::Fixed(wanted) => match overlapping(&wanted) {
                Some((held, owner)) if owner != node => Err(PodCidrError::Taken {
                    wanted,
                    held: *held,
                    owner: owner.clone(),
                }),
                _ => Ok(wanted),
            },
            PodCidr::Allocate {
                cluster,
                prefix_len,
            } => {
                let mut subnets =
                    cluster
                        .subnets(prefix_len)
                        .map_err(|_| PodCidrError::PrefixLength {
                            cluster,
                            prefix_len,
                        })?;
                let own = held.iter().find(|(net, owner)| {
                    owner == node && net.prefix_len() == prefix_len && cluster.contains(net)
                });
                match own {
                    Some((net, _)) => Ok(*net),
                    None => subnets.find(|net| overlapping(net).is_none()).ok_or(
                        PodCidrError::Exhausted {
                            cluster,
                            prefix_len,
                        },
                    ),
                }
            }
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

    fn held(entries: &[(&str, &str)]) -> Vec<(IpNet, String)> {
        entries
            .iter()
            .map(|(net, owner)| (net.parse().unwrap(), owner.to_string()))
            .collect()
    }

    fn allocate(cluster: &str, prefix_len: u8) -> PodCidr {
        PodCidr::Allocate {
            cluster: cluster.parse().unwrap(),
            prefix_len,
        }
    }

    #[test]
    fn nodes_get_the_lowest_free_pod_cidr_of_each_family() {
        let v4 = allocate("10.244.0.0/16", 24);
        let v6 = allocate("fd00:10:244::/56", 64);
        let first = v4.choose("a", &[]).unwrap();
        assert_eq!(first.to_string(), "10.244.0.0/24");
        assert_eq!(v6.choose("a", &[]).unwrap().to_string(), "fd00:10:244::/64");
        let taken = held(&[
            ("10.244.0.0/24", "a"),
            ("fd00:10:244::/64", "a"),
            // Another network's, and a larger block someone fixed by hand.
            ("10.0.0.0/24", "x"),
            ("10.244.2.0/23", "y"),
        ]);
        assert_eq!(v4.choose("b", &taken).unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(
            v6.choose("b", &taken).unwrap().to_string(),
            "fd00:10:244:1::/64"
        );
        let more = [taken, held(&[("10.244.1.0/24", "b")])].concat();
        assert_eq!(v4.choose("c", &more).unwrap().to_string(), "10.244.4.0/24");
    }

    #[test]
    fn a_node_keeps_the_pod_cidr_it_holds() {
        let v4 = allocate("10.244.0.0/16", 24);
        let taken = held(&[("10.244.0.0/24", "a"), ("10.244.7.0/24", "b")]);
        assert_eq!(v4.choose("b", &taken).unwrap().to_string(), "10.244.7.0/24");
        // Not one of another size or outside the network: that is someone else's plan.
        let other_size = held(&[("10.244.8.0/23", "b")]);
        assert_eq!(
            v4.choose("b", &other_size).unwrap().to_string(),
            "10.244.0.0/24"
        );
    }

    #[test]
    fn a_full_pod_network_and_bad_sizes_are_errors() {
        let tiny = allocate("10.244.0.0/23", 24);
        let full = held(&[("10.244.0.0/24", "a"), ("10.244.1.0/24", "b")]);
        assert_eq!(
            tiny.choose("c", &full).unwrap_err().to_string(),
            "every /24 of 10.244.0.0/23 is taken by another node"
        );
        for prefix_len in [16, 33] {
            let bad = allocate("10.244.0.0/23", prefix_len);
            assert!(matches!(
                bad.choose("a", &[]),
                Err(PodCidrError::PrefixLength { .. })
            ));
        }
    }

    #[test]
    fn a_node_asks_for_one_pod_cidr_per_family() {
        let dual = [allocate("10.244.0.0/16", 24), allocate("fd00::/56", 64)];
        assert_eq!(PodCidr::one_per_family(&dual), Ok(()));
        let twice = [
            dual[0].clone(),
            PodCidr::Fixed("10.1.0.0/24".parse().unwrap()),
        ];
        assert_eq!(
            PodCidr::one_per_family(&twice).unwrap_err().to_string(),
            "a node has one pod CIDR per IP family, not 10.244.0.0/16 and 10.1.0.0/24"
        );
    }

    #[test]
    fn a_fixed_pod_cidr_must_not_overlap_another_nodes() {
        let taken = held(&[("10.244.0.0/24", "a")]);
        let fixed = |net: &str| PodCidr::Fixed(net.parse().unwrap());
        assert_eq!(
            fixed("10.244.0.128/25")
                .choose("b", &taken)
                .unwrap_err()
                .to_string(),
            "pod CIDR 10.244.0.128/25 overlaps 10.244.0.0/24, node a's"
        );
        assert!(fixed("10.244.0.0/16").choose("b", &taken).is_err());
        assert_eq!(
            fixed("10.244.0.0/24")
                .choose("a", &taken)
                .unwrap()
                .to_string(),
            "10.244.0.0/24"
        );
        assert_eq!(
            fixed("10.244.1.0/24")
                .choose("b", &taken)
                .unwrap()
                .to_string(),
            "10.244.1.0/24"
        );
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
