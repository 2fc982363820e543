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
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Name of the frontend map in the eBPF object.
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the backend slot map in the eBPF object.
pub const BACKENDS_MAP: &str = "BACKENDS";

/// Capacity of [`SERVICES_MAP`]: frontends (VIP, port, protocol) on a node.
pub const MAX_SERVICES: u32 = 16_384;
/// Capacity of [`BACKENDS_MAP`]: backend slots over all services and both tables.
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
/// Most backends one service may have.
pub const MAX_BACKENDS_PER_SERVICE: u16 = 4_096;

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
    pub _pad: u8,
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

/// The 16 bytes of an address in the kernel's form, in network order.
#[inline(always)]
pub fn raw_octets(addr: RawAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out
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

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four are repr(C) with explicit padding fields and no pointers, so
    // every byte is initialised and any bit pattern is a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::BackendSlotKey {}
    unsafe impl aya::Pod for super::Backend {}
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
            _pad: 0,
        })
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 20);
        assert_eq!(core::mem::size_of::<Service>(), 8);
        assert_eq!(core::mem::size_of::<BackendSlotKey>(), 8);
        assert_eq!(core::mem::size_of::<Backend>(), 20);
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
}
