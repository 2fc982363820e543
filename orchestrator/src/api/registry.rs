//! What the API's verbs do, independent of gRPC: decoding and validating objects,
//! server-owned metadata (uid, resourceVersion, generation, timestamps), optimistic
//! concurrency, ClusterIP and NodePort allocation, pod priority admission, Secret
//! encryption, graceful and cascading deletes, binding pods to nodes, and watches
//! translated into Kubernetes events.
//!
//! Objects are stored as JSON under `/registry/<plural>/[<namespace>/]<name>`; the
//! store's mod revision is the object's resourceVersion.

mod binding;
mod delete;
mod pod_cidrs;
mod priority;
mod service_accounts;
mod services;
#[cfg(test)]
mod tests;
pub mod typed;
mod watch;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::api::allocator::ServiceNetworks;
use crate::api::encryption::{EncryptionError, SecretBox};
use crate::model::{FieldErrors, FieldSelector, Kind, Object, Selector};
use crate::store::{KeyValue, Revision, Store, StoreError, Txn};

pub use delete::{Deleted, Propagation};
pub use watch::{EventType, WatchEvent, WatchStream};

use watch::cache::WatchCache;

/// How often a write is retried when another writer changed what it read; only
/// when the caller did not pin a resourceVersion.
const WRITE_ATTEMPTS: usize = 8;

/// One problem with one object of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Index of the object in the request.
    pub index: usize,
    /// Field path; empty when the problem is the object as a whole.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "objects[{}]: ", self.index)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Violation>),
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { resource: String, name: String },
    #[error(
        "Operation cannot be fulfilled on pods/binding \"{pod}\": pod {pod} is already assigned to node \"{node}\""
    )]
    AlreadyBound { pod: String, node: String },
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        requested: Revision,
        oldest: Revision,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("stored object {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Store(StoreError),
}

impl ApiError {
    fn invalid(index: usize, errors: FieldErrors) -> Self {
        ApiError::Invalid(violations(index, errors))
    }
}

fn violations(index: usize, errors: FieldErrors) -> Vec<Violation> {
    errors
        .0
        .into_iter()
        .map(|e| Violation {
            index,
            field: e.path,
            reason: e.reason,
        })
        .collect()
}

/// Names one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    /// None for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn of(object: &Object) -> Self {
        let meta = object.metadata();
        Self {
            kind: object.kind(),
            namespace: object
                .kind()
                .namespaced()
                .then(|| meta.namespace.clone().unwrap_or_else(|| "default".into())),
            name: meta.name.clone(),
        }
    }

    pub fn key(&self) -> String {
        format!(
            "{}{}",
            kind_prefix(self.kind, self.namespace.as_deref()),
            self.name
        )
    }

    fn not_found(&self) -> ApiError {
        ApiError::NotFound {
            resource: resource(self.kind),
            name: self.name.clone(),
        }
    }

    fn conflict(&self) -> ApiError {
        ApiError::Conflict {
            resource: resource(self.kind),
            name: self.name.clone(),
        }
    }
}

/// The store prefix of a kind, optionally narrowed to one namespace.
/// The object a store key holds (opened, for Secrets), its resourceVersion the
/// key's mod revision.
fn stored_object(secrets: &SecretBox, kv: &KeyValue) -> Result<Object, ApiError> {
    let corrupt = |reason: String| ApiError::Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let opened;
    let plain = if SecretBox::is_sealed(&kv.value) {
        opened = secrets
            .open(&kv.value)
            .map_err(|e: EncryptionError| corrupt(e.to_string()))?;
        &opened[..]
    } else {
        &kv.value[..]
    };
    let value: Value = serde_json::from_slice(plain).map_err(|e| corrupt(e.to_string()))?;
    let mut object = Object::decode_stored(value).map_err(|e| corrupt(e.to_string()))?;
    object.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(object)
}

fn kind_prefix(kind: Kind, namespace: Option<&str>) -> String {
    // Keys name the plural, as Kubernetes' do; the metrics kinds share theirs with
    // Pod and Node, so they take their group too.
    let resource = match kind {
        Kind::PodMetrics | Kind::NodeMetrics => resource(kind),
        _ => kind.plural().to_string(),
    };
    match namespace.filter(|_| kind.namespaced()) {
        Some(ns) => format!("/registry/{resource}/{ns}/"),
        None => format!("/registry/{resource}/"),
    }
}

/// How Kubernetes names a resource in messages: "deployments.apps", "pods".
pub fn resource(kind: Kind) -> String {
    match kind.api_version().split_once('/') {
        Some((group, _)) => format!("{}.{group}", kind.plural()),
        None => kind.plural().to_string(),
    }
}

