//! HTTPRoute (gateway.networking.k8s.io/v1) as the Gateway API's GAMMA profile
//! uses it for a mesh: a route attached to a Service (`parentRefs` of kind
//! Service) sends the HTTP requests for that Service to weighted backend Services,
//! with a request timeout and retries per rule. The mesh's L7 proxy
//! (`mesh::l7`) applies them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ObjectMeta;
use super::object::{Resource, to_json};
use super::validation::{FieldErrors, Format, Path, check_name, check_port, check_range};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPRoute {
    pub metadata: ObjectMeta,
    pub spec: HTTPRouteSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    /// The Services whose traffic the route takes over.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HTTPRouteRule>,
}

/// A Service in the route's namespace; group "" and kind "Service" are the only
/// ones a mesh route may name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentReference {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    /// The Service port the route applies to; unset: all of them.
    pub port: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPRouteRule {
    /// A request takes the first rule one of whose matches it meets; no matches
    /// means every request (a "/" prefix).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HTTPRouteMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HTTPBackendRef>,
    pub timeouts: Option<HTTPRouteTimeouts>,
    pub retry: Option<HTTPRouteRetry>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPRouteMatch {
    pub path: Option<HTTPPathMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPPathMatch {
    /// PathPrefix unless set.
    pub r#type: Option<PathMatchType>,
    /// "/" unless set.
    pub value: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    /// Whole path segments: "/api" matches "/api" and "/api/x", not "/apis".
    #[default]
    PathPrefix,
    Exact,
}

/// A Service in the route's namespace and one of its ports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPBackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub port: Option<i32>,
    /// A share of the rule's requests relative to the other backends' (default 1;
    /// 0 sends none).
    pub weight: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPRouteTimeouts {
    /// The whole request, retries included; past it the client gets a 504.
    pub request: Option<String>,
    /// One attempt at a backend.
    pub backend_request: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPRouteRetry {
    /// The statuses worth a retry (400-599); connection failures always are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<i32>,
    /// Retries after the first attempt.
    pub attempts: Option<i32>,
    /// The wait before each retry.
    pub backoff: Option<String>,
}

/// The most any backend's weight may be, as in the Gateway API.
const MAX_WEIGHT: i64 = 1_000_000;

/// A Gateway API Duration: one to four `<number><unit>` parts with units h, m, s
/// and ms, numbers of at most five digits ("1h30m", "500ms", "2s").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "{text:?} is not a duration (one to four parts of up to 5 digits and a unit h, m, s \
             or ms: \"2s\", \"500ms\", \"1m30s\")"
        )
    };
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 || digits > 5 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit, millis) = [("ms", 1), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)]
            .into_iter()
            .find(|(unit, _)| rest.starts_with(unit))
            .ok_or_else(invalid)?;
        rest = &rest[unit.len()..];
        total += Duration::from_millis(number * millis);
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(invalid());
    }
    Ok(total)
}

impl Resource for HTTPRoute {
    fn validate(&self, errors: &mut FieldErrors) {
        let path = Path::root().field("spec");
        if self.spec.parent_refs.is_empty() {
            errors.push(path.field("parentRefs"), "required");
        }
        for (i, parent) in self.spec.parent_refs.iter().enumerate() {
            let path = path.field("parentRefs").index(i);
            check_service_ref(errors, &path, &parent.group, &parent.kind, &parent.name);
            if let Some(port) = parent.port {
                check_port(errors, &path.field("port"), port);
            }
        }
        for (i, rule) in self.spec.rules.iter().enumerate() {
            let path = path.field("rules").index(i);
            for (j, matched) in rule.matches.iter().enumerate() {
                if let Some(value) = matched.path.as_ref().and_then(|p| p.value.as_ref())
                    && !value.starts_with('/')
                {
                    errors.push(
                        path.field("matches").index(j).field("path").field("value"),
                        format!("{value:?} must start with '/'"),
                    );
                }
            }
            for (j, backend) in rule.backend_refs.iter().enumerate() {
                let path = path.field("backendRefs").index(j);
                check_service_ref(errors, &path, &backend.group, &backend.kind, &backend.name);
                match backend.port {
                    Some(port) => check_port(errors, &path.field("port"), port),
                    None => errors.push(path.field("port"), "required for a Service backend"),
                }
                check_range(errors, &path.field("weight"), backend.weight, 0, MAX_WEIGHT);
            }
            if let Some(timeouts) = &rule.timeouts {
                let path = path.field("timeouts");
                check_duration(errors, &path.field("request"), &timeouts.request);
                check_duration(
                    errors,
                    &path.field("backendRequest"),
                    &timeouts.backend_request,
                );
            }
            if let Some(retry) = &rule.retry {
                let path = path.field("retry");
                for (j, code) in retry.codes.iter().enumerate() {
                    check_range(errors, &path.field("codes").index(j), Some(*code), 400, 599);
                }
                check_range(errors, &path.field("attempts"), retry.attempts, 0, 10);
                check_duration(errors, &path.field("backoff"), &retry.backoff);
            }
        }
    }

    fn spec_value(&self) -> serde_json::Value {
        to_json(&self.spec)
    }
}

/// Mesh routes attach to and send to Services of the route's namespace.
fn check_service_ref(
    errors: &mut FieldErrors,
    path: &Path,
    group: &Option<String>,
    kind: &Option<String>,
    name: &str,
) {
    if let Some(group) = group.as_deref().filter(|g| !g.is_empty()) {
        errors.push(
            path.field("group"),
            format!("{group:?} is not supported (only \"\", the core group of Service)"),
        );
    }
    if let Some(kind) = kind.as_deref().filter(|k| *k != "Service") {
        errors.push(
            path.field("kind"),
            format!("{kind:?} is not supported (only \"Service\")"),
        );
    }
    check_name(errors, &path.field("name"), name, Format::Rfc1035Label);
}

fn check_duration(errors: &mut FieldErrors, path: &Path, value: &Option<String>) {
    if let Some(value) = value
        && let Err(reason) = parse_duration(value)
    {
        errors.push(path, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_the_gateway_api_defines_them() {
        let cases: &[(&str, Option<u64>)] = &[
            ("500ms", Some(500)),
            ("2s", Some(2_000)),
            ("1m30s", Some(90_000)),
            ("1h", Some(3_600_000)),
            ("1h1m1s1ms", Some(3_661_001)),
            ("0s", Some(0)),
            ("", None),
            ("2", None),
            ("s", None),
            ("1.5s", None),
            ("123456s", None),
            ("1h1m1s1ms1ms", None),
            ("2S", None),
            ("-1s", None),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_duration(text).ok(),
                millis.map(Duration::from_millis),
                "{text:?}"
            );
        }
    }
}
