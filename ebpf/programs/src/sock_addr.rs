//! The cgroup `sock_addr` hooks of the socket load balancer.
//!
//! connect4/6 (TCP and connected UDP) and sendmsg4/6 (unconnected UDP: sendto with an
//! address) rewrite a service frontend to a backend, remember the rewrite in
//! `REVERSE_SK` under the socket's cookie and count it. recvmsg4/6 (the source of a
//! datagram) and getpeername4/6 (the peer) translate such a backend back to the
//! frontend, so the application only ever sees the address it asked for.
//!
//! connect4/6 then capture TCP from pods enrolled in the mesh into the node proxy
//! (see `skiff_ebpf_common::mesh`), leaving a service frontend whose port declares
//! HTTP unbalanced for the proxy's L7 layer; getpeername4/6 show a captured socket
//! its original destination rather than the proxy's listener.

use core::ffi::c_void;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie,
    bpf_ktime_get_ns, bpf_set_retval,
};
use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;
use aya_log_ebpf::debug;
use skiff_ebpf_common::mesh::{
    MeshDestination, captured_peer, captures, keeps_frontend, mesh_redirect,
};
use skiff_ebpf_common::{
    AF_INET, AF_INET6, AffinityKey, AffinityValue, Backend, RawAddr, ServiceBackendKey, ServiceKey,
    Verdict, affine_backend, raw_octets, reverse_entry, reverse_translation, select_backend,
    service_view, socket_view,
};

use crate::maps::{
    AFFINITY, AFFINITY_BACKENDS, BACKENDS, MESH_CONFIG, MESH_PODS, MESH_REDIRECTS, REVERSE_SK,
    SERVICES, count,
};

/// cgroup sock_addr return values: 1 lets the call proceed, 0 fails it.
const PROCEED: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Logs an IPv4 rewrite at debug level. The format names the hook: aya-log wants a
/// literal format string, and an `&str` argument would cost a copy loop.
macro_rules! log_rewrite4 {
    ($ctx:expr, $rewrite:expr, $fmt:tt) => {
        if let Some(r) = $rewrite {
            debug!(
                &$ctx,
                $fmt,
                u32::from_be(r.frontend[0]),
                u16::from_be(r.frontend_port),
                u32::from_be(r.backend.addr[0]),
                u16::from_be(r.backend.port)
            );
        }
    };
}

/// Logs an IPv6 rewrite at debug level (see `log_rewrite4`).
macro_rules! log_rewrite6 {
    ($ctx:expr, $rewrite:expr, $fmt:tt) => {
        if let Some(r) = $rewrite {
            debug!(
                &$ctx,
                $fmt,
                raw_octets(r.frontend),
                u16::from_be(r.frontend_port),
                raw_octets(r.backend.addr),
                u16::from_be(r.backend.port)
            );
        }
    };
}

#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    let captured = mesh_captured(&ctx);
    let (ret, rewrite) = forward(&ctx, AF_INET, captured);
    let frontend = rewrite.as_ref().map(|r| (r.frontend, r.frontend_port));
    log_rewrite4!(ctx, rewrite, "connect4 {:i}:{} -> {:i}:{}");
    if ret == PROCEED && captured {
        capture(&ctx, AF_INET, frontend);
    }
    ret
}

#[cgroup_sock_addr(connect6)]
pub fn skiff_connect6(ctx: SockAddrContext) -> i32 {
    let captured = mesh_captured(&ctx);
    let (ret, rewrite) = forward(&ctx, AF_INET6, captured);
    let frontend = rewrite.as_ref().map(|r| (r.frontend, r.frontend_port));
    log_rewrite6!(ctx, rewrite, "connect6 [{:i}]:{} -> [{:i}]:{}");
    if ret == PROCEED && captured {
        capture(&ctx, AF_INET6, frontend);
    }
    ret
}

#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4(ctx: SockAddrContext) -> i32 {
    let (ret, rewrite) = forward(&ctx, AF_INET, false);
    log_rewrite4!(ctx, rewrite, "sendmsg4 {:i}:{} -> {:i}:{}");
    ret
}

#[cgroup_sock_addr(sendmsg6)]
pub fn skiff_sendmsg6(ctx: SockAddrContext) -> i32 {
    let (ret, rewrite) = forward(&ctx, AF_INET6, false);
    log_rewrite6!(ctx, rewrite, "sendmsg6 [{:i}]:{} -> [{:i}]:{}");
    ret
}

#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn skiff_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn skiff_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET)
}

#[cgroup_sock_addr(getpeername6)]
pub fn skiff_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET6)
}

