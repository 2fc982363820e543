//! Builds: the eBPF object with Debian's compiler (the rustup toolchains here have no
//! `rust-src` for build-std), then the user-space workspace with the rustup toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::{Workspace, run_checked};

/// Debian's rustc-web: its standard library sources (rust-web-src) match it exactly.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

/// Builds the eBPF programs crate and returns the path of the object; an object
/// already named in SKIFF_EBPF_OBJECT (as the agent's build script takes it) is
/// used as it is, unbuilt.
pub fn ebpf(ws: &Workspace) -> Result<PathBuf> {
    if let Some(object) = std::env::var_os("SKIFF_EBPF_OBJECT").map(PathBuf::from) {
        if !object.is_file() {
            bail!(
                "SKIFF_EBPF_OBJECT names {}, which is not a file",
                object.display()
            );
        }
        eprintln!(
            "[build] eBPF object {} (SKIFF_EBPF_OBJECT), not rebuilt",
            object.display()
        );
        return Ok(object);
    }
    if !Path::new(DEBIAN_RUSTC).exists() {
        bail!("{DEBIAN_RUSTC} is missing: run `cargo xtask setup` (as root) first");
    }
    let tools_bin = ws.tools().join("bin");
    if !tools_bin.join("bpf-linker").exists() {
        bail!(
            "bpf-linker is missing from {}: run `cargo xtask setup` (as root) first",
            tools_bin.display()
        );
    }
    let started = Instant::now();
    let target_dir = ws.target.join("ebpf");
    let path = format!(
        "{}:{}",
        tools_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.args(["build", "--release"])
        .current_dir(ws.root.join("ebpf/programs"))
        .env("PATH", path)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env("CARGO_TARGET_DIR", &target_dir);
    // What the outer (rustup) cargo exported must not steer Debian's cargo.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    run_checked(&mut cmd)?;
    let object = target_dir.join("bpfel-unknown-none/release/skiff-ebpf");
    if !object.exists() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    eprintln!(
        "[build] eBPF object {} in {:.1}s",
        object.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(object)
}

/// The host cargo that ran xtask, with the eBPF object handed to the agent's build script.
fn cargo(ebpf: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.env("SKIFF_EBPF_OBJECT", ebpf);
    cmd
}

/// Builds every binary of the workspace.
pub fn user_space(ws: &Workspace, ebpf: &Path, profile: Profile) -> Result<()> {
    let started = Instant::now();
    let mut cmd = cargo(ebpf);
    cmd.current_dir(&ws.root)
        .args(["build", "--workspace", "--bins"]);
    if let Profile::Release = profile {
        cmd.arg("--release");
    }
    run_checked(&mut cmd)?;
    eprintln!(
        "[build] user space in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Formatting of every workspace, and clippy with warnings denied.
pub fn lint(ws: &Workspace, ebpf: &Path) -> Result<()> {
    let started = Instant::now();
    run_checked(
        cargo(ebpf)
            .current_dir(&ws.root)
            .args(["fmt", "--all", "--check"]),
    )?;
    // The workspaces of their own: the eBPF programs and the fuzz targets.
    for dir in ["ebpf/programs", "fuzz"] {
        run_checked(
            cargo(ebpf)
                .current_dir(ws.root.join(dir))
                .args(["fmt", "--check"]),
        )?;
    }
    run_checked(cargo(ebpf).current_dir(&ws.root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!(
        "[lint] fmt and clippy in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every unit and integration test of the workspace.
pub fn test(ws: &Workspace, ebpf: &Path, args: &[String]) -> Result<()> {
    let started = Instant::now();
    run_checked(
        cargo(ebpf)
            .current_dir(&ws.root)
            .args(["test", "--workspace", "--"])
            .args(args),
    )?;
    eprintln!("[test] passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
