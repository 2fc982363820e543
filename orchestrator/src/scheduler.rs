//! The scheduler: binds each pending Pod to a Node by writing its `spec.nodeName`
//! (through the registry's binding verb), as kube-scheduler does.
//!
//! - [`snapshot`]: the cluster as plain data: nodes with their allocatable
//!   resources, labels and taints, the pods placed on them, priority classes.
//! - [`decide`]: the decision for one pod, a function of the pod and a snapshot
//!   (and, in clusters over 100 nodes, of where the last decision stopped
//!   looking): bind, preempt lower-priority pods, or unschedulable with the
//!   reason per node.
//! - `queue`: the pods waiting for a decision, by priority, and those waiting for
//!   the cluster to change.
//! - [`run`]: the loop that keeps a snapshot in step with the store and writes
//!   decisions back; the agent starts and stops it like its other tasks.

pub mod decide;
mod queue;
mod run;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use decide::{Decision, NextNode, decide};
pub use run::run;

use crate::api::registry::ApiError;

/// How the scheduler ranks the nodes a pod fits on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scoring {
    /// Bin-packing: the fullest node first, leaving whole nodes free.
    #[default]
    MostAllocated,
    /// Spreading: the emptiest node first.
    LeastAllocated,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("following the store: {0}")]
    Api(#[from] ApiError),
}
