//! skiff: the node agent of a small container orchestrator whose service network is
//! load-balanced by eBPF at connect() time.
//!
//! The library holds every concern of the agent, one module each; the `skiff`
//! binary (main.rs) is only the command line around it.
//!
//! - [`cgroup`]: finding the cgroup v2 hierarchy the dataplane attaches to.
//! - [`dataplane`]: loading and attaching the eBPF programs, and keeping the
//!   service maps they read.
//! - [`dns`]: cluster DNS: the cluster zone from the store, forwarding the rest.
//! - [`model`]: the Kubernetes-shaped resources, their validation, and manifests.
//! - [`image`]: the node's image store: importing image tarballs, unpacking their
//!   layers for overlayfs, resolving a reference to what a container runs.
//! - [`store`]: the revisioned key-value store (embedded file, or etcd) and its
//!   conformance tests.
//! - [`api`]: the gRPC API over the store (registry rules, server, client).
//! - [`controllers`]: the reconcile loops (ReplicaSet, Deployment, EndpointSlice,
//!   Job, HorizontalPodAutoscaler, node lifecycle, ServiceAccount).
//! - [`scheduler`]: binding pending pods to nodes (filters, scoring, preemption).
//! - [`mesh`]: the service mesh's pieces: workload identities, the certificate
//!   authority, mTLS and the HBONE tunnel between node proxies.
//! - [`routes`]: routes to other nodes' pod CIDRs (direct routing).
//! - [`cli`]: the `skiff` command line.
//! - [`agent`]: the node agent's lifecycle: start, serve, clean shutdown.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod controllers;
pub mod dataplane;
pub mod dns;
pub mod image;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod runtime;
pub mod scheduler;
pub mod store;
