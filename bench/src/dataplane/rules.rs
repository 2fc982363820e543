//! The services every load balancer is programmed with, and the rule sets that
//! kube-proxy would write for them: its iptables mode (an `iptables-restore` input)
//! and its nftables mode (an `nft -f` input).
//!
//! Both follow the layout kube-proxy's proxiers generate for ClusterIP services,
//! the NAT path only: the filter-table checks (services without endpoints,
//! firewalls) are left out, as every service here has endpoints, so they would only
//! add work to iptables and nftables.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The cluster's pod CIDR: clients and backends are inside it, so kube-proxy's
/// masquerade rules are evaluated but do not match, as for a pod client.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The port of every service.
pub const SERVICE_PORT: u16 = 80;
/// The port of every backend.
pub const BACKEND_PORT: u16 = 8080;
/// The first service virtual IP (10.96.0.0/12 is the service CIDR).
const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Filler services' backends are numbered from here (10.244.1.0, outside the
/// /24 where the bench's real backends listen); nothing ever connects to them.
const FIRST_FILLER_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);

/// `count` services; the last one (the measured one, last in kube-proxy's
/// KUBE-SERVICES order) has `measured_backends` when given, every other has
/// `filler_backends` addresses no one listens on.
#[derive(Debug, Clone)]
pub struct ServiceSet {
    pub count: usize,
    pub filler_backends: usize,
    pub measured_backends: Option<Vec<SocketAddrV4>>,
}

/// One service as every load balancer is given it.
pub struct Service {
    pub index: usize,
    pub vip: SocketAddrV4,
    pub backends: Vec<SocketAddrV4>,
}

impl Service {
    /// kube-proxy's names carry namespace, service and port name.
    fn port_name(&self) -> String {
        format!("bench/svc-{:05}:http", self.index)
    }

    /// A kube-proxy-style chain suffix: 16 characters of a hash of the name.
    fn hash(&self, salt: u64) -> String {
        format!("{:016X}", splitmix64(((self.index as u64) << 20) ^ salt))
    }
}

impl ServiceSet {
    pub fn vip(index: usize) -> SocketAddrV4 {
        SocketAddrV4::new(offset(FIRST_VIP, index), SERVICE_PORT)
    }

    /// The frontend the benchmark connects to.
    pub fn measured_vip(&self) -> SocketAddrV4 {
        Self::vip(self.count - 1)
    }

