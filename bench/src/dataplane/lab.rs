//! The benchmark's own network namespaces and cgroups: uniquely named (the process
//! id is in every name), and removed by their guards when dropped, also when the
//! benchmark fails or panics. Everything the load balancers are given (rules,
//! routes, addresses) lives inside these namespaces, so the host's own rule sets
//! are never touched.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A unique name for something this process makes.
fn unique(tag: &str) -> String {
    format!("skiff-dpbench-{}-{tag}", std::process::id())
}

/// A network namespace with loopback up, deleted on drop.
pub struct Netns {
    name: String,
    /// Open while the namespace is used: threads and children enter it through this.
    file: File,
}

impl Netns {
    pub fn create(tag: &str) -> Result<Self> {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let path = Path::new("/run/netns").join(&name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                // Not yet a Netns, so nothing else deletes it.
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                return Err(e).with_context(|| format!("opening {}", path.display()));
            }
        };
        let netns = Self { name, file };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this namespace> args`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `program`, set up to start inside this namespace and, when given, `cgroup`.
    pub fn command(&self, program: impl AsRef<OsStr>, cgroup: Option<&Cgroup>) -> Result<Command> {
        let netns = self.file.try_clone().context("duplicating the netns fd")?;
        crate::netns::command_in(netns, cgroup.map(Cgroup::path), program)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets made there stay
    /// in the namespace when used from other threads.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread only; fd is a network namespace that
                // stays open (self.file) for the whole scope.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in netns {} panicked", self.name))?
        })
    }

    /// Runs `program args` in this namespace with `input` on stdin; returns how long
    /// it took from spawn to exit.
    pub fn timed(&self, program: &str, args: &[&str], input: &[u8]) -> Result<Duration> {
        let mut cmd = self.command(program, None)?;
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        // Written from a thread, so a program that fails early (and stops reading)
        // cannot leave us blocked on a full pipe.
        let out = std::thread::scope(|s| {
            let writer = s.spawn(move || stdin.write_all(input));
            let out = child.wait_with_output();
            let _ = writer.join();
            out
        })?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {} failed ({}): {}",
                self.name,
                out.status,
                tail(&out.stderr)
            );
        }
        Ok(took)
    }

    /// Empties this namespace's connection tracking table.
    pub fn flush_conntrack(&self) -> Result<()> {
        run(self.command("conntrack", None)?.arg("-F"))
    }

    /// Removes every nftables table here (iptables-nft's included), so that the
    /// kernel's work of freeing a large rule set is done now, not in the background
    /// of a later measurement.
    pub fn flush_ruleset(&self) -> Result<()> {
        run(self.command("nft", None)?.args(["flush", "ruleset"]))
    }

    /// TCP sockets in TIME_WAIT in this namespace.
    pub fn time_wait(&self) -> Result<u64> {
        let sockstat = self.run(|| std::fs::read_to_string("/proc/thread-self/net/sockstat"))??;
        sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP: "))
            .and_then(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let at = fields.iter().position(|f| *f == "tw")?;
                fields.get(at + 1)?.parse().ok()
            })
            .context("no TCP tw count in sockstat")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory right under the hierarchy's root; removed on drop once
/// its processes have exited.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn create(tag: &str) -> Result<Self> {
        let root = skiff::cgroup::v2_mount_point().context("finding the cgroup v2 hierarchy")?;
        let path = root.join(unique(tag));
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
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

/// Runs a command to completion, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, tail(&out.stderr));
    }
    Ok(())
}

/// The end of a program's error output (a failed restore of 100,000 rules can
/// print a lot).
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.len().saturating_sub(2_000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}
