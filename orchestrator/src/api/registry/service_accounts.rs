//! Admission of a pod's ServiceAccount, as Kubernetes' ServiceAccount admission
//! plugin does it: a new pod may only name an account that exists (or that the same
//! request creates). `default` is exempt: the service-account controller creates it
//! in every namespace, and a pod created in the moment before it does must not fail.

use std::collections::HashSet;

use super::{ApiError, ObjectRef, Registry, Violation};
use crate::model::{DEFAULT_SERVICE_ACCOUNT, Kind, Object};

impl Registry {
    /// The violation of a pod created at `index` naming an account that does not
    /// exist; None for anything else. `created` holds the (namespace, name) of the
    /// ServiceAccounts in the same request.
    pub(super) async fn check_service_account(
        &self,
        index: usize,
        pod: &Object,
        created: &HashSet<(&str, &str)>,
    ) -> Result<Option<Violation>, ApiError> {
        let Object::Pod(pod) = pod else {
            return Ok(None);
        };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let account = pod
            .spec
            .service_account_name
            .as_deref()
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        if account == DEFAULT_SERVICE_ACCOUNT || created.contains(&(namespace, account)) {
            return Ok(None);
        }
        let reference = ObjectRef {
            kind: Kind::ServiceAccount,
            namespace: Some(namespace.to_string()),
            name: account.to_string(),
        };
        if self.read(&reference).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(Violation {
            index,
            field: "spec.serviceAccountName".into(),
            reason: format!(
                "error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
            ),
        }))
    }
}
