//! The packet-level NodePort path: map types and decisions shared by the tc programs
//! and user space.
//!
//! A packet that arrives on a NodePort device (the node's external interface) for a
//! frontend with a Maglev table (user space writes one for every NodePort frontend
//! on the devices' addresses) is translated to a backend:
//!
//! - the backend is chosen by Maglev consistent hashing of the packet's 5-tuple
//!   ([`flow_hash`], [`maglev_position`]), so every node with the same backends picks
//!   the same one for a flow, and a change of the backend set moves few flows;
//! - [`CT_MAP`] (LRU) remembers the choice per flow, so an established flow keeps its
//!   backend when the set changes; [`CT_REVERSE_MAP`] (LRU), keyed by the reply's
//!   tuple, says how a reply is translated back;
//! - a backend reached through a NodePort device (on another node) also gets the
//!   source translated to the node's address and a port ([`nat_port_candidate`]), so
//!   its replies come back through this node.
//!
//! The Maglev tables live in [`MAGLEV_MAP`] under the service's id and table, in
//! chunks of [`MAGLEV_CHUNK`] slot indexes, written before the service is published
//! (see the crate docs), so a lookup never sees a half-built table.

use crate::RawAddr;

/// Maglev lookup tables: [`MaglevKey`] -> [`MaglevChunk`].
pub const MAGLEV_MAP: &str = "NP_MAGLEV";
/// One [`NodePortConfig`] at index 0.
pub const NODEPORT_CONFIG_MAP: &str = "NP_CONFIG";
/// Conntrack, forward direction: [`FlowKey`] (as the client sent it) -> [`CtForward`].
pub const CT_MAP: &str = "NP_CT";
/// Conntrack, reply direction: [`FlowKey`] (as the backend sends it) -> [`CtReverse`].
pub const CT_REVERSE_MAP: &str = "NP_CT_REV";
/// Per-CPU packet and byte counters: [`crate::ServiceBackendKey`] -> [`PacketCounters`].
pub const PACKET_COUNTERS_MAP: &str = "NP_COUNTERS";

/// Backend slot indexes per [`MaglevChunk`].
pub const MAGLEV_CHUNK: usize = 64;
/// The default size M of a Maglev table: prime, and large against the backends of
/// one service (the spread is within about N/M of even).
pub const DEFAULT_MAGLEV_SIZE: u32 = 16_381;
/// The largest table size: chunk numbers fit in a u16.
pub const MAX_MAGLEV_SIZE: u32 = 65_521;
/// NodePort frontends whose Maglev tables fit in [`MAGLEV_MAP`] by default.
pub const MAX_NODEPORT_FRONTENDS: u32 = 512;
/// Capacity of [`MAGLEV_MAP`] in chunks in the object; user space sizes it at load
/// for its table size and frontends (a NodePort frontend takes two tables of
/// `ceil(M / MAGLEV_CHUNK)` chunks: 512 chunks, 64 KiB, at the default size).
pub const MAX_MAGLEV_CHUNKS: u32 = MAX_NODEPORT_FRONTENDS * 2 * maglev_chunks(DEFAULT_MAGLEV_SIZE);
/// Capacity of each conntrack map (flows; least recently used ones are evicted).
pub const MAX_CONNTRACK: u32 = 65_536;
/// NodePort devices the programs tell apart (see [`NodePortConfig::devices`]).
pub const MAX_NODEPORT_DEVICES: usize = 8;
/// Ports tried for a source-translated flow before it is dropped.
pub const NAT_PORT_ATTEMPTS: u32 = 8;
/// Source ports for translated flows other than the client's own: below the
/// kernel's default ephemeral range (32768-60999), so they rarely meet the node's
/// own connections.
pub const NAT_PORT_MIN: u16 = 1_024;
pub const NAT_PORT_MAX: u16 = 32_767;

/// [`CtForward::flags`]: the flow's source is translated to the node
/// (the backend is on another node).
pub const CT_SNAT: u8 = 1;

/// A flow as one direction's packets carry it. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: RawAddr,
    pub daddr: RawAddr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: u16,
}

