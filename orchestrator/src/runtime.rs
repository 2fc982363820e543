//! The node's pod lifecycle: pods bound to this node become network namespaces
//! wired by the CNI plugin (spoken to only through the CNI protocol) and
//! containers run by runc under conmon, from images in the node's image store.
//!
//! - [`node`]: registering the node and following the pods bound to it.
//! - [`worker`]: one reconcile loop per pod.
//! - [`record`]: what the node knows of each pod, persisted for adoption.
//! - [`status`]: the pod status computed from that record, and [`holds`]: what
//!   else keeps a pod NotReady (the mesh).
//! - [`container`], [`bundle`], [`rootfs`], [`oci`]: one container attempt, from
//!   image layers to a running process.
//! - [`probes`]: startup, liveness and readiness probes; [`events`]: what
//!   happened, for `describe`.
//! - [`netns`], [`cni`], [`pod_files`]: the pod's network and /etc files.
//! - [`volumes`]: emptyDir, hostPath, configMap and secret volumes.
//! - [`logs`]: reading containers' log files (`skiff logs`).
//! - [`usage`]: CPU and memory of the node and its pods, published as metrics.
//! - [`paths`]: where all of it lives on the node.

pub mod bundle;
pub mod cni;
pub mod container;
pub mod events;
pub mod holds;
pub mod logs;
pub mod netns;
pub mod node;
pub mod oci;
pub mod paths;
pub mod pod_files;
pub mod probes;
pub mod record;
pub mod rootfs;
pub mod status;
pub mod usage;
pub mod volumes;
pub mod worker;
