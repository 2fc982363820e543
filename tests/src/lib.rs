//! Helpers for skiff's integration tests: uniquely named network namespaces and
//! cgroups that clean up after themselves (also when a test panics), processes
//! placed inside them, TCP backends that answer with their name, what the kernel
//! reports (through bpftool) about attached programs, what skiff-cni left, image
//! registries to pull from, and etcd servers.
//!
//! The tests run as root against the real kernel, in parallel, so every resource
//! gets a name no other test (or test run) uses.

pub mod agent;
pub mod backend;
pub mod capture;
pub mod cgroup;
pub mod cluster;
pub mod cni;
pub mod etcd;
pub mod kernel;
pub mod lab;
pub mod mesh;
pub mod netns;
pub mod registry;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A name unique to this process and call, e.g. `skt-4242-7`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A binary of the workspace, built next to the test executables
/// (`cargo xtask test` builds every binary before running the tests), or next to
/// the running binary itself (the benchmarks, in target/release).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let beside = exe.parent().map(|dir| dir.join(name));
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = beside
        .filter(|bin| bin.exists())
        .or_else(|| {
            exe.parent()
                .and_then(|deps| deps.parent())
                .map(|profile| profile.join(name))
        })
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace binaries first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Fails the test early, with a clear reason, when not running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "skiff's integration tests need root (real namespaces, cgroups and eBPF)"
    );
}

/// Polls `sample` (how many replies came from each backend, by name) until exactly
/// the backends `expected` answer, since an agent programs its maps shortly after
/// the store changes; fails after `timeout` with what `what` last gave.
pub fn wait_for_names(
    what: impl Display,
    timeout: Duration,
    expected: &[&str],
    mut sample: impl FnMut() -> BTreeMap<String, usize>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = sample();
        let names: Vec<&str> = seen.keys().map(String::as_str).collect();
        if names == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {seen:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `probe` until it returns Ok, failing the test after `timeout` with
/// `what` and the last Err it gave.
pub fn eventually<T>(
    what: impl Display,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => assert!(Instant::now() < deadline, "{what}: still {last}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
