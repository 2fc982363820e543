//! Authorization of mesh traffic: which AuthorizationPolicies apply to a
//! destination pod, and what they decide about one request, with Istio's
//! semantics: a matching DENY policy denies; otherwise, when ALLOW policies apply,
//! one of them must match; with none, the request is allowed.
//!
//! Rules that name HTTP-only fields (methods, paths) cannot match plain TCP
//! traffic; as in Istio both actions then fail closed: an ALLOW rule does not
//! match, and a DENY rule is judged on its other fields only.

use std::collections::BTreeMap;

use crate::model::AuthorizationPolicy;
use crate::model::authorization::{Operation, PolicyAction, Rule, Source};

use super::Identity;

/// One request (or TCP connection) to a destination pod.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The peer's verified identity; None for plaintext from outside the mesh.
    pub source: Option<&'a Identity>,
    pub destination_port: u16,
    /// Set for HTTP traffic the L7 proxy sees; None for TCP.
    pub http: Option<HttpRequest<'a>>,
}

#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
}

/// The outcome, and the policy ("namespace/name") that decided it: the DENY or
/// ALLOW policy that matched; None when no policy applied, or when ALLOW policies
/// applied and none matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub policy: Option<String>,
}

/// The policies of `namespace` whose selector picks a pod with `labels`.
pub fn policies_for<'a>(
    policies: &'a [AuthorizationPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AuthorizationPolicy> {
    policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            p.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect()
}

/// Decides `request` against the policies that apply to its destination pod.
pub fn decide<'a>(
    policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
    request: &Request,
) -> Decision {
    let mut any_allow = false;
    let mut allowed_by = None;
    for policy in policies {
        // An action validation would refuse counts as DENY: fail closed.
        let action =
            PolicyAction::parse(policy.spec.action.as_deref()).unwrap_or(PolicyAction::Deny);
        let matches = policy
            .spec
            .rules
            .iter()
            .any(|rule| rule_matches(rule, action, request));
        match action {
            PolicyAction::Deny if matches => {
                return Decision {
                    allowed: false,
                    policy: Some(name_of(policy)),
                };
            }
            PolicyAction::Deny => {}
            PolicyAction::Allow => {
                any_allow = true;
                if matches && allowed_by.is_none() {
                    allowed_by = Some(name_of(policy));
                }
            }
        }
    }
    Decision {
        allowed: !any_allow || allowed_by.is_some(),
        policy: allowed_by,
    }
}

fn name_of(policy: &AuthorizationPolicy) -> String {
    format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or_default(),
        policy.metadata.name
    )
}

fn rule_matches(rule: &Rule, action: PolicyAction, request: &Request) -> bool {
    let from = rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|f| source_matches(&f.source, request.source));
    let to = rule.to.is_empty()
        || rule
            .to
            .iter()
            .any(|t| operation_matches(&t.operation, action, request));
    from && to
}

fn source_matches(source: &Source, identity: Option<&Identity>) -> bool {
    let principal = identity.map(|id| id.to_string());
    let principal = principal
        .as_deref()
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
    let namespace = identity.map(|id| id.namespace.as_str());
    any_matches(&source.principals, principal, |pattern| {
        pattern.strip_prefix("spiffe://").unwrap_or(pattern)
    }) && any_matches(&source.namespaces, namespace, |pattern| pattern)
}

fn operation_matches(operation: &Operation, action: PolicyAction, request: &Request) -> bool {
    let port = request.destination_port.to_string();
    let port_matches = operation.ports.is_empty() || operation.ports.contains(&port);
    let http_matches = match request.http {
        Some(http) => {
            any_matches(&operation.methods, Some(http.method), |m| m)
                && any_matches(&operation.paths, Some(http.path), |p| p)
        }
        None => {
            let http_only = !operation.methods.is_empty() || !operation.paths.is_empty();
            !http_only || action == PolicyAction::Deny
        }
    };
    port_matches && http_matches
}

/// An empty list matches anything; otherwise `value` must match one pattern
/// (after `normalize`), and an absent value matches none.
fn any_matches(patterns: &[String], value: Option<&str>, normalize: fn(&str) -> &str) -> bool {
    patterns.is_empty()
        || value.is_some_and(|value| {
            patterns
                .iter()
                .any(|pattern| wildcard_matches(normalize(pattern), value))
        })
}

