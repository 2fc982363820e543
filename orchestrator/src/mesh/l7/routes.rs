//! The routing table, plain data built from HTTPRoutes: for a destination Service
//! port and a request path, the rule that applies (Gateway API precedence: Exact
//! before PathPrefix, longer prefixes first, then older routes), or the
//! Service itself when no route takes the request.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::HTTPRoute;
use crate::model::gateway::{PathMatchType, parse_duration};

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// Whole segments: "/api" takes "/api" and "/api/x", not "/apis".
    Prefix(String),
    Exact(String),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                path.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }

    /// Gateway API precedence: Exact first, then the longer prefix.
    fn precedence(&self) -> (bool, usize) {
        match self {
            PathMatch::Exact(p) => (true, p.len()),
            PathMatch::Prefix(p) => (false, p.trim_end_matches('/').len()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedBackend {
    pub service: ServicePort,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Statuses worth a retry; empty: every 5xx.
    pub codes: Vec<u16>,
    pub backoff: Duration,
}

impl RetryPolicy {
    pub fn retries_status(&self, status: u16) -> bool {
        if self.codes.is_empty() {
            (500..600).contains(&status)
        } else {
            self.codes.contains(&status)
        }
    }
}

/// What happens to the requests one rule takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// "namespace/name" of the HTTPRoute, for logs; empty for the default rule.
    pub route: String,
    pub backends: Vec<WeightedBackend>,
    /// The whole request, retries included.
    pub timeout: Option<Duration>,
    pub attempt_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

impl Rule {
    /// The rule of a Service no route takes over: all of it to itself.
    pub fn direct(service: &ServicePort) -> Rule {
        Rule {
            route: String::new(),
            backends: vec![WeightedBackend {
                service: service.clone(),
                weight: 1,
            }],
            timeout: None,
            attempt_timeout: None,
            retry: None,
        }
    }
}

/// Gateway API defaults the model leaves to the implementation.
const DEFAULT_RETRY_ATTEMPTS: u32 = 1;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);

/// A Service a route attaches to: namespace, name and port (None: all ports).
type Parent = (String, String, Option<u16>);

/// Rules by the Service they are attached to, each list in precedence order.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    by_parent: HashMap<Parent, Vec<(PathMatch, Rule)>>,
}

impl Routes {
    /// The table of `routes`, which were validated on their way into the store.
    pub fn new(routes: &[HTTPRoute]) -> Routes {
        let mut ordered: Vec<&HTTPRoute> = routes.iter().collect();
        ordered.sort_by_key(|r| {
            (
                r.metadata.creation_timestamp.clone(),
                r.metadata.namespace.clone(),
                r.metadata.name.clone(),
            )
        });
        let mut by_parent: HashMap<_, Vec<(PathMatch, Rule)>> = HashMap::new();
        for route in ordered {
            let namespace = route.metadata.namespace.clone().unwrap_or_default();
            let rules: Vec<(PathMatch, Rule)> = route
                .spec
                .rules
                .iter()
                .flat_map(|rule| {
                    let converted = convert_rule(route, &namespace, rule);
                    let matches: Vec<PathMatch> = if rule.matches.is_empty() {
                        vec![PathMatch::Prefix("/".into())]
                    } else {
                        rule.matches.iter().map(path_match).collect()
                    };
                    matches.into_iter().map(move |m| (m, converted.clone()))
                })
                .collect();
            for parent in &route.spec.parent_refs {
                let port = parent.port.and_then(|p| u16::try_from(p).ok());
                by_parent
                    .entry((namespace.clone(), parent.name.clone(), port))
                    .or_default()
                    .extend(rules.iter().cloned());
            }
        }
        for rules in by_parent.values_mut() {
            // Stable: ties keep the older route's rule first.
            rules.sort_by_key(|(m, _)| std::cmp::Reverse(m.precedence()));
        }
        Routes { by_parent }
    }

    /// The rule for a request to `destination` with `path`: a route's rule for
    /// that port, else for all the Service's ports, else the Service itself.
    pub fn rule(&self, destination: &ServicePort, path: &str) -> Rule {
        [Some(destination.port), None]
            .into_iter()
            .filter_map(|port| {
                self.by_parent.get(&(
                    destination.namespace.clone(),
                    destination.name.clone(),
                    port,
                ))
            })
            .flat_map(|rules| rules.iter())
            .find(|(m, _)| m.matches(path))
            .map_or_else(|| Rule::direct(destination), |(_, rule)| rule.clone())
    }
}

fn path_match(matched: &crate::model::gateway::HTTPRouteMatch) -> PathMatch {
    let path = matched.path.clone().unwrap_or_default();
    let value = path.value.unwrap_or_else(|| "/".into());
    match path.r#type.unwrap_or_default() {
        PathMatchType::PathPrefix => PathMatch::Prefix(value),
        PathMatchType::Exact => PathMatch::Exact(value),
    }
}

