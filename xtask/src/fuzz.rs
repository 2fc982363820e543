//! `cargo xtask fuzz`: runs a libFuzzer target of the `fuzz/` crate for a bounded
//! time. The crate is laid out as `cargo fuzz` lays one out and links libFuzzer
//! through libfuzzer-sys, as cargo-fuzz does; it is built here with the same
//! coverage instrumentation flags cargo-fuzz passes, on the stable toolchain
//! (without a sanitizer: cargo-fuzz's `-s none`), so no nightly compiler is needed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::Workspace;

/// The host triple: with `--target`, RUSTFLAGS reach only the fuzzed code and not
/// build scripts, which could not link against libFuzzer's hooks.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// cargo-fuzz's instrumentation: libFuzzer's inline 8-bit counters, PC table and
/// comparison tracing, plus `--cfg fuzzing`.
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

pub fn run(ws: &Workspace, ebpf: &Path, target: &str, seconds: u32) -> Result<()> {
    let fuzz_dir = ws.root.join("fuzz");
    let build_dir = ws.target.join("fuzz");
    let started = Instant::now();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", target, "--target", TARGET])
        .current_dir(&fuzz_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", &build_dir)
        .env("SKIFF_EBPF_OBJECT", ebpf)
        .status()
        .context("building the fuzz target")?;
    if !status.success() {
        bail!("building fuzz target {target} failed: {status}");
    }
    eprintln!(
        "[fuzz] {target} built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The corpus grows from run to run; crashes land in artifacts/.
    let corpus = build_dir.join("corpus").join(target);
    let artifacts = build_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let binary = build_dir.join(TARGET).join("release").join(target);
    let status = Command::new(&binary)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg(&corpus)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!(
            "fuzz target {target} found a failure ({status}); the input is in {}",
            artifacts.display()
        );
    }
    eprintln!(
        "[fuzz] {target}: no failure in {seconds} s; corpus in {}",
        corpus.display()
    );
    Ok(())
}
