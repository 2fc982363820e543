//! Map keys and values shared by skiff's eBPF programs and user space.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so the kernel and
//! user space agree on every byte (hash map keys are compared bytewise). With the
//! `user` feature the types implement `aya::Pod` and can be used in aya maps.
//!
//! # The service tables
//!
//! A service frontend (virtual IP, port, protocol) maps to a [`Service`] in
//! [`SERVICES_MAP`]. Its backends live in [`BACKENDS_MAP`] under
//! [`BackendSlotKey`]s `(service id, table, index)`. Each service owns two tables:
//! user space writes a new backend set into the table that is *not* published, then
//! publishes it by replacing the [`Service`] value (count and table together) in one
//! map update. A program that looks up a service therefore sees either the whole
//! old backend set or the whole new one, never a mix or a half-written one.
//!
//! # Session affinity
//!
//! A service with ClientIP affinity has a non-zero [`Service::affinity_timeout`].
//! Its connections are remembered in [`AFFINITY_MAP`] under (service, client), the
//! client being the connecting socket's network namespace (one per pod, as Cilium's
//! socket LB does: the source address is not chosen yet at connect()). A client
//! keeps its backend while it connects again within the timeout and the backend
//! is still in [`AFFINITY_BACKENDS_MAP`], which user space keeps to the backends of
//! such services ([`affine_backend`]).
//!
//! # After the rewrite
//!
//! Every rewrite (connect, or sendmsg for unconnected UDP) is remembered in
//! [`REVERSE_MAP`] under (socket cookie, backend) so the recvmsg and getpeername hooks
//! show the application the frontend it asked for, and counted in [`COUNTERS_MAP`]
//! under (service id, backend). When backends are removed, user space lists them in
//! [`DESTROY_TARGETS_MAP`] and runs the `iter/udp` program, which destroys the
//! connected UDP sockets skiff pinned to them ([`should_destroy`]).
#![no_std]

pub mod mesh;
pub mod nodeport;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Name of the frontend map in the eBPF object.
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the backend slot map in the eBPF object.
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Name of the reverse-translation map (socket and backend to service frontend).
pub const REVERSE_MAP: &str = "REVERSE_SK";
/// Name of the per-CPU map of connections per service backend.
pub const COUNTERS_MAP: &str = "LB_COUNTERS";
/// Name of the map of backends whose connected UDP sockets the destroy pass aborts.
pub const DESTROY_TARGETS_MAP: &str = "DESTROY_TARGETS";
/// Name of the LRU map of each affinity client's backend per service.
pub const AFFINITY_MAP: &str = "AFFINITY";
/// Name of the map of the backends of services with session affinity.
pub const AFFINITY_BACKENDS_MAP: &str = "AFFINITY_BACKENDS";
/// Name of the read-only global holding [`SockOffsets`].
pub const SOCK_OFFSETS_GLOBAL: &str = "SKIFF_SOCK_OFFSETS";
/// ELF section of the UDP socket iterator that destroys sockets.
pub const DESTROY_UDP_SECTION: &str = "iter/udp";

/// Capacity of [`SERVICES_MAP`]: frontends (VIP, port, protocol) on a node.
pub const MAX_SERVICES: u32 = 16_384;
/// Capacity of [`BACKENDS_MAP`]: backend slots over all services and both tables.
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
/// Most backends one service may have.
pub const MAX_BACKENDS_PER_SERVICE: u16 = 4_096;
/// Capacity of [`REVERSE_MAP`] (an LRU map): load-balanced sockets and backends
/// remembered for translating replies and peer names back to the service.
pub const MAX_REVERSE_ENTRIES: u32 = 262_144;
/// Capacity of [`COUNTERS_MAP`]: one counter per backend of a service, as many as
/// one table of every service can hold.
pub const MAX_COUNTERS: u32 = MAX_BACKEND_SLOTS / 2;
/// Capacity of [`AFFINITY_MAP`] (an LRU map): clients remembered over all services
/// with session affinity; the least recently connected are forgotten first.
pub const MAX_AFFINITY_ENTRIES: u32 = 65_536;
/// Capacity of [`AFFINITY_BACKENDS_MAP`]: as many as [`COUNTERS_MAP`].
pub const MAX_AFFINITY_BACKENDS: u32 = MAX_COUNTERS;
/// Capacity of [`DESTROY_TARGETS_MAP`]: the backends removed in one update.
pub const MAX_DESTROY_TARGETS: u32 = MAX_BACKENDS_PER_SERVICE as u32;

