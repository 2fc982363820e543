//! A lab for the socket load balancer: a network namespace, a cgroup, and a
//! dataplane attached to that cgroup only, so tests run side by side (and beside a
//! running agent) without seeing each other's services. TCP and UDP backends answer
//! with their names; clients run as processes inside the namespace and cgroup.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use log::LevelFilter;
use skiff::dataplane::{self, Dataplane};

use crate::backend::{NamedBackend, UdpBackend};
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
            nodeport: dataplane::nodeport::Settings::default(),
            socket_netns: vec![netns.path()],
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

    /// UDP backends named `backend-0`.. on `ip` (any free port) in the lab.
    pub fn udp_backends(&self, ip: &str, count: usize) -> Vec<UdpBackend> {
        let bind = SocketAddr::new(ip.parse().expect("backend IP"), 0);
        (0..count)
            .map(|i| UdpBackend::start(&self.netns, &format!("backend-{i}"), bind))
            .collect()
    }

    /// A long-lived client process inside the lab's namespace and cgroup, driven
    /// one command at a time (see skiff-test-sock).
    pub fn client(&self) -> SockClient {
        let mut cmd = self
            .cgroup
            .command_in(&self.netns, workspace_bin("skiff-test-sock"));
        SockClient::spawn(&mut cmd)
    }

    /// The same outside the cgroup: sockets skiff does not balance.
    pub fn client_without_skiff(&self) -> SockClient {
        let mut cmd = self.netns.command(workspace_bin("skiff-test-sock"));
        SockClient::spawn(&mut cmd)
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

/// Runs skiff-test-client as `cmd` (set up in the namespace and cgroup to connect
/// from) for `count` connections to `addr`: one line per connection, the reply or
/// `error <errno>`.
pub fn client_output(cmd: std::process::Command, addr: SocketAddr, count: usize) -> Vec<String> {
    client_output_within(cmd, addr, count, None)
}

/// [`client_output`], giving up on each connect() after `timeout` (`error timeout`).
pub fn client_output_within(
    mut cmd: std::process::Command,
    addr: SocketAddr,
    count: usize,
    timeout: Option<std::time::Duration>,
) -> Vec<String> {
    cmd.arg(addr.to_string()).arg(count.to_string());
    if let Some(timeout) = timeout {
        cmd.arg(timeout.as_millis().to_string());
    }
    let out = cmd.output().expect("run skiff-test-client");
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

/// A skiff-test-sock process; killed on drop.
pub struct SockClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SockClient {
    /// Starts `cmd`, which runs skiff-test-sock (in the namespace and cgroup the
    /// caller chose).
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start skiff-test-sock");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and reads its `lines` lines of output.
    pub fn lines(&mut self, command: &str, lines: usize) -> Vec<String> {
        writeln!(self.stdin, "{command}").expect("write command");
        self.stdin.flush().expect("flush command");
        (0..lines)
            .map(|_| {
                let mut line = String::new();
                let n = self.stdout.read_line(&mut line).expect("read reply");
                assert!(n > 0, "skiff-test-sock ended during {command:?}");
                line.trim_end().to_string()
            })
            .collect()
    }

    /// Sends one command and reads its one line of output.
    pub fn run(&mut self, command: &str) -> String {
        self.lines(command, 1).remove(0)
    }
}

impl Drop for SockClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many times each reply occurred.
pub fn tally(replies: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for reply in replies {
        *counts.entry(reply.clone()).or_insert(0) += 1;
    }
    counts
}
