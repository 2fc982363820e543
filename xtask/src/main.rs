//! `cargo xtask`: provisions a machine, builds the eBPF objects and the binaries,
//! installs the CNI plugin, runs a node, benchmarks and runs every test. The
//! README's two commands live here.

mod build;
mod fuzz;
mod setup;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test skiff")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages and bpf-linker that building and testing need (root).
    Setup,
    /// Build the eBPF object, then the release binaries that embed it.
    Build,
    /// Set up if needed, build, then run `skiff agent` in the foreground (root).
    Run {
        /// Arguments passed on to `skiff agent`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Build, then install skiff-cni and its network for CNI runtimes (root; by
    /// default into /opt/cni/bin and /etc/cni/net.d, for this node's default pod CIDRs).
    Install {
        /// Arguments passed on to `skiff-cni install` (see `skiff-cni install --help`);
        /// any --pod-cidr replaces the default CIDRs.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        install_args: Vec<String>,
    },
    /// Build, then write the busybox test image (from Debian's busybox-static) as an
    /// OCI archive that `skiff image import` takes.
    TestImage {
        /// Where to write the archive [default: busybox.tar in the target directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The image's reference (repository:tag).
        #[arg(long, default_value = "busybox:latest")]
        reference: String,
    },
    /// Run a benchmark side by side with the alternative (root): `api`, `cluster`, `cni`,
    /// `dataplane`, `dns`, `mesh`, `pods`, `scheduler`.
    Bench {
        /// Which benchmark.
        #[arg(value_parser = ["api", "cluster", "cni", "dataplane", "dns", "mesh", "pods", "scheduler"])]
        name: String,
        /// Arguments passed on to the benchmark (see `skiff-bench <name> --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        bench_args: Vec<String>,
    },
    /// Run a libFuzzer target of fuzz/ for a bounded time (e.g. `dns_request`).
    Fuzz {
        /// Which target (a binary of the fuzz crate).
        target: String,
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Set up if needed, build, check formatting and lints, then run every test (root).
    Test {
        /// Arguments passed on to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        test_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let ws = Workspace::locate();
    match cli.command {
        Cmd::Setup => setup::run(&ws),
        Cmd::Build => {
            let ebpf = build::ebpf(&ws)?;
            build::user_space(&ws, &ebpf, build::Profile::Release)
        }
        Cmd::Run { agent_args } => {
            setup::run(&ws)?;
            let ebpf = build::ebpf(&ws)?;
            build::user_space(&ws, &ebpf, build::Profile::Release)?;
            let agent = ws.target.join("release/skiff");
            eprintln!("[run] {} agent {}", agent.display(), agent_args.join(" "));
            // exec, so that Ctrl-C and SIGTERM reach the agent itself.
            let err = Command::new(&agent).arg("agent").args(&agent_args).exec();
            Err(err).with_context(|| format!("exec {}", agent.display()))
        }
        Cmd::Install { install_args } => {
            let ebpf = build::ebpf(&ws)?;
            build::user_space(&ws, &ebpf, build::Profile::Release)?;
            run_checked(
                Command::new(ws.target.join("release/skiff-cni"))
                    .arg("install")
                    .args(with_default_pod_cidrs(install_args)),
            )
        }
        Cmd::TestImage { output, reference } => {
            let output = output.unwrap_or_else(|| ws.target.join("busybox.tar"));
            setup::run(&ws)?;
            let ebpf = build::ebpf(&ws)?;
            build::user_space(&ws, &ebpf, build::Profile::Release)?;
            run_checked(
                Command::new(ws.target.join("release/skiff"))
                    .args(["image", "build-busybox", "--reference", &reference, "-o"])
                    .arg(&output),
            )?;
            eprintln!(
                "[test-image] {reference} written to {}; load it with `skiff image import {}`",
                output.display(),
                output.display()
            );
            Ok(())
        }
        Cmd::Bench { name, bench_args } => {
            setup::run(&ws)?;
            let ebpf = build::ebpf(&ws)?;
            build::user_space(&ws, &ebpf, build::Profile::Release)?;
            let release = ws.target.join("release");
            let mut bench = Command::new(release.join("skiff-bench"));
            bench.arg(&name);
            // Each benchmark is told where the release binary it measures is.
            match name.as_str() {
                "cni" => bench.arg("--skiff-cni").arg(release.join("skiff-cni")),
                // Its agents are the integration tests' harness, which runs the
                // binaries beside skiff-bench.
                "cluster" => &mut bench,
                _ => bench.arg("--skiff").arg(release.join("skiff")),
            };
            run_checked(bench.args(&bench_args))
        }
        Cmd::Fuzz { target, seconds } => {
            let ebpf = build::ebpf(&ws)?;
            fuzz::run(&ws, &ebpf, &target, seconds)
        }
        Cmd::Test { test_args } => {
            setup::run(&ws)?;
            let ebpf = build::ebpf(&ws)?;
            build::lint(&ws, &ebpf)?;
            build::user_space(&ws, &ebpf, build::Profile::Debug)?;
            build::test(&ws, &ebpf, &test_args)
        }
    }
}

/// A single node's pod CIDRs (one /24 and one /64 of the cluster's 10.244.0.0/16
/// and fd00:10:244::/56), unless the arguments name their own.
const DEFAULT_POD_CIDRS: [&str; 2] = ["10.244.0.0/24", "fd00:10:244::/64"];

fn with_default_pod_cidrs(mut args: Vec<String>) -> Vec<String> {
    let named = args
        .iter()
        .any(|a| a == "--pod-cidr" || a.starts_with("--pod-cidr="));
    if !named {
        for cidr in DEFAULT_POD_CIDRS {
            args.extend(["--pod-cidr".to_string(), cidr.to_string()]);
        }
    }
    args
}

/// Where the workspace and its build outputs are.
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
}

impl Workspace {
    fn locate() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        Self { root, target }
    }

    /// Project-local tools (bpf-linker), so nothing is installed into the user's cargo home.
    pub fn tools(&self) -> PathBuf {
        self.target.join("tools")
    }
}

/// Runs a command to completion, failing with the command line when it does not succeed.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn install_gets_the_default_pod_cidrs_unless_it_names_some() {
        assert_eq!(
            with_default_pod_cidrs(strings(&["--force"])),
            strings(&[
                "--force",
                "--pod-cidr",
                "10.244.0.0/24",
                "--pod-cidr",
                "fd00:10:244::/64"
            ])
        );
        for own in [
            strings(&["--pod-cidr", "10.244.3.0/24"]),
            strings(&["--pod-cidr=10.244.3.0/24", "--force"]),
        ] {
            assert_eq!(with_default_pod_cidrs(own.clone()), own);
        }
    }
}
