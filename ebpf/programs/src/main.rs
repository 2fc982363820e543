//! skiff's eBPF programs: socket-level service load balancing and mesh capture.
//!
//! - [`sock_addr`]: the cgroup `sock_addr` hooks. connect4/6 and sendmsg4/6 look up
//!   the destination in the service map and rewrite a service's virtual IP and port
//!   to one of its backends; recvmsg4/6 and getpeername4/6 translate a backend back
//!   to the service the application asked for.
//! - [`sock_destroy`]: a UDP socket iterator that aborts connected UDP sockets
//!   pinned to backends user space removed.
//! - [`sock_ops`]: the mesh's TCP connect callback, which files a captured
//!   connection's original destination under its source port for the node proxy.
//! - [`mesh_strict`]: the tc program that lets only tunnels reach pods of
//!   namespaces in strict mesh mode.
//! - [`nodeport`]: tc programs on the node's external devices for NodePort traffic
//!   that arrives as packets from other hosts.
//!
//! The decisions live in `skiff_ebpf_common` so they are tested in user space; these
//! modules only read and write the kernel's structures and the maps in [`maps`].
#![no_std]
#![no_main]
// The kfunc call of sock_destroy is emitted with inline assembly (see there).
#![feature(asm_experimental_arch)]

mod maps;
mod mesh_strict;
mod nodeport;
mod sock_addr;
mod sock_destroy;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
