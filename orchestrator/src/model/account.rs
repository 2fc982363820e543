//! ServiceAccount (core/v1): the identity a pod runs as. The mesh names a pod's
//! workload identity after it (`spiffe://<cluster domain>/ns/<ns>/sa/<name>`);
//! every namespace has one called `default`, which pods use unless they name another.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ObjectMeta;
use super::object::Resource;
use super::validation::FieldErrors;

/// The account pods run as when their spec names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccount {
    pub metadata: ObjectMeta,
    /// Accepted for compatibility with Kubernetes manifests; skiff mounts no API
    /// tokens, so it has no effect.
    pub automount_service_account_token: Option<bool>,
}

impl Resource for ServiceAccount {
    fn validate(&self, _errors: &mut FieldErrors) {}

    fn spec_value(&self) -> Value {
        json!({ "automountServiceAccountToken": self.automount_service_account_token })
    }
}
