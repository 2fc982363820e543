//! Connect-time capture for the service mesh: the maps and the decision shared by
//! the `connect4/6` hooks, the `sock_ops` program and the agent's node proxy.
//!
//! A pod is enrolled when its network namespace cookie is in [`MESH_PODS_MAP`]
//! (written by the agent). A TCP connect() from an enrolled pod to anything but
//! loopback and the tunnel port is sent to the node proxy's listener inside the
//! pod, `127.0.0.1:15001` (`[::1]:15001` for IPv6), after the service load balancer
//! chose a backend ([`mesh_redirect`]), or with the service frontend kept for
//! ports that declare HTTP ([`keeps_frontend`]). The proxy's own sockets, which live in
//! pods' namespaces too, are told apart by the process: its id is in
//! [`MESH_CONFIG_MAP`].
//!
//! The original destination is recorded under the socket cookie in
//! [`MESH_REDIRECTS_MAP`]. Once the kernel has picked the source port, the
//! `sock_ops` program copies it under ([`OriginalDstKey`]: namespace cookie, local
//! port, family) into [`MESH_ORIGINAL_DST_MAP`], which the proxy reads for the peer
//! port of each connection it accepts, and deletes.
//!
//! Strict mode: a tc program on the host side of a strict pod's link (egress,
//! toward the pod) drops TCP connections opened to any port but the tunnel's,
//! unless they come from the node itself (probes), which [`strict_refuses`]
//! decides.

use crate::{AF_INET, IPPROTO_TCP, RawAddr, SERVICE_HTTP};

/// Name of the map of enrolled pods' network namespace cookies.
pub const MESH_PODS_MAP: &str = "MESH_PODS";
/// Name of the one-entry array holding [`MeshConfig`].
pub const MESH_CONFIG_MAP: &str = "MESH_CONFIG";
/// Name of the LRU map socket cookie -> [`MeshDestination`].
pub const MESH_REDIRECTS_MAP: &str = "MESH_REDIRECTS";
/// Name of the LRU map [`OriginalDstKey`] -> [`MeshDestination`].
pub const MESH_ORIGINAL_DST_MAP: &str = "MESH_ORIGINAL_DST";

/// Capacity of [`MESH_PODS_MAP`]: enrolled pods on one node.
pub const MAX_MESH_PODS: u32 = 4_096;
/// Capacity of the two LRU maps of original destinations: connections being set
/// up at once (entries of connections long accepted are evicted first).
pub const MAX_MESH_REDIRECTS: u32 = 65_536;

/// The node proxy's outbound listener port, inside every enrolled pod (Istio's).
pub const MESH_OUTBOUND_PORT: u16 = 15001;
/// The tunnel port, which is never captured (Istio's HBONE port).
pub const MESH_TUNNEL_PORT: u16 = 15008;

/// The node proxy's settings for the kernel side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    /// The proxy's process id (`bpf_get_current_pid_tgid() >> 32`); 0 while no
    /// proxy runs, which captures nothing.
    pub proxy_tgid: u32,
    pub _pad: u32,
}

/// Where a captured connection was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshDestination {
    pub addr: RawAddr,
    /// Port in network byte order.
    pub port: u16,
    /// The destination's family; an IPv6 socket's IPv4-mapped destination is
    /// IPv4, and reaches the proxy's IPv4 listener.
    pub family: u8,
    pub _pad: u8,
    /// The service frontend the load balancer rewrote to `addr` (same family),
    /// for the metrics; port 0 when the connection was not to a service.
    pub frontend: RawAddr,
    /// Port in network byte order.
    pub frontend_port: u16,
    pub _pad_tail: [u8; 2],
}

/// Key of [`MESH_ORIGINAL_DST_MAP`]: the client socket's end of a connection to the
/// proxy's listener, as the proxy sees its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OriginalDstKey {
    pub netns: u64,
    /// The client's local port, host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

