//! Network namespaces made with iproute2 (`ip netns add`), so they are visible to
//! `ip netns` while a test runs and removed when the guard drops.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::unique_name;

/// A named network namespace with its loopback up; deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> Self {
        let name = unique_name("skt");
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NAME args...` (links, addresses, routes in this namespace),
    /// failing the test with iproute2's message when it fails.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `program`, set up to start inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_at(&self.path(), program)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there stay
    /// in the namespace when used from other threads.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        run_at(&self.path(), f)
    }
}

/// Runs `f` on a thread that has entered the network namespace at `path`.
pub fn run_at<R: Send>(path: &Path, f: impl FnOnce() -> R + Send) -> R {
    let file = File::open(path).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only; the fd is a network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// A veth pair: `a_if` in `a`, `b_if` in `b`, both up, with addresses.
pub fn veth(a: &NetNs, a_if: &str, a_addrs: &[&str], b: &NetNs, b_if: &str, b_addrs: &[&str]) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (netns, device, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            // No duplicate address detection: IPv6 addresses work at once.
            let mut args = vec!["addr", "add", addr, "dev", device];
            if addr.contains(':') {
                args.push("nodad");
            }
            netns.ip(&args);
        }
        netns.ip(&["link", "set", device, "up"]);
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `program`, set up to start inside the network namespace at `path` (one this
/// guard does not own, such as a pod's).
pub fn command_at(path: &Path, program: impl AsRef<OsStr>) -> Command {
    let ns = File::open(path).expect("open netns");
    let mut cmd = Command::new(program);
    // SAFETY: only an async-signal-safe system call on an fd opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run ip");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
