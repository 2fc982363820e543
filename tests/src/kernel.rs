//! What the kernel says about eBPF programs, asked through bpftool so the tests do not
//! trust skiff's own bookkeeping.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// An eBPF program attached to a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupProgram {
    pub id: u32,
    pub attach_type: String,
    pub name: String,
}

/// The programs attached directly to `cgroup` (not inherited ones).
pub fn cgroup_programs(cgroup: &Path) -> Vec<CgroupProgram> {
    let out = Command::new("bpftool")
        .args(["--json", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool cgroup show {}: {}",
        cgroup.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    listing
        .as_array()
        .expect("bpftool lists an array")
        .iter()
        .map(|p| CgroupProgram {
            id: p["id"].as_u64().expect("id") as u32,
            attach_type: p["attach_type"].as_str().unwrap_or_default().to_string(),
            name: p["name"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// Whether the kernel still has a program with this id loaded.
pub fn program_loaded(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("run bpftool")
        .status
        .success()
}

/// Waits (up to 5 s: the kernel frees programs asynchronously) until none of `ids` is
/// loaded, and fails the test otherwise.
pub fn assert_unloaded(ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids.iter().any(|&id| program_loaded(id)) {
        assert!(Instant::now() < deadline, "programs {ids:?} still loaded");
        std::thread::sleep(Duration::from_millis(50));
    }
}
