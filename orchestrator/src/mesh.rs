//! The service mesh's foundations, the parts of a node proxy in the manner of Istio
//! ambient's ztunnel, kept small: every pod runs as a ServiceAccount, which gives
//! it a workload identity; the node's certificate authority issues short-lived
//! certificates for those identities; node proxies talk to each other over mutually
//! authenticated TLS 1.3 and carry each connection inside it as an HTTP/2 CONNECT
//! stream (HBONE).
//!
//! - [`identity`]: [`Identity`] and its SPIFFE URI.
//! - [`ca`]: the certificate authority ([`CaMaterial`], [`Ca`]) and the per-node
//!   [`Certificates`] cache that issues on demand and renews at half-life.
//! - [`tls`]: rustls configurations that present a workload's certificate, verify
//!   the peer's against the CA and learn the peer's identity from it.
//! - [`policy`]: AuthorizationPolicy evaluation ([`policy::decide`]).
//! - [`l7`]: the HTTP proxy for appProtocol `http` ports: routes, splits,
//!   timeouts, retries, outlier detection.
//! - [`metrics`]: the golden metrics ([`MeshMetrics`]) on the agent's /metrics.
//! - [`hbone`]: the tunnel: [`HboneServer`] (inbound: authorize, connect, copy) and
//!   [`HboneClient`] (outbound: one HTTP/2 connection per peer, a stream per
//!   connection).
//! - [`view`]: the workloads by address, with their identities and whether their
//!   namespace is enrolled (plain data).
//! - [`netns`]: sockets made inside a pod's network namespace.
//! - [`node`]: the node proxy that serves this node's enrolled pods from inside
//!   their namespaces, fed by the eBPF capture (see `skiff_ebpf_common::mesh`).
//!
//! Everything here is plain data plus small async services with no globals; the
//! agent decides where the CA comes from, which identities a node serves and what
//! traffic goes through the tunnel.

pub mod ca;
pub mod hbone;
pub mod identity;
pub mod l7;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod policy;
pub mod tls;
pub mod view;

pub use ca::{Ca, CaMaterial, Certificates, Clock, WorkloadCert, system_clock};
pub use hbone::{Authorize, Dialer, HBONE_PORT, HboneClient, HboneServer, Tunnel, host_dialer};
pub use identity::Identity;
pub use metrics::{MeshMetrics, TrafficLabels, Workload};