/// Istio's string match: "*" (anything), "prefix*", "*suffix" or exact.
fn wildcard_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Object;

    fn policy(name: &str, spec: serde_json::Value) -> AuthorizationPolicy {
        let value = json!({
            "apiVersion": "mesh.skiff.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": spec,
        });
        match Object::from_value(value) {
            Ok(Object::AuthorizationPolicy(policy)) => policy,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn identity(namespace: &str, account: &str) -> Identity {
        Identity::new("cluster.local", namespace, account)
    }

    #[test]
    fn decisions_follow_istio_semantics() {
        let deny_admin_paths = policy(
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]}),
        );
        let allow_frontend = policy(
            "allow-frontend",
            json!({"rules": [{
                "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                "to": [{"operation": {"ports": ["8080"], "methods": ["GET", "HEAD"]}}]
            }]}),
        );
        let allow_ops_namespace = policy(
            "allow-ops",
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["ops"]}}]}]}),
        );
        let allow_suffix = policy(
            "allow-readers",
            json!({"rules": [{"from": [{"source": {"principals": ["*/sa/reader"]}}]}]}),
        );
        let allow_nothing = policy("allow-nothing", json!({}));
        let deny_tcp_writes = policy(
            "deny-writes",
            json!({"action": "DENY", "rules": [{
                "from": [{"source": {"namespaces": ["untrusted"]}}],
                "to": [{"operation": {"methods": ["POST"]}}]
            }]}),
        );

        let frontend = identity("shop", "frontend");
        let reader = identity("other", "reader");
        let ops = identity("ops", "deployer");
        let untrusted = identity("untrusted", "x");
        let get = |path| {
            Some(HttpRequest {
                method: "GET",
                path,
            })
        };
        let post = Some(HttpRequest {
            method: "POST",
            path: "/cart",
        });

        type Case<'a> = (
            &'a str,
            Vec<&'a AuthorizationPolicy>,
            Option<&'a Identity>,
            u16,
            Option<HttpRequest<'a>>,
            Option<&'a str>,
        );
        let allowed_by = |name: &'static str| Some(name);
        let cases: Vec<(Case, bool)> = vec![
            (
                ("no policies: default allow", vec![], None, 80, None, None),
                true,
            ),
            (
                (
                    "allow matches principal, port and method",
                    vec![&allow_frontend],
                    Some(&frontend),
                    8080,
                    get("/"),
                    allowed_by("shop/allow-frontend"),
                ),
                true,
            ),
            (
                (
                    "allow policies apply but none matches the port",
                    vec![&allow_frontend],
                    Some(&frontend),
                    9090,
                    get("/"),
                    None,
                ),
                false,
            ),
            (
                (
                    "allow policies apply but none matches the method",
                    vec![&allow_frontend],
                    Some(&frontend),
                    8080,
                    post,
                    None,
                ),
                false,
            ),
            (
                (
                    "allow with methods never matches TCP",
                    vec![&allow_frontend],
                    Some(&frontend),
                    8080,
                    None,
                    None,
                ),
                false,
            ),
            (
                (
                    "plaintext has no principal",
                    vec![&allow_frontend],
                    None,
                    8080,
                    get("/"),
                    None,
                ),
                false,
            ),
            (
                (
                    "deny wins over a matching allow",
                    vec![&allow_frontend, &deny_admin_paths],
                    Some(&frontend),
                    8080,
                    get("/admin/users"),
                    Some("shop/deny-admin"),
                ),
                false,
            ),
            (
                (
                    "deny prefix path does not match a sibling",
                    vec![&allow_frontend, &deny_admin_paths],
                    Some(&frontend),
                    8080,
                    get("/administrator"),
                    allowed_by("shop/allow-frontend"),
                ),
                true,
            ),
            (
                (
                    "deny alone does not restrict others",
                    vec![&deny_admin_paths],
                    Some(&reader),
                    80,
                    get("/"),
                    None,
                ),
                true,
            ),
            (
                (
                    "namespace source",
                    vec![&allow_frontend, &allow_ops_namespace],
                    Some(&ops),
                    1,
                    None,
                    allowed_by("shop/allow-ops"),
                ),
                true,
            ),
            (
                (
                    "principal suffix wildcard",
                    vec![&allow_suffix],
                    Some(&reader),
                    80,
                    None,
                    allowed_by("shop/allow-readers"),
                ),
                true,
            ),
            (
                (
                    "ALLOW without rules allows nothing",
                    vec![&allow_nothing],
                    Some(&frontend),
                    80,
                    get("/"),
                    None,
                ),
                false,
            ),
            (
                (
                    "DENY with HTTP fields denies TCP from its source",
                    vec![&deny_tcp_writes],
                    Some(&untrusted),
                    80,
                    None,
                    Some("shop/deny-writes"),
                ),
                false,
            ),
            (
                (
                    "DENY with HTTP fields: other methods pass",
                    vec![&deny_tcp_writes],
                    Some(&untrusted),
                    80,
                    get("/"),
                    None,
                ),
                true,
            ),
        ];
        for ((name, policies, source, port, http, policy), allowed) in cases {
            let request = Request {
                source,
                destination_port: port,
                http,
            };
            assert_eq!(
                decide(policies, &request),
                Decision {
                    allowed,
                    policy: policy.map(String::from)
                },
                "{name}"
            );
        }
    }

    #[test]
    fn selectors_pick_pods_of_the_namespace() {
        let everyone = policy("everyone", json!({}));
        let web = policy("web", json!({"selector": {"matchLabels": {"app": "web"}}}));
        let mut elsewhere = policy("elsewhere", json!({}));
        elsewhere.metadata.namespace = Some("other".into());
        let all = [everyone, web, elsewhere];
        let names = |labels: &[(&str, &str)]| {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            policies_for(&all, "shop", &labels)
                .iter()
                .map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&[("app", "web"), ("tier", "1")]), ["everyone", "web"]);
        assert_eq!(names(&[("app", "db")]), ["everyone"]);
    }
}
