//! The API every client and controller talks through: a tonic gRPC service with
//! generic verbs (apply, get, list, delete, watch, update status) over the
//! resources of [`crate::model`], kept in a [`crate::store::Store`].
//!
//! - [`registry`]: what the verbs do (defaults, validation, optimistic concurrency,
//!   allocations, cascading deletes), independent of gRPC.
//! - [`server`]: the gRPC service on a unix socket (and optionally TCP with TLS),
//!   with bearer-token authentication.
//! - [`client`]: connecting to it.
//! - [`cluster_secrets`]: the secrets every agent of a cluster shares, and how
//!   agents joining a cluster on etcd obtain them with its join token.
//! - [`containers`]: which container of a pod on this node a logs or exec
//!   request means.

pub mod proto {
    tonic::include_proto!("skiff.v1");
}

pub mod allocator;
pub mod client;
pub mod cluster_secrets;
pub mod containers;
pub mod credentials;
pub mod encryption;
pub mod registry;
pub mod server;