/// Address family numbers as the kernel's `AF_*` constants.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// An IPv4 or IPv6 address as the kernel's `bpf_sock_addr` holds it: 32-bit words in
/// network byte order; IPv4 uses the first word, the others are zero.
pub type RawAddr = [u32; 4];

/// A service frontend: what a client connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: RawAddr,
    /// Port in network byte order, as in `bpf_sock_addr.user_port`.
    pub port: u16,
    pub protocol: u8,
    pub family: u8,
}

/// The published state of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Identifies the service's backend slots in [`BACKENDS_MAP`].
    pub id: u32,
    /// Backends in the published table. Zero means the service refuses connections.
    pub backend_count: u16,
    /// Which of the service's two tables (0 or 1) is published.
    pub table: u8,
    /// [`SERVICE_HTTP`], or 0.
    pub flags: u8,
    /// ClientIP session affinity: seconds a client keeps its backend after its last
    /// connection; 0 for none.
    pub affinity_timeout: u32,
}

/// [`Service::flags`]: the port declares appProtocol http, so a client enrolled in
/// the mesh keeps the frontend as its destination and the node proxy's L7 layer
/// picks the backend per request (see [`mesh::keeps_frontend`]).
pub const SERVICE_HTTP: u8 = 1;

/// Key of [`AFFINITY_MAP`]: a client of a service with session affinity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub _pad: u32,
    /// The client's network namespace cookie.
    pub client: u64,
}

/// Value of [`AFFINITY_MAP`]: the client's backend and when it last connected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` of the last connection.
    pub last_used_ns: u64,
    pub backend: Backend,
    pub _pad: u32,
}

impl AffinityKey {
    pub const fn new(service_id: u32, client: u64) -> Self {
        Self {
            service_id,
            _pad: 0,
            client,
        }
    }
}

/// One backend slot of one service table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSlotKey {
    pub service_id: u32,
    pub index: u16,
    pub table: u8,
    pub _pad: u8,
}

/// Where a connection to a service goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: RawAddr,
    /// Port in network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

impl ServiceKey {
    pub const fn new(addr: RawAddr, port: u16, protocol: u8, family: u8) -> Self {
        Self {
            addr,
            port,
            protocol,
            family,
        }
    }

    /// The frontend for `addr` (host byte order port) and `protocol`.
    pub fn from_socket_addr(addr: SocketAddr, protocol: u8) -> Self {
        let (raw, family) = raw_addr(addr.ip());
        Self::new(raw, addr.port().to_be(), protocol, family)
    }
}

impl ServiceKey {
    /// The frontend's address (host byte order port).
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_of(self.addr, self.family), u16::from_be(self.port))
    }
}

impl BackendSlotKey {
    pub const fn new(service_id: u32, table: u8, index: u16) -> Self {
        Self {
            service_id,
            index,
            table,
            _pad: 0,
        }
    }
}

impl Backend {
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        let (raw, family) = raw_addr(addr.ip());
        Self {
            addr: raw,
            port: addr.port().to_be(),
            family,
            _pad: 0,
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_of(self.addr, self.family), u16::from_be(self.port))
    }
}

fn ip_of(addr: RawAddr, family: u8) -> IpAddr {
    if family == AF_INET {
        Ipv4Addr::from(addr[0].to_ne_bytes()).into()
    } else {
        Ipv6Addr::from(raw_octets(addr)).into()
    }
}

impl ReverseKey {
    pub const fn new(cookie: u64, addr: RawAddr, port: u16, family: u8) -> Self {
        Self {
            cookie,
            addr,
            port,
            family,
            _pad: 0,
            _pad_tail: 0,
        }
    }
}

impl ServiceBackendKey {
    pub const fn new(service_id: u32, backend: &Backend) -> Self {
        Self {
            service_id,
            addr: backend.addr,
            port: backend.port,
            family: backend.family,
            _pad: 0,
        }
    }

    pub fn backend(&self) -> Backend {
        Backend {
            addr: self.addr,
            port: self.port,
            family: self.family,
            _pad: 0,
        }
    }
}

