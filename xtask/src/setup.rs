//! Idempotent provisioning of a Debian host: the verified recipe of
//! shared/TOOLCHAIN.md (Debian's rustc-web for the eBPF side, bpf-linker on LLVM 22)
//! plus the tools the tests drive.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{Workspace, run_checked};

/// Debian packages: the eBPF toolchain, then what tests and the agent use.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "clang-22",
    "libbpf-dev",
    "bpftool",
    "zlib1g-dev",
    "libzstd-dev",
    "libxml2-dev",
    "iproute2",
    "iputils-ping",
    // etcd: the store the API benchmark compares with (and a later multi-node
    // backend); protoc: the etcd client crate compiles etcd's protos with it.
    "etcd-server",
    "protobuf-compiler",
    // Pods and the CNI tests: an OCI runtime, a static busybox for test images,
    // the standard CNI plugins to chain after skiff-cni (portmap needs iptables),
    // and podman as a third-party CNI runtime.
    "runc",
    "conmon",
    "busybox-static",
    "containernetworking-plugins",
    "iptables",
    "podman",
    // The dataplane benchmark: kube-proxy's nftables mode (nft), and conntrack to
    // empty the connection tracking table between rounds.
    "nftables",
    "conntrack",
    // Image pulls: a real registry for the tests to pull from, and a client that
    // pushes the test images into it.
    "docker-registry",
    "skopeo",
    // Cluster DNS: dig for the tests, and the DNS benchmark's load generator and
    // the servers it compares with.
    "dnsutils",
    "dnsperf",
    "dnsmasq-base",
    "knot",
    // The mesh tests: a packet capture on loopback shows that tunnelled bytes are
    // never in plaintext.
    "tcpdump",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run(ws: &Workspace) -> Result<()> {
    preflight()?;
    let started = Instant::now();
    apt_packages()?;
    bpf_linker(ws)?;
    eprintln!("[setup] done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What setup needs to know about the host before touching it.
struct Host {
    linux: bool,
    euid: u32,
    btf: bool,
    apt: bool,
}

impl Host {
    fn this() -> Self {
        Self {
            linux: cfg!(target_os = "linux"),
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            apt: Path::new("/usr/bin/apt-get").exists(),
        }
    }
}

fn preflight() -> Result<()> {
    check_host(&Host::this())
}

fn check_host(host: &Host) -> Result<()> {
    if !host.linux {
        bail!("skiff needs a Linux host (eBPF, cgroup v2, network namespaces)");
    }
    if host.euid != 0 {
        bail!(
            "`cargo xtask setup` must run as root (euid is {}): it installs Debian packages, and skiff loads eBPF programs",
            host.euid
        );
    }
    if !host.btf {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): skiff's eBPF programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    if !host.apt {
        bail!(
            "setup provisions Debian hosts (apt-get not found); install the packages of shared/TOOLCHAIN.md by hand on other distributions"
        );
    }
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        eprintln!(
            "[setup] apt packages: all {} present, skipped",
            PACKAGES.len()
        );
        return Ok(());
    }
    eprintln!("[setup] apt packages: installing {}", missing.join(" "));
    let started = Instant::now();
    let apt = |args: &[&str]| {
        run_checked(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["-q", "update"])?;
    let mut install = vec!["-q", "install", "-y", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt(&install)?;
    eprintln!(
        "[setup] apt packages: installed {} in {:.1}s",
        missing.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn missing_packages() -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(PACKAGES)
        .output()
        .context("failed to run dpkg-query")?;
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the rest.
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(PACKAGES
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| p.to_string())
        .collect())
}

fn bpf_linker(ws: &Workspace) -> Result<()> {
    let tools = ws.tools();
    let linker = tools.join("bin/bpf-linker");
    let version = Command::new(&linker).arg("--version").output();
    if let Ok(out) = version
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        eprintln!(
            "[setup] bpf-linker {BPF_LINKER_VERSION}: present in {}, skipped",
            tools.display()
        );
        return Ok(());
    }
    eprintln!(
        "[setup] bpf-linker {BPF_LINKER_VERSION}: building against LLVM 22 into {}",
        tools.display()
    );
    let started = Instant::now();
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_checked(
        Command::new(cargo)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            // 0.13's default feature is llvm-23, which Debian bookworm does not ship.
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(&tools)
            .env("PATH", path)
            .env("CARGO_TARGET_DIR", tools.join("build")),
    )?;
    eprintln!(
        "[setup] bpf-linker: built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: Host = Host {
        linux: true,
        euid: 0,
        btf: true,
        apt: true,
    };

    #[test]
    fn a_debian_root_host_with_btf_passes() {
        assert!(check_host(&GOOD).is_ok());
    }

    #[test]
    fn each_missing_requirement_is_named() {
        let cases = [
            (
                Host {
                    linux: false,
                    ..GOOD
                },
                "needs a Linux host",
            ),
            (
                Host { euid: 1000, ..GOOD },
                "must run as root (euid is 1000)",
            ),
            (
                Host { btf: false, ..GOOD },
                "/sys/kernel/btf/vmlinux is missing",
            ),
            (Host { apt: false, ..GOOD }, "apt-get not found"),
        ];
        for (host, expected) in cases {
            let err = check_host(&host).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}