/// A rewrite a connect or sendmsg hook made, for its log line.
struct Rewrite {
    frontend: RawAddr,
    frontend_port: u16,
    backend: Backend,
}

/// connect and sendmsg: a frontend becomes one of its backends, unless the mesh
/// `captured` the connect() and its L7 layer balances the service. Returns the
/// hook's return value and the rewrite made, if any.
#[inline(always)]
fn forward(ctx: &SockAddrContext, socket_family: u8, captured: bool) -> (i32, Option<Rewrite>) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr.
    let (asked, port, protocol) = unsafe {
        (
            read_addr(sa, socket_family),
            read_port(sa),
            read_protocol(sa),
        )
    };
    // An IPv6 socket reaches an IPv4 service at its IPv4-mapped address (Java's
    // do by default); the service, its backends and the records are IPv4.
    let (ip, family, mapped) = service_view(asked, socket_family);
    let key = ServiceKey::new(ip, port, protocol, family);
    // SAFETY: the values are copied out at once; BPF_F_NO_PREALLOC keeps them stable
    // for the duration of this program.
    let service = unsafe { SERVICES.get(&key) }.copied();
    if service.is_some_and(|s| keeps_frontend(protocol, s.flags, captured)) {
        return (PROCEED, None);
    }
    let affinity = service.filter(|s| s.affinity_timeout != 0).map(|s| {
        // SAFETY: the context is a bpf_sock_addr, which this helper takes; the
        // clock helper has no preconditions.
        let client = unsafe { bpf_get_netns_cookie(sa.cast::<c_void>()) };
        let now = unsafe { bpf_ktime_get_ns() };
        let akey = AffinityKey::new(s.id, client);
        // SAFETY: the values are copied or compared at once.
        let remembered = unsafe { AFFINITY.get(&akey) }.copied();
        let kept = affine_backend(&s, family, now, remembered, |k| unsafe {
            AFFINITY_BACKENDS.get(k).is_some()
        });
        (akey, now, kept)
    });
    let verdict = match affinity {
        Some((_, _, Some(kept))) => Verdict::Rewrite(kept),
        _ => {
            // SAFETY: bpf_get_prandom_u32 has no preconditions.
            let random = unsafe { bpf_get_prandom_u32() };
            select_backend(service, family, random, |slot| {
                // SAFETY: as above.
                unsafe { BACKENDS.get(slot) }.copied()
            })
        }
    };
    let (backend, service_id) = match (verdict, service) {
        (Verdict::Rewrite(backend), Some(service)) => (backend, service.id),
        (Verdict::Pass, _) => return (PROCEED, None),
        _ => return (refuse(), None),
    };
    if let Some((akey, now, _)) = affinity {
        let remember = AffinityValue {
            last_used_ns: now,
            backend,
            _pad: 0,
        };
        // A full LRU map evicts the client not seen for longest.
        let _ = AFFINITY.insert(&akey, &remember, 0);
    }
    let written = socket_view(backend.addr, mapped);
    // SAFETY: as above.
    unsafe { write_addr(sa, socket_family, written, backend.port) };

    // SAFETY: the context is a bpf_sock_addr, which this helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast::<c_void>()) };
    let (rkey, rvalue) = reverse_entry(cookie, &key, service_id, &backend);
    // Unconnected UDP passes here for every datagram: write only what changed.
    // SAFETY: the value is compared at once.
    if unsafe { REVERSE_SK.get(&rkey) } != Some(&rvalue) {
        // A full LRU map evicts its oldest entry; a failed update only loses the
        // translation of replies for this socket.
        let _ = REVERSE_SK.insert(&rkey, &rvalue, 0);
    }
    count(&ServiceBackendKey::new(service_id, &backend));
    // As the socket sees them, for the log.
    let rewrite = Rewrite {
        frontend: asked,
        frontend_port: port,
        backend: Backend {
            addr: written,
            ..backend
        },
    };
    (PROCEED, Some(rewrite))
}

/// Whether the mesh captures this connect(): it comes from a pod enrolled in the
/// mesh, and not from the node proxy.
#[inline(always)]
fn mesh_captured(ctx: &SockAddrContext) -> bool {
    let sa = ctx.sock_addr;
    // SAFETY: the context is a bpf_sock_addr, which this helper takes.
    let netns = unsafe { bpf_get_netns_cookie(sa.cast::<c_void>()) };
    // SAFETY: the value is only tested for presence.
    let enrolled = unsafe { MESH_PODS.get(&netns) }.is_some();
    let Some(config) = MESH_CONFIG.get(0).copied() else {
        return false;
    };
    let caller = (bpf_get_current_pid_tgid() >> 32) as u32;
    captures(enrolled, caller, config)
}

