//! What follows a change of a service's backends once the maps are written: the
//! removed backends' counters (connections, and NodePort packets and bytes) are
//! dropped and, for a UDP service, the NodePort flows conntrack keeps on them are
//! forgotten and the connected sockets skiff pinned to them are destroyed (see
//! [`super::sockets`]).

use std::net::SocketAddr;

use log::{info, warn};
use skiff_ebpf_common::{Backend, ServiceBackendKey};

use super::{Dataplane, Error, Frontend, Protocol, absent_is_ok};

impl Dataplane {
    /// After `removed` left service `id` (or the service went).
    pub(super) fn forget_backends(
        &mut self,
        frontend: &Frontend,
        id: u32,
        removed: &[SocketAddr],
    ) -> Result<(), Error> {
        let keys: Vec<ServiceBackendKey> = removed
            .iter()
            .map(|b| ServiceBackendKey::new(id, &Backend::from_socket_addr(*b)))
            .collect();
        for key in &keys {
            // A program that read the old table just before the switch may count once
            // more and so re-create the entry: counters() reports published backends
            // only, and such a stray is small. (A NodePort flow that conntrack keeps
            // on a removed backend counts on in a stray the same way.)
            let removed = absent_is_ok(self.maps.counters.remove(key))
                .and_then(|()| absent_is_ok(self.maps.packets.remove(key)));
            if let Err(e) = removed {
                warn!("service {frontend}: removing a backend's counters: {e}");
            }
        }
        if frontend.protocol != Protocol::Udp || keys.is_empty() {
            return Ok(());
        }
        match self.maps.nodeport.forget_udp_flows(&keys) {
            Ok(0) => {}
            Ok(n) => info!(
                "service {frontend}: {n} NodePort UDP flows of removed backends will choose again"
            ),
            Err(e) => {
                warn!("service {frontend}: forgetting NodePort flows of removed backends: {e}")
            }
        }
        let Some(destroyer) = self.destroyer.as_mut() else {
            return Ok(());
        };
        let destroyed = destroyer
            .destroy(&mut self.ebpf, &mut self.maps.destroy_targets, &keys)
            .map_err(|source| Error::Sockets {
                frontend: *frontend,
                source: Box::new(source),
            })?;
        if destroyed > 0 {
            info!(
                "service {frontend}: destroyed {destroyed} connected UDP sockets of removed backends"
            );
        }
        Ok(())
    }

    /// Connected UDP sockets destroyed since load because their backend was removed;
    /// None when this kernel cannot destroy sockets.
    pub fn sockets_destroyed(&self) -> Option<u64> {
        self.destroyer.as_ref().map(|d| d.destroyed())
    }
}
