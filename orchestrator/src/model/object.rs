//! The kinds skiff serves and [`Object`], one value of any of them: strict decoding
//! from JSON (apiVersion/kind dispatch, unknown fields rejected, serde's messages
//! turned into field paths and short reasons), defaults, validation, and the
//! spec/status views the API server needs.
//!
//! Optional fields are `Option`s; they serialize as null, and [`Object::to_value`]
//! drops nulls so output looks like kubectl's. On input a null means "unset" too.

mod compact;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use serde_path_to_error::Segment;

use super::meta::{validate_meta, validate_meta_update};
use super::validation::{FieldErrors, Path};
use super::{
    AuthorizationPolicy, ConfigMap, CronJob, Deployment, EndpointSlice, Event, HTTPRoute,
    HorizontalPodAutoscaler, Job, Lease, Namespace, Node, NodeMetrics, ObjectMeta, Pod, PodMetrics,
    PriorityClass, ReplicaSet, Secret, Service, ServiceAccount,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Deployment,
    ReplicaSet,
    Service,
    EndpointSlice,
    ConfigMap,
    Secret,
    ServiceAccount,
    Job,
    CronJob,
    HorizontalPodAutoscaler,
    Event,
    PodMetrics,
    NodeMetrics,
    PriorityClass,
    AuthorizationPolicy,
    HTTPRoute,
    Lease,
}

/// What the API says about a kind.
struct KindInfo {
    name: &'static str,
    api_version: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ServiceAccount,
        Kind::Job,
        Kind::CronJob,
        Kind::HorizontalPodAutoscaler,
        Kind::Event,
        Kind::PodMetrics,
        Kind::NodeMetrics,
        Kind::PriorityClass,
        Kind::AuthorizationPolicy,
        Kind::HTTPRoute,
        Kind::Lease,
    ];

    fn info(self) -> KindInfo {
        let (name, api_version, plural, short_names, namespaced): (_, _, _, &[&str], _) = match self
        {
            Kind::Namespace => ("Namespace", "v1", "namespaces", &["ns"], false),
            Kind::Node => ("Node", "v1", "nodes", &["no"], false),
            Kind::Pod => ("Pod", "v1", "pods", &["po"], true),
            Kind::Deployment => ("Deployment", "apps/v1", "deployments", &["deploy"], true),
            Kind::ReplicaSet => ("ReplicaSet", "apps/v1", "replicasets", &["rs"], true),
            Kind::Service => ("Service", "v1", "services", &["svc"], true),
            Kind::EndpointSlice => (
                "EndpointSlice",
                "discovery.k8s.io/v1",
                "endpointslices",
                &[],
                true,
            ),
            Kind::ConfigMap => ("ConfigMap", "v1", "configmaps", &["cm"], true),
            Kind::Secret => ("Secret", "v1", "secrets", &[], true),
            Kind::ServiceAccount => ("ServiceAccount", "v1", "serviceaccounts", &["sa"], true),
            Kind::Job => ("Job", "batch/v1", "jobs", &[], true),
            Kind::CronJob => ("CronJob", "batch/v1", "cronjobs", &["cj"], true),
            Kind::HorizontalPodAutoscaler => (
                "HorizontalPodAutoscaler",
                "autoscaling/v2",
                "horizontalpodautoscalers",
                &["hpa"],
                true,
            ),
            Kind::Event => ("Event", "v1", "events", &["ev"], true),
            Kind::PodMetrics => ("PodMetrics", "metrics.k8s.io/v1beta1", "pods", &[], true),
            Kind::NodeMetrics => ("NodeMetrics", "metrics.k8s.io/v1beta1", "nodes", &[], false),
            Kind::PriorityClass => (
                "PriorityClass",
                "scheduling.k8s.io/v1",
                "priorityclasses",
                &["pc"],
                false,
            ),
            Kind::AuthorizationPolicy => (
                "AuthorizationPolicy",
                "mesh.skiff.io/v1",
                "authorizationpolicies",
                &["ap"],
                true,
            ),
            Kind::HTTPRoute => (
                "HTTPRoute",
                "gateway.networking.k8s.io/v1",
                "httproutes",
                &[],
                true,
            ),
            Kind::Lease => ("Lease", "coordination.k8s.io/v1", "leases", &[], true),
        };
        KindInfo {
            name,
            api_version,
            plural,
            short_names,
            namespaced,
        }
    }

    /// The kind name: "Deployment".
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The one version skiff serves: "apps/v1".
    pub fn api_version(self) -> &'static str {
        self.info().api_version
    }

    /// The API group ("apps"; "" for the core group).
    pub fn group(self) -> &'static str {
        self.api_version()
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    pub fn short_names(self) -> &'static [&'static str] {
        self.info().short_names
    }

    /// Namespace, Node and PriorityClass are cluster-scoped; everything else lives in a
    /// namespace.
    pub fn namespaced(self) -> bool {
        self.info().namespaced
    }

    /// The kind a command line names, case-insensitively: "Deployment", "deployment",
    /// "deployments", "deploy", or any of them with the group ("deployments.apps").
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        let name = name.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|kind| {
            let (resource, group) = match name.split_once('.') {
                Some((resource, group)) => (resource, Some(group)),
                None => (name.as_str(), None),
            };
            let info = kind.info();
            group.is_none_or(|group| group == kind.group())
                && (resource == info.name.to_ascii_lowercase()
                    || resource == info.plural
                    || info.short_names.contains(&resource))
        })
    }

    /// The kind of an `apiVersion` and `kind` pair, if skiff serves it.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.api_version() == api_version)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What each kind's type implements; [`Object`] dispatches to it. Metadata is handled
