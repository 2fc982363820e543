//! Keeps the service maps in step with the store: Services and EndpointSlices are
//! listed, then watched, and each change reprograms only the frontends of the one
//! Service it touches (no full rewrite). A watch that ends or fails is followed by
//! a fresh list and a full reconcile, which also removes what was programmed for
//! services that went away in between. Writes that fail are retried.
//!
//! [`Catalog`] is plain data (what the store holds, what was programmed); [`run`]
//! feeds it from the registry and hands its changes to a [`Programmer`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use log::{debug, info, warn};

use super::desired::{self, SERVICE_NAME_LABEL};
use super::{Balancing, Dataplane, Error, Frontend};
use crate::api::registry::typed::{cast, list_all, watch_all};
use crate::api::registry::{ApiError, EventType, Registry};
use crate::model::{EndpointSlice, Kind, Service};

/// How soon frontends whose writes failed are tried again.
const RETRY: Duration = Duration::from_secs(5);

/// A Service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Writes frontends to the maps (the dataplane; a recording fake in tests).
pub trait Programmer {
    fn upsert(&mut self, frontend: &Frontend, balancing: &Balancing) -> Result<(), Error>;
    fn remove(&mut self, frontend: &Frontend) -> Result<(), Error>;
}

impl Programmer for Dataplane {
    fn upsert(&mut self, frontend: &Frontend, balancing: &Balancing) -> Result<(), Error> {
        self.upsert_service(frontend, balancing)
    }

    fn remove(&mut self, frontend: &Frontend) -> Result<(), Error> {
        self.remove_service(frontend).map(drop)
    }
}

/// What the store holds and what the maps were given.
#[derive(Debug, Default)]
pub struct Catalog {
    node_addresses: Vec<IpAddr>,
    services: HashMap<ServiceName, Service>,
    /// EndpointSlices by the service they belong to, then by their own name.
    slices: HashMap<ServiceName, BTreeMap<String, EndpointSlice>>,
    /// Which service each slice (namespace, slice name) was filed under.
    slice_owner: HashMap<(String, String), ServiceName>,
    /// Per service, each frontend written and its backends; None when the last
    /// write failed, so the frontend is rewritten (or removed) on the next pass.
    programmed: HashMap<ServiceName, BTreeMap<Frontend, Option<Balancing>>>,
    /// Services with a failed write, for the retry pass.
    failed: BTreeSet<ServiceName>,
    /// Frontends a previous agent left in the maps, until a service claims them.
    adopted: HashMap<Frontend, Balancing>,
}

impl Catalog {
    pub fn new(node_addresses: Vec<IpAddr>) -> Self {
        Self {
            node_addresses,
            ..Self::default()
        }
    }

    /// Frontends found in the maps at start (see [`Dataplane::take_adopted`]):
    /// those a service wants with the same backends are not rewritten, and
    /// [`Catalog::remove_unclaimed`] removes the rest after the first full pass.
    pub fn adopt(&mut self, adopted: HashMap<Frontend, Balancing>) {
        self.adopted = adopted;
    }

    /// Removes the adopted frontends no service claimed.
    pub fn remove_unclaimed(&mut self, maps: &mut impl Programmer) {
        for (frontend, _) in std::mem::take(&mut self.adopted) {
            match maps.remove(&frontend) {
                Ok(()) => info!("service sync: removed {frontend}, which no service has now"),
                Err(e) => warn!("service sync: removing {frontend}: {e}"),
            }
        }
    }

    /// Replaces what the store holds (after a list); returns every service that
    /// may need reprogramming, including those that were programmed but are gone.
    pub fn replace(
        &mut self,
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
    ) -> BTreeSet<ServiceName> {
        self.services.clear();
        self.slices.clear();
        self.slice_owner.clear();
        for service in services {
            self.service_changed(EventType::Added, service);
        }
        for slice in slices {
            self.slice_changed(EventType::Added, slice);
        }
        self.services
            .keys()
            .chain(self.programmed.keys())
            .cloned()
            .collect()
    }

    /// Records a Service event; returns the service to reprogram.
    pub fn service_changed(&mut self, event: EventType, service: Service) -> ServiceName {
        let name = ServiceName {
            namespace: namespace_of(&service.metadata.namespace),
            name: service.metadata.name.clone(),
        };
        match event {
            EventType::Deleted => {
                self.services.remove(&name);
            }
            EventType::Added | EventType::Modified => {
                self.services.insert(name.clone(), service);
            }
        }
        name
    }

