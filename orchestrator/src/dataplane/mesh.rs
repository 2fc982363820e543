//! The kernel side of the mesh as the node proxy uses it: which pods' network
//! namespaces are captured, which process is the proxy, and the original
//! destination of each captured connection (see `skiff_ebpf_common::mesh`).
//!
//! [`MeshMaps`] is taken out of the loaded dataplane once, by the node proxy, so
//! its per-connection lookups never wait on the service sync's lock.

use std::io;
use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap, MapData};
use skiff_ebpf_common::mesh::{
    MESH_CONFIG_MAP, MESH_ORIGINAL_DST_MAP, MESH_PODS_MAP, MeshConfig, MeshDestination,
    OriginalDstKey,
};
use skiff_ebpf_common::{AF_INET, AF_INET6, Backend};

use super::{Error, into_io, take_map};

/// The mesh's maps.
pub struct MeshMaps {
    pods: HashMap<MapData, u64, u8>,
    config: Array<MapData, MeshConfig>,
    original_dst: HashMap<MapData, OriginalDstKey, MeshDestination>,
}

impl MeshMaps {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, Error> {
        Ok(Self {
            pods: take_map(ebpf, MESH_PODS_MAP)?,
            config: take_map(ebpf, MESH_CONFIG_MAP)?,
            original_dst: take_map(ebpf, MESH_ORIGINAL_DST_MAP)?,
        })
    }

    /// Captures the TCP connections of processes in the network namespace with
    /// this cookie.
    pub fn enroll(&mut self, netns_cookie: u64) -> io::Result<()> {
        self.pods.insert(netns_cookie, 1, 0).map_err(into_io)
    }

    /// Stops capturing in that namespace (nothing to do when it was not).
    pub fn unenroll(&mut self, netns_cookie: u64) -> io::Result<()> {
        super::absent_is_ok(self.pods.remove(&netns_cookie))
    }

    /// The proxy's process (its own sockets are never captured); 0: no proxy,
    /// nothing is captured.
    pub fn set_proxy(&mut self, tgid: u32) -> io::Result<()> {
        let config = MeshConfig {
            proxy_tgid: tgid,
            _pad: 0,
        };
        self.config.set(0, config, 0).map_err(into_io)
    }

    /// Where the connection from `peer` (a socket in the namespace with this
    /// cookie, connected to the proxy's listener) was going; the record is
    /// removed, as each is read once.
    pub fn take_original_destination(
        &mut self,
        netns_cookie: u64,
        peer: SocketAddr,
    ) -> io::Result<Option<OriginalDestination>> {
        let family = match peer.ip() {
            IpAddr::V4(_) => AF_INET,
            IpAddr::V6(_) => AF_INET6,
        };
        let key = OriginalDstKey::new(netns_cookie, peer.port(), family);
        let found = match self.original_dst.get(&key, 0) {
            Ok(found) => found,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(error) => return Err(into_io(error)),
        };
        super::absent_is_ok(self.original_dst.remove(&key))?;
        let address = |addr, port| {
            Backend {
                addr,
                port,
                family: found.family,
                _pad: 0,
            }
            .socket_addr()
        };
        Ok(Some(OriginalDestination {
            addr: address(found.addr, found.port),
            frontend: (found.frontend_port != 0)
                .then(|| address(found.frontend, found.frontend_port)),
        }))
    }
}

/// Where a captured connection was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDestination {
    pub addr: SocketAddr,
    /// The service frontend the kernel balanced to `addr`, when it was one.
    pub frontend: Option<SocketAddr>,
}