/// What apply did to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

#[derive(Clone, Debug)]
pub struct Applied {
    pub object: Value,
    pub outcome: Outcome,
}

/// The API's state and the rules over it. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    secrets: Arc<SecretBox>,
    networks: Arc<ServiceNetworks>,
    watch_cache: Arc<WatchCache>,
}

/// An object as read from the store.
struct Stored {
    kv: KeyValue,
    object: Object,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, secrets: SecretBox, networks: ServiceNetworks) -> Self {
        let secrets = Arc::new(secrets);
        Self {
            watch_cache: Arc::new(WatchCache::new(&store, secrets.clone())),
            store,
            secrets,
            networks: Arc::new(networks),
        }
    }

    /// Creates the namespaces every cluster has, when absent.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        for name in ["default", "kube-system", crate::model::NODE_LEASE_NAMESPACE] {
            let namespace = serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
            });
            let reference = ObjectRef {
                kind: Kind::Namespace,
                namespace: None,
                name: name.into(),
            };
            if self.read(&reference).await?.is_none() {
                self.apply(vec![namespace]).await?;
            }
        }
        Ok(())
    }

    /// Creates or updates every object, all or nothing.
    pub async fn apply(&self, values: Vec<Value>) -> Result<Vec<Applied>, ApiError> {
        let objects = decode_request(values)?;
        let pinned = objects
            .iter()
            .any(|o| o.metadata().resource_version.is_some());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_apply(&objects).await {
                Err(ApiError::Store(StoreError::Conflict { key, .. })) => {
                    if pinned || attempt == WRITE_ATTEMPTS {
                        return Err(conflict_for_key(&objects, &key));
                    }
                }
                other => return other,
            }
        }
    }

    async fn try_apply(&self, objects: &[Object]) -> Result<Vec<Applied>, ApiError> {
        let mut plan = services::Plan::default();
        let mut classes = priority::Classes::default();
        let mut txn = Txn::new();
        let mut staged = Vec::with_capacity(objects.len());
        let mut removed = Vec::new();
        let created_namespaces: HashSet<&str> = objects
            .iter()
            .filter(|o| o.kind() == Kind::Namespace)
            .map(|o| o.metadata().name.as_str())
            .collect();
        let created_accounts: HashSet<ObjectRef> = objects
            .iter()
            .filter(|o| o.kind() == Kind::ServiceAccount)
            .map(ObjectRef::of)
            .collect();
        let mut violations = Vec::new();
        for (index, incoming) in objects.iter().enumerate() {
            let reference = ObjectRef::of(incoming);
            if let Some(ns) = &reference.namespace
                && !created_namespaces.contains(ns.as_str())
                && self.read(&namespace_ref(ns)).await?.is_none()
            {
                violations.push(Violation {
                    index,
                    field: "metadata.namespace".into(),
                    reason: format!("namespaces \"{ns}\" not found"),
                });
                continue;
            }
            let old = self.read(&reference).await?;
            if old.is_none()
                && let Some(violation) = self
                    .check_service_account(index, incoming, &created_accounts)
                    .await?
            {
                violations.push(violation);
                continue;
            }
            let mut object = match merge(index, incoming, old.as_ref(), &reference) {
                Ok(object) => object,
                Err(ApiError::Invalid(mut v)) => {
                    violations.append(&mut v);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let old_object = old.as_ref().map(|s| &s.object);
            let admitted = match object.kind() {
                Kind::Pod => {
                    self.admit_priority(index, &mut object, old_object, &mut classes)
                        .await
                }
                Kind::Service => {
                    self.allocate_service(index, &mut object, old_object, &mut plan)
                        .await
                }
                _ => Ok(()),
            };
            match admitted {
                Ok(()) => {}
                Err(ApiError::Invalid(mut v)) => {
                    violations.append(&mut v);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let Some(old) = old
                .as_ref()
                .filter(|old| releases_last_finalizer(old, &object))
            {
                // Kubernetes semantics: the object was waiting for its finalizers.
                txn = txn
                    .when(reference.key(), old.kv.mod_revision)
                    .delete(reference.key());
                if reference.kind == Kind::Service {
                    plan.release_all(&old.object);
                }
                staged.push((object, Outcome::Configured, None));
                removed.push(old.object.clone());
                continue;
            }
            if let Some(old) = &old {
                // After allocation, so server-filled fields do not count as changes.
                let generation = old.object.metadata().generation.unwrap_or(1);
                let changed = object.spec_value() != old.object.spec_value();
                object.metadata_mut().generation = Some(generation + i64::from(changed));
            }
            let encoded = self.encode(&object)?;
            let outcome = match &old {
                None => Outcome::Created,
                Some(old) if plain_value(&old.object) == plain_value(&object) => Outcome::Unchanged,
                Some(_) => Outcome::Configured,
            };
            if outcome != Outcome::Unchanged {
                let expected = old.as_ref().map_or(0, |o| o.kv.mod_revision);
                txn = txn
                    .when(reference.key(), expected)
                    .put(reference.key(), encoded);
            }
            staged.push((object, outcome, old.map(|o| o.kv.mod_revision)));
        }
        if !violations.is_empty() {
            return Err(ApiError::Invalid(violations));
        }
        txn = plan.into_txn(txn);
        let revision = self.store.txn(txn).await.map_err(ApiError::Store)?;
        for owner in &removed {
            self.after_removal(owner, Propagation::Background).await?;
        }
        Ok(staged
            .into_iter()
            .map(|(mut object, outcome, old_revision)| {
                let version = match outcome {
                    Outcome::Unchanged => old_revision.unwrap_or(revision),
                    _ => revision,
                };
                object.metadata_mut().resource_version = Some(version.to_string());
                Applied {
                    object: object.to_value(),
                    outcome,
                }
            })
            .collect())
    }

    pub async fn get(&self, reference: &ObjectRef) -> Result<Value, ApiError> {
        let stored = self
            .read(reference)
            .await?
            .ok_or_else(|| reference.not_found())?;
        Ok(stored.object.to_value())
    }

    /// Objects of `kind` (in `namespace`, or all) matching both selectors, and the
    /// revision the list reflects.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        labels: &Selector,
        fields: &FieldSelector,
    ) -> Result<(Vec<Value>, Revision), ApiError> {
        let (objects, revision) = self.list_objects(kind, namespace).await?;
        let values = objects
            .into_iter()
            .filter(|o| labels.matches(&o.metadata().labels) && fields.matches(o))
            .map(|o| o.to_value())
            .collect();
        Ok((values, revision))
    }

    /// Replaces the status of the object `value` names; its spec and metadata stay.
    pub async fn update_status(&self, value: Value) -> Result<Value, ApiError> {
        let incoming = Object::decode(value).map_err(|e| ApiError::invalid(0, e))?;
        let reference = ObjectRef::of(&incoming);
        let pinned = incoming.metadata().resource_version.clone();
        for _ in 0..WRITE_ATTEMPTS {
            let current = self
                .read(&reference)
                .await?
                .ok_or_else(|| reference.not_found())?;
            if pinned
                .as_ref()
                .is_some_and(|rv| *rv != current.kv.mod_revision.to_string())
            {
                return Err(reference.conflict());
            }
            let mut updated = current.object.clone();
            updated
                .set_status(incoming.status_value())
                .map_err(|e| ApiError::invalid(0, e))?;
            if plain_value(&updated) == plain_value(&current.object) {
                return Ok(current.object.to_value());
            }
            let txn = Txn::new()
                .when(reference.key(), current.kv.mod_revision)
                .put(reference.key(), self.encode(&updated)?);
            match self.store.txn(txn).await {
                Ok(revision) => {
                    updated.metadata_mut().resource_version = Some(revision.to_string());
                    return Ok(updated.to_value());
                }
                Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
                Err(StoreError::Conflict { .. }) => return Err(reference.conflict()),
                Err(e) => return Err(ApiError::Store(e)),
            }
        }
        Err(reference.conflict())
    }

    async fn read(&self, reference: &ObjectRef) -> Result<Option<Stored>, ApiError> {
        let (kv, _) = self
            .store
            .get(&reference.key())
            .await
            .map_err(ApiError::Store)?;
        kv.map(|kv| self.decode(kv)).transpose()
    }

    async fn list_objects(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<Object>, Revision), ApiError> {
        let (kvs, revision) = self
            .store
            .list(&kind_prefix(kind, namespace))
            .await
            .map_err(ApiError::Store)?;
        let objects = kvs
            .into_iter()
            .map(|kv| self.decode(kv).map(|s| s.object))
            .collect::<Result<_, _>>()?;
        Ok((objects, revision))
    }

    fn decode(&self, kv: KeyValue) -> Result<Stored, ApiError> {
        let object = stored_object(&self.secrets, &kv)?;
        Ok(Stored { kv, object })
    }

    /// The stored form: JSON without the resourceVersion (the store's revision is
    /// authoritative), sealed for Secrets.
    fn encode(&self, object: &Object) -> Result<Vec<u8>, ApiError> {
        let json = object.to_stored_bytes();
        if object.kind() == Kind::Secret {
            self.secrets.seal(&json).map_err(|e| ApiError::Corrupt {
                key: ObjectRef::of(object).key(),
                reason: e.to_string(),
            })
        } else {
            Ok(json)
        }
    }
}

fn namespace_ref(name: &str) -> ObjectRef {
    ObjectRef {
        kind: Kind::Namespace,
        namespace: None,
        name: name.to_string(),
    }
}

/// Decodes and validates every object of a request, reporting all problems.
fn decode_request(values: Vec<Value>) -> Result<Vec<Object>, ApiError> {
    let mut objects = Vec::with_capacity(values.len());
    let mut problems = Vec::new();
    let mut seen: Vec<ObjectRef> = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        match Object::from_value(value) {
            Ok(mut object) => {
                generate_name(&mut object);
                let reference = ObjectRef::of(&object);
                if let Some(first) = seen.iter().position(|r| *r == reference) {
                    problems.push(Violation {
                        index,
                        field: String::new(),
                        reason: format!(
                            "{} \"{}\" appears twice in one request (also objects[{first}])",
                            resource(reference.kind),
                            reference.name
                        ),
                    });
                }
                seen.push(reference);
                objects.push(object);
            }
            Err(errors) => problems.extend(violations(index, errors)),
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(ApiError::Invalid(problems))
    }
}

/// Gives an object with only metadata.generateName a name: the prefix and five
/// random characters, as Kubernetes does.
fn generate_name(object: &mut Object) {
    use rand::Rng;
    let meta = object.metadata_mut();
    if !meta.name.is_empty() {
        return;
    }
    if let Some(prefix) = &meta.generate_name {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut rng = rand::rng();
        let suffix: String = (0..5)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        meta.name = format!("{prefix}{suffix}");
    }
}

/// The object to store for `incoming`, given what is stored now: server-owned
/// metadata comes from the stored object (or is created) and the status stays the
/// stored one. (The generation is settled once allocations are filled in.)
fn merge(
    index: usize,
    incoming: &Object,
    old: Option<&Stored>,
    reference: &ObjectRef,
) -> Result<Object, ApiError> {
    let mut object = incoming.clone();
    object.clear_status();
    let meta = object.metadata_mut();
    meta.namespace = reference.namespace.clone();
    match old {
        Some(old) => {
            let requested = meta.resource_version.take();
            if requested.is_some_and(|rv| rv != old.kv.mod_revision.to_string()) {
                return Err(reference.conflict());
            }
            let old_meta = old.object.metadata();
            meta.uid = old_meta.uid.clone();
            meta.creation_timestamp = old_meta.creation_timestamp.clone();
            meta.deletion_timestamp = old_meta.deletion_timestamp.clone();
            meta.deletion_grace_period_seconds = old_meta.deletion_grace_period_seconds;
            let status = old.object.status_value();
            if !status.is_null() {
                object
                    .set_status(status)
                    .map_err(|e| ApiError::invalid(index, e))?;
            }
            object
                .validate_update(&old.object)
                .map_err(|e| ApiError::invalid(index, e))?;
        }
        None => {
            // Server-owned on create, whatever the manifest says (so `get -o yaml`
            // output can be applied to another cluster).
            meta.resource_version = None;
            meta.uid = Some(uuid::Uuid::new_v4().to_string());
            meta.creation_timestamp = Some(now());
            meta.deletion_timestamp = None;
            meta.deletion_grace_period_seconds = None;
            meta.generation = Some(1);
        }
    }
    Ok(object)
}

/// Whether `new` removes the last finalizer of an object being deleted, which then
/// goes away.
fn releases_last_finalizer(old: &Stored, new: &Object) -> bool {
    let old_meta = old.object.metadata();
    old_meta.deletion_timestamp.is_some()
        && !old_meta.finalizers.is_empty()
        && new.metadata().finalizers.is_empty()
}

/// The JSON of an object without its resourceVersion: what is compared and stored.
fn plain_value(object: &Object) -> Value {
    let mut value = object.to_value();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    value
}

/// The conflict error for the object stored at `key`, or for the first object
/// when the conflict was on an allocation.
fn conflict_for_key(objects: &[Object], key: &str) -> ApiError {
    let object = objects
        .iter()
        .find(|o| ObjectRef::of(o).key() == key)
        .or_else(|| objects.first());
    match object {
        Some(o) => ObjectRef::of(o).conflict(),
        None => ApiError::Store(StoreError::Conflict {
            key: key.to_string(),
            expected: 0,
            actual: 0,
        }),
    }
}

/// Now, as Kubernetes writes timestamps: RFC 3339 in UTC, whole seconds.
pub fn now() -> String {
    let seconds = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