    /// Records an EndpointSlice event; returns the services to reprogram (the one
    /// it belonged to, and the one it belongs to now if its label changed).
    pub fn slice_changed(&mut self, event: EventType, slice: EndpointSlice) -> Vec<ServiceName> {
        let namespace = namespace_of(&slice.metadata.namespace);
        let id = (namespace.clone(), slice.metadata.name.clone());
        let mut touched = Vec::new();
        if let Some(old) = self.slice_owner.remove(&id) {
            if let Some(slices) = self.slices.get_mut(&old) {
                slices.remove(&id.1);
                if slices.is_empty() {
                    self.slices.remove(&old);
                }
            }
            touched.push(old);
        }
        let owner = slice
            .metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(|name| ServiceName {
                namespace,
                name: name.clone(),
            });
        if let (Some(owner), EventType::Added | EventType::Modified) = (owner, event) {
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(id.1.clone(), slice);
            self.slice_owner.insert(id, owner.clone());
            if !touched.contains(&owner) {
                touched.push(owner);
            }
        }
        touched
    }

    /// Brings the maps in line with `name`'s Service and slices: frontends whose
    /// backends changed are rewritten, frontends no longer wanted are removed, and
    /// nothing else is touched. Failed writes are logged and left for [`Catalog::retry`].
    pub fn reconcile(&mut self, name: &ServiceName, maps: &mut impl Programmer) {
        let wanted = match self.services.get(name) {
            Some(service) => {
                let slices: Vec<&EndpointSlice> = self
                    .slices
                    .get(name)
                    .map(|s| s.values().collect())
                    .unwrap_or_default();
                desired::frontends(service, &slices, &self.node_addresses)
            }
            None => BTreeMap::new(),
        };
        let programmed = self.programmed.entry(name.clone()).or_default();
        let mut failed = false;
        let stale: Vec<Frontend> = programmed
            .keys()
            .filter(|f| !wanted.contains_key(f))
            .copied()
            .collect();
        for frontend in stale {
            match maps.remove(&frontend) {
                Ok(()) => {
                    programmed.remove(&frontend);
                    debug!("service {name}: removed {frontend}");
                }
                Err(e) => {
                    warn!("service {name}: removing {frontend}: {e}");
                    failed = true;
                }
            }
        }
        for (frontend, balancing) in wanted {
            if let Some(left) = self.adopted.remove(&frontend)
                && !programmed.contains_key(&frontend)
                && left == balancing
            {
                programmed.insert(frontend, Some(balancing));
                continue;
            }
            if programmed.get(&frontend) == Some(&Some(balancing.clone())) {
                continue;
            }
            match maps.upsert(&frontend, &balancing) {
                Ok(()) => {
                    debug!("service {name}: {frontend} -> {balancing:?}");
                    programmed.insert(frontend, Some(balancing));
                }
                Err(e) => {
                    warn!("service {name}: programming {frontend}: {e}");
                    programmed.insert(frontend, None);
                    failed = true;
                }
            }
        }
        if programmed.is_empty() {
            self.programmed.remove(name);
        }
        if failed {
            self.failed.insert(name.clone());
        } else {
            self.failed.remove(name);
        }
    }

    /// Reconciles the services whose writes failed.
    pub fn retry(&mut self, maps: &mut impl Programmer) {
        for name in std::mem::take(&mut self.failed) {
            self.reconcile(&name, maps);
        }
    }

    pub fn has_failures(&self) -> bool {
        !self.failed.is_empty()
    }

    /// How many frontends are programmed.
    pub fn frontend_count(&self) -> usize {
        self.programmed.values().map(BTreeMap::len).sum()
    }
}

fn namespace_of(namespace: &Option<String>) -> String {
    namespace.clone().unwrap_or_else(|| "default".into())
}

