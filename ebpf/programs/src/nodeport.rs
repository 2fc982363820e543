//! The packet-level NodePort path: tc programs on the node's external devices.
//!
//! - `skiff_nodeport_ingress` translates a packet for a NodePort frontend to its
//!   flow's backend (conntrack, else Maglev; a TCP SYN asks Maglev again), and
//!   translates replies of flows to backends on other nodes (which come back
//!   through this device) back to the NodePort.
//! - `skiff_nodeport_egress` translates replies of flows to this node's pods, which
//!   the kernel forwards out of this device, back to the NodePort.
//!
//! A flow to a pod on this node is only destination-translated: the kernel then
//! routes it to the pod (forwarding is on, as pods need it) and the pod answers the
//! client directly, through this node. A flow to a backend routed out of a NodePort
//! device (another node) is also source-translated to the node, and sent out at
//! once with `bpf_redirect_neigh` (the stack would drop a packet arriving with one
//! of its own addresses as the source).
//!
//! The decisions live in `skiff_ebpf_common::nodeport`; this module reads and
//! writes packets and maps. The BPF stack is 512 bytes for a whole chain of calls,
//! so the flow and its conntrack entries are kept in a per-CPU scratch area.

use core::mem::{size_of, zeroed};

use aya_ebpf::bindings::{
    BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
    BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_fib_lookup,
};
use aya_ebpf::helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh};
use aya_ebpf::macros::{classifier, map};
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap};
use aya_ebpf::programs::TcContext;
use skiff_ebpf_common::nodeport::{
    CT_SNAT, CtForward, CtReverse, ETH_P_IP_BE, ETH_P_IPV6_BE, FlowKey, MAGLEV_CHUNK,
    MAX_CONNTRACK, MAX_MAGLEV_CHUNKS, MaglevChunk, MaglevKey, NAT_PORT_ATTEMPTS, NodePortChoice,
    NodePortConfig, PacketCounters, counter_key, flow_hash, forward_rewrite, l4_csum_offset,
    nat_port_candidate, offsets, opens_connection, parse_ipv4, reverse_rewrite,
    select_nodeport_backend, write_reverse_entry,
};
use skiff_ebpf_common::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, MAX_COUNTERS, RawAddr, ServiceBackendKey,
};

use crate::maps::{BACKENDS, SERVICES};

#[map(name = "NP_MAGLEV")]
static MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::with_max_entries(MAX_MAGLEV_CHUNKS, BPF_F_NO_PREALLOC);

#[map(name = "NP_CONFIG")]
static CONFIG: Array<NodePortConfig> = Array::with_max_entries(1, 0);

#[map(name = "NP_CT")]
static CT: LruHashMap<FlowKey, CtForward> = LruHashMap::with_max_entries(MAX_CONNTRACK, 0);

#[map(name = "NP_CT_REV")]
static CT_REV: LruHashMap<FlowKey, CtReverse> = LruHashMap::with_max_entries(MAX_CONNTRACK, 0);

#[map(name = "NP_COUNTERS")]
static COUNTERS: PerCpuHashMap<ServiceBackendKey, PacketCounters> =
    PerCpuHashMap::with_max_entries(MAX_COUNTERS, BPF_F_NO_PREALLOC);

/// The working state of one packet: the programs' large values live here rather
/// than on the stack. One entry per program, so ingress and egress never share.
#[map(name = "NP_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(2, 0);

const INGRESS: u32 = 0;
const EGRESS: u32 = 1;

/// A new counter's value (in read-only data, so it needs no stack).
static ZERO: PacketCounters = PacketCounters {
    packets_in: 0,
    bytes_in: 0,
    packets_out: 0,
    bytes_out: 0,
};

/// tc verdicts: pass the packet on to the next program or the stack (TCX_NEXT), or
/// drop it.
const NEXT: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

#[repr(C)]
struct Scratch {
    /// The packet's flow.
    flow: FlowKey,
    /// Offsets of the L4 header and of its checksum.
    l4: u32,
    csum: u32,
    /// The flow's conntrack entry (forward direction).
    forward: CtForward,
    /// A reply direction's key and entry.
    reply: FlowKey,
    reverse: CtReverse,
    counter: ServiceBackendKey,
    /// Whether the packet opens a connection ([`opens_connection`]).
    opening: bool,
}

#[inline(always)]
fn scratch(index: u32) -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU entry, used by one program run at a time on this CPU (tc
    // programs do not nest, and each program has its own entry).
    SCRATCH.get_ptr_mut(index).map(|p| unsafe { &mut *p })
}

