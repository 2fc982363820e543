//! The `skiff` command: the node agent and, in time, the kubectl-like CLI.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use log::LevelFilter;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A small container orchestrator with an eBPF service network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent in the foreground (root): loads and attaches the eBPF
    /// dataplane, and detaches it again on SIGINT or SIGTERM.
    Agent {
        /// cgroup v2 directory to attach the socket load balancer to
        /// [default: the root of the cgroup v2 hierarchy]
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
        /// Kernel-side eBPF log level: off, error, warn, info, debug or trace
        #[arg(long, value_name = "LEVEL", default_value = "off")]
        ebpf_log: LevelFilter,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent { cgroup, ebpf_log } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                // Kernel-side records carry the eBPF crate's name as their target.
                .filter_module("skiff_ebpf", ebpf_log)
                .init();
            skiff::agent::run(skiff::agent::Config { cgroup, ebpf_log }).await?;
        }
    }
    Ok(())
}
