//! The Kubernetes-shaped resources skiff serves: types, defaults, validation, manifests.
//!
//! The types carry the field names a Kubernetes user knows (camelCase on the wire)
//! and decode strictly, like `kubectl apply --validate=strict`: an unknown field, a
//! wrong type or an unsupported enum value is an error naming its field path. An
//! [`Object`] is one value of any kind; it decodes from JSON by apiVersion and kind,
//! gets the defaults the Kubernetes API server would give it, and validates with
//! every problem reported as a [`FieldError`] (`spec.replicas: -1 must be greater
//! than or equal to 0`).
//!
//! - [`object`]: [`Kind`], [`Object`], strict decoding.
//! - [`meta`]: [`ObjectMeta`] and conditions.
//! - [`pod`], [`service`], [`cluster`] (Namespace, Node), [`config`] (ConfigMap,
//!   Secret), [`account`] (ServiceAccount), [`apps`]
//!   (Deployment, ReplicaSet), [`batch`] (Job, CronJob), [`autoscaling`]
//!   (HorizontalPodAutoscaler), [`discovery`] (EndpointSlice), [`event`] (Event),
//!   [`metrics`] (PodMetrics, NodeMetrics), [`scheduling`] (PriorityClass),
//!   [`authorization`] (AuthorizationPolicy), [`gateway`] (HTTPRoute): the kinds.
//! - [`selector`]: label and field selectors.
//! - [`quantity`]: quantities, int-or-string and base64 values.
//! - [`validation`]: field errors and the shared checks.
//! - [`manifest`]: reading YAML/JSON manifests from files, directories and stdin.

pub mod account;
pub mod apps;
pub mod authorization;
pub mod autoscaling;
pub mod batch;
pub mod cluster;
pub mod config;
pub mod coordination;
pub mod discovery;
pub mod event;
pub mod gateway;
pub mod manifest;
pub mod meta;
pub mod metrics;
pub mod object;
pub mod pod;
pub mod quantity;
pub mod scheduling;
pub mod selector;
pub mod service;
pub mod validation;

#[cfg(test)]
mod tests;

pub use account::*;
pub use apps::*;
pub use authorization::AuthorizationPolicy;
pub use autoscaling::*;
pub use batch::*;
pub use cluster::*;
pub use config::*;
pub use coordination::*;
pub use discovery::*;
pub use event::*;
pub use gateway::HTTPRoute;
pub use meta::{Condition, ConditionStatus, ObjectMeta, OwnerReference};
pub use metrics::*;
pub use object::{Kind, Object};
pub use pod::*;
pub use quantity::{ByteString, IntOrString, ParsedQuantity, Quantity};
pub use scheduling::*;
pub use selector::{
    FieldSelector, LabelSelector, LabelSelectorRequirement, Selector, SelectorOperator,
};
pub use service::*;
pub use validation::{FieldError, FieldErrors};
