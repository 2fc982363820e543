//! A lab for the socket load balancer: a network namespace, a cgroup, and a
//! dataplane attached to that cgroup only, so tests run side by side (and beside a
//! running agent) without seeing each other's services.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use log::LevelFilter;
use skiff::dataplane::{self, Dataplane};

use crate::backend::NamedBackend;
use crate::cgroup::Cgroup;
use crate::netns::NetNs;
use crate::{require_root, workspace_bin};

pub struct Lab {
    // Fields drop in this order: detach before removing the cgroup and namespace.
    pub dataplane: Dataplane,
    pub cgroup: Cgroup,
    pub netns: NetNs,
}

impl Lab {
    pub fn new() -> Self {
        Self::with_ebpf_log(LevelFilter::Off)
    }

    pub fn with_ebpf_log(ebpf_log: LevelFilter) -> Self {
        require_root();
        let netns = NetNs::new();
        let cgroup = Cgroup::new();
        let dataplane = Dataplane::load(&dataplane::Config {
            cgroup: cgroup.path().to_path_buf(),
            ebpf_log,
            pin_dir: None,
            capacity: dataplane::Capacity::default(),
        })
        .expect("load and attach the dataplane");
        Self {
            dataplane,
            cgroup,
            netns,
        }
    }

    /// Backends named `backend-0`.. listening on `ip` (any free port) in the lab.
    pub fn backends(&self, ip: &str, count: usize) -> Vec<NamedBackend> {
        let bind = SocketAddr::new(ip.parse().expect("backend IP"), 0);
        (0..count)
            .map(|i| NamedBackend::start(&self.netns, &format!("backend-{i}"), bind))
            .collect()
    }

    /// Connects `count` times to `addr` from a process inside the lab's namespace and
    /// cgroup; one line per attempt (see skiff-test-client).
    pub fn connect(&self, addr: SocketAddr, count: usize) -> Vec<String> {
        let cmd = self
            .cgroup
            .command_in(&self.netns, workspace_bin("skiff-test-client"));
        client_output(cmd, addr, count)
    }

    /// The same from a process in the namespace but outside the cgroup: what a
    /// connection does without skiff.
    pub fn connect_without_skiff(&self, addr: SocketAddr, count: usize) -> Vec<String> {
        let cmd = self.netns.command(workspace_bin("skiff-test-client"));
        client_output(cmd, addr, count)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

fn client_output(mut cmd: std::process::Command, addr: SocketAddr, count: usize) -> Vec<String> {
    let out = cmd
        .arg(addr.to_string())
        .arg(count.to_string())
        .output()
        .expect("run skiff-test-client");
    assert!(
        out.status.success(),
        "skiff-test-client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many times each reply occurred.
pub fn tally(replies: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for reply in replies {
        *counts.entry(reply.clone()).or_insert(0) += 1;
    }
    counts
}
