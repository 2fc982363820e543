//! skiff's benchmarks, each side by side with what skiff replaces, in one run and in
//! alternating rounds (these machines drift by about ±20% between runs).
//!
//! `skiff-bench api`: the control plane's write path and watch path against etcd,
//! the store under the Kubernetes API server: applies per second (one client, and
//! 16 concurrent), watch event latency (p50/p99) with 10,000 objects stored, and
//! the resident memory of the server holding them.
//!
//! `skiff-bench cni`: skiff-cni's ADD and DEL latency (p50/p99) against the
//! standard bridge plugin with host-local IPAM.
//!
//! `skiff-bench dataplane`: new connections per second through skiff's service
//! virtual IPs against direct connections, kube-proxy's iptables rules and its
//! nftables rules, with 100 to 10,000 services; and the time to program them.
//! `skiff-bench pods`: pod start latency (apply to Ready, p50/p99) against bare
//! `runc create` + `runc start` of the same container, with where skiff's time
//! goes and the agent's memory holding the pods.
//!
//! `skiff-bench cluster`: on a three-node cluster on etcd, the time from losing a
//! node to its replicas Ready elsewhere and the survivors' service maps updated,
//! against Kubernetes' default of about 5 minutes 40 seconds.
//!
//! `skiff-bench mesh`: added latency (p50/p90/p99), proxy CPU per 1,000
//! requests/s and proxy memory of pod-to-pod HTTP through skiff's node proxy
//! (mTLS, HBONE), against the same pods outside the mesh.
//!
//! `skiff-bench scheduler`: pods scheduled per second, 10,000 pods on 1,000
//! simulated nodes: the decision core on its snapshot against a naive scheduler
//! without a cache, and end to end through a real agent; with the memory each takes.

mod agent;
mod api;
mod cluster;
mod cni;
mod dataplane;
mod dns;
mod mesh;
mod netns;
mod pods;
mod scheduler;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The API and store against etcd.
    Api(api::Options),
    /// Node loss on a three-node cluster against Kubernetes' defaults.
    Cluster(cluster::Options),
    /// skiff-cni against the bridge and host-local plugins.
    Cni(cni::Options),
    /// skiff's eBPF service load balancing against iptables and nftables DNAT.
    Dataplane(dataplane::Options),
    /// skiff's cluster DNS against dnsmasq and Knot DNS.
    Dns(dns::Options),
    /// Pod-to-pod HTTP through the mesh's node proxy against the same pods outside it.
    Mesh(mesh::Options),
    /// The mesh benchmark's HTTP server, inside a pod's network namespace.
    #[command(hide = true)]
    MeshServer(mesh::traffic::ServerOptions),
    /// The mesh benchmark's load generator, inside a pod's network namespace.
    #[command(hide = true)]
    MeshClient(mesh::traffic::ClientOptions),
    /// Pod start latency against bare runc.
    Pods(pods::Options),
    /// Pods scheduled per second: skiff's scheduler against a naive one.
    Scheduler(scheduler::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Api(options) => api::run(options).await,
        Bench::Cluster(options) => cluster::run(options).await,
        Bench::Cni(options) => cni::run(options),
        Bench::Dataplane(options) => dataplane::run(options).await,
        Bench::Dns(options) => dns::run(options).await,
        Bench::Mesh(options) => mesh::run(options).await,
        // Each on a runtime of its own, off this one's threads.
        Bench::MeshServer(options) => {
            tokio::task::spawn_blocking(|| mesh::traffic::serve(options)).await?
        }
        Bench::MeshClient(options) => {
            tokio::task::spawn_blocking(|| mesh::traffic::load(options)).await?
        }
        Bench::Pods(options) => pods::run(options).await,
        Bench::Scheduler(options) => scheduler::run(options).await,
    }
}