/// Where a flow goes (conntrack, forward direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtForward {
    pub backend: RawAddr,
    /// Network byte order.
    pub backend_port: u16,
    /// The translated source port (network byte order) when [`CT_SNAT`] is set.
    pub nat_port: u16,
    pub service_id: u32,
    /// The device translated packets are sent out of, when [`CT_SNAT`] is set.
    pub ifindex: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// How a reply is translated back (conntrack, reply direction): it leaves from
/// the frontend to the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtReverse {
    pub client: RawAddr,
    pub frontend: RawAddr,
    /// Network byte order.
    pub client_port: u16,
    pub frontend_port: u16,
    pub service_id: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// One chunk of a service table's Maglev lookup table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    pub service_id: u32,
    pub chunk: u16,
    pub table: u8,
    pub _pad: u8,
}

/// Backend slot indexes (in the same service table) for [`MAGLEV_CHUNK`] positions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub slots: [u16; MAGLEV_CHUNK],
}

/// Settings user space gives the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortConfig {
    /// M, the size of every Maglev table; 0 until user space has written it.
    pub maglev_size: u32,
    /// How many of `devices` are set.
    pub device_count: u32,
    /// The NodePort devices' interface indexes: a backend routed out of one of
    /// them is on another node, and its flows are source-translated.
    pub devices: [u32; MAX_NODEPORT_DEVICES],
}

/// Packets and bytes (as the IP layer sees them) from clients to one backend of
/// one service and back, on one CPU. Keyed by [`crate::ServiceBackendKey`], as the
/// socket path's connection counters, so both follow a backend the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

impl FlowKey {
    pub const fn new(
        saddr: RawAddr,
        sport: u16,
        daddr: RawAddr,
        dport: u16,
        protocol: u8,
        family: u8,
    ) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            protocol,
            family,
            _pad: 0,
        }
    }

    /// The flow's frontend: its destination as a service key.
    pub const fn service_key(&self) -> crate::ServiceKey {
        crate::ServiceKey::new(self.daddr, self.dport, self.protocol, self.family)
    }
}

impl MaglevKey {
    pub const fn new(service_id: u32, table: u8, chunk: u16) -> Self {
        Self {
            service_id,
            chunk,
            table,
            _pad: 0,
        }
    }
}

impl NodePortConfig {
    /// Whether `ifindex` is one of the NodePort devices.
    #[inline(always)]
    pub fn is_device(&self, ifindex: u32) -> bool {
        let mut i = 0;
        while i < MAX_NODEPORT_DEVICES {
            if (i as u32) < self.device_count && self.devices[i] == ifindex {
                return true;
            }
            i += 1;
        }
        false
    }
}

const JHASH_INITVAL: u32 = 0xdead_beef;

#[inline(always)]
fn jhash_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn jhash_final(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Bob Jenkins' lookup3 hash of 32-bit words, as the kernel's `jhash2`.
#[inline(always)]
pub fn jhash_words<const N: usize>(words: &[u32; N], initval: u32) -> u32 {
    let start = JHASH_INITVAL
        .wrapping_add((N as u32) << 2)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (start, start, start);
    let mut i = 0;
    while N - i > 3 {
        a = a.wrapping_add(words[i]);
        b = b.wrapping_add(words[i + 1]);
        c = c.wrapping_add(words[i + 2]);
        jhash_mix(&mut a, &mut b, &mut c);
        i += 3;
    }
    let left = N - i;
    if left == 0 {
        return c;
    }
    if left == 3 {
        c = c.wrapping_add(words[i + 2]);
    }
    if left >= 2 {
        b = b.wrapping_add(words[i + 1]);
    }
    a = a.wrapping_add(words[i]);
    jhash_final(&mut a, &mut b, &mut c);
    c
}

/// Seed of [`flow_hash`]: every node must use the same one.
const FLOW_HASH_SEED: u32 = 0x5c1f_f001;

/// The hash of a flow's 5-tuple that picks its Maglev position. Addresses are
/// hashed in the kernel's form, so all nodes (of one byte order) agree.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey) -> u32 {
    let words = [
        flow.saddr[0],
        flow.saddr[1],
        flow.saddr[2],
        flow.saddr[3],
        flow.daddr[0],
        flow.daddr[1],
        flow.daddr[2],
        flow.daddr[3],
        (u32::from(flow.sport) << 16) | u32::from(flow.dport),
        (u32::from(flow.protocol) << 8) | u32::from(flow.family),
    ];
    jhash_words(&words, FLOW_HASH_SEED)
}