impl DestroyRecord {
    pub const SIZE: usize = core::mem::size_of::<Self>();

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..8].copy_from_slice(&self.cookie.to_ne_bytes());
        out[8..12].copy_from_slice(&self.result.to_ne_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; Self::SIZE]) -> Self {
        let mut cookie = [0u8; 8];
        cookie.copy_from_slice(&bytes[..8]);
        let mut result = [0u8; 4];
        result.copy_from_slice(&bytes[8..12]);
        Self {
            cookie: u64::from_ne_bytes(cookie),
            result: i32::from_ne_bytes(result),
            _pad: 0,
        }
    }
}

/// The kernel's representation of `ip` and its family.
pub fn raw_addr(ip: IpAddr) -> (RawAddr, u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], AF_INET6)
        }
    }
}

/// The third word of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4 address inside an IPv4-mapped IPv6 one, in the kernel's form: an IPv6
/// socket reaches IPv4 services that way (Java's, by default).
#[inline(always)]
pub fn unmap_v4(addr: RawAddr) -> Option<RawAddr> {
    (addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX).then_some([addr[3], 0, 0, 0])
}

/// The IPv4-mapped IPv6 form of an IPv4 address in the kernel's form.
#[inline(always)]
pub fn map_v4(addr: RawAddr) -> RawAddr {
    [0, 0, V4_MAPPED_PREFIX, addr[0]]
}

/// An address a hook read from a socket of `socket_family`, as services, backends
/// and records hold it: an IPv6 socket's IPv4-mapped address is IPv4. Returns the
/// address, its family and whether it was mapped (see [`socket_view`]).
#[inline(always)]
pub fn service_view(addr: RawAddr, socket_family: u8) -> (RawAddr, u8, bool) {
    match unmap_v4(addr) {
        Some(v4) if socket_family == AF_INET6 => (v4, AF_INET, true),
        _ => (addr, socket_family, false),
    }
}

/// An address as a socket whose destination was `mapped` sees it.
#[inline(always)]
pub fn socket_view(addr: RawAddr, mapped: bool) -> RawAddr {
    if mapped { map_v4(addr) } else { addr }
}

/// The 16 bytes of an address in the kernel's form, in network order.
#[inline(always)]
pub fn raw_octets(addr: RawAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// Key of [`REVERSE_MAP`]: a socket (by its cookie) and the backend a load-balancing
/// hook sent it to. Replies from that backend on that socket, and its peer name, are
/// translated back to the service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReverseKey {
    pub cookie: u64,
    pub addr: RawAddr,
    /// Port in network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub _pad_tail: u32,
}

/// Value of [`REVERSE_MAP`]: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReverseValue {
    pub addr: RawAddr,
    /// Port in network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    /// The service (its [`Service::id`]) that chose the backend.
    pub service_id: u32,
}

/// One backend of one service: the key of [`COUNTERS_MAP`] and
/// [`DESTROY_TARGETS_MAP`]. Keyed by address rather than slot index, so a count stays
/// with its backend when the service's table is rewritten.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceBackendKey {
    pub service_id: u32,
    pub addr: RawAddr,
    /// Port in network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

/// Byte offsets of `struct sock_common` fields in the running kernel (read from its
/// BTF by user space), for the socket iterator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOffsets {
    /// `skc_family` (u16).
    pub family: u32,
    /// `skc_daddr` (IPv4 peer, network order u32).
    pub daddr: u32,
    /// `skc_dport` (peer port, network order u16).
    pub dport: u32,
    /// `skc_v6_daddr` (IPv6 peer, 16 bytes).
    pub v6_daddr: u32,
}

/// What the socket iterator reports for each socket it destroyed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestroyRecord {
    pub cookie: u64,
    /// What `bpf_sock_destroy` returned (0, or a negative errno).
    pub result: i32,
    pub _pad: u32,
}

/// The peer of a socket as the iterator reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: RawAddr,
    /// Port in network byte order.
    pub port: u16,
    pub family: u8,
}

/// What a connect() to a frontend should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a service: leave the address alone.
    Pass,
    /// A service without backends (or whose table is being replaced under us):
    /// refuse, as kube-proxy does.
    Refuse,
    /// Rewrite the destination to this backend.
    Rewrite(Backend),
}

