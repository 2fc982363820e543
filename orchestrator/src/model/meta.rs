//! The metadata every object carries (name, namespace, labels, ownership, lifecycle
//! stamps) and its checks, which are the same for every kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Kind;
use super::validation::{
    FieldErrors, Format, Path, check_format, check_immutable, check_keys, check_labels, check_name,
    check_required,
};

/// Standard object metadata. Unlike the other types, it skips unset fields itself:
/// it is also serialized on its own (by the API server), not only through
/// [`Object::to_value`](super::Object::to_value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A prefix the server completes with random characters when `name` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

/// The object that owns this one (a ReplicaSet owns its pods); garbage collection
/// deletes owned objects with their owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// The format a kind's names must have: most names end up in DNS or file names.
fn name_format(kind: Kind) -> Format {
    match kind {
        Kind::Namespace => Format::Dns1123Label,
        Kind::Service => Format::Rfc1035Label,
        _ => Format::Dns1123Subdomain,
    }
}

pub(crate) fn validate_meta(errors: &mut FieldErrors, kind: Kind, meta: &ObjectMeta) {
    let path = Path::root().field("metadata");
    let format = name_format(kind);
    match &meta.generate_name {
        Some(prefix) if meta.name.is_empty() => {
            // The prefix gets random lowercase letters and digits appended, so a trailing
            // '-' is fine; Kubernetes checks it the same way.
            let completed = match prefix.strip_suffix('-') {
                Some(rest) => format!("{rest}-a"),
                None => prefix.clone(),
            };
            if !format.is_valid(&completed) {
                errors.push(path.field("generateName"), format.reason(prefix));
            }
        }
        _ => check_name(errors, &path.field("name"), &meta.name, format),
    }
    match &meta.namespace {
        Some(namespace) if kind.namespaced() => check_format(
            errors,
            &path.field("namespace"),
            namespace,
            Format::Dns1123Label,
        ),
        Some(_) => errors.push(
            path.field("namespace"),
            format!("not allowed: {kind} is cluster-scoped"),
        ),
        None => {}
    }
    check_labels(errors, &path.field("labels"), &meta.labels);
    check_keys(
        errors,
        &path.field("annotations"),
        &meta.annotations,
        Format::QualifiedName,
    );
    for (i, owner) in meta.owner_references.iter().enumerate() {
        let path = path.field("ownerReferences").index(i);
        for (field, value) in [
            ("apiVersion", &owner.api_version),
            ("kind", &owner.kind),
            ("name", &owner.name),
            ("uid", &owner.uid),
        ] {
            check_required(errors, &path.field(field), value);
        }
    }
    for (i, finalizer) in meta.finalizers.iter().enumerate() {
        check_format(
            errors,
            &path.field("finalizers").index(i),
            finalizer,
            Format::QualifiedName,
        );
    }
}

/// An object keeps its identity. An unset namespace or uid in the update means "as
/// stored": the server fills them in.
pub(crate) fn validate_meta_update(errors: &mut FieldErrors, new: &ObjectMeta, old: &ObjectMeta) {
    let path = Path::root().field("metadata");
    check_immutable(errors, &path.field("name"), &new.name, &old.name);
    if new.namespace.is_some() {
        check_immutable(
            errors,
            &path.field("namespace"),
            &new.namespace,
            &old.namespace,
        );
    }
    if new.uid.is_some() {
        check_immutable(errors, &path.field("uid"), &new.uid, &old.uid);
    }
}

/// A condition in a status (`Ready`, `Available`, `Complete`, ...). One type serves
/// every kind; each kind uses the timestamps that apply to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub r#type: String,
    pub status: ConditionStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_transition_time: Option<String>,
    /// Deployments.
    pub last_update_time: Option<String>,
    /// Nodes.
    pub last_heartbeat_time: Option<String>,
    /// Pods and Jobs.
    pub last_probe_time: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}
