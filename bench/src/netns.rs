//! Network namespaces made for a benchmark with iproute2 (`ip netns add`, so
//! `ip netns` shows them while it runs), and processes started inside them (or
//! inside a pod's namespace, and a cgroup).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// A network namespace, deleted (with every interface in it) on drop.
pub struct Netns {
    name: String,
    /// Open for as long as the namespace is used: processes enter it through this.
    file: File,
}

impl Netns {
    pub fn create() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "skiff-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .context("running ip netns add")?;
        if !status.success() {
            bail!("ip netns add {name} failed: {status}");
        }
        let path = Path::new("/run/netns").join(&name);
        match File::open(&path) {
            Ok(file) => Ok(Self { name, file }),
            Err(e) => {
                // Not yet a Netns, so nothing else deletes it.
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                Err(e).with_context(|| format!("opening {}", path.display()))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `program`, set up to start inside this namespace. (Not `ip netns exec`: it
    /// remounts /sys for the child, and runc started below it then fails.)
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        // The closure owns its own handle, so the Command may outlive self.
        let netns = self.file.try_clone().context("duplicating a netns fd")?;
        command_in(netns, None, program)
    }
}

/// `program`, set up to start inside the network namespace at `netns` (a pod's,
/// where its agent pinned it) and, when given, the cgroup v2 directory `cgroup`.
pub fn command_at(
    netns: &Path,
    cgroup: Option<&Path>,
    program: impl AsRef<std::ffi::OsStr>,
) -> Result<Command> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    command_in(file, cgroup, program)
}

pub(crate) fn command_in(
    netns: File,
    cgroup: Option<&Path>,
    program: impl AsRef<std::ffi::OsStr>,
) -> Result<Command> {
    let procs = cgroup
        .map(|cgroup| {
            let path = cgroup.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))
        })
        .transpose()?;
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe system calls, on fds opened before fork and
    // moved into the closure (so open until exec).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // "0" moves the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A loopback port free for both TCP and UDP when asked (another process may take
/// it before the caller binds it; the benchmarks run alone).
pub fn free_port() -> Result<u16> {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}