/// connect, after `forward`, for a socket the mesh captured: TCP goes to the node
/// proxy's listener in the pod, and the destination it had (and the service
/// `frontend` that `forward` balanced, as the socket asked for it) is recorded
/// under the socket's cookie for the proxy (through the sock_ops program) and
/// getpeername.
#[inline(always)]
fn capture(ctx: &SockAddrContext, socket_family: u8, frontend: Option<(RawAddr, u16)>) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr.
    let (asked, port, protocol) = unsafe {
        (
            read_addr(sa, socket_family),
            read_port(sa),
            read_protocol(sa),
        )
    };
    let (ip, family, mapped) = service_view(asked, socket_family);
    let Some((listener, listener_port)) = mesh_redirect(protocol, ip, port, family, true) else {
        return;
    };
    // SAFETY: as above.
    unsafe {
        write_addr(
            sa,
            socket_family,
            socket_view(listener, mapped),
            listener_port,
        )
    };
    // SAFETY: the context is a bpf_sock_addr, which this helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast::<c_void>()) };
    let (frontend, frontend_port) = match frontend {
        Some((asked, port)) => (service_view(asked, socket_family).0, port),
        None => ([0; 4], 0),
    };
    let original = MeshDestination {
        addr: ip,
        port,
        family,
        _pad: 0,
        frontend,
        frontend_port,
        _pad_tail: [0; 2],
    };
    // A full LRU map evicts its oldest entry; a failed update leaves the proxy
    // without the destination, and it closes the connection.
    let _ = MESH_REDIRECTS.insert(&cookie, &original, 0);
}

/// recvmsg and getpeername: a backend the socket was balanced to becomes the frontend.
/// These hooks cannot fail the call; they always proceed.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, socket_family: u8) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr.
    let (ip, port) = unsafe { (read_addr(sa, socket_family), read_port(sa)) };
    // SAFETY: the context is a bpf_sock_addr, which this helper takes.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast::<c_void>()) };
    // An IPv6 socket balanced to an IPv4 backend sees it IPv4-mapped (see forward).
    let (ip, family, mapped) = service_view(ip, socket_family);
    // A socket captured by the mesh is connected to the proxy: its peer is the
    // destination it had, translated further if that was a service's backend.
    // SAFETY: the value is copied out at once.
    let record = unsafe { MESH_REDIRECTS.get(&cookie) }.copied();
    let captured = captured_peer(ip, port, family, record);
    let (ip, port) = match captured {
        Some(original) => (original.addr, original.port),
        None => (ip, port),
    };
    let translated = reverse_translation(cookie, ip, port, family, |k| {
        // SAFETY: the value is copied out at once.
        unsafe { REVERSE_SK.get(k) }.copied()
    })
    .or(captured.map(|_| (ip, port)));
    if let Some((addr, port)) = translated {
        let addr = socket_view(addr, mapped);
        // SAFETY: as above.
        unsafe { write_addr(sa, socket_family, addr, port) };
    }
    PROCEED
}

/// Fails the call with ECONNREFUSED, as kube-proxy does for a service without
/// endpoints, rather than the EPERM a bare rejection gives.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval is allowed in cgroup programs and only sets the errno.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

// Context fields must be read and written with full 32-bit accesses, hence the
// volatile operations on u32 fields.

/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn read_addr(sa: *mut bpf_sock_addr, family: u8) -> RawAddr {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if family == AF_INET {
            [read_volatile(addr_of!((*sa).user_ip4)), 0, 0, 0]
        } else {
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ]
        }
    }
}

/// The port in network byte order.
///
/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn read_port(sa: *mut bpf_sock_addr) -> u16 {
    // SAFETY: guaranteed by the caller.
    unsafe { read_volatile(addr_of!((*sa).user_port)) as u16 }
}

/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn read_protocol(sa: *mut bpf_sock_addr) -> u8 {
    // SAFETY: guaranteed by the caller.
    unsafe { read_volatile(addr_of!((*sa).protocol)) as u8 }
}

/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn write_addr(sa: *mut bpf_sock_addr, family: u8, addr: RawAddr, port: u16) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if family == AF_INET {
            write_volatile(addr_of_mut!((*sa).user_ip4), addr[0]);
        } else {
            for (i, word) in addr.iter().enumerate() {
                write_volatile(addr_of_mut!((*sa).user_ip6[i]), *word);
            }
        }
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(port));
    }
}