/// Where a hash falls in a Maglev table of `size` entries: the chunk and the index
/// in it. None when there is no table (`size` 0).
#[inline(always)]
pub fn maglev_position(hash: u32, size: u32) -> Option<(u16, usize)> {
    if size == 0 || size > MAX_MAGLEV_SIZE {
        return None;
    }
    let position = hash % size;
    let chunk = (position / MAGLEV_CHUNK as u32) as u16;
    let index = (position as usize) % MAGLEV_CHUNK;
    Some((chunk, index))
}

/// Chunks of a Maglev table of `size` entries.
pub const fn maglev_chunks(size: u32) -> u32 {
    size.div_ceil(MAGLEV_CHUNK as u32)
}

/// What to do with a new flow to a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortChoice {
    /// Not a NodePort frontend (no service, or no Maglev table for it): the packet
    /// goes on untouched.
    Pass,
    /// A service without backends: the node's stack answers (a TCP reset or an ICMP
    /// port unreachable), as for a port nothing listens on.
    Refuse,
    /// This slot of the published table.
    Backend { slot: u16, backend: crate::Backend },
}

/// Chooses the backend of a new flow: the Maglev table entry at the flow's
/// position, then that backend slot. `maglev` reads an entry (index below
/// [`MAGLEV_CHUNK`]) of a chunk of the published table, `backend` a slot.
#[inline(always)]
pub fn select_nodeport_backend(
    service: Option<crate::Service>,
    family: u8,
    hash: u32,
    maglev_size: u32,
    maglev: impl FnOnce(&MaglevKey, usize) -> Option<u16>,
    backend: impl FnOnce(&crate::BackendSlotKey) -> Option<crate::Backend>,
) -> NodePortChoice {
    let Some(service) = service else {
        return NodePortChoice::Pass;
    };
    let Some((chunk, index)) = maglev_position(hash, maglev_size) else {
        return NodePortChoice::Pass;
    };
    if service.backend_count == 0 {
        return NodePortChoice::Refuse;
    }
    let Some(slot) = maglev(&MaglevKey::new(service.id, service.table, chunk), index) else {
        // No table: a frontend the NodePort path does not serve (a cluster IP).
        return NodePortChoice::Pass;
    };
    if slot >= service.backend_count {
        return NodePortChoice::Refuse;
    }
    match backend(&crate::BackendSlotKey::new(service.id, service.table, slot)) {
        Some(b) if b.family == family => NodePortChoice::Backend { slot, backend: b },
        _ => NodePortChoice::Refuse,
    }
}

/// The `attempt`-th source port to try for a translated flow (network byte
/// order): the client's own first, then ports spread over
/// [`NAT_PORT_MIN`]..=[`NAT_PORT_MAX`] by the flow's hash.
#[inline(always)]
pub fn nat_port_candidate(client_port: u16, hash: u32, attempt: u32) -> u16 {
    if attempt == 0 {
        return client_port;
    }
    let span = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
    let mixed = hash.wrapping_add(attempt.wrapping_mul(0x9e37_79b9));
    let port = NAT_PORT_MIN as u32 + (mixed ^ (mixed >> 16)) % span;
    (port as u16).to_be()
}

/// The reply direction of a flow as the backend sends it (`key`), and what it is
/// translated back to (`value`), written in place: the programs keep both in map
/// memory, as the BPF stack is small.
#[inline(always)]
pub fn write_reverse_entry(
    original: &FlowKey,
    forward: &CtForward,
    key: &mut FlowKey,
    value: &mut CtReverse,
) {
    let snat = forward.flags & CT_SNAT != 0;
    let (reply_daddr, reply_dport) = if snat {
        (original.daddr, forward.nat_port)
    } else {
        (original.saddr, original.sport)
    };
    key.saddr = forward.backend;
    key.sport = forward.backend_port;
    key.daddr = reply_daddr;
    key.dport = reply_dport;
    key.protocol = original.protocol;
    key.family = original.family;
    key._pad = 0;
    value.client = original.saddr;
    value.frontend = original.daddr;
    value.client_port = original.sport;
    value.frontend_port = original.dport;
    value.service_id = forward.service_id;
    value.flags = forward.flags;
    value._pad = [0; 3];
}

