//! The node's own addresses, where NodePort services listen.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every address of this network namespace's interfaces that a client can name
/// without a scope: IPv4 (loopback included, as kube-proxy's localhost NodePorts)
/// and IPv6 other than link-local.
pub fn node_addresses() -> io::Result<Vec<IpAddr>> {
    interface_addresses(|_| true)
}

/// The addresses, as [`node_addresses`] lists them, of the interfaces `devices`.
pub fn device_addresses(devices: &[String]) -> io::Result<Vec<IpAddr>> {
    interface_addresses(|name| devices.iter().any(|d| d.as_bytes() == name.to_bytes()))
}

/// The addresses of the interfaces whose names `keep` accepts.
fn interface_addresses(keep: impl Fn(&std::ffi::CStr) -> bool) -> io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned, which stays valid
        // until freeifaddrs; ifa_addr points at a sockaddr of the family it names,
        // and ifa_name at a NUL-terminated interface name.
        unsafe {
            let entry = &*cursor;
            let name = std::ffi::CStr::from_ptr(entry.ifa_name);
            if let Some(ip) = address(entry.ifa_addr).filter(|_| keep(name)) {
                out.push(ip);
            }
            cursor = entry.ifa_next;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    out.retain(|ip| match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    });
    out.sort();
    out.dedup();
    Ok(out)
}

/// # Safety
/// `sa` is null or points at a sockaddr of the length its family implies.
unsafe fn address(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let v4 = &*(sa as *const libc::sockaddr_in);
                Some(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let v6 = &*(sa as *const libc::sockaddr_in6);
                Some(Ipv6Addr::from(v6.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_among_the_addresses_and_link_local_is_not() {
        let all = node_addresses().unwrap();
        assert!(all.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{all:?}");
        assert!(
            all.iter().all(|ip| !ip.to_string().starts_with("fe80")),
            "{all:?}"
        );
    }

    #[test]
    fn device_addresses_are_those_of_the_named_devices() {
        assert_eq!(
            device_addresses(&["lo".into()]).unwrap(),
            [IpAddr::V4(Ipv4Addr::LOCALHOST), "::1".parse().unwrap()]
        );
        assert!(device_addresses(&[]).unwrap().is_empty());
    }
}
