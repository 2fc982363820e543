//! Events about objects, as Kubernetes components record them: the kubelet's about
//! pods (Pulling, Pulled, Created, Started, Killing, BackOff, Unhealthy, Failed) and
//! the controllers' about their workloads (SuccessfulCreate, ScalingReplicaSet,
//! RolledBack, ...). Each is owned by its object, so it goes when the object goes.

use log::warn;
use serde_json::json;

use crate::api::registry::{Registry, now};
use crate::model::{Kind, ObjectMeta, Pod};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// Who records an event: a component ("skiff-node", "deployment-controller"),
/// on a host when it is node-local.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub component: &'a str,
    pub host: Option<&'a str>,
}

/// Records one event about `pod` as the node `node`; a failure to record is logged,
/// never fatal.
pub async fn record(
    registry: &Registry,
    node: &str,
    pod: &Pod,
    kind: Type,
    reason: &str,
    message: &str,
) {
    let source = Source {
        component: "skiff-node",
        host: Some(node),
    };
    record_about(
        registry,
        source,
        Kind::Pod,
        &pod.metadata,
        kind,
        reason,
        message,
    )
    .await;
}

/// Records one event about the object of kind `involved` with metadata `meta`; a
/// failure to record is logged, never fatal.
pub async fn record_about(
    registry: &Registry,
    source: Source<'_>,
    involved: Kind,
    meta: &ObjectMeta,
    kind: Type,
    reason: &str,
    message: &str,
) {
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let uid = meta.uid.as_deref().unwrap_or_default();
    let stamp = now();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            // Kubernetes' naming: the object's name and a unique suffix.
            "name": format!("{}.{nanos:x}", meta.name),
            "namespace": namespace,
            "ownerReferences": [{
                "apiVersion": involved.api_version(), "kind": involved.name(),
                "name": meta.name, "uid": uid,
            }],
        },
        "involvedObject": {"kind": involved.name(), "namespace": namespace, "name": meta.name, "uid": uid},
        "reason": reason,
        "message": message,
        "type": match kind { Type::Normal => "Normal", Type::Warning => "Warning" },
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": source.component, "host": source.host},
    });
    if let Err(e) = registry.apply(vec![event]).await {
        warn!(
            "{} {namespace}/{}: recording event {reason}: {e}",
            involved.name().to_ascii_lowercase(),
            meta.name
        );
    }
}