#[classifier]
pub fn skiff_nodeport_ingress(ctx: TcContext) -> i32 {
    let Some(s) = scratch(INGRESS) else {
        return NEXT;
    };
    if !parse(&ctx, s) {
        return NEXT;
    }
    // A reply from a backend on another node, to the port this node chose.
    if let Some(reverse) = CT_REV.get_ptr(&s.flow) {
        // SAFETY: a map value; copied at once (LRU values may be recycled).
        s.reverse = unsafe { *reverse };
        if s.reverse.flags & CT_SNAT != 0 {
            return reply_from_other_node(&ctx, s);
        }
    }
    let known = match CT.get_ptr(&s.flow) {
        Some(forward) => {
            // SAFETY: as above.
            s.forward = unsafe { *forward };
            true
        }
        None => false,
    };
    if known && !s.opening {
        keep_reverse(s);
    } else {
        match new_flow(&ctx, s, known) {
            FOUND => {}
            NOT_MINE => return NEXT,
            _ => return DROP,
        }
    }
    if rewrite(&ctx, s, false).is_err() {
        return DROP;
    }
    count(&ctx, s, false);
    if s.forward.flags & CT_SNAT != 0 {
        redirect(s.forward.ifindex)
    } else {
        NEXT
    }
}

#[classifier]
pub fn skiff_nodeport_egress(ctx: TcContext) -> i32 {
    let Some(s) = scratch(EGRESS) else {
        return NEXT;
    };
    if !parse(&ctx, s) {
        return NEXT;
    }
    // A reply of a pod on this node, on its way to the client.
    let Some(reverse) = CT_REV.get_ptr(&s.flow) else {
        return NEXT;
    };
    // SAFETY: a map value; copied at once.
    s.reverse = unsafe { *reverse };
    if s.reverse.flags & CT_SNAT != 0 {
        return NEXT;
    }
    if !translate_reply(&ctx, s) {
        return DROP;
    }
    NEXT
}

/// Translates a reply of a backend on another node back to the NodePort and sends
/// it to the client.
#[inline(never)]
fn reply_from_other_node(ctx: &TcContext, s: &mut Scratch) -> i32 {
    if !translate_reply(ctx, s) {
        return DROP;
    }
    let out = egress_device(ctx, s.flow.family, &s.reverse.frontend, &s.reverse.client)
        .unwrap_or_else(|| ifindex(ctx));
    redirect(out)
}

/// Translates a reply (of the flow `s.reverse` names) back to the NodePort and
/// counts it; false when the packet could not be rewritten.
#[inline(always)]
fn translate_reply(ctx: &TcContext, s: &mut Scratch) -> bool {
    if rewrite(ctx, s, true).is_err() {
        return false;
    }
    count(ctx, s, true);
    true
}

/// Reads the flow of an Ethernet frame carrying TCP or UDP (IPv4 without
/// fragments, or IPv6 without extension headers) into `s`.
#[inline(always)]
fn parse(ctx: &TcContext, s: &mut Scratch) -> bool {
    let Ok(ethertype) = ctx.load::<u16>(offsets::ETH_PROTO) else {
        return false;
    };
    let l3 = offsets::ETH_HLEN;
    let l4 = if ethertype == ETH_P_IP_BE {
        let Ok(header) = ctx.load::<[u8; 20]>(l3) else {
            return false;
        };
        let Some((protocol, ihl, saddr, daddr)) = parse_ipv4(&header) else {
            return false;
        };
        s.flow.saddr = [saddr, 0, 0, 0];
        s.flow.daddr = [daddr, 0, 0, 0];
        s.flow.protocol = protocol;
        s.flow.family = AF_INET;
        l3 + ihl
    } else if ethertype == ETH_P_IPV6_BE {
        let (Ok(protocol), Ok(saddr), Ok(daddr)) = (
            ctx.load::<u8>(l3 + offsets::IPV6_NEXTHDR),
            ctx.load::<RawAddr>(l3 + offsets::IPV6_SADDR),
            ctx.load::<RawAddr>(l3 + offsets::IPV6_DADDR),
        ) else {
            return false;
        };
        s.flow.saddr = saddr;
        s.flow.daddr = daddr;
        s.flow.protocol = protocol;
        s.flow.family = AF_INET6;
        l3 + offsets::IPV6_HLEN
    } else {
        return false;
    };
    let Some(csum) = l4_csum_offset(s.flow.protocol) else {
        return false;
    };
    let Ok(ports) = ctx.load::<[u16; 2]>(l4) else {
        return false;
    };
    s.flow.sport = ports[0];
    s.flow.dport = ports[1];
    let flags = if s.flow.protocol == IPPROTO_TCP {
        ctx.load::<u8>(l4 + offsets::TCP_FLAGS).unwrap_or(0)
    } else {
        0
    };
    s.opening = opens_connection(s.flow.protocol, flags);
    s.flow._pad = 0;
    s.l4 = l4 as u32;
    s.csum = (l4 + csum) as u32;
    true
}