impl OriginalDstKey {
    pub const fn new(netns: u64, port: u16, family: u8) -> Self {
        Self {
            netns,
            port,
            family,
            _pad: [0; 5],
        }
    }
}

/// 127.0.0.1 in the kernel's form.
const LOOPBACK4: RawAddr = [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0];
/// ::1 in the kernel's form.
const LOOPBACK6: RawAddr = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// Whether `addr` of `family` is a loopback address (127/8, ::1).
#[inline(always)]
pub fn is_loopback(addr: RawAddr, family: u8) -> bool {
    if family == AF_INET {
        addr[0].to_ne_bytes()[0] == 127
    } else {
        addr == LOOPBACK6
    }
}

/// Whether the mesh captures a connect() made in a pod's namespace: the pod is
/// `enrolled`, a node proxy runs, and the caller is not that proxy (whose own
/// sockets live in pods' namespaces too).
#[inline(always)]
pub fn captures(enrolled: bool, caller_tgid: u32, config: MeshConfig) -> bool {
    enrolled && config.proxy_tgid != 0 && caller_tgid != config.proxy_tgid
}

/// Whether a captured TCP connect() to a service frontend keeps the frontend as
/// its destination rather than a backend chosen here: the service's port declares
/// HTTP ([`SERVICE_HTTP`] in `service_flags`), so the node proxy's L7 layer picks
/// a backend for each request.
#[inline(always)]
pub fn keeps_frontend(protocol: u8, service_flags: u8, captured: bool) -> bool {
    captured && protocol == IPPROTO_TCP && service_flags & SERVICE_HTTP != 0
}

/// Where a connect() the mesh `captured` goes: the proxy's listener address for
/// `family` (port in network order), or None to leave it alone. `destination` is
/// as services hold it (see `service_view`), after the load balancer's rewrite.
#[inline(always)]
pub fn mesh_redirect(
    protocol: u8,
    destination: RawAddr,
    port: u16,
    family: u8,
    captured: bool,
) -> Option<(RawAddr, u16)> {
    let redirected = captured
        && protocol == IPPROTO_TCP
        && !is_loopback(destination, family)
        && u16::from_be(port) != MESH_TUNNEL_PORT;
    let listener = if family == AF_INET {
        LOOPBACK4
    } else {
        LOOPBACK6
    };
    redirected.then_some((listener, MESH_OUTBOUND_PORT.to_be()))
}

/// The destination a socket's peer name shows when the socket was captured: the
/// original one when the peer is the proxy's listener.
#[inline(always)]
pub fn captured_peer(
    peer: RawAddr,
    port: u16,
    family: u8,
    record: Option<MeshDestination>,
) -> Option<MeshDestination> {
    let record = record?;
    (u16::from_be(port) == MESH_OUTBOUND_PORT
        && is_loopback(peer, family)
        && record.family == family)
        .then_some(record)
}

/// Strict mode's decision for a packet toward a strict pod: refuse a TCP
/// connection opening (`opens`: SYN without ACK) to any port but the tunnel's
/// (`port` in network order) unless it comes from the node itself (`local`: the
/// packet has a socket of this host).
#[inline(always)]
pub fn strict_refuses(opens: bool, port: u16, local: bool) -> bool {
    opens && !local && u16::from_be(port) != MESH_TUNNEL_PORT
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data with explicit padding, valid for any bytes.
    unsafe impl aya::Pod for super::MeshConfig {}
    unsafe impl aya::Pod for super::MeshDestination {}
    unsafe impl aya::Pod for super::OriginalDstKey {}
}

#[cfg(test)]
mod tests {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{AF_INET6, IPPROTO_UDP, raw_addr};

    const PROXY: u32 = 4242;
    const CONFIG: MeshConfig = MeshConfig {
        proxy_tgid: PROXY,
        _pad: 0,
    };

