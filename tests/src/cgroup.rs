//! cgroup v2 directories for tests, and processes started inside them (and inside a
//! network namespace).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::netns::NetNs;
use crate::unique_name;

/// A cgroup v2 directory under the hierarchy's root; removed on drop once its
/// processes have exited.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Self {
        let root = skiff::cgroup::v2_mount_point().expect("cgroup v2 mounted");
        let path = root.join(unique_name("skiff-test"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `program`, set up to start inside `netns` and this cgroup.
    pub fn command_in(&self, netns: &NetNs, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_at(&netns.path(), program)
    }

    /// `program`, set up to start inside the namespace at `netns` (e.g. a pod's)
    /// and this cgroup.
    pub fn command_at(&self, netns: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let mut cmd = crate::netns::command_at(netns, program);
        // SAFETY: only an async-signal-safe system call on an fd opened before fork.
        unsafe {
            cmd.pre_exec(move || {
                // "0" moves the writing process itself.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Exited children leave the cgroup asynchronously; retry briefly.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}
