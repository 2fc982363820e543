//! AuthorizationPolicy (mesh.skiff.io/v1): which sources may reach the mesh's pods,
//! shaped like Istio's security.istio.io/v1 AuthorizationPolicy. A policy selects
//! pods of its namespace by label (none: every pod of the namespace) and ALLOWs or
//! DENYs the requests its rules match; `mesh::policy` evaluates them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ObjectMeta;
use super::object::{Resource, to_json};
use super::validation::{FieldErrors, Path, check_labels};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The pods of the namespace the policy applies to; unset: all of them.
    pub selector: Option<WorkloadSelector>,
    /// ALLOW unless set.
    pub action: Option<String>,
    /// A request matches the policy when it matches one rule; no rules match
    /// nothing (so an ALLOW policy without rules allows nothing, as in Istio).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// What a policy does with the requests it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    Allow,
    Deny,
}

impl PolicyAction {
    /// The action a spec names; None for a value validation refuses.
    pub fn parse(action: Option<&str>) -> Option<PolicyAction> {
        match action {
            None | Some("ALLOW") => Some(PolicyAction::Allow),
            Some("DENY") => Some(PolicyAction::Deny),
            Some(_) => None,
        }
    }
}

/// A rule matches when one of its `from` and one of its `to` entries match (an
/// empty list matches any request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct From {
    pub source: Source,
}

/// Every field set must match; a field matches when one of its values does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Source identities: SPIFFE IDs with or without "spiffe://"
    /// ("cluster.local/ns/shop/sa/web"), "*", or one "*" at the start or end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    pub operation: Operation,
}

/// Every field set must match; a field matches when one of its values does.
/// Methods and paths only exist for HTTP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Destination ports, as strings (Istio's form): "8080".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Exact ("/healthz"), prefix ("/api/*"), suffix ("*.css") or "*".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

impl Resource for AuthorizationPolicy {
    fn validate(&self, errors: &mut FieldErrors) {
        let spec = &self.spec;
        let path = Path::root().field("spec");
        if let Some(selector) = &spec.selector {
            check_labels(
                errors,
                &path.field("selector").field("matchLabels"),
                &selector.match_labels,
            );
        }
        if let Some(action) = &spec.action
            && PolicyAction::parse(Some(action)).is_none()
        {
            errors.push(
                path.field("action"),
                format!("{action:?} is not ALLOW or DENY"),
            );
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            let path = path.field("rules").index(i);
            for (j, from) in rule.from.iter().enumerate() {
                let path = path.field("from").index(j).field("source");
                for (k, principal) in from.source.principals.iter().enumerate() {
                    check_pattern(errors, &path.field("principals").index(k), principal);
                }
                for (k, namespace) in from.source.namespaces.iter().enumerate() {
                    check_pattern(errors, &path.field("namespaces").index(k), namespace);
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let path = path.field("to").index(j).field("operation");
                let operation = &to.operation;
                for (k, port) in operation.ports.iter().enumerate() {
                    if port.parse::<u16>().map_or(true, |p| p == 0) {
                        errors.push(
                            path.field("ports").index(k),
                            format!("{port:?} is not a port number (1-65535)"),
                        );
                    }
                }
                for (k, method) in operation.methods.iter().enumerate() {
                    if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
                        errors.push(
                            path.field("methods").index(k),
                            format!("{method:?} is not an HTTP method in capitals (\"GET\")"),
                        );
                    }
                }
                for (k, http_path) in operation.paths.iter().enumerate() {
                    let at = path.field("paths").index(k);
                    check_pattern(errors, &at, http_path);
                    if !(http_path.starts_with('/') || http_path.starts_with('*')) {
                        errors.push(at, format!("{http_path:?} must start with '/' or '*'"));
                    }
                }
            }
        }
    }

    fn spec_value(&self) -> serde_json::Value {
        to_json(&self.spec)
    }
}

/// Istio's string match: exact, or one '*' at the start or the end.
fn check_pattern(errors: &mut FieldErrors, path: &Path, pattern: &str) {
    if pattern.is_empty() {
        errors.push(path, "must not be empty");
        return;
    }
    let inner = pattern
        .strip_prefix('*')
        .or_else(|| pattern.strip_suffix('*'))
        .unwrap_or(pattern);
    if inner.contains('*') {
        errors.push(
            path,
            format!("{pattern:?}: '*' may only be the first or the last character"),
        );
    }
}
