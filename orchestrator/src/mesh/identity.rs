//! Workload identities: a pod's ServiceAccount, named as a SPIFFE ID
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`), the form Istio
//! and Linkerd use. The trust domain is the cluster domain (`cluster.local`).

use std::fmt;
use std::str::FromStr;

use crate::model::validation::Format;

const SCHEME: &str = "spiffe://";

/// Who a workload is: the ServiceAccount its pods run as, in a trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{0:?} is not a SPIFFE ID: it does not start with \"spiffe://\"")]
    Scheme(String),
    #[error("{uri:?}: the path must be /ns/<namespace>/sa/<service account>, found {path:?}")]
    Path { uri: String, path: String },
    #[error("{uri:?}: {reason}")]
    Name { uri: String, reason: String },
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::Scheme(uri.into()))?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let segments: Vec<&str> = path.split('/').collect();
        let ["ns", namespace, "sa", account] = segments[..] else {
            return Err(IdentityError::Path {
                uri: uri.into(),
                path: format!("/{path}"),
            });
        };
        for (what, value, format) in [
            ("trust domain", domain, Format::Dns1123Subdomain),
            ("namespace", namespace, Format::Dns1123Label),
            ("service account", account, Format::Dns1123Subdomain),
        ] {
            if !format.is_valid(value) {
                return Err(IdentityError::Name {
                    uri: uri.into(),
                    reason: format!("{what} {}", format.reason(value)),
                });
            }
        }
        Ok(Identity::new(domain, namespace, account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_uri() {
        let identity = Identity::new("cluster.local", "shop", "web-frontend");
        let uri = identity.to_string();
        assert_eq!(uri, "spiffe://cluster.local/ns/shop/sa/web-frontend");
        assert_eq!(uri.parse::<Identity>(), Ok(identity));
    }

    #[test]
    fn parse_errors_name_what_is_wrong() {
        let error = |uri: &str| uri.parse::<Identity>().unwrap_err().to_string();
        assert_eq!(
            error("https://cluster.local/ns/a/sa/b"),
            "\"https://cluster.local/ns/a/sa/b\" is not a SPIFFE ID: it does not start with \"spiffe://\""
        );
        assert!(
            error("spiffe://Cluster_Local/ns/a/sa/b")
                .contains("trust domain \"Cluster_Local\" is not a valid DNS-1123 subdomain"),
            "{}",
            error("spiffe://Cluster_Local/ns/a/sa/b")
        );
        assert_eq!(
            error("spiffe://cluster.local/ns/a/serviceaccount/b"),
            "\"spiffe://cluster.local/ns/a/serviceaccount/b\": the path must be /ns/<namespace>/sa/<service account>, found \"/ns/a/serviceaccount/b\""
        );
        assert!(error("spiffe://cluster.local").contains("found \"/\""));
        assert!(error("spiffe://cluster.local/ns/a/sa/b/c").contains("the path must be"));
        assert!(
            error("spiffe://cluster.local/ns/Shop/sa/b").contains("namespace \"Shop\" is not"),
            "{}",
            error("spiffe://cluster.local/ns/Shop/sa/b")
        );
        assert!(error("spiffe://cluster.local/ns/a/sa/").contains("service account \"\" is not"));
    }
}
