//! The backends each service was last published with, so an update can tell which
//! backends it removed: their counters are dropped and, for UDP services, the
//! connected sockets pinned to them destroyed.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Frontend;

/// One published service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The service's id in the kernel maps.
    pub id: u32,
    pub backends: Vec<SocketAddr>,
}

/// Every published service by frontend.
#[derive(Debug, Default)]
pub struct PublishedServices {
    services: HashMap<Frontend, Published>,
}

impl PublishedServices {
    /// Records that `frontend` (service `id`) now has `backends`; returns the ones
    /// it had before and has no longer.
    pub fn replace(
        &mut self,
        frontend: &Frontend,
        id: u32,
        backends: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let new = Published {
            id,
            backends: backends.to_vec(),
        };
        match self.services.insert(*frontend, new) {
            // A new id means the old service's sockets were handled when it went.
            Some(old) if old.id == id => removed_backends(&old.backends, backends),
            _ => Vec::new(),
        }
    }

    /// Forgets `frontend`; returns what it had.
    pub fn remove(&mut self, frontend: &Frontend) -> Option<Published> {
        self.services.remove(frontend)
    }

    /// Every published frontend with its backends, slot by slot, sorted.
    pub fn frontends(&self) -> Vec<(Frontend, Vec<SocketAddr>)> {
        let mut all: Vec<(Frontend, Vec<SocketAddr>)> = self
            .services
            .iter()
            .map(|(frontend, published)| (*frontend, published.backends.clone()))
            .collect();
        all.sort();
        all
    }

    /// The frontend of each (service id, backend) published.
    pub fn by_backend(&self) -> HashMap<(u32, SocketAddr), Frontend> {
        let mut index = HashMap::new();
        for (frontend, published) in &self.services {
            for backend in &published.backends {
                index.insert((published.id, *backend), *frontend);
            }
        }
        index
    }
}

/// The backends in `old` that are not in `new`, each once, in `old`'s order.
pub fn removed_backends(old: &[SocketAddr], new: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut removed: Vec<SocketAddr> = Vec::new();
    for backend in old {
        if !new.contains(backend) && !removed.contains(backend) {
            removed.push(*backend);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn vip() -> Frontend {
        Frontend::udp("10.96.0.10:53".parse().unwrap())
    }

    #[test]
    fn removed_backends_are_those_no_longer_listed() {
        let old = addrs(&["10.244.0.2:53", "10.244.0.3:53", "10.244.0.4:53"]);
        assert_eq!(
            removed_backends(&old, &addrs(&["10.244.0.3:53"])),
            addrs(&["10.244.0.2:53", "10.244.0.4:53"])
        );
        // Same address, other port: a different backend.
        assert_eq!(
            removed_backends(&old[..1], &addrs(&["10.244.0.2:5353"])),
            addrs(&["10.244.0.2:53"])
        );
        // Reordering or adding removes nothing; duplicates count once.
        let mut shuffled = old.clone();
        shuffled.reverse();
        shuffled.push("10.244.0.9:53".parse().unwrap());
        assert_eq!(removed_backends(&old, &shuffled), []);
        let twice = addrs(&["10.244.0.2:53", "10.244.0.2:53"]);
        assert_eq!(removed_backends(&twice, &[]), addrs(&["10.244.0.2:53"]));
        assert_eq!(removed_backends(&[], &old), []);
    }

    #[test]
    fn updates_report_what_they_removed() {
        let mut published = PublishedServices::default();
        let all = addrs(&["10.244.0.2:53", "10.244.0.3:53"]);
        assert_eq!(published.replace(&vip(), 1, &all), [], "a new service");
        assert_eq!(published.replace(&vip(), 1, &all[1..]), all[..1]);
        assert_eq!(
            published.by_backend(),
            HashMap::from([((1, all[1]), vip())])
        );
        assert_eq!(
            published.remove(&vip()),
            Some(Published {
                id: 1,
                backends: all[1..].to_vec()
            })
        );
        assert!(published.by_backend().is_empty());
        // Re-created under a new id: nothing of the old one is reported again.
        published.replace(&vip(), 1, &all);
        assert_eq!(published.replace(&vip(), 2, &[]), []);
    }
}