/// A packet's addresses and ports after translation: `(saddr, sport, daddr, dport)`.
pub type Rewrite = (RawAddr, u16, RawAddr, u16);

/// The forward direction's rewrite of a packet of `flow`.
#[inline(always)]
pub fn forward_rewrite(flow: &FlowKey, forward: &CtForward) -> Rewrite {
    if forward.flags & CT_SNAT != 0 {
        (
            flow.daddr,
            forward.nat_port,
            forward.backend,
            forward.backend_port,
        )
    } else {
        (
            flow.saddr,
            flow.sport,
            forward.backend,
            forward.backend_port,
        )
    }
}

/// The reply direction's rewrite: from the frontend to the client.
#[inline(always)]
pub fn reverse_rewrite(reverse: &CtReverse) -> Rewrite {
    (
        reverse.frontend,
        reverse.frontend_port,
        reverse.client,
        reverse.client_port,
    )
}

impl PacketCounters {
    /// The sum of two CPUs' counters (wrapping, as the kernel's do).
    pub fn wrapping_add(self, other: Self) -> Self {
        Self {
            packets_in: self.packets_in.wrapping_add(other.packets_in),
            bytes_in: self.bytes_in.wrapping_add(other.bytes_in),
            packets_out: self.packets_out.wrapping_add(other.packets_out),
            bytes_out: self.bytes_out.wrapping_add(other.bytes_out),
        }
    }
}

/// The counter of a backend of a service.
#[inline(always)]
pub fn counter_key(
    service_id: u32,
    backend: RawAddr,
    port: u16,
    family: u8,
) -> crate::ServiceBackendKey {
    crate::ServiceBackendKey {
        service_id,
        addr: backend,
        port,
        family,
        _pad: 0,
    }
}

/// Offsets of the fields the programs read and rewrite.
pub mod offsets {
    /// Ethernet header length; the IP header follows.
    pub const ETH_HLEN: usize = 14;
    pub const ETH_PROTO: usize = 12;
    pub const IPV4_CSUM: usize = 10;
    pub const IPV4_SADDR: usize = 12;
    pub const IPV4_DADDR: usize = 16;
    pub const IPV6_NEXTHDR: usize = 6;
    pub const IPV6_SADDR: usize = 8;
    pub const IPV6_DADDR: usize = 24;
    pub const IPV6_HLEN: usize = 40;
    pub const L4_SPORT: usize = 0;
    pub const L4_DPORT: usize = 2;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_CSUM: usize = 16;
    pub const UDP_CSUM: usize = 6;
}

/// EtherType of IPv4 and IPv6, as read from the packet (network byte order).
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6_BE: u16 = 0x86DDu16.to_be();

