//! `iter/udp`: destroys connected UDP sockets pinned to removed backends.
//!
//! A connected UDP socket keeps sending to the backend connect() chose for it, and
//! the sendmsg hook does not run for it. When user space removes backends, it puts
//! them in `DESTROY_TARGETS` and reads this iterator (in every network namespace
//! with load-balanced sockets): each UDP socket whose peer is such a backend, chosen
//! for it by skiff (its cookie and peer are in `REVERSE_SK`), is aborted with the
//! `bpf_sock_destroy` kfunc (Linux 6.5+). The application then gets ECONNABORTED
//! and, when it connects again, connect4/6 picks a live backend. One
//! [`DestroyRecord`] per destroyed socket is written to the iterator's output.
//!
//! aya-ebpf 0.2 has no attribute for iterators and aya 0.14 does not resolve kfunc
//! calls, so the section is named by hand and the call is emitted as a raw
//! instruction whose BTF id user space patches in before loading.

use core::arch::asm;
use core::ffi::c_void;
use core::ptr::read_volatile;

use aya_ebpf::bindings::seq_file;
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_seq_write};
use skiff_ebpf_common::{
    AF_INET, AF_INET6, DestroyRecord, Peer, SOCK_DESTROY_PLACEHOLDER, SockOffsets, kfunc_call_insn,
    service_view, should_destroy,
};

use crate::maps::{DESTROY_TARGETS, REVERSE_SK};

/// Offsets of `struct sock_common` fields, set by user space from the kernel's BTF
/// (a frozen read-only global: the verifier sees constants).
#[unsafe(no_mangle)]
static SKIFF_SOCK_OFFSETS: SockOffsets = SockOffsets {
    family: 0,
    daddr: 0,
    dport: 0,
    v6_daddr: 0,
};

/// `struct bpf_iter__udp`: pointers are 8 bytes wide whatever the architecture.
const CTX_META: usize = 0;
const CTX_UDP_SK: usize = 1;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub fn skiff_destroy_udp(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel hands a bpf_iter__udp.
    unsafe { visit(ctx.cast::<u64>()) };
    0
}

/// # Safety
/// `ctx` must be the iterator's context.
#[inline(always)]
unsafe fn visit(ctx: *const u64) {
    // SAFETY: guaranteed by the caller; the pointers are checked by the verifier as
    // BTF-typed kernel pointers (udp_sk is NULL at the end of the iteration).
    unsafe {
        let meta = read_volatile(ctx.add(CTX_META)) as *const u64;
        let sk = read_volatile(ctx.add(CTX_UDP_SK)) as *mut u8;
        if sk.is_null() || meta.is_null() {
            return;
        }
        let Some(peer) = peer(sk) else {
            return;
        };
        let cookie = bpf_get_socket_cookie(sk.cast::<c_void>());
        let destroy = should_destroy(
            cookie,
            Some(peer),
            |k| REVERSE_SK.get(k).copied(),
            |k| DESTROY_TARGETS.get(k).is_some(),
        );
        if !destroy {
            return;
        }
        let record = DestroyRecord {
            cookie,
            result: sock_destroy(sk),
            _pad: 0,
        };
        let seq = read_volatile(meta) as *mut seq_file;
        bpf_seq_write(
            seq,
            (&record as *const DestroyRecord).cast::<c_void>(),
            DestroyRecord::SIZE as u32,
        );
    }
}

/// The peer of a UDP socket (zero port when it is not connected).
///
/// # Safety
/// `sk` must be the iterator's non-null socket.
#[inline(always)]
unsafe fn peer(sk: *mut u8) -> Option<Peer> {
    // SAFETY: guaranteed by the caller; the offsets are those of the running kernel's
    // struct sock_common, at the start of every socket.
    unsafe {
        let off = read_volatile(&SKIFF_SOCK_OFFSETS);
        let family = read_volatile(sk.add(off.family as usize).cast::<u16>());
        let port = read_volatile(sk.add(off.dport as usize).cast::<u16>());
        let addr = if family == u16::from(AF_INET) {
            [
                read_volatile(sk.add(off.daddr as usize).cast::<u32>()),
                0,
                0,
                0,
            ]
        } else if family == u16::from(AF_INET6) {
            let v6 = sk.add(off.v6_daddr as usize).cast::<u32>();
            [
                read_volatile(v6),
                read_volatile(v6.add(1)),
                read_volatile(v6.add(2)),
                read_volatile(v6.add(3)),
            ]
        } else {
            return None;
        };
        // Balanced to an IPv4 backend, an IPv6 socket's peer is IPv4-mapped; the
        // records hold the backend as IPv4.
        let (addr, family, _) = service_view(addr, family as u8);
        Some(Peer { addr, port, family })
    }
}

/// The instruction calling the `bpf_sock_destroy` kfunc, with a placeholder BTF id.
const SOCK_DESTROY_CALL: u64 = kfunc_call_insn(SOCK_DESTROY_PLACEHOLDER);

/// `int bpf_sock_destroy(struct sock_common *sk)`: aborts the socket (for UDP,
/// `udp_abort`: sk_err = ECONNABORTED and a disconnect).
///
/// # Safety
/// `sk` must be the iterator's socket: the kfunc takes a trusted pointer, and only
/// iter/tcp and iter/udp programs, which hold the socket's lock, may call it.
#[inline(always)]
unsafe fn sock_destroy(sk: *mut u8) -> i32 {
    let ret: u64;
    // SAFETY: a call clobbers r0-r5 as any BPF call does; the kernel checks the
    // argument's type against the kfunc's BTF.
    unsafe {
        asm!(
            ".quad {insn}",
            insn = const SOCK_DESTROY_CALL,
            inout("r1") sk as u64 => _,
            lateout("r0") ret,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack),
        );
    }
    ret as i32
}