/// by `Object` itself: it is the same for every kind.
pub(crate) trait Resource {
    /// What the Kubernetes API server fills in when the user leaves it out.
    fn apply_defaults(&mut self) {}

    /// Checks of the kind's own fields.
    fn validate(&self, errors: &mut FieldErrors);

    /// Checks of an update against the stored object, beyond [`Resource::validate`].
    fn validate_update(&self, _old: &Self, _errors: &mut FieldErrors)
    where
        Self: Sized,
    {
    }

    /// The user's desired state (see [`Object::spec_value`]).
    fn spec_value(&self) -> Value;

    fn status_value(&self) -> Value {
        Value::Null
    }

    fn set_status(&mut self, _status: Value) -> Result<(), FieldErrors> {
        Err(FieldErrors::one("status", "this kind has no status"))
    }

    fn clear_status(&mut self) {}
}

/// The [`Resource`] methods of a kind whose desired state is its `spec` field and
/// whose observed state is its `status` field (every kind but ConfigMap, Secret,
/// ServiceAccount, EndpointSlice and PriorityClass).
macro_rules! spec_and_status {
    () => {
        fn spec_value(&self) -> serde_json::Value {
            $crate::model::object::to_json(&self.spec)
        }

        fn status_value(&self) -> serde_json::Value {
            $crate::model::object::status_json(&self.status)
        }

        fn set_status(
            &mut self,
            status: serde_json::Value,
        ) -> Result<(), $crate::model::FieldErrors> {
            self.status = $crate::model::object::decode_status(status)?;
            Ok(())
        }

        fn clear_status(&mut self) {
            self.status = Default::default();
        }
    };
}
pub(crate) use spec_and_status;