/// [`new_flow`]'s outcomes.
const FOUND: i32 = 1;
const NOT_MINE: i32 = 0;
const NO_PORT: i32 = -1;

/// Chooses the backend of a new flow (or of a connection that opens on a known
/// tuple, `known`: its entry is in `s.forward`) into `s.forward` and records it in
/// both conntrack maps. NOT_MINE: not a NodePort flow (or no backend), leave it
/// alone. NO_PORT: no source port was free, drop it.
#[inline(never)]
fn new_flow(ctx: &TcContext, s: &mut Scratch, known: bool) -> i32 {
    // SAFETY: a BPF_F_NO_PREALLOC map; the value is copied at once.
    let Some(service) = (unsafe { SERVICES.get(&s.flow.service_key()) }).copied() else {
        return NOT_MINE;
    };
    let Some(config) = CONFIG.get(0) else {
        return NOT_MINE;
    };
    let hash = flow_hash(&s.flow);
    let choice = select_nodeport_backend(
        Some(service),
        s.flow.family,
        hash,
        config.maglev_size,
        // SAFETY: as above; one entry is read.
        |key, index| unsafe { MAGLEV.get(key) }.map(|chunk| chunk.slots[index % MAGLEV_CHUNK]),
        // SAFETY: as above.
        |key| unsafe { BACKENDS.get(key) }.copied(),
    );
    let NodePortChoice::Backend { backend, .. } = choice else {
        return NOT_MINE;
    };
    if known
        && s.forward.service_id == service.id
        && s.forward.backend == backend.addr
        && s.forward.backend_port == backend.port
    {
        // The backend conntrack has (a retransmitted SYN): the flow keeps its
        // entry, and its translated port if it has one.
        keep_reverse(s);
        return FOUND;
    }
    s.forward = CtForward {
        backend: backend.addr,
        backend_port: backend.port,
        nat_port: 0,
        service_id: service.id,
        ifindex: 0,
        flags: 0,
        _pad: [0; 3],
    };
    match egress_device(ctx, s.flow.family, &s.flow.saddr, &backend.addr) {
        Some(out) if config.is_device(out) => {
            s.forward.flags = CT_SNAT;
            s.forward.ifindex = out;
            if !claim_nat_port(s, hash) {
                return NO_PORT;
            }
        }
        _ => {
            write_reverse_entry(&s.flow, &s.forward, &mut s.reply, &mut s.reverse);
            let _ = CT_REV.insert(&s.reply, &s.reverse, u64::from(BPF_ANY));
        }
    }
    // A full LRU map evicts; an error here only costs the flow its stickiness.
    let _ = CT.insert(&s.flow, &s.forward, u64::from(BPF_ANY));
    FOUND
}

/// Finds a source port for a flow translated to the node: the reply entry of a
/// (backend, node address, port) that no other flow holds.
#[inline(always)]
fn claim_nat_port(s: &mut Scratch, hash: u32) -> bool {
    write_reverse_entry(&s.flow, &s.forward, &mut s.reply, &mut s.reverse);
    for attempt in 0..NAT_PORT_ATTEMPTS {
        let port = nat_port_candidate(s.flow.sport, hash, attempt);
        s.reply.dport = port;
        // NOEXIST: a port another flow to this backend holds is not taken.
        if CT_REV
            .insert(&s.reply, &s.reverse, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            s.forward.nat_port = port;
            return true;
        }
    }
    false
}

/// Puts back the reply entry of an established flow if the LRU evicted it.
#[inline(always)]
fn keep_reverse(s: &mut Scratch) {
    write_reverse_entry(&s.flow, &s.forward, &mut s.reply, &mut s.reverse);
    if CT_REV.get_ptr(&s.reply).is_none() {
        let _ = CT_REV.insert(&s.reply, &s.reverse, u64::from(BPF_NOEXIST));
    }
}

