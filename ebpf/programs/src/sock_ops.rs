//! The mesh's `sock_ops` program: when a captured connection has its source port
//! (the TCP connect callback), the original destination recorded under its socket
//! cookie is copied under (network namespace, source port, family), which the node
//! proxy can look up for the peer of a connection it accepts.

use core::ffi::c_void;

use aya_ebpf::bindings::BPF_SOCK_OPS_TCP_CONNECT_CB;
use aya_ebpf::helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::macros::sock_ops;
use aya_ebpf::programs::SockOpsContext;
use skiff_ebpf_common::mesh::OriginalDstKey;

use crate::maps::{MESH_ORIGINAL_DST, MESH_REDIRECTS};

#[sock_ops]
pub fn skiff_mesh_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        record_original_destination(&ctx);
    }
    // sock_ops programs return 1: they never veto.
    1
}

#[inline(always)]
fn record_original_destination(ctx: &SockOpsContext) {
    // SAFETY: the context is a bpf_sock_ops, which this helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast::<c_void>()) };
    // SAFETY: the value is copied out at once.
    let Some(original) = (unsafe { MESH_REDIRECTS.get(&cookie) }).copied() else {
        return;
    };
    // SAFETY: the context is a bpf_sock_ops, which this helper takes.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops.cast::<c_void>()) };
    // local_port is in host byte order; the listener the socket connects to has
    // the original destination's family (an IPv4-mapped one is IPv4).
    let key = OriginalDstKey::new(netns, ctx.local_port() as u16, original.family);
    // A full LRU map evicts its oldest entry; the proxy then closes the connection.
    let _ = MESH_ORIGINAL_DST.insert(&key, &original, 0);
}