/// Generates [`Object`] and its per-kind dispatch from the list of kinds.
macro_rules! objects {
    ($($kind:ident),+ $(,)?) => {
        /// One object of any kind skiff serves.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Object {
            $($kind($kind),)+
        }

        $(impl From<$kind> for Object {
            fn from(object: $kind) -> Self {
                Object::$kind(object)
            }
        })+

        $(impl TryFrom<Object> for $kind {
            /// The object, when it is of another kind.
            type Error = Object;

            fn try_from(object: Object) -> Result<Self, Object> {
                match object {
                    Object::$kind(o) => Ok(o),
                    other => Err(other),
                }
            }
        })+

        impl Object {
            pub fn kind(&self) -> Kind {
                match self {
                    $(Object::$kind(_) => Kind::$kind,)+
                }
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Object::$kind(o) => &o.metadata,)+
                }
            }

            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$kind(o) => &mut o.metadata,)+
                }
            }

            fn resource(&self) -> &dyn Resource {
                match self {
                    $(Object::$kind(o) => o,)+
                }
            }

            fn resource_mut(&mut self) -> &mut dyn Resource {
                match self {
                    $(Object::$kind(o) => o,)+
                }
            }

            /// The object's fields, without apiVersion and kind.
            fn fields_value(&self) -> Value {
                match self {
                    $(Object::$kind(o) => to_json(o),)+
                }
            }

            /// Appends the object's fields to `out` as a JSON object (without
            /// apiVersion and kind), leaving out nulls and the field at `omit`.
            fn write_fields(
                &self,
                out: &mut Vec<u8>,
                omit: &'static [&'static str],
            ) -> Result<(), serde_json::Error> {
                match self {
                    $(Object::$kind(o) => compact::write(out, o, omit),)+
                }
            }

            /// Decodes the fields of a `kind` (apiVersion and kind removed).
            fn decode_kind(kind: Kind, fields: Value) -> Result<Object, FieldErrors> {
                match kind {
                    $(Kind::$kind => decode_as(fields, Path::root()).map(Object::$kind),)+
                }
            }

            /// [`Object::decode_kind`] without the checks only user input needs.
            fn decode_stored_kind(kind: Kind, fields: Value) -> Result<Object, serde_json::Error> {
                match kind {
                    $(Kind::$kind => serde_json::from_value(fields).map(Object::$kind),)+
                }
            }

            /// Kind-specific update checks; `old` has the same kind (checked by the caller).
            fn validate_kind_update(&self, old: &Object, errors: &mut FieldErrors) {
                match (self, old) {
                    $((Object::$kind(new), Object::$kind(old)) => new.validate_update(old, errors),)+
                    _ => {}
                }
            }
        }
    };
}

objects!(
    Namespace,
    Node,
    Pod,
    Deployment,
    ReplicaSet,
    Service,
    EndpointSlice,
    ConfigMap,
    Secret,
    ServiceAccount,
    Job,
    CronJob,
    HorizontalPodAutoscaler,
    Event,
    PodMetrics,
    NodeMetrics,
    PriorityClass,
    AuthorizationPolicy,
    HTTPRoute,
    Lease,
);

impl Object {
    /// Strict decode (apiVersion/kind dispatch, unknown fields rejected, types
    /// checked), then defaults, then validate.
    pub fn from_value(value: Value) -> Result<Object, FieldErrors> {
        let mut object = Object::decode(value)?;
        object.apply_defaults();
        object.validate()?;
        Ok(object)
    }

    /// Strict decode only (for objects read back from the store).
    pub fn decode(value: Value) -> Result<Object, FieldErrors> {
        let Value::Object(mut fields) = value else {
            return Err(FieldErrors::one(
                "",
                format!("expected an object, found {}", describe(&value)),
            ));
        };
        let kind = take_kind(&mut fields)?;
        Object::decode_kind(kind, Value::Object(fields))
    }

    /// Decodes an object as the API server stored it, after checking it on the
    /// way in: without the strict decode's path tracking, null stripping and
    /// struct-as-list check, which made every watch event and list item cost
    /// several copies of the object. A stored object that does not decode is an
    /// error all the same.
    pub fn decode_stored(value: Value) -> Result<Object, FieldErrors> {
        let Value::Object(mut fields) = value else {
            return Err(FieldErrors::one(
                "",
                format!("expected an object, found {}", describe(&value)),
            ));
        };
        let kind = take_kind(&mut fields)?;
        Object::decode_stored_kind(kind, Value::Object(fields))
            .map_err(|e| FieldErrors::one("", e.to_string()))
    }

