//! skiff's eBPF programs: socket-level service load balancing.
//!
//! `cgroup/connect4` and `cgroup/connect6`, attached at a cgroup v2 directory, look up
//! the destination of every connect() in the service map and rewrite a service's
//! virtual IP and port to one of its backends. The decision itself lives in
//! `skiff_ebpf_common::select_backend`; this file only reads and writes the context.
#![no_std]
#![no_main]

/// The packet-level NodePort path (tc programs on the node's external devices).
mod nodeport;

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::{BPF_F_NO_PREALLOC, bpf_sock_addr};
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_set_retval};
use aya_ebpf::macros::{cgroup_sock_addr, map};
use aya_ebpf::maps::HashMap;
use aya_ebpf::programs::SockAddrContext;
use aya_log_ebpf::debug;
use skiff_ebpf_common::{
    AF_INET, AF_INET6, Backend, BackendSlotKey, MAX_BACKEND_SLOTS, MAX_SERVICES, RawAddr, Service,
    ServiceKey, Verdict, raw_octets, select_backend,
};

// Not preallocated: elements are then freed through RCU, so a value a program is
// reading is never recycled under it by a concurrent update from user space.
#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, Service> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "BACKENDS")]
static BACKENDS: HashMap<BackendSlotKey, Backend> =
    HashMap::with_max_entries(MAX_BACKEND_SLOTS, BPF_F_NO_PREALLOC);

/// cgroup/connect return values: 1 lets the call proceed, 0 fails it.
const PROCEED: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr; context fields must be read and
    // written with full 32-bit accesses, hence the volatile operations.
    let (ip, port, protocol) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    let key = ServiceKey::new([ip, 0, 0, 0], port as u16, protocol as u8, AF_INET);
    match verdict(&key) {
        Verdict::Pass => PROCEED,
        Verdict::Refuse => refuse(),
        Verdict::Rewrite(backend) => {
            debug!(
                &ctx,
                "connect4 {:i}:{} -> {:i}:{}",
                u32::from_be(ip),
                u16::from_be(port as u16),
                u32::from_be(backend.addr[0]),
                u16::from_be(backend.port)
            );
            // SAFETY: as above.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), backend.addr[0]);
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(backend.port));
            }
            PROCEED
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn skiff_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in connect4.
    let (ip, port, protocol) = unsafe {
        (
            read_ip6(sa),
            read_volatile(addr_of!((*sa).user_port)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    let key = ServiceKey::new(ip, port as u16, protocol as u8, AF_INET6);
    match verdict(&key) {
        Verdict::Pass => PROCEED,
        Verdict::Refuse => refuse(),
        Verdict::Rewrite(backend) => {
            debug!(
                &ctx,
                "connect6 [{:i}]:{} -> [{:i}]:{}",
                raw_octets(ip),
                u16::from_be(port as u16),
                raw_octets(backend.addr),
                u16::from_be(backend.port)
            );
            // SAFETY: as in connect4.
            unsafe {
                for (i, word) in backend.addr.iter().enumerate() {
                    write_volatile(addr_of_mut!((*sa).user_ip6[i]), *word);
                }
                write_volatile(addr_of_mut!((*sa).user_port), u32::from(backend.port));
            }
            PROCEED
        }
    }
}

#[inline(always)]
fn verdict(key: &ServiceKey) -> Verdict {
    // SAFETY: the values are copied out at once; BPF_F_NO_PREALLOC keeps them stable
    // for the duration of this program.
    let service = unsafe { SERVICES.get(key) }.copied();
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    select_backend(service, key.family, random, |slot| {
        // SAFETY: as above.
        unsafe { BACKENDS.get(slot) }.copied()
    })
}

/// Fails the connect() with ECONNREFUSED, as kube-proxy does for a service
/// without endpoints, rather than the EPERM a bare rejection gives.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval is allowed in cgroup programs and only sets the errno.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> RawAddr {
    let mut ip = [0u32; 4];
    for (i, word) in ip.iter_mut().enumerate() {
        // SAFETY: guaranteed by the caller.
        *word = unsafe { read_volatile(addr_of!((*sa).user_ip6[i])) };
    }
    ip
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