fn convert_rule(
    route: &HTTPRoute,
    namespace: &str,
    rule: &crate::model::gateway::HTTPRouteRule,
) -> Rule {
    // Validation accepted these; a value that still fails to parse means "unset".
    let duration = |text: &Option<String>| text.as_deref().and_then(|t| parse_duration(t).ok());
    let backends = rule
        .backend_refs
        .iter()
        .filter_map(|backend| {
            Some(WeightedBackend {
                service: ServicePort {
                    namespace: namespace.to_string(),
                    name: backend.name.clone(),
                    port: u16::try_from(backend.port?).ok()?,
                },
                weight: u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0),
            })
        })
        .collect();
    let timeouts = rule.timeouts.clone().unwrap_or_default();
    Rule {
        route: format!("{namespace}/{}", route.metadata.name),
        backends,
        timeout: duration(&timeouts.request),
        attempt_timeout: duration(&timeouts.backend_request),
        retry: rule.retry.as_ref().map(|retry| RetryPolicy {
            attempts: retry
                .attempts
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(DEFAULT_RETRY_ATTEMPTS),
            codes: retry
                .codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            backoff: duration(&retry.backoff).unwrap_or(DEFAULT_RETRY_BACKOFF),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Object;

    fn route(name: &str, spec: serde_json::Value) -> HTTPRoute {
        let value = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": spec,
        });
        match Object::from_value(value) {
            Ok(Object::HTTPRoute(route)) => route,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn port(name: &str, port: u16) -> ServicePort {
        ServicePort {
            namespace: "shop".into(),
            name: name.into(),
            port,
        }
    }

    #[test]
    fn requests_take_the_most_specific_rule() {
        let routes = Routes::new(&[
            route(
                "web",
                json!({
                    "parentRefs": [{"name": "web"}],
                    "rules": [
                        {"backendRefs": [{"name": "web-v1", "port": 80, "weight": 9},
                                         {"name": "web-v2", "port": 80, "weight": 1}]},
                        {"matches": [{"path": {"value": "/api"}}],
                         "backendRefs": [{"name": "api", "port": 8080}],
                         "timeouts": {"request": "2s"},
                         "retry": {"codes": [503]}},
                        {"matches": [{"path": {"type": "Exact", "value": "/api/login"}}],
                         "backendRefs": [{"name": "login", "port": 80}]}
                    ]
                }),
            ),
            route(
                "web-admin",
                json!({
                    "parentRefs": [{"name": "web", "port": 8443}],
                    "rules": [{"backendRefs": [{"name": "admin", "port": 443}]}]
                }),
            ),
        ]);
        let web = port("web", 80);
        let names = |rule: Rule| {
            rule.backends
                .iter()
                .map(|b| b.service.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(routes.rule(&web, "/")), ["web-v1", "web-v2"]);
        assert_eq!(names(routes.rule(&web, "/apis")), ["web-v1", "web-v2"]);
        assert_eq!(names(routes.rule(&web, "/api/cart")), ["api"]);
        assert_eq!(names(routes.rule(&web, "/api/login")), ["login"]);
        assert_eq!(names(routes.rule(&port("web", 8443), "/api")), ["admin"]);
        assert_eq!(names(routes.rule(&port("db", 5432), "/")), ["db"]);
        let api = routes.rule(&web, "/api");
        assert_eq!(api.timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            api.retry,
            Some(RetryPolicy {
                attempts: 1,
                codes: vec![503],
                backoff: Duration::from_millis(25)
            })
        );
        assert_eq!(api.route, "shop/web");
        assert_eq!(routes.rule(&web, "/").backends[0].weight, 9);
    }
}
