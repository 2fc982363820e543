//! Build steps of the agent:
//! - embeds the eBPF object so the agent runs from any directory. `cargo xtask build`
//!   builds the object first and names it in SKIFF_EBPF_OBJECT; a plain `cargo build`
//!   after that finds it at its default place;
//! - generates the gRPC API from proto/skiff.proto with protox (a Rust protobuf
//!   compiler), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() {
    ebpf_object();
    if let Err(e) = grpc_api() {
        println!("cargo::error=generating the gRPC API from proto/skiff.proto: {e}");
    }
}

fn ebpf_object() {
    println!("cargo::rerun-if-env-changed=SKIFF_EBPF_OBJECT");
    let object = match std::env::var_os("SKIFF_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/ebpf/bpfel-unknown-none/release/skiff-ebpf")
        }
    };
    if !object.is_file() {
        println!(
            "cargo::error=the eBPF object {} is missing: build it with `cargo xtask build` (after `cargo xtask setup`)",
            object.display()
        );
        return;
    }
    println!("cargo::rerun-if-changed={}", object.display());
    println!("cargo::rustc-env=SKIFF_EBPF_OBJECT={}", object.display());
}

fn grpc_api() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto/skiff.proto");
    let descriptors = protox::compile(["skiff.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
