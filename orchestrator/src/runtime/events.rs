//! Events about pods, as the kubelet records them (Pulling, Pulled, Created,
//! Started, Killing, BackOff, Unhealthy, Failed). Each is owned by its pod, so it goes
//! when the pod goes.

use log::warn;
use serde_json::json;

use crate::api::registry::{Registry, now};
use crate::model::Pod;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// Records one event about `pod`; a failure to record is logged, never fatal.
pub async fn record(
    registry: &Registry,
    node: &str,
    pod: &Pod,
    kind: Type,
    reason: &str,
    message: &str,
) {
    let meta = &pod.metadata;
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
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta.name, "uid": uid}],
        },
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": meta.name, "uid": uid},
        "reason": reason,
        "message": message,
        "type": match kind { Type::Normal => "Normal", Type::Warning => "Warning" },
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": "skiff-node", "host": node},
    });
    if let Err(e) = registry.apply(vec![event]).await {
        warn!(
            "pod {namespace}/{}: recording event {reason}: {e}",
            meta.name
        );
    }
}