    /// The object as JSON, with apiVersion and kind, without unset fields.
    pub fn to_value(&self) -> Value {
        let mut value = self.fields_value();
        if let Value::Object(fields) = &mut value {
            let kind = self.kind();
            fields.insert("apiVersion".into(), kind.api_version().into());
            fields.insert("kind".into(), kind.name().into());
        }
        value
    }

    /// The JSON of [`Object::to_value`] written straight to bytes, apiVersion and
    /// kind first, then the fields in the order of their declaration.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        self.json_bytes_omitting(&[])
    }

    /// [`Object::to_json_bytes`] without `metadata.resourceVersion`: what the store
    /// keeps (a key's revision is its object's version).
    pub fn to_stored_bytes(&self) -> Vec<u8> {
        self.json_bytes_omitting(&["metadata", "resourceVersion"])
    }

    fn json_bytes_omitting(&self, omit: &'static [&'static str]) -> Vec<u8> {
        let kind = self.kind();
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"apiVersion\":\"");
        // Both are fixed names without characters JSON escapes.
        out.extend_from_slice(kind.api_version().as_bytes());
        out.extend_from_slice(b"\",\"kind\":\"");
        out.extend_from_slice(kind.name().as_bytes());
        out.push(b'"');
        let fields = out.len();
        // Model types have string keys and no floats, so serializing them cannot fail.
        self.write_fields(&mut out, omit)
            .expect("model types serialize to JSON");
        // The fields' object joins the one begun above: its `{` becomes a comma,
        // or, when it is empty, goes with its `}`.
        if out[fields..] == *b"{}" {
            out.truncate(fields);
            out.push(b'}');
        } else {
            out[fields] = b',';
        }
        out
    }

    /// What the Kubernetes API server defaults (the namespace excepted: the server
    /// sets it from the request).
    pub fn apply_defaults(&mut self) {
        self.resource_mut().apply_defaults();
    }

    /// The checks of a create.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        validate_meta(&mut errors, self.kind(), self.metadata());
        self.resource().validate(&mut errors);
        errors.into_result()
    }

    /// The checks of an update against the stored `old` object: identity and
    /// immutable fields, plus everything [`Object::validate`] checks.
    ///
    /// Pure: nothing is merged from `old`. Where an update may leave a field unset to
    /// mean "as stored" (a Service's `clusterIP`, the namespace, the uid), an unset
    /// value passes and the server copies the stored one.
    pub fn validate_update(&self, old: &Object) -> Result<(), FieldErrors> {
        if self.kind() != old.kind() {
            return Err(FieldErrors::one(
                "kind",
                format!("field is immutable (stored object is a {})", old.kind()),
            ));
        }
        let mut errors = match self.validate() {
            Ok(()) => FieldErrors::default(),
            Err(errors) => errors,
        };
        validate_meta_update(&mut errors, self.metadata(), old.metadata());
        self.validate_kind_update(old, &mut errors);
        errors.into_result()
    }

    /// The user-controlled desired state whose change bumps `metadata.generation`:
    /// the spec; for ConfigMap and Secret their data; for EndpointSlice its endpoints
    /// and ports.
    pub fn spec_value(&self) -> Value {
        self.resource().spec_value()
    }

    /// The status, or null when the kind has none or it is empty.
    pub fn status_value(&self) -> Value {
        self.resource().status_value()
    }

    /// Replaces the status with a strictly decoded `status` (error paths start with
    /// "status.").
    pub fn set_status(&mut self, status: Value) -> Result<(), FieldErrors> {
        self.resource_mut().set_status(status)
    }

    /// Removes the status (apply ignores user-supplied status; the server keeps the
    /// stored one).
    pub fn clear_status(&mut self) {
        self.resource_mut().clear_status();
    }
}