/// The parts of an IPv4 header the programs need: (protocol, header length,
/// saddr, daddr). None for fragments (only whole datagrams carry the
/// ports) and malformed headers.
#[inline(always)]
pub fn parse_ipv4(header: &[u8; 20]) -> Option<(u8, usize, u32, u32)> {
    if header[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    // More fragments, or a fragment offset: not a whole datagram.
    let frag = u16::from_be_bytes([header[6], header[7]]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let word =
        |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    Some((header[9], ihl, word(12), word(16)))
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether a packet opens a connection even when conntrack knows its tuple: a TCP
/// SYN without ACK. A client that reuses a port after its connection closed then
/// gets a backend of the current set, not the one conntrack remembers (which may
/// be gone); a retransmitted SYN finds the same backend again (see the programs).
#[inline(always)]
pub fn opens_connection(protocol: u8, tcp_flags: u8) -> bool {
    protocol == crate::IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The L4 checksum offset within the L4 header for `protocol`, if handled.
#[inline(always)]
pub fn l4_csum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        crate::IPPROTO_TCP => Some(offsets::TCP_CSUM),
        crate::IPPROTO_UDP => Some(offsets::UDP_CSUM),
        _ => None,
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C) with explicit padding fields and no pointers, so every
    // byte is initialised and any bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::CtForward {}
    unsafe impl aya::Pod for super::CtReverse {}
    unsafe impl aya::Pod for super::MaglevKey {}
    unsafe impl aya::Pod for super::MaglevChunk {}
    unsafe impl aya::Pod for super::NodePortConfig {}
    unsafe impl aya::Pod for super::PacketCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AF_INET, AF_INET6, Backend, BackendSlotKey, IPPROTO_TCP, Service, raw_addr};

    extern crate std;
    use std::collections::HashSet;
    use std::vec::Vec;

    /// The reply direction of a flow as the backend sends it, and what it is
    /// translated back to.
    fn reverse_entry(original: &FlowKey, forward: &CtForward) -> (FlowKey, CtReverse) {
        let mut key = FlowKey::new([0; 4], 0, [0; 4], 0, 0, 0);
        let mut value = CtReverse {
            client: [0; 4],
            frontend: [0; 4],
            client_port: 0,
            frontend_port: 0,
            service_id: 0,
            flags: 0,
            _pad: [0; 3],
        };
        write_reverse_entry(original, forward, &mut key, &mut value);
        (key, value)
    }

    fn flow(client: &str, frontend: &str) -> FlowKey {
        let c: core::net::SocketAddr = client.parse().unwrap();
        let f: core::net::SocketAddr = frontend.parse().unwrap();
        let (caddr, family) = raw_addr(c.ip());
        let (faddr, _) = raw_addr(f.ip());
        FlowKey::new(
            caddr,
            c.port().to_be(),
            faddr,
            f.port().to_be(),
            IPPROTO_TCP,
            family,
        )
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<CtForward>(), 32);
        assert_eq!(size_of::<CtReverse>(), 44);
        assert_eq!(size_of::<MaglevKey>(), 8);
        assert_eq!(size_of::<MaglevChunk>(), 2 * MAGLEV_CHUNK);
        assert_eq!(size_of::<NodePortConfig>(), 8 + 4 * MAX_NODEPORT_DEVICES);
        assert_eq!(size_of::<PacketCounters>(), 32);
    }

    #[test]
    fn jhash_matches_the_kernels_jhash2() {
        // The kernel's jhash2() (include/linux/jhash.h) returns its start value for
        // no words; longer inputs are checked against a transcription of its loop.
        assert_eq!(jhash_words::<0>(&[], 0), 0xdeadbeef);
        assert_eq!(jhash_words(&[1], 0), reference_jhash2(&[1], 0));
        assert_eq!(
            jhash_words(&[1, 2, 3, 4, 5, 6, 7], 13),
            reference_jhash2(&[1, 2, 3, 4, 5, 6, 7], 13)
        );
    }

    /// A direct transcription of the kernel's jhash2 loop, to check the unrolled one.
    fn reference_jhash2(k: &[u32], initval: u32) -> u32 {
        let mut a = JHASH_INITVAL
            .wrapping_add((k.len() as u32) << 2)
            .wrapping_add(initval);
        let (mut b, mut c) = (a, a);
        let mut k = k;
        while k.len() > 3 {
            a = a.wrapping_add(k[0]);
            b = b.wrapping_add(k[1]);
            c = c.wrapping_add(k[2]);
            jhash_mix(&mut a, &mut b, &mut c);
            k = &k[3..];
        }
        match k.len() {
            3 => {
                c = c.wrapping_add(k[2]);
                b = b.wrapping_add(k[1]);
                a = a.wrapping_add(k[0]);
                jhash_final(&mut a, &mut b, &mut c);
            }
            2 => {
                b = b.wrapping_add(k[1]);
                a = a.wrapping_add(k[0]);
                jhash_final(&mut a, &mut b, &mut c);
            }
            1 => {
                a = a.wrapping_add(k[0]);
                jhash_final(&mut a, &mut b, &mut c);
            }
            _ => {}
        }
        c
    }

    #[test]
    fn flow_hashes_differ_by_every_field_and_spread_evenly() {
        let base = flow("192.168.77.1:40000", "192.168.77.2:30080");
        let mut variants = std::vec![base];
        let mut v = base;
        v.sport = 40001u16.to_be();
        variants.push(v);
        let mut v = base;
        v.dport = 30081u16.to_be();
        variants.push(v);
        let mut v = base;
        v.protocol = crate::IPPROTO_UDP;
        variants.push(v);
        let mut v = base;
        v.daddr[0] ^= 1;
        variants.push(v);
        let hashes: HashSet<u32> = variants.iter().map(flow_hash).collect();
        assert_eq!(hashes.len(), variants.len());

        // Client ports 1..=20000 over 16 buckets: each within 10% of even.
        let mut buckets = [0u32; 16];
        for port in 1..=20_000u16 {
            let mut f = base;
            f.sport = port.to_be();
            buckets[(flow_hash(&f) % 16) as usize] += 1;
        }
        for count in buckets {
            assert!((1125..=1375).contains(&count), "{buckets:?}");
        }
    }

    #[test]
    fn positions_cover_the_table() {
        assert_eq!(maglev_position(5, 0), None);
        assert_eq!(maglev_position(64, 1021), Some((1, 0)));
        assert_eq!(maglev_position(1021 + 63, 1021), Some((0, 63)));
        assert_eq!(maglev_chunks(1021), 16);
        assert_eq!(maglev_chunks(16_381), 256);
        assert_eq!(maglev_chunks(64), 1);
        let (last_chunk, _) = maglev_position(MAX_MAGLEV_SIZE - 1, MAX_MAGLEV_SIZE).unwrap();
        assert!(u32::from(last_chunk) < maglev_chunks(MAX_MAGLEV_SIZE));
    }

    fn service(count: u16) -> Option<Service> {
        Some(Service {
            id: 3,
            backend_count: count,
            table: 1,
            flags: 0,
            affinity_timeout: 0,
        })
    }

    #[test]
    fn a_new_flow_takes_the_slot_its_maglev_entry_names() {
        let b = Backend::from_socket_addr("10.244.0.7:8080".parse().unwrap());
        let mut chunk = MaglevChunk {
            slots: [0; MAGLEV_CHUNK],
        };
        chunk.slots[5] = 2;
        let mut asked = Vec::new();
        let entry = |k: &MaglevKey, i: usize| {
            asked.push(*k);
            Some(chunk.slots[i])
        };
        let choice = select_nodeport_backend(
            service(3),
            AF_INET,
            64 * 3 + 5,
            1021,
            entry,
            |k: &BackendSlotKey| {
                assert_eq!((k.service_id, k.table, k.index), (3, 1, 2));
                Some(b)
            },
        );
        assert_eq!(
            choice,
            NodePortChoice::Backend {
                slot: 2,
                backend: b
            }
        );
        assert_eq!(asked, [MaglevKey::new(3, 1, 3)]);
    }

    #[test]
    fn frontends_without_a_table_pass_and_empty_services_refuse() {
        let never = |_: &BackendSlotKey| -> Option<Backend> { unreachable!() };
        assert_eq!(
            select_nodeport_backend(None, AF_INET, 1, 1021, |_, _| unreachable!(), never),
            NodePortChoice::Pass
        );
        assert_eq!(
            select_nodeport_backend(service(2), AF_INET, 1, 0, |_, _| unreachable!(), never),
            NodePortChoice::Pass,
            "no Maglev size configured"
        );
        assert_eq!(
            select_nodeport_backend(service(2), AF_INET, 1, 1021, |_, _| None, never),
            NodePortChoice::Pass,
            "a cluster IP has no table"
        );
        assert_eq!(
            select_nodeport_backend(service(0), AF_INET, 1, 1021, |_, _| unreachable!(), never),
            NodePortChoice::Refuse
        );
        let v6 = Backend::from_socket_addr("[fd00::1]:80".parse().unwrap());
        let one = |_: &MaglevKey, _: usize| Some(1);
        assert_eq!(
            select_nodeport_backend(service(2), AF_INET, 1, 1021, one, |_| Some(v6)),
            NodePortChoice::Refuse,
            "wrong family"
        );
        assert_eq!(
            select_nodeport_backend(service(1), AF_INET, 1, 1021, one, never),
            NodePortChoice::Refuse,
            "entry beyond the published slots"
        );
    }

    #[test]
    fn nat_ports_start_with_the_clients_and_stay_in_range() {
        let client = 40_000u16.to_be();
        assert_eq!(nat_port_candidate(client, 99, 0), client);
        let mut seen = HashSet::new();
        for attempt in 1..NAT_PORT_ATTEMPTS {
            let port = u16::from_be(nat_port_candidate(client, 99, attempt));
            assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&port), "{port}");
            seen.insert(port);
        }
        assert_eq!(seen.len() as u32, NAT_PORT_ATTEMPTS - 1, "{seen:?}");
    }

    #[test]
    fn local_backends_are_destination_translated_and_replies_go_back() {
        let f = flow("192.168.77.1:40000", "192.168.77.2:30080");
        let backend = Backend::from_socket_addr("10.244.0.7:8080".parse().unwrap());
        let fwd = CtForward {
            backend: backend.addr,
            backend_port: backend.port,
            nat_port: 0,
            service_id: 3,
            ifindex: 0,
            flags: 0,
            _pad: [0; 3],
        };
        assert_eq!(
            forward_rewrite(&f, &fwd),
            (f.saddr, f.sport, backend.addr, backend.port)
        );
        let (reply, rev) = reverse_entry(&f, &fwd);
        // The pod answers the client directly...
        assert_eq!(reply, flow("10.244.0.7:8080", "192.168.77.1:40000"));
        // ...and the answer leaves from the NodePort.
        assert_eq!(reverse_rewrite(&rev), (f.daddr, f.dport, f.saddr, f.sport));
    }

    #[test]
    fn remote_backends_are_source_translated_too() {
        let f = flow("[fd00:77::1]:40000", "[fd00:77::2]:30080");
        let backend = Backend::from_socket_addr("[fd00:78::5]:8080".parse().unwrap());
        let nat = 2_000u16.to_be();
        let fwd = CtForward {
            backend: backend.addr,
            backend_port: backend.port,
            nat_port: nat,
            service_id: 3,
            ifindex: 4,
            flags: CT_SNAT,
            _pad: [0; 3],
        };
        assert_eq!(
            forward_rewrite(&f, &fwd),
            (f.daddr, nat, backend.addr, backend.port)
        );
        let (reply, rev) = reverse_entry(&f, &fwd);
        assert_eq!(reply, flow("[fd00:78::5]:8080", "[fd00:77::2]:2000"));
        assert_eq!(reply.family, AF_INET6);
        assert_eq!(reverse_rewrite(&rev), (f.daddr, f.dport, f.saddr, f.sport));
    }

    #[test]
    fn ipv4_headers_parse_and_fragments_do_not() {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&60u16.to_be_bytes());
        h[9] = IPPROTO_TCP;
        h[12..16].copy_from_slice(&[192, 168, 77, 1]);
        h[16..20].copy_from_slice(&[192, 168, 77, 2]);
        let (proto, ihl, s, d) = parse_ipv4(&h).unwrap();
        assert_eq!((proto, ihl), (IPPROTO_TCP, 20));
        assert_eq!(s.to_ne_bytes(), [192, 168, 77, 1]);
        assert_eq!(d.to_ne_bytes(), [192, 168, 77, 2]);
        // Don't-fragment is fine; more-fragments or an offset is not.
        h[6] = 0x40;
        assert!(parse_ipv4(&h).is_some());
        h[6] = 0x20;
        assert!(parse_ipv4(&h).is_none());
        h[6] = 0;
        h[7] = 1;
        assert!(parse_ipv4(&h).is_none());
        h[7] = 0;
        h[0] = 0x46;
        assert_eq!(parse_ipv4(&h).unwrap().1, 24);
        h[0] = 0x44;
        assert!(parse_ipv4(&h).is_none());
    }

    #[test]
    fn only_a_bare_syn_opens_a_connection() {
        assert!(opens_connection(IPPROTO_TCP, TCP_SYN));
        assert!(opens_connection(IPPROTO_TCP, TCP_SYN | 0x40)); // with ECE
        assert!(!opens_connection(IPPROTO_TCP, TCP_SYN | TCP_ACK));
        assert!(!opens_connection(IPPROTO_TCP, TCP_ACK));
        assert!(!opens_connection(crate::IPPROTO_UDP, TCP_SYN));
    }

    #[test]
    fn devices_are_matched_up_to_the_count() {
        let mut config = NodePortConfig {
            device_count: 2,
            ..NodePortConfig::default()
        };
        config.devices[..3].copy_from_slice(&[4, 7, 9]);
        assert!(config.is_device(4) && config.is_device(7));
        assert!(!config.is_device(9) && !config.is_device(0));
    }
}
