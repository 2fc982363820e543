//! Lease (coordination.k8s.io/v1): a holder's claim, renewed in time. Each node's
//! agent renews the Lease named after its node in `kube-node-lease`, its
//! heartbeat: a small object written every few seconds, where the Node's whole
//! status is written only when it changes or once a minute.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ObjectMeta;
use super::object::Resource;
use super::validation::{FieldErrors, Path, check_min};

/// The namespace of the nodes' heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Lease {
    pub metadata: ObjectMeta,
    pub spec: LeaseSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaseSpec {
    pub holder_identity: Option<String>,
    /// How long after `renewTime` the claim lapses.
    pub lease_duration_seconds: Option<i32>,
    /// RFC 3339 (Kubernetes' MicroTime has microseconds).
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub lease_transitions: Option<i32>,
}

impl Resource for Lease {
    fn validate(&self, errors: &mut FieldErrors) {
        let spec = Path::root().field("spec");
        check_min(
            errors,
            &spec.field("leaseDurationSeconds"),
            self.spec.lease_duration_seconds,
            1,
        );
        check_min(
            errors,
            &spec.field("leaseTransitions"),
            self.spec.lease_transitions,
            0,
        );
        for (field, time) in [
            ("acquireTime", &self.spec.acquire_time),
            ("renewTime", &self.spec.renew_time),
        ] {
            if let Some(time) = time
                && let Err(e) = time.parse::<jiff::Timestamp>()
            {
                errors.push(
                    spec.field(field),
                    format!("{time:?} is not an RFC 3339 time: {e}"),
                );
            }
        }
    }

    fn spec_value(&self) -> Value {
        super::object::to_json(&self.spec)
    }
}
