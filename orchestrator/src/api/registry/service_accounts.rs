//! Admission of a pod's ServiceAccount, as Kubernetes' ServiceAccount admission
//! plugin does it: a new pod may only name an account that exists (or that the same
//! request creates). `default` is exempt: the service-account controller creates it
//! in every namespace, and a pod created in the moment before it does must not fail.

use std::collections::HashSet;

use super::{ApiError, ObjectRef, Registry, Violation};
use crate::model::{DEFAULT_SERVICE_ACCOUNT, Kind, Object};

impl Registry {
    /// The violation of a pod created at `index` naming an account that does not
    /// exist; None for anything else. `created` holds the ServiceAccounts of the
    /// same request.
    pub(super) async fn check_service_account(
        &self,
        index: usize,
        object: &Object,
        created: &HashSet<ObjectRef>,
    ) -> Result<Option<Violation>, ApiError> {
        let Object::Pod(pod) = object else {
            return Ok(None);
        };
        let account = pod
            .spec
            .service_account_name
            .as_deref()
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        if account == DEFAULT_SERVICE_ACCOUNT {
            return Ok(None);
        }
        let reference = ObjectRef {
            kind: Kind::ServiceAccount,
            namespace: ObjectRef::of(object).namespace,
            name: account.to_string(),
        };
        if created.contains(&reference) || self.read(&reference).await?.is_some() {
            return Ok(None);
        }
        let namespace = reference.namespace.as_deref().unwrap_or_default();
        Ok(Some(Violation {
            index,
            field: "spec.serviceAccountName".into(),
            reason: format!(
                "error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
            ),
        }))
    }
}