/// Removes `apiVersion` and `kind` from an object's fields and finds its kind.
fn take_kind(fields: &mut Map<String, Value>) -> Result<Kind, FieldErrors> {
    let mut errors = FieldErrors::default();
    let mut take = |name: &str| match fields.remove(name) {
        None | Some(Value::Null) => {
            errors.push(name, "required");
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(
                name,
                format!("expected a string, found {}", describe(&other)),
            );
            None
        }
    };
    let (api_version, kind_name) = (take("apiVersion"), take("kind"));
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return Err(errors);
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.name() == kind_name)
        .ok_or_else(|| FieldErrors::one("kind", format!("unknown kind {kind_name:?}")))?;
    if api_version != kind.api_version() {
        return Err(FieldErrors::one(
            "apiVersion",
            format!(
                "{api_version:?} is not served for {kind} (use {:?})",
                kind.api_version()
            ),
        ));
    }
    Ok(kind)
}

/// Strictly decodes `value` as a `T` found at `at`; a failure names its field path.
pub(crate) fn decode_as<T: DeserializeOwned + Serialize>(
    mut value: Value,
    at: Path,
) -> Result<T, FieldErrors> {
    strip_nulls(&mut value);
    let input = value.clone();
    let decoded: T = serde_path_to_error::deserialize(value).map_err(|error| {
        let mut path = at.clone();
        for segment in error.path().iter() {
            path = match segment {
                Segment::Seq { index } => path.index(*index),
                Segment::Map { key } => child(&path, key),
                Segment::Enum { variant } => path.field(variant),
                Segment::Unknown => path,
            };
        }
        let message = error.inner().to_string();
        match message.strip_prefix("missing field `") {
            Some(field) => FieldErrors::one(path.field(field.trim_end_matches('`')), "required"),
            None => FieldErrors::one(path, serde_reason(&message)),
        }
    })?;
    check_no_struct_lists(&input, &to_json(&decoded), &at)?;
    Ok(decoded)
}

/// serde lets a struct be written as the list of its fields' values (`spec: []`);
/// Kubernetes does not, and decoding cannot forbid it. So the decoded value is
/// compared with its input: an object that was a list in the input is an error.
/// (A struct decoded from `[]` to its default and then left out of the output is
/// missed, which is harmless: it means "unset" either way.)
fn check_no_struct_lists(input: &Value, decoded: &Value, path: &Path) -> Result<(), FieldErrors> {
    match (input, decoded) {
        (Value::Array(_), Value::Object(_)) => {
            Err(FieldErrors::one(path, "expected an object, found a list"))
        }
        (Value::Object(input), Value::Object(decoded)) => {
            input.iter().try_for_each(|(key, value)| {
                decoded.get(key).map_or(Ok(()), |d| {
                    check_no_struct_lists(value, d, &child(path, key))
                })
            })
        }
        (Value::Array(input), Value::Array(decoded)) => input
            .iter()
            .zip(decoded)
            .enumerate()
            .try_for_each(|(i, (value, d))| check_no_struct_lists(value, d, &path.index(i))),
        _ => Ok(()),
    }
}

/// The path of `key` inside the object at `parent`: a field, or a map key.
fn child(parent: &Path, key: &str) -> Path {
    if is_map_key(parent, key) {
        parent.key(key)
    } else {
        parent.field(key)
    }
}

/// The fields whose values are maps with user-chosen keys; their keys are written in
/// brackets (`metadata.labels[app.kubernetes.io/name]`). serde_path_to_error does not
/// tell map keys from struct fields, so the parent's name decides, and a key that
/// cannot be a field name (it has characters other than letters and digits) is a map
/// key anyway.
const MAP_FIELDS: [&str; 11] = [
    "labels",
    "annotations",
    "nodeSelector",
    "matchLabels",
    "data",
    "binaryData",
    "stringData",
    "requests",
    "limits",
    "capacity",
    "allocatable",
];