/// Chooses a backend for a connection: the decision of the connect programs, kept
/// here so it is tested in user space. `random` is any uniformly random u32 and
/// `backend` looks up a slot.
#[inline(always)]
pub fn select_backend(
    service: Option<Service>,
    family: u8,
    random: u32,
    backend: impl FnOnce(&BackendSlotKey) -> Option<Backend>,
) -> Verdict {
    let Some(service) = service else {
        return Verdict::Pass;
    };
    if service.backend_count == 0 {
        return Verdict::Refuse;
    }
    // Modulo bias is below 2^-20 for counts up to MAX_BACKENDS_PER_SERVICE.
    let index = (random % u32::from(service.backend_count)) as u16;
    match backend(&BackendSlotKey::new(service.id, service.table, index)) {
        Some(b) if b.family == family => Verdict::Rewrite(b),
        // A slot can vanish only if user space republished twice while this program
        // ran; a backend of another family cannot be reached from this hook.
        _ => Verdict::Refuse,
    }
}

/// The backend a client of a service with session affinity keeps: the one it was
/// last sent to (`remembered`), if that was within the service's timeout of `now_ns`
/// and the backend still serves the service (`is_backend`). `None` means a fresh
/// choice by [`select_backend`], which the caller then remembers.
#[inline(always)]
pub fn affine_backend(
    service: &Service,
    family: u8,
    now_ns: u64,
    remembered: Option<AffinityValue>,
    is_backend: impl FnOnce(&ServiceBackendKey) -> bool,
) -> Option<Backend> {
    let remembered = remembered?;
    let timeout_ns = u64::from(service.affinity_timeout) * 1_000_000_000;
    let fresh = now_ns.saturating_sub(remembered.last_used_ns) <= timeout_ns;
    let backend = remembered.backend;
    (service.affinity_timeout != 0
        && fresh
        && backend.family == family
        && service.backend_count != 0
        && is_backend(&ServiceBackendKey::new(service.id, &backend)))
    .then_some(backend)
}

/// A rewrite made by a load-balancing hook (connect or sendmsg): what to remember in
/// [`REVERSE_MAP`] so replies and peer names translate back to `frontend`.
#[inline(always)]
pub fn reverse_entry(
    cookie: u64,
    frontend: &ServiceKey,
    service_id: u32,
    backend: &Backend,
) -> (ReverseKey, ReverseValue) {
    (
        ReverseKey::new(cookie, backend.addr, backend.port, backend.family),
        ReverseValue {
            addr: frontend.addr,
            port: frontend.port,
            family: frontend.family,
            _pad: 0,
            service_id,
        },
    )
}

/// What a recvmsg or getpeername hook should report instead of the backend
/// `(addr, port)` of `family` that a socket sees: the frontend it asked for, or
/// `None` to leave the address alone (the socket was not load-balanced to it).
#[inline(always)]
pub fn reverse_translation(
    cookie: u64,
    addr: RawAddr,
    port: u16,
    family: u8,
    lookup: impl FnOnce(&ReverseKey) -> Option<ReverseValue>,
) -> Option<(RawAddr, u16)> {
    let value = lookup(&ReverseKey::new(cookie, addr, port, family))?;
    // A socket of one family only ever records frontends of that family; anything else
    // is not ours to translate.
    (value.family == family).then_some((value.addr, value.port))
}

/// Whether the socket iterator destroys a UDP socket: it is connected (`peer`) to a
/// backend that one of skiff's hooks chose for it (its cookie and peer are in
/// [`REVERSE_MAP`]) and that backend was removed from the service that chose it
/// (`is_target`). Sockets that talk to a backend address directly, or that were
/// balanced by another service that still has the backend, are left alone.
#[inline(always)]
pub fn should_destroy(
    cookie: u64,
    peer: Option<Peer>,
    reverse: impl FnOnce(&ReverseKey) -> Option<ReverseValue>,
    is_target: impl FnOnce(&ServiceBackendKey) -> bool,
) -> bool {
    let Some(peer) = peer else {
        return false;
    };
    if peer.port == 0 || (peer.family != AF_INET && peer.family != AF_INET6) {
        return false;
    }
    let Some(value) = reverse(&ReverseKey::new(cookie, peer.addr, peer.port, peer.family)) else {
        return false;
    };
    let backend = Backend {
        addr: peer.addr,
        port: peer.port,
        family: peer.family,
        _pad: 0,
    };
    is_target(&ServiceBackendKey::new(value.service_id, &backend))
}