    pub fn services(&self) -> impl Iterator<Item = Service> + '_ {
        (0..self.count).map(move |index| {
            let backends = match &self.measured_backends {
                Some(measured) if index == self.count - 1 => measured.clone(),
                _ => (0..self.filler_backends)
                    .map(|e| {
                        let n = (index * self.filler_backends + e) % (1 << 16);
                        SocketAddrV4::new(offset(FIRST_FILLER_BACKEND, n), BACKEND_PORT)
                    })
                    .collect(),
            };
            Service {
                index,
                vip: Self::vip(index),
                backends,
            }
        })
    }

    /// Every service as skiff's dataplane takes it.
    pub fn skiff_services(&self) -> impl Iterator<Item = (SocketAddr, Vec<SocketAddr>)> + '_ {
        self.services().map(|s| {
            (
                SocketAddr::V4(s.vip),
                s.backends.into_iter().map(SocketAddr::V4).collect(),
            )
        })
    }

    /// kube-proxy's iptables mode: an `iptables-restore` input replacing the nat
    /// table. Per service: one rule in KUBE-SERVICES matching the virtual IP and
    /// port, jumping to a KUBE-SVC chain that picks one KUBE-SEP chain per endpoint
    /// with `statistic --mode random`; each KUBE-SEP chain DNATs.
    pub fn iptables_restore(&self) -> String {
        let mut chains = String::new();
        let mut rules = String::new();
        let mut svc_rules = String::new();
        for s in self.services() {
            let comment = s.port_name();
            let svc_chain = format!("KUBE-SVC-{}", s.hash(0));
            let vip = s.vip.ip();
            let port = s.vip.port();
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{comment} cluster IP\" -m tcp --dport {port} -j {svc_chain}"
            );
            let _ = writeln!(
                svc_rules,
                "-A {svc_chain} ! -s {CLUSTER_CIDR} -d {vip}/32 -p tcp -m comment --comment \"{comment} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ"
            );
            let n = s.backends.len();
            for (i, ep) in s.backends.iter().enumerate() {
                let sep_chain = format!("KUBE-SEP-{}", s.hash(1 + i as u64));
                let _ = writeln!(chains, ":{sep_chain} - [0:0]");
                let remaining = n - i;
                let pick = if remaining > 1 {
                    format!(
                        " -m statistic --mode random --probability {:.11}",
                        1.0 / remaining as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    svc_rules,
                    "-A {svc_chain} -m comment --comment \"{comment} -> {ep}\"{pick} -j {sep_chain}"
                );
                let _ = writeln!(
                    svc_rules,
                    "-A {sep_chain} -s {}/32 -m comment --comment \"{comment}\" -j KUBE-MARK-MASQ",
                    ep.ip()
                );
                let _ = writeln!(
                    svc_rules,
                    "-A {sep_chain} -p tcp -m comment --comment \"{comment}\" -m tcp -j DNAT --to-destination {ep}"
                );
            }
        }
        let mut out = String::with_capacity(chains.len() + rules.len() + svc_rules.len() + 1024);
        out.push_str(
            "*nat\n\
             :PREROUTING ACCEPT [0:0]\n\
             :INPUT ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n\
             :KUBE-SERVICES - [0:0]\n\
             :KUBE-NODEPORTS - [0:0]\n\
             :KUBE-POSTROUTING - [0:0]\n\
             :KUBE-MARK-MASQ - [0:0]\n",
        );
        out.push_str(&chains);
        out.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
             -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
             -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
        );
        out.push_str(&rules);
        out.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
        out.push_str(&svc_rules);
        out.push_str("COMMIT\n");
        out
    }

    /// kube-proxy's nftables mode: an `nft -f` input creating table `ip kube-proxy`.
    /// One verdict map from (virtual IP, protocol, port) to a per-service chain,
    /// which picks an endpoint chain with `numgen random mod N vmap`; each endpoint
    /// chain DNATs. Every chain is declared before any rule refers to it, as
    /// kube-proxy's transactions do.
    pub fn nft_script(&self) -> String {
        const T: &str = "ip kube-proxy";
        let mut decl = String::new();
        let mut body = String::new();
        let _ = writeln!(
            decl,
            "add table {T} {{ comment \"rules for kube-proxy\" ; }}\n\
             add chain {T} nat-prerouting {{ type nat hook prerouting priority -100 ; }}\n\
             add chain {T} nat-output {{ type nat hook output priority -100 ; }}\n\
             add chain {T} nat-postrouting {{ type nat hook postrouting priority 100 ; }}\n\
             add chain {T} mark-for-masquerade\n\
             add chain {T} masquerading\n\
             add chain {T} services\n\
             add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
        );
        let _ = writeln!(
            body,
            "add rule {T} nat-prerouting jump services\n\
             add rule {T} nat-output jump services\n\
             add rule {T} nat-postrouting jump masquerading\n\
             add rule {T} mark-for-masquerade mark set mark or 0x4000\n\
             add rule {T} masquerading mark and 0x4000 == 0 return\n\
             add rule {T} masquerading mark set mark xor 0x4000\n\
             add rule {T} masquerading masquerade fully-random\n\
             add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips"
        );
        for s in self.services() {
            let short = &s.hash(0)[..8];
            let name = format!("bench/svc-{:05}/tcp/http", s.index);
            let svc_chain = format!("service-{short}-{name}");
            let vip = s.vip.ip();
            let port = s.vip.port();
            let _ = writeln!(decl, "add chain {T} {svc_chain}");
            let _ = writeln!(
                body,
                "add rule {T} {svc_chain} ip daddr {vip} tcp dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
            );
            let mut vmap = String::new();
            for (i, ep) in s.backends.iter().enumerate() {
                let ep_chain = format!(
                    "endpoint-{}-{name}__{}/{}",
                    &s.hash(1 + i as u64)[..8],
                    ep.ip(),
                    ep.port()
                );
                let _ = writeln!(decl, "add chain {T} {ep_chain}");
                let _ = writeln!(
                    body,
                    "add rule {T} {ep_chain} ip saddr {} jump mark-for-masquerade\n\
                     add rule {T} {ep_chain} meta l4proto tcp dnat to {ep}",
                    ep.ip()
                );
                if i > 0 {
                    vmap.push_str(", ");
                }
                let _ = write!(vmap, "{i} : goto {ep_chain}");
            }
            let _ = writeln!(
                body,
                "add rule {T} {svc_chain} numgen random mod {} vmap {{ {vmap} }}",
                s.backends.len()
            );
            let _ = writeln!(
                body,
                "add element {T} service-ips {{ {vip} . tcp . {port} : goto {svc_chain} }}"
            );
        }
        decl + &body
    }
}

fn offset(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n as u32))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(count: usize) -> ServiceSet {
        ServiceSet {
            count,
            filler_backends: 3,
            measured_backends: Some(vec![
                "10.244.0.2:8080".parse().unwrap(),
                "10.244.0.3:8080".parse().unwrap(),
            ]),
        }
    }

    #[test]
    fn the_measured_service_is_last_and_has_the_real_backends() {
        let services: Vec<Service> = set(3).services().collect();
        assert_eq!(services.len(), 3);
        assert_eq!(services[0].vip, "10.96.0.1:80".parse().unwrap());
        assert_eq!(services[2].vip, set(3).measured_vip());
        assert_eq!(services[0].backends.len(), 3);
        assert_eq!(
            services[2].backends,
            vec![
                "10.244.0.2:8080".parse::<SocketAddrV4>().unwrap(),
                "10.244.0.3:8080".parse().unwrap()
            ]
        );
    }

    #[test]
    fn iptables_puts_the_measured_service_last_before_nodeports() {
        let text = set(3).iptables_restore();
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(jumps.len(), 4);
        assert!(jumps[2].contains("-d 10.96.0.3/32"), "{}", jumps[2]);
        assert!(jumps[3].contains("KUBE-NODEPORTS"));
        // Two endpoints: the first picked with probability 1/2, the last always.
        assert!(text.contains("--probability 0.50000000000"));
        assert!(text.contains("-j DNAT --to-destination 10.244.0.3:8080"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn nft_maps_every_service_and_declares_chains_before_rules() {
        let text = set(3).nft_script();
        assert_eq!(
            text.matches("add element ip kube-proxy service-ips")
                .count(),
            3
        );
        assert!(text.contains("numgen random mod 2 vmap"));
        assert!(text.contains("numgen random mod 3 vmap"));
        let last_decl = text.rfind("add chain").unwrap();
        let first_rule = text.find("add rule").unwrap();
        assert!(last_decl < first_rule);
    }
}
