//! Keeps the zone in step with the store: Services, EndpointSlices and Pods (for
//! endpoints' hostnames) are listed,
//! then watched (as the dataplane's service sync does), and every burst of changes
//! rebuilds the zone and swaps it in whole, so a reader sees one build or the next, never
//! a mix. A watch that ends or fails is followed by a fresh list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use hickory_proto::rr::Name;
use log::{debug, info, warn};

use super::records::{Records, Sources};
use crate::api::registry::typed::{cast, list_all, watch_all};
use crate::api::registry::{ApiError, EventType, Registry, WatchEvent};
use crate::model::{EndpointSlice, Kind, Object, ObjectMeta, Pod, Service};

/// The zone's parameters and where each build goes.
pub struct Zone {
    pub name: Name,
    pub ttl: u32,
    pub current: Arc<ArcSwap<Records>>,
    builds: u32,
}

impl Zone {
    /// An empty zone (until the first list).
    pub fn new(name: Name, ttl: u32) -> Self {
        let empty = Records::build(&name, ttl, 0, &Sources::default());
        Self {
            name,
            ttl,
            current: Arc::new(ArcSwap::from_pointee(empty)),
            builds: 0,
        }
    }

    fn rebuild(&mut self, sources: &Sources) {
        self.builds = self.builds.wrapping_add(1);
        let records = Arc::new(Records::build(&self.name, self.ttl, self.builds, sources));
        debug!("cluster DNS: zone rebuilt with {} names", records.len());
        self.current.store(records);
    }
}

fn id(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone(),
    )
}

/// Follows the store until the task is aborted; store errors are logged and the
/// lists retried.
pub async fn run(registry: Registry, mut zone: Zone) {
    loop {
        if let Err(e) = follow(&registry, &mut zone).await {
            warn!("cluster DNS sync: {e}; listing again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One list-then-watch round; returns when a watch ends.
async fn follow(registry: &Registry, zone: &mut Zone) -> Result<(), ApiError> {
    let (services, service_version) = list_all::<Service>(registry, Kind::Service).await?;
    let (slices, slice_version) = list_all::<EndpointSlice>(registry, Kind::EndpointSlice).await?;
    let (pods, pod_version) = list_all::<Pod>(registry, Kind::Pod).await?;
    let mut sources = Sources {
        services: services.into_iter().map(|s| (id(&s.metadata), s)).collect(),
        slices: slices.into_iter().map(|s| (id(&s.metadata), s)).collect(),
        pods: pods.into_iter().map(|p| (id(&p.metadata), p)).collect(),
    };
    zone.rebuild(&sources);
    info!(
        "cluster DNS: zone {} follows {} services",
        zone.name,
        sources.services.len()
    );
    let mut service_events = watch_all(registry, Kind::Service, &service_version).await?;
    let mut slice_events = watch_all(registry, Kind::EndpointSlice, &slice_version).await?;
    let mut pod_events = watch_all(registry, Kind::Pod, &pod_version).await?;
    loop {
        let watching = tokio::select! {
            event = service_events.next() => changed(&mut sources.services, event, |s| &s.metadata)?,
            event = slice_events.next() => changed(&mut sources.slices, event, |s| &s.metadata)?,
            event = pod_events.next() => changed(&mut sources.pods, event, |p| &p.metadata)?,
        };
        if !watching {
            return Ok(());
        }
        // One build for every event already waiting: an apply of many objects
        // arrives as a burst, and each build covers the whole zone.
        loop {
            let ready = if let Some(event) = service_events.next().now_or_never() {
                changed(&mut sources.services, event, |s| &s.metadata)?
            } else if let Some(event) = slice_events.next().now_or_never() {
                changed(&mut sources.slices, event, |s| &s.metadata)?
            } else if let Some(event) = pod_events.next().now_or_never() {
                changed(&mut sources.pods, event, |p| &p.metadata)?
            } else {
                break;
            };
            if !ready {
                zone.rebuild(&sources);
                return Ok(());
            }
        }
        zone.rebuild(&sources);
    }
}

/// Applies one watch event to `objects`: false when the watch ended.
fn changed<T: TryFrom<Object>>(
    objects: &mut BTreeMap<(String, String), T>,
    event: Option<Result<WatchEvent, ApiError>>,
    meta: impl Fn(&T) -> &ObjectMeta,
) -> Result<bool, ApiError> {
    let Some(event) = event.transpose()? else {
        return Ok(false);
    };
    if let Some(object) = cast::<T>(&event.object) {
        let key = id(meta(&object));
        match event.event_type {
            EventType::Deleted => objects.remove(&key),
            EventType::Added | EventType::Modified => objects.insert(key, object),
        };
    }
    Ok(true)
}