/// Rewrites the packet's addresses and ports (the forward translation, or the
/// reverse one of `s.reverse`), keeping the IPv4 header checksum and the L4
/// checksum (pseudo-header included) right.
#[inline(never)]
fn rewrite(ctx: &TcContext, s: &Scratch, reverse: bool) -> Result<(), ()> {
    let (saddr, sport, daddr, dport) = if reverse {
        reverse_rewrite(&s.reverse)
    } else {
        forward_rewrite(&s.flow, &s.forward)
    };
    let flow = &s.flow;
    let (l4, csum) = (s.l4 as usize, s.csum as usize);
    let l3 = offsets::ETH_HLEN;
    // A UDP/IPv4 checksum of 0 means "none" and stays so.
    let udp4 = if flow.protocol == IPPROTO_UDP && flow.family == AF_INET {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | udp4 | 4;
    if flow.family == AF_INET {
        for (offset, old, new) in [
            (l3 + offsets::IPV4_SADDR, flow.saddr[0], saddr[0]),
            (l3 + offsets::IPV4_DADDR, flow.daddr[0], daddr[0]),
        ] {
            if old != new {
                ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), addr_flags)
                    .map_err(drop)?;
                ctx.l3_csum_replace(l3 + offsets::IPV4_CSUM, u64::from(old), u64::from(new), 4)
                    .map_err(drop)?;
                ctx.store(offset, &new, 0).map_err(drop)?;
            }
        }
    } else {
        for (offset, old, new) in [
            (l3 + offsets::IPV6_SADDR, &flow.saddr, &saddr),
            (l3 + offsets::IPV6_DADDR, &flow.daddr, &daddr),
        ] {
            if old != new {
                for i in 0..4 {
                    ctx.l4_csum_replace(csum, u64::from(old[i]), u64::from(new[i]), addr_flags)
                        .map_err(drop)?;
                }
                ctx.store(offset, new, 0).map_err(drop)?;
            }
        }
    }
    let port_flags = udp4 | 2;
    for (offset, old, new) in [
        (l4 + offsets::L4_SPORT, flow.sport, sport),
        (l4 + offsets::L4_DPORT, flow.dport, dport),
    ] {
        if old != new {
            ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), port_flags)
                .map_err(drop)?;
            ctx.store(offset, &new, 0).map_err(drop)?;
        }
    }
    Ok(())
}

/// The device the kernel would route a packet from `saddr` to `daddr` out of.
#[inline(never)]
fn egress_device(ctx: &TcContext, family: u8, saddr: &RawAddr, daddr: &RawAddr) -> Option<u32> {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid start.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.family = family;
    params.ifindex = ifindex(ctx);
    if family == AF_INET {
        params.__bindgen_anon_3.ipv4_src = saddr[0];
        params.__bindgen_anon_4.ipv4_dst = daddr[0];
    } else {
        params.__bindgen_anon_3.ipv6_src = *saddr;
        params.__bindgen_anon_4.ipv6_dst = *daddr;
    }
    // SAFETY: the context is the program's skb and params is a valid bpf_fib_lookup.
    let result = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let found = result == i64::from(BPF_FIB_LKUP_RET_SUCCESS)
        || result == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH);
    found.then_some(params.ifindex)
}

/// Sends the packet out of `ifindex`, resolving the next hop's link address.
#[inline(always)]
fn redirect(ifindex: u32) -> i32 {
    // SAFETY: no parameters: the kernel looks the next hop up itself.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context is a valid __sk_buff.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Adds the packet to its backend's counter on this CPU: the backend of
/// `s.forward` for a packet to it, the sender for a reply (`reply`).
#[inline(never)]
fn count(ctx: &TcContext, s: &mut Scratch, reply: bool) {
    s.counter = if reply {
        counter_key(
            s.reverse.service_id,
            s.flow.saddr,
            s.flow.sport,
            s.flow.family,
        )
    } else {
        counter_key(
            s.forward.service_id,
            s.forward.backend,
            s.forward.backend_port,
            s.flow.family,
        )
    };
    let key = &s.counter;
    // SAFETY: the context is a valid __sk_buff.
    let segments = u64::from(unsafe { (*ctx.skb.skb).gso_segs }.max(1));
    let bytes = u64::from(ctx.len().saturating_sub(offsets::ETH_HLEN as u32));
    for _ in 0..2 {
        if let Some(counters) = COUNTERS.get_ptr_mut(key) {
            // SAFETY: a per-CPU value is only written from this CPU, and programs do
            // not migrate while they run.
            unsafe {
                if reply {
                    (*counters).packets_out += segments;
                    (*counters).bytes_out += bytes;
                } else {
                    (*counters).packets_in += segments;
                    (*counters).bytes_in += bytes;
                }
            }
            return;
        }
        // The first packet creates the counter; if another CPU did at the same time,
        // NOEXIST fails and the next round adds to it. A full map drops the count.
        let _ = COUNTERS.insert(key, &ZERO, u64::from(BPF_NOEXIST));
    }
}