/// Follows the store until `shutdown`, programming `dataplane`. Store errors are
/// logged and the lists are retried; they never stop the agent.
pub async fn run(
    registry: Registry,
    dataplane: Arc<Mutex<Dataplane>>,
    node_addresses: Vec<IpAddr>,
    shutdown: impl Future<Output = ()>,
) {
    let mut catalog = Catalog::new(node_addresses);
    tokio::pin!(shutdown);
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let followed = tokio::select! {
            _ = &mut shutdown => return,
            ended = follow(&registry, &dataplane, &mut catalog, &mut retry) => ended,
        };
        if let Err(e) = followed {
            warn!("service sync: {e}; listing again");
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// One list-then-watch round; returns when a watch ends.
async fn follow(
    registry: &Registry,
    dataplane: &Mutex<Dataplane>,
    catalog: &mut Catalog,
    retry: &mut tokio::time::Interval,
) -> Result<(), ApiError> {
    let (services, service_version) = list_all::<Service>(registry, Kind::Service).await?;
    let (slices, slice_version) = list_all::<EndpointSlice>(registry, Kind::EndpointSlice).await?;
    let everything = catalog.replace(services, slices);
    with_maps(dataplane, |maps| {
        catalog.adopt(maps.take_adopted());
        for name in &everything {
            catalog.reconcile(name, maps);
        }
        catalog.remove_unclaimed(maps);
    });
    info!(
        "service sync: {} frontends programmed for {} services",
        catalog.frontend_count(),
        everything.len()
    );
    let mut service_events = watch_all(registry, Kind::Service, &service_version).await?;
    let mut slice_events = watch_all(registry, Kind::EndpointSlice, &slice_version).await?;
    loop {
        let touched: Vec<ServiceName> = tokio::select! {
            event = service_events.next() => match event {
                Some(Ok(event)) => match cast::<Service>(&event.object) {
                    Some(service) => vec![catalog.service_changed(event.event_type, service)],
                    None => continue,
                },
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            event = slice_events.next() => match event {
                Some(Ok(event)) => match cast::<EndpointSlice>(&event.object) {
                    Some(slice) => catalog.slice_changed(event.event_type, slice),
                    None => continue,
                },
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            _ = retry.tick(), if catalog.has_failures() => {
                with_maps(dataplane, |maps| catalog.retry(maps));
                continue;
            }
        };
        with_maps(dataplane, |maps| {
            for name in &touched {
                catalog.reconcile(name, maps);
            }
        });
    }
}

fn with_maps(dataplane: &Mutex<Dataplane>, f: impl FnOnce(&mut Dataplane)) {
    // A panic while holding the lock leaves maps that the next pass rewrites anyway.
    let mut guard = dataplane
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write; fails writes to frontends listed in `broken`.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        broken: BTreeSet<Frontend>,
    }

    impl Programmer for Recorder {
        fn upsert(&mut self, frontend: &Frontend, balancing: &Balancing) -> Result<(), Error> {
            if self.broken.contains(frontend) {
                return Err(Error::Missing {
                    kind: "map",
                    name: "BROKEN",
                });
            }
            let b: Vec<String> = balancing.backends.iter().map(ToString::to_string).collect();
            self.log.push(format!("upsert {frontend} {}", b.join(",")));
            Ok(())
        }
        fn remove(&mut self, frontend: &Frontend) -> Result<(), Error> {
            self.log.push(format!("remove {frontend}"));
            Ok(())
        }
    }

    fn service(name: &str, ip: &str, ports: &str) -> Service {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIP: {ip}, ports: [{ports}]}}"
        ))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let endpoints: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{addresses: [{ip}]}}"))
            .collect();
        serde_saphyr::from_str(&format!(
            "metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{}]",
            endpoints.join(", ")
        ))
        .unwrap()
    }

    fn sync(
        catalog: &mut Catalog,
        maps: &mut Recorder,
        names: impl IntoIterator<Item = ServiceName>,
    ) {
        for n in names {
            catalog.reconcile(&n, maps);
        }
    }

    #[test]
    fn a_slice_change_rewrites_only_its_services_frontends() {
        let (mut catalog, mut maps) = (Catalog::new(vec![]), Recorder::default());
        let touched = catalog.replace(
            vec![
                service("web", "10.96.0.5", "{port: 80}"),
                service("api", "10.96.0.6", "{port: 80}"),
            ],
            vec![
                slice("web-1", "web", &["10.244.0.2"]),
                slice("api-1", "api", &["10.244.0.3"]),
            ],
        );
        sync(&mut catalog, &mut maps, touched);
        assert_eq!(maps.log.len(), 2, "{:?}", maps.log);
        maps.log.clear();

        let touched = catalog.slice_changed(
            EventType::Modified,
            slice("web-1", "web", &["10.244.0.2", "10.244.0.4"]),
        );
        sync(&mut catalog, &mut maps, touched);
        assert_eq!(
            maps.log,
            ["upsert 10.96.0.5:80/tcp 10.244.0.2:8080,10.244.0.4:8080"]
        );

        // The same content again writes nothing.
        maps.log.clear();
        let touched = catalog.slice_changed(
            EventType::Modified,
            slice("web-1", "web", &["10.244.0.2", "10.244.0.4"]),
        );
        sync(&mut catalog, &mut maps, touched);
        assert!(maps.log.is_empty(), "{:?}", maps.log);
    }

    #[test]
    fn deleting_a_service_or_port_removes_its_frontends() {
        let (mut catalog, mut maps) = (Catalog::new(vec![]), Recorder::default());
        let touched = catalog.replace(
            vec![service(
                "web",
                "10.96.0.5",
                "{name: a, port: 80}, {name: b, port: 81}",
            )],
            vec![],
        );
        sync(&mut catalog, &mut maps, touched);
        maps.log.clear();
        let n = catalog.service_changed(
            EventType::Modified,
            service("web", "10.96.0.5", "{name: a, port: 80}"),
        );
        sync(&mut catalog, &mut maps, [n]);
        assert_eq!(maps.log, ["remove 10.96.0.5:81/tcp"]);
        maps.log.clear();
        let n = catalog.service_changed(
            EventType::Deleted,
            service("web", "10.96.0.5", "{name: a, port: 80}"),
        );
        sync(&mut catalog, &mut maps, [n]);
        assert_eq!(maps.log, ["remove 10.96.0.5:80/tcp"]);
        assert_eq!(catalog.frontend_count(), 0);
    }

    #[test]
    fn a_relist_removes_what_went_away_while_the_watch_was_down() {
        let (mut catalog, mut maps) = (Catalog::new(vec![]), Recorder::default());
        let touched = catalog.replace(vec![service("web", "10.96.0.5", "{port: 80}")], vec![]);
        sync(&mut catalog, &mut maps, touched);
        maps.log.clear();
        let touched = catalog.replace(vec![service("api", "10.96.0.6", "{port: 80}")], vec![]);
        sync(&mut catalog, &mut maps, touched);
        maps.log.sort();
        assert_eq!(
            maps.log,
            ["remove 10.96.0.5:80/tcp", "upsert 10.96.0.6:80/tcp "]
        );
    }

    #[test]
    fn a_slice_relabelled_to_another_service_moves_its_backends() {
        let (mut catalog, mut maps) = (Catalog::new(vec![]), Recorder::default());
        let touched = catalog.replace(
            vec![
                service("web", "10.96.0.5", "{port: 80}"),
                service("api", "10.96.0.6", "{port: 80}"),
            ],
            vec![slice("s", "web", &["10.244.0.2"])],
        );
        sync(&mut catalog, &mut maps, touched);
        maps.log.clear();
        let touched =
            catalog.slice_changed(EventType::Modified, slice("s", "api", &["10.244.0.2"]));
        sync(&mut catalog, &mut maps, touched);
        assert_eq!(
            maps.log,
            [
                "upsert 10.96.0.5:80/tcp ",
                "upsert 10.96.0.6:80/tcp 10.244.0.2:8080"
            ]
        );
    }

    #[test]
    fn adopted_frontends_are_kept_when_unchanged_and_removed_when_unclaimed() {
        let (mut catalog, mut maps) = (Catalog::new(vec![]), Recorder::default());
        let tcp = |a: &str| Frontend::tcp(a.parse().unwrap());
        catalog.adopt(HashMap::from([
            (
                tcp("10.96.0.5:80"),
                vec!["10.244.0.2:8080".parse().unwrap()].into(),
            ),
            (
                tcp("10.96.0.6:80"),
                vec!["10.244.0.9:8080".parse().unwrap()].into(),
            ),
            (tcp("10.96.0.7:80"), Balancing::default()),
        ]));
        let touched = catalog.replace(
            vec![
                service("web", "10.96.0.5", "{port: 80}"),
                service("api", "10.96.0.6", "{port: 80}"),
            ],
            vec![
                slice("web-1", "web", &["10.244.0.2"]),
                slice("api-1", "api", &["10.244.0.3"]),
            ],
        );
        sync(&mut catalog, &mut maps, touched);
        catalog.remove_unclaimed(&mut maps);
        // web is as the previous agent left it; api changed; .7 is no service's.
        assert_eq!(
            maps.log,
            [
                "upsert 10.96.0.6:80/tcp 10.244.0.3:8080",
                "remove 10.96.0.7:80/tcp"
            ]
        );
        assert_eq!(catalog.frontend_count(), 2);
    }

    #[test]
    fn failed_writes_are_retried_until_they_succeed() {
        let (mut catalog, mut maps) = (Catalog::new(vec![]), Recorder::default());
        let vip = Frontend::tcp("10.96.0.5:80".parse().unwrap());
        maps.broken.insert(vip);
        let touched = catalog.replace(vec![service("web", "10.96.0.5", "{port: 80}")], vec![]);
        sync(&mut catalog, &mut maps, touched);
        assert!(catalog.has_failures());
        maps.broken.clear();
        catalog.retry(&mut maps);
        assert!(!catalog.has_failures());
        assert_eq!(maps.log, ["upsert 10.96.0.5:80/tcp "]);
    }
}