fn is_map_key(parent: &Path, key: &str) -> bool {
    MAP_FIELDS.contains(&parent.last_field()) || !key.chars().all(|c| c.is_ascii_alphanumeric())
}

/// serde's message in the short form of the rest of the model:
/// "invalid type: string \"three\", expected i32" becomes
/// "expected an integer, found a string \"three\"".
fn serde_reason(message: &str) -> String {
    if message.starts_with("unknown field `") {
        return "unknown field".to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once("`, expected ").unwrap_or((rest, ""));
        // serde lists the variants in backquotes: "`A` or `B`", "one of `A`, `B`, `C`".
        let supported: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|v| format!("{v:?}"))
            .collect();
        return format!(
            "unsupported value {value:?} (supported: {})",
            supported.join(", ")
        );
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|r| r.rsplit_once(", expected "))
    {
        return format!(
            "expected {}, found {}",
            expected_noun(expected),
            found_noun(found)
        );
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid value: ")
        .and_then(|r| r.rsplit_once(", expected "))
    {
        let bits = expected.trim_start_matches(['i', 'u']);
        if bits.parse::<u8>().is_ok() {
            return format!(
                "{} is out of range for a {bits}-bit integer",
                found_noun(found).trim_start_matches("a number ")
            );
        }
        return format!(
            "expected {}, found {}",
            expected_noun(expected),
            found_noun(found)
        );
    }
    message.to_string()
}

fn expected_noun(expected: &str) -> &str {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer",
        "a sequence" => "a list",
        "a map" => "an object",
        "string or map" | "variant identifier" => "a string",
        struct_name if struct_name.starts_with("struct ") => "an object",
        other => other,
    }
}

/// serde's `Unexpected` text ("integer `5`", "string \"x\"", "map") as prose.
fn found_noun(found: &str) -> String {
    let unquoted = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = found.strip_prefix("string ") {
        format!("a string {s}")
    } else if let Some(n) = found
        .strip_prefix("integer ")
        .or_else(|| found.strip_prefix("floating point "))
    {
        format!("a number {}", unquoted(n))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        format!("a boolean {}", unquoted(b))
    } else {
        match found {
            "map" => "an object".to_string(),
            "sequence" => "a list".to_string(),
            "unit value" => "null".to_string(),
            other => other.to_string(),
        }
    }
}

/// A JSON value described like [`found_noun`] does.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean {b}"),
        Value::Number(n) => format!("a number {n}"),
        Value::String(s) => format!("a string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// Serializes a model value, leaving out unset (null) fields.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Value {
    // Model types have string keys and no floats, so serializing them cannot fail.
    let mut value = serde_json::to_value(value).expect("model types serialize to JSON");
    strip_nulls(&mut value);
    value
}

/// A null field means "unset", on the way in and on the way out.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.retain(|_, v| !v.is_null());
            fields.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The wire name of an enum value (`RestartPolicy::OnFailure` is "OnFailure").
pub(crate) fn enum_name<T: Serialize>(value: &T) -> String {
    match to_json(value) {
        Value::String(name) => name,
        other => other.to_string(),
    }
}

/// For `skip_serializing_if` on statuses and other all-optional parts.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// [`Resource::status_value`] of a kind with a status.
pub(crate) fn status_json<T: Serialize + Default + PartialEq>(status: &T) -> Value {
    if is_default(status) {
        Value::Null
    } else {
        to_json(status)
    }
}

/// [`Resource::set_status`] of a kind with a status.
pub(crate) fn decode_status<T: DeserializeOwned + Serialize>(
    status: Value,
) -> Result<T, FieldErrors> {
    decode_as(status, Path::root().field("status"))
}
