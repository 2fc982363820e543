//! Strict mesh mode: `skiff_mesh_strict`, on the host side of a strict pod's link
//! (tc egress: packets toward the pod), drops TCP connection openings to any
//! port but the tunnel's that do not come from the node itself, so only mutual
//! TLS from node proxies (and the node's probes) reaches the pod.

use aya_ebpf::bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC};
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;
use skiff_ebpf_common::IPPROTO_TCP;
use skiff_ebpf_common::mesh::strict_refuses;
use skiff_ebpf_common::nodeport::{
    ETH_P_IP_BE, ETH_P_IPV6_BE, offsets, opens_connection, parse_ipv4,
};

#[classifier]
pub fn skiff_mesh_strict(ctx: TcContext) -> i32 {
    match refused(&ctx) {
        true => TC_ACT_SHOT,
        false => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn refused(ctx: &TcContext) -> bool {
    let Ok(ethertype) = ctx.load::<u16>(offsets::ETH_PROTO) else {
        return false;
    };
    let l3 = offsets::ETH_HLEN;
    let (protocol, l4) = if ethertype == ETH_P_IP_BE {
        let Ok(header) = ctx.load::<[u8; 20]>(l3) else {
            return false;
        };
        let Some((protocol, ihl, _, _)) = parse_ipv4(&header) else {
            return false;
        };
        (protocol, l3 + ihl)
    } else if ethertype == ETH_P_IPV6_BE {
        let Ok(protocol) = ctx.load::<u8>(l3 + offsets::IPV6_NEXTHDR) else {
            return false;
        };
        (protocol, l3 + offsets::IPV6_HLEN)
    } else {
        return false;
    };
    if protocol != IPPROTO_TCP {
        return false;
    }
    let (Ok(port), Ok(flags)) = (
        ctx.load::<u16>(l4 + offsets::L4_DPORT),
        ctx.load::<u8>(l4 + offsets::TCP_FLAGS),
    ) else {
        return false;
    };
    // A packet this host's own stack sent carries its socket; forwarded ones
    // (from other pods, other nodes) do not.
    // SAFETY: the context is a valid __sk_buff; `sk` is readable in tc programs.
    let local = unsafe { !(*ctx.skb.skb).__bindgen_anon_2.sk.is_null() };
    strict_refuses(opens_connection(protocol, flags), port, local)
}