/// The `code` byte of a BPF call instruction (`BPF_JMP | BPF_CALL`).
const BPF_CALL_CODE: u8 = 0x85;
/// `src_reg` of a call to a kernel function (kfunc) named by its BTF id.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// Placeholder `imm` of the call to the `bpf_sock_destroy` kfunc, replaced at load
/// time by the function's BTF id in the running kernel (see [`patch_kfunc_calls`]).
pub const SOCK_DESTROY_PLACEHOLDER: i32 = 0x5d5d_0001;

/// A call to the kfunc with BTF id `imm` in vmlinux, as one little-endian
/// instruction: code, registers (src 2 = kfunc, dst 0), offset 0 (vmlinux), imm.
pub const fn kfunc_call_insn(imm: i32) -> u64 {
    let imm = imm as u32 as u64;
    (imm << 32) | ((BPF_PSEUDO_KFUNC_CALL as u64) << 12) | BPF_CALL_CODE as u64
}

/// Replaces the `imm` of every kfunc call in `code` (the instructions of one program
/// section, little-endian) whose `imm` is `placeholder` with `btf_id`. Returns how
/// many calls were patched.
///
/// aya 0.14 does not resolve kfunc calls, so the program emits the call instruction
/// itself with a placeholder and user space patches it before loading.
pub fn patch_kfunc_calls(code: &mut [u8], placeholder: i32, btf_id: u32) -> usize {
    let wanted = kfunc_call_insn(placeholder).to_le_bytes();
    let mut patched = 0;
    for insn in code.chunks_exact_mut(8) {
        if insn == wanted {
            insn[4..].copy_from_slice(&btf_id.to_le_bytes());
            patched += 1;
        }
    }
    patched
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C) with explicit padding fields and no pointers, so every
    // byte is initialised and any bit pattern is a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::BackendSlotKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::ReverseKey {}
    unsafe impl aya::Pod for super::ReverseValue {}
    unsafe impl aya::Pod for super::ServiceBackendKey {}
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn service(count: u16, table: u8) -> Option<Service> {
        Some(Service {
            id: 7,
            backend_count: count,
            table,
            flags: 0,
            affinity_timeout: 0,
        })
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 20);
        assert_eq!(core::mem::size_of::<Service>(), 12);
        assert_eq!(core::mem::size_of::<AffinityKey>(), 16);
        assert_eq!(core::mem::size_of::<AffinityValue>(), 32);
        assert_eq!(core::mem::size_of::<BackendSlotKey>(), 8);
        assert_eq!(core::mem::size_of::<Backend>(), 20);
        assert_eq!(core::mem::size_of::<ReverseKey>(), 32);
        assert_eq!(core::mem::size_of::<ReverseValue>(), 24);
        assert_eq!(core::mem::size_of::<ServiceBackendKey>(), 24);
        assert_eq!(core::mem::size_of::<SockOffsets>(), 16);
        assert_eq!(DestroyRecord::SIZE, 16);
    }

    #[test]
    fn a_client_keeps_a_backend_that_is_recent_and_still_serves() {
        let sticky = Service {
            affinity_timeout: 10,
            ..service(3, 0).unwrap()
        };
        let backend = Backend::from_socket_addr(sa("10.0.0.1:80"));
        let at = |last_used_ns| {
            Some(AffinityValue {
                last_used_ns,
                backend,
                _pad: 0,
            })
        };
        let second = 1_000_000_000;
        let member = |k: &ServiceBackendKey| *k == ServiceBackendKey::new(7, &backend);
        // Within the timeout (inclusive) and still a backend: kept.
        assert_eq!(
            affine_backend(&sticky, AF_INET, 15 * second, at(5 * second), member),
            Some(backend)
        );
        // Expired, never seen, removed from the service, or another family: chosen anew.
        assert_eq!(
            affine_backend(&sticky, AF_INET, 15 * second + 1, at(5 * second), member),
            None
        );
        assert_eq!(
            affine_backend(&sticky, AF_INET, 15 * second, None, member),
            None
        );
        assert_eq!(
            affine_backend(&sticky, AF_INET, 15 * second, at(5 * second), |_| false),
            None
        );
        assert_eq!(
            affine_backend(&sticky, AF_INET6, 15 * second, at(5 * second), member),
            None
        );
        // A service without affinity, or without backends, never sticks.
        let plain = service(3, 0).unwrap();
        assert_eq!(
            affine_backend(&plain, AF_INET, 5 * second, at(5 * second), member),
            None
        );
        let empty = Service {
            backend_count: 0,
            ..sticky
        };
        assert_eq!(
            affine_backend(&empty, AF_INET, 5 * second, at(5 * second), member),
            None
        );
    }

    #[test]
    fn socket_addresses_round_trip_through_the_kernel_form() {
        for addr in ["10.96.0.10:80", "[fd00:10:96::a]:53", "127.0.0.1:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(Backend::from_socket_addr(addr).socket_addr(), addr);
            assert_eq!(
                ServiceKey::from_socket_addr(addr, IPPROTO_UDP).socket_addr(),
                addr
            );
        }
    }

    #[test]
    fn ipv4_mapped_addresses_map_and_unmap() {
        let mapped: SocketAddr = "[::ffff:10.96.0.10]:53".parse().unwrap();
        let (raw, family) = raw_addr(mapped.ip());
        assert_eq!(family, AF_INET6);
        let (v4, _) = raw_addr("10.96.0.10".parse().unwrap());
        assert_eq!(unmap_v4(raw), Some(v4));
        assert_eq!(map_v4(v4), raw);
        assert_eq!(service_view(raw, AF_INET6), (v4, AF_INET, true));
        assert_eq!(socket_view(v4, true), raw);
        // Only an IPv6 socket has mapped addresses.
        assert_eq!(service_view(raw, AF_INET), (raw, AF_INET, false));
        for other in ["fd00:10:96::a", "::1", "::a60:a"] {
            let (raw, _) = raw_addr(other.parse().unwrap());
            assert_eq!(unmap_v4(raw), None, "{other}");
        }
    }

    #[test]
    fn kernel_form_is_network_byte_order() {
        let key = ServiceKey::from_socket_addr("10.96.0.1:80".parse().unwrap(), IPPROTO_TCP);
        assert_eq!(key.addr[0].to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.family, AF_INET);
    }

    #[test]
    fn unknown_frontend_passes() {
        assert_eq!(select_backend(None, AF_INET, 1, |_| None), Verdict::Pass);
    }

    #[test]
    fn service_without_backends_refuses() {
        assert_eq!(
            select_backend(service(0, 0), AF_INET, 1, |_| unreachable!()),
            Verdict::Refuse
        );
    }

    #[test]
    fn slot_is_taken_from_the_published_table() {
        let b = Backend::from_socket_addr("10.244.0.5:8080".parse().unwrap());
        let mut seen = Vec::new();
        for random in 0..6 {
            let verdict = select_backend(service(3, 1), AF_INET, random, |k| {
                seen.push(*k);
                Some(b)
            });
            assert_eq!(verdict, Verdict::Rewrite(b));
        }
        let indexes: Vec<u16> = seen.iter().map(|k| k.index).collect();
        assert_eq!(indexes, [0, 1, 2, 0, 1, 2]);
        assert!(seen.iter().all(|k| k.table == 1 && k.service_id == 7));
    }

    #[test]
    fn missing_slot_or_wrong_family_refuses() {
        assert_eq!(
            select_backend(service(2, 0), AF_INET, 0, |_| None),
            Verdict::Refuse
        );
        let v6 = Backend::from_socket_addr("[fd00::1]:80".parse().unwrap());
        assert_eq!(
            select_backend(service(2, 0), AF_INET, 0, |_| Some(v6)),
            Verdict::Refuse
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_rewrite_is_remembered_under_the_socket_and_backend() {
        let frontend = ServiceKey::from_socket_addr(sa("10.96.0.10:53"), IPPROTO_UDP);
        let backend = Backend::from_socket_addr(sa("10.244.0.7:5353"));
        let (key, value) = reverse_entry(42, &frontend, 7, &backend);
        assert_eq!(
            key,
            ReverseKey::new(42, backend.addr, backend.port, AF_INET)
        );
        assert_eq!((value.addr, value.port), (frontend.addr, frontend.port));
        assert_eq!((value.family, value.service_id), (AF_INET, 7));
        assert_eq!(
            (key._pad, key._pad_tail),
            (0, 0),
            "keys are compared bytewise"
        );
    }

    #[test]
    fn replies_from_a_chosen_backend_translate_back_to_the_frontend() {
        let frontend = ServiceKey::from_socket_addr(sa("[fd00:10:96::a]:53"), IPPROTO_UDP);
        let backend = Backend::from_socket_addr(sa("[fd00:10:244::7]:5353"));
        let (key, value) = reverse_entry(42, &frontend, 7, &backend);
        let lookup = |k: &ReverseKey| (*k == key).then_some(value);
        assert_eq!(
            reverse_translation(42, backend.addr, backend.port, AF_INET6, lookup),
            Some((frontend.addr, frontend.port))
        );
        // Another socket, another peer port, or the other family: left alone.
        assert_eq!(
            reverse_translation(43, backend.addr, backend.port, AF_INET6, lookup),
            None
        );
        assert_eq!(
            reverse_translation(42, backend.addr, 1u16.to_be(), AF_INET6, lookup),
            None
        );
        let v4 = ReverseValue {
            family: AF_INET,
            ..value
        };
        assert_eq!(
            reverse_translation(42, backend.addr, backend.port, AF_INET6, |_| Some(v4)),
            None
        );
    }

    #[test]
    fn only_balanced_sockets_connected_to_a_removed_backend_are_destroyed() {
        let frontend = ServiceKey::from_socket_addr(sa("10.96.0.10:53"), IPPROTO_UDP);
        let removed = Backend::from_socket_addr(sa("10.244.0.7:53"));
        let kept = Backend::from_socket_addr(sa("10.244.0.8:53"));
        let (key, value) = reverse_entry(42, &frontend, 7, &removed);
        let reverse = |k: &ReverseKey| (*k == key).then_some(value);
        let target = ServiceBackendKey::new(7, &removed);
        let is_target = |k: &ServiceBackendKey| *k == target;
        let peer = |b: &Backend| {
            Some(Peer {
                addr: b.addr,
                port: b.port,
                family: b.family,
            })
        };
        assert!(should_destroy(42, peer(&removed), reverse, is_target));
        // Connected to the backend without skiff (no reverse entry for this socket).
        assert!(!should_destroy(43, peer(&removed), reverse, is_target));
        // Balanced, but now connected elsewhere.
        assert!(!should_destroy(42, peer(&kept), reverse, is_target));
        // Unconnected.
        assert!(!should_destroy(42, None, reverse, is_target));
        let unconnected = Peer {
            addr: [0; 4],
            port: 0,
            family: AF_INET,
        };
        assert!(!should_destroy(
            42,
            Some(unconnected),
            |_| unreachable!(),
            is_target
        ));
        // Balanced to the backend by another service that still has it.
        let other = ReverseValue {
            service_id: 8,
            ..value
        };
        assert!(!should_destroy(
            42,
            peer(&removed),
            |_| Some(other),
            is_target
        ));
    }

    #[test]
    fn destroy_records_round_trip() {
        let record = DestroyRecord {
            cookie: 0x0102_0304_0506_0708,
            result: -22,
            _pad: 0,
        };
        assert_eq!(DestroyRecord::from_bytes(&record.to_bytes()), record);
    }

    #[test]
    fn kfunc_call_is_encoded_as_the_kernel_reads_it() {
        let insn = kfunc_call_insn(0x1234_5678).to_le_bytes();
        // code BPF_JMP|BPF_CALL, dst_reg 0 in the low nibble, src_reg 2 in the high one,
        // offset 0 (vmlinux BTF), imm little-endian.
        assert_eq!(insn, [0x85, 0x20, 0, 0, 0x78, 0x56, 0x34, 0x12]);
    }

    #[test]
    fn only_placeholder_kfunc_calls_are_patched() {
        let mut code = Vec::new();
        let helper_call = [0x85, 0x00, 0, 0, 14, 0, 0, 0]; // bpf_get_current_pid_tgid
        code.extend_from_slice(&helper_call);
        code.extend_from_slice(&kfunc_call_insn(SOCK_DESTROY_PLACEHOLDER).to_le_bytes());
        code.extend_from_slice(&kfunc_call_insn(99).to_le_bytes());
        assert_eq!(
            patch_kfunc_calls(&mut code, SOCK_DESTROY_PLACEHOLDER, 4242),
            1
        );
        assert_eq!(&code[..8], &helper_call);
        assert_eq!(&code[8..16], &kfunc_call_insn(4242).to_le_bytes());
        assert_eq!(&code[16..], &kfunc_call_insn(99).to_le_bytes());
        assert_eq!(patch_kfunc_calls(&mut code, SOCK_DESTROY_PLACEHOLDER, 1), 0);
    }
}
