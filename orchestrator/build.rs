//! Embeds the eBPF object so the agent runs from any directory. `cargo xtask build`
//! builds the object first and names it in SKIFF_EBPF_OBJECT; a plain `cargo build`
//! after that finds it at its default place.

use std::path::PathBuf;

fn main() {
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