    fn redirect(protocol: u8, ip: IpAddr, port: u16, caller: u32) -> Option<(IpAddr, u16)> {
        let (raw, family) = raw_addr(ip);
        let captured = captures(true, caller, CONFIG);
        mesh_redirect(protocol, raw, port.to_be(), family, captured).map(|(addr, port)| {
            let backend = crate::Backend {
                addr,
                port,
                family,
                _pad: 0,
            };
            (backend.socket_addr().ip(), backend.socket_addr().port())
        })
    }

    #[test]
    fn captures_tcp_to_other_hosts_into_the_listener_of_its_family() {
        let pod = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 7));
        assert_eq!(
            redirect(IPPROTO_TCP, pod, 8080, 1),
            Some((Ipv4Addr::LOCALHOST.into(), MESH_OUTBOUND_PORT))
        );
        let pod6: IpAddr = "fd00:10:244::7".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(
            redirect(IPPROTO_TCP, pod6, 80, 1),
            Some((Ipv6Addr::LOCALHOST.into(), MESH_OUTBOUND_PORT))
        );
    }

    #[test]
    fn leaves_udp_loopback_the_tunnel_and_the_proxy_alone() {
        let pod = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 7));
        assert_eq!(redirect(IPPROTO_UDP, pod, 53, 1), None);
        assert_eq!(redirect(IPPROTO_TCP, pod, MESH_TUNNEL_PORT, 1), None);
        assert_eq!(redirect(IPPROTO_TCP, pod, 8080, PROXY), None);
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
        assert_eq!(redirect(IPPROTO_TCP, local, 8080, 1), None);
        assert_eq!(
            redirect(IPPROTO_TCP, Ipv6Addr::LOCALHOST.into(), 8080, 1),
            None
        );
        assert!(!captures(true, 1, MeshConfig::default()), "no proxy runs");
        assert!(!captures(false, 1, CONFIG), "not enrolled");
        let (raw, family) = raw_addr(pod);
        assert_eq!(
            mesh_redirect(IPPROTO_TCP, raw, 80u16.to_be(), family, false),
            None
        );
    }

    #[test]
    fn only_captured_tcp_to_http_services_keeps_the_frontend() {
        assert!(keeps_frontend(IPPROTO_TCP, SERVICE_HTTP, true));
        assert!(
            !keeps_frontend(IPPROTO_TCP, 0, true),
            "a port without appProtocol http"
        );
        assert!(
            !keeps_frontend(IPPROTO_TCP, SERVICE_HTTP, false),
            "a client outside the mesh"
        );
        assert!(!keeps_frontend(IPPROTO_UDP, SERVICE_HTTP, true));
    }

    #[test]
    fn strict_mode_lets_only_tunnels_and_the_node_open_connections() {
        let tunnel = MESH_TUNNEL_PORT.to_be();
        let app = 8080u16.to_be();
        assert!(strict_refuses(true, app, false));
        assert!(!strict_refuses(true, tunnel, false));
        assert!(!strict_refuses(true, app, true), "the node's probes");
        assert!(
            !strict_refuses(false, app, false),
            "packets of open connections"
        );
    }

    #[test]
    fn the_peer_name_of_a_captured_socket_is_its_original_destination() {
        let original = MeshDestination {
            addr: raw_addr(Ipv4Addr::new(10, 244, 0, 7).into()).0,
            port: 8080u16.to_be(),
            family: AF_INET,
            _pad: 0,
            frontend: [0; 4],
            frontend_port: 0,
            _pad_tail: [0; 2],
        };
        let listener = raw_addr(Ipv4Addr::LOCALHOST.into()).0;
        let port = MESH_OUTBOUND_PORT.to_be();
        assert_eq!(
            captured_peer(listener, port, AF_INET, Some(original)),
            Some(original)
        );
        assert_eq!(captured_peer(listener, port, AF_INET, None), None);
        assert_eq!(
            captured_peer(listener, 80u16.to_be(), AF_INET, Some(original)),
            None
        );
        assert_eq!(
            captured_peer(LOOPBACK6, port, AF_INET6, Some(original)),
            None
        );
    }
}
