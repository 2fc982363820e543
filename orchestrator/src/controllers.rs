//! The controllers: reconcile loops in the style of kube-rs. Each controller has a
//! primary kind (ReplicaSet, Deployment, Service, ...) and a
//! `reconcile(object, ctx) -> Action` that is idempotent and level-triggered: it
//! compares what the object asks for with what the store holds and writes the
//! difference through the [`Registry`] (apply, update_status, delete). The runner
//! lists and watches the primary kind and the kinds it owns, maps every change to
//! the primary objects it concerns, and feeds a de-duplicating work queue with
//! per-key exponential back-off on error.
//!
//! - [`queue`]: the work queue (plain data: due times and failure counts).
//! - [`runner`]: list, watch, map, reconcile, retry.
//! - [`pods`]: what controllers read from pods (ready, available, deletion order).
//! - [`replicaset`], [`deployment`], [`endpointslice`], [`job`], [`cronjob`],
//!   [`autoscaler`], [`node_lifecycle`], [`service_account`]: the controllers.
//! - [`rollout`]: the Deployment's arithmetic (surge, unavailability, hashes,
//!   revisions).
//!
//! [`start`] starts every controller (a task each) and [`Controllers::stop`] stops
//! them: the one place the agent (and, later, leader election) turns them on and off.
//!
//! A new controller is a unit struct implementing [`Reconciler`] (its kind, the
//! related kinds and how their changes map to primary objects, and `reconcile`),
//! spawned in [`start`]. Reconcile reads what it needs through [`Context::list`]
//! (the store, not a cache), writes through [`Context::apply`] /
//! [`Context::update_status`] / [`Context::delete`], puts [`owner_reference`] on
//! what it creates, and records events with [`Context::event`].

pub mod autoscaler;
pub mod cronjob;
pub mod deployment;
pub mod endpointslice;
pub mod job;
pub mod node_lifecycle;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod rollout;
pub mod runner;
pub mod service_account;

use std::time::Duration;

use async_trait::async_trait;
use log::info;
use serde_json::Value;

use crate::api::registry::typed::{decode_as, list_in};
use crate::api::registry::{ApiError, ObjectRef, Propagation, Registry};
use crate::model::{Kind, Object, ObjectMeta, OwnerReference};
use crate::runtime::events::{self, Source};

pub use runner::Cache;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Write {
        action: &'static str,
        kind: Kind,
        namespace: String,
        name: String,
        source: ApiError,
    },
    #[error("reading {kind} in {namespace}: {source}")]
    Read {
        kind: Kind,
        namespace: String,
        source: ApiError,
    },
    #[error("{kind} {namespace}/{name}: the server returned an object that is not one: {reason}")]
    Decode {
        kind: Kind,
        namespace: String,
        name: String,
        reason: String,
    },
}

/// What the runner does with a key after a successful reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `delay` even if nothing changes (a time-based rule such
    /// as minReadySeconds or a progress deadline is due then).
    pub fn requeue(delay: Duration) -> Self {
        Self {
            requeue_after: Some(delay),
        }
    }

    /// Reconcile again only when the object or what it owns changes.
    pub fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }

    /// The earlier of two requeues: the object is due when either rule is.
    pub fn sooner(self, other: Action) -> Action {
        match (self.requeue_after, other.requeue_after) {
            (Some(a), Some(b)) => Action::requeue(a.min(b)),
            (a, b) => Self {
                requeue_after: a.or(b),
            },
        }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// A controller: its kinds, how a related object's change maps to primary objects,
/// and the reconcile function.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The name in logs and in the events' source ("replicaset-controller").
    const NAME: &'static str;
    /// The kind reconciled.
    const KIND: Kind;
    /// Other kinds whose changes concern primary objects (owned objects, selected pods).
    const RELATED: &'static [Kind];

    /// The primary objects a change to `object` (of one of [`Reconciler::RELATED`])
    /// concerns; by default its controller owner when that is of the primary kind.
    fn owners_of(&self, object: &Object, _cache: &Cache) -> Vec<ObjectRef> {
        controller_owner(object, Self::KIND).into_iter().collect()
    }

    /// Brings the store in line with `object`; errors are retried with back-off.
    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error>;
}

/// The controller of `object` (ownerReference with controller: true) when it is of
/// `kind`, as a reference in the object's namespace.
pub fn controller_owner(object: &Object, kind: Kind) -> Option<ObjectRef> {
    let meta = object.metadata();
    meta.owner_references
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == kind.name())
        .map(|r| ObjectRef {
            kind,
            namespace: Some(namespace_of(meta).to_string()),
            name: r.name.clone(),
        })
}

/// The reference a controller puts on what it creates: it is the controller, and
/// a foreground delete of the owner waits for the dependent.
pub fn owner_reference(kind: Kind, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: kind.api_version().into(),
        kind: kind.name().into(),
        name: meta.name.clone(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `meta`'s controller reference is the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    uid.is_some_and(|uid| {
        meta.owner_references
            .iter()
            .any(|r| r.controller == Some(true) && r.uid == uid)
    })
}

pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// What reconcile functions use: the registry, and an event recorder in the
/// controller's name.
#[derive(Clone)]
pub struct Context {
    pub registry: Registry,
    component: &'static str,
}

impl Context {
    pub fn new(registry: Registry, component: &'static str) -> Self {
        Self {
            registry,
            component,
        }
    }

    /// Every object of `kind` in `namespace`, read from the store now (not a cache:
    /// what this controller wrote a moment ago is there).
    pub async fn list<T: TryFrom<Object>>(
        &self,
        kind: Kind,
        namespace: &str,
    ) -> Result<Vec<T>, Error> {
        list_in(&self.registry, kind, Some(namespace))
            .await
            .map(|(objects, _)| objects)
            .map_err(|source| Error::Read {
                kind,
                namespace: namespace.into(),
                source,
            })
    }

    /// Creates or replaces an object; returns it as stored.
    pub async fn apply<T: TryFrom<Object>>(&self, object: Object) -> Result<T, Error> {
        let (kind, namespace, name) = identity(&object);
        let applied = self
            .registry
            .apply(vec![object.to_value()])
            .await
            .map_err(|source| Error::Write {
                action: "writing",
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
        stored_as(
            kind,
            namespace,
            name,
            applied.into_iter().next().map(|a| a.object),
        )
    }

    /// Replaces the status of `object`.
    pub async fn update_status(&self, object: Object) -> Result<(), Error> {
        let (kind, namespace, name) = identity(&object);
        self.registry
            .update_status(object.to_value())
            .await
            .map(drop)
            .map_err(|source| Error::Write {
                action: "updating the status of",
                kind,
                namespace,
                name,
                source,
            })
    }

    /// Deletes an object (gracefully for pods); one already gone is fine.
    pub async fn delete(&self, kind: Kind, meta: &ObjectMeta) -> Result<(), Error> {
        let reference = ObjectRef {
            kind,
            namespace: Some(namespace_of(meta).to_string()),
            name: meta.name.clone(),
        };
        match self
            .registry
            .delete(&reference, None, Propagation::Background)
            .await
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(source) => Err(Error::Write {
                action: "deleting",
                kind,
                namespace: namespace_of(meta).into(),
                name: meta.name.clone(),
                source,
            }),
        }
    }

    /// Records an event about an object (logged, never fatal).
    pub async fn event(
        &self,
        kind: Kind,
        meta: &ObjectMeta,
        event_type: events::Type,
        reason: &str,
        message: &str,
    ) {
        let source = Source {
            component: self.component,
            host: None,
        };
        events::record_about(
            &self.registry,
            source,
            kind,
            meta,
            event_type,
            reason,
            message,
        )
        .await;
    }
}

fn identity(object: &Object) -> (Kind, String, String) {
    let meta = object.metadata();
    let name = if meta.name.is_empty() {
        meta.generate_name.clone().unwrap_or_default()
    } else {
        meta.name.clone()
    };
    (object.kind(), namespace_of(meta).to_string(), name)
}

fn stored_as<T: TryFrom<Object>>(
    kind: Kind,
    namespace: String,
    name: String,
    value: Option<Value>,
) -> Result<T, Error> {
    value.and_then(decode_as::<T>).ok_or_else(|| Error::Decode {
        kind,
        namespace,
        name,
        reason: "missing or of another kind".into(),
    })
}

/// The running controllers.
pub struct Controllers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The controllers' tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long a node may go without a heartbeat before it is lost.
    pub node_monitor_grace: Duration,
    /// How often each autoscaler looks at its target.
    pub autoscaler_sync: Duration,
}

/// Starts every controller, each as its own task following the store.
pub fn start(registry: &Registry, settings: &Settings) -> Controllers {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks = vec![
        runner::spawn(replicaset::ReplicaSetController, registry, stopped.clone()),
        runner::spawn(deployment::DeploymentController, registry, stopped.clone()),
        runner::spawn(
            endpointslice::EndpointSliceController,
            registry,
            stopped.clone(),
        ),
        runner::spawn(job::JobController, registry, stopped.clone()),
        runner::spawn(cronjob::CronJobController, registry, stopped.clone()),
        runner::spawn(
            autoscaler::AutoscalerController::new(settings.autoscaler_sync),
            registry,
            stopped.clone(),
        ),
        runner::spawn(
            node_lifecycle::NodeLifecycleController {
                grace: settings.node_monitor_grace,
                started: pods::now_seconds(),
            },
            registry,
            stopped.clone(),
        ),
        runner::spawn(
            service_account::ServiceAccountController,
            registry,
            stopped.clone(),
        ),
    ];
    info!("controllers started");
    Controllers { stop, tasks }
}

impl Controllers {
    /// Stops every controller between two reconciles, and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        info!("controllers stopped");
    }
}
