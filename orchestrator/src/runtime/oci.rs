//! Containers through the OCI runtime (runc) under conmon, the monitor podman and
//! CRI-O use: conmon runs `runc create`, then stays with the container (outliving
//! the agent), writes its output to a CRI-format log file, and records its exit
//! code (and an OOM kill) in files the agent reads, also after a restart.
//!
//! Everything here runs processes and waits for them: call it off the async
//! runtime (the pod worker uses `spawn_blocking`).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{action} of container {id} failed: {message}")]
    Failed {
        action: &'static str,
        id: String,
        message: String,
    },
    #[error("{0}")]
    Io(String),
}

/// The runtime's view of a container (`runc state`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct State {
    pub id: String,
    /// created, running, paused or stopped.
    pub status: String,
    #[serde(default)]
    pub pid: i64,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// How a container ended, from conmon's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub oom_killed: bool,
    pub finished_at: SystemTime,
}

/// What `exec` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub code: Option<i32>,
    pub output: String,
    pub timed_out: bool,
}

/// runc and conmon, with the directories they keep state in.
#[derive(Debug, Clone)]
pub struct Oci {
    pub runc: PathBuf,
    pub conmon: PathBuf,
    /// runc's state (`runc --root`).
    pub root: PathBuf,
    /// Where conmon writes `<id>` with the exit code.
    pub exits: PathBuf,
    /// Per-container conmon directories (its `oom` marker).
    pub persist: PathBuf,
    /// conmon's attach sockets (unused, but conmon needs the directory).
    pub sockets: PathBuf,
}

/// How long `runc create` under conmon may take before the agent gives up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

impl Oci {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            runc: find_binary("runc"),
            conmon: find_binary("conmon"),
            root: state_dir.join("runc"),
            exits: state_dir.join("exits"),
            persist: state_dir.join("conmon"),
            sockets: state_dir.join("sockets"),
        }
    }

    /// `runc create` under a new conmon; returns the container's pid. The
    /// container is created but not started.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        log: &Path,
        log_max_bytes: u64,
    ) -> Result<i64, OciError> {
        let persist = self.persist.join(id);
        for dir in [&self.root, &self.exits, &persist, &self.sockets] {
            std::fs::create_dir_all(dir)
                .map_err(|e| OciError::Io(format!("creating {}: {e}", dir.display())))?;
        }
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| OciError::Io(format!("creating {}: {e}", dir.display())))?;
        }
        // Leftovers of an earlier container with this id would be read as its exit.
        let _ = std::fs::remove_file(self.exits.join(id));
        let (sync_read, sync_write) = pipe()?;
        let mut cmd = Command::new(&self.conmon);
        cmd.args(["--api-version", "1", "-c", id, "-u", id, "-n", id])
            .arg("-r")
            .arg(&self.runc)
            .arg("-b")
            .arg(bundle)
            .arg("-p")
            .arg(bundle.join("pidfile"))
            .arg("-l")
            .arg(format!("k8s-file:{}", log.display()))
            .arg("--log-size-max")
            .arg(log_max_bytes.to_string())
            .arg("--exit-dir")
            .arg(&self.exits)
            .arg("--persist-dir")
            .arg(&persist)
            .arg("--socket-dir-path")
            .arg(&self.sockets)
            .arg("--conmon-pidfile")
            .arg(bundle.join("conmon.pid"))
            .arg("--runtime-arg")
            .arg(format!("--root={}", self.root.display()))
            // conmon reports runc's result on this pipe: {"data": pid} or a negative data and a message.
            .env("_OCI_SYNCPIPE", sync_write.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let write_fd = sync_write.as_raw_fd();
        // SAFETY: only fcntl on an fd opened before fork: let the child inherit it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let flags = libc::fcntl(write_fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(write_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| OciError::Spawn {
            program: self.conmon.display().to_string(),
            source,
        })?;
        drop(sync_write);
        let message = read_with_timeout(sync_read, CREATE_TIMEOUT);
        // conmon's first process exits once the monitor is detached.
        let conmon = child.wait_with_output();
        let failed = |message: String| OciError::Failed {
            action: "creation",
            id: id.to_string(),
            message,
        };
        let report: serde_json::Value = match message {
            Ok(text) if !text.trim().is_empty() => {
                serde_json::from_str(text.lines().next().unwrap_or_default())
                    .map_err(|e| failed(format!("conmon said {text:?}: {e}")))?
            }
            Ok(_) | Err(_) => {
                let stderr = conmon
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                    .unwrap_or_default();
                return Err(failed(format!("conmon reported nothing: {stderr}")));
            }
        };
        match report["data"].as_i64() {
            Some(pid) if pid > 0 => Ok(pid),
            _ => Err(failed(
                report["message"]
                    .as_str()
                    .map(clean_runc_message)
                    .unwrap_or_else(|| report.to_string()),
            )),
        }
    }

    pub fn start(&self, id: &str) -> Result<(), OciError> {
        self.runc_checked("start", &["start", id], id)
    }

    /// Sends `signal` to the container's init; a stopped container is fine.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), OciError> {
        let out = self.runc(&["kill", id, signal])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success()
            || stderr.contains("not running")
            || stderr.contains("does not exist")
        {
            Ok(())
        } else {
            Err(OciError::Failed {
                action: "kill",
                id: id.to_string(),
                message: clean_runc_message(&stderr),
            })
        }
    }

    /// Whether runc has state for `id` (its state directory under `--root`):
    /// checked before spawning runc for a container that may not exist, which on
    /// a busy node costs milliseconds each time.
    pub fn exists(&self, id: &str) -> bool {
        self.root.join(id).join("state.json").exists()
    }

    /// Removes a stopped (or, forced, any) container; an unknown one is fine.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        if !self.exists(id) {
            return Ok(());
        }
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        let out = self.runc(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("does not exist") {
            Ok(())
        } else {
            Err(OciError::Failed {
                action: "deletion",
                id: id.to_string(),
                message: clean_runc_message(&stderr),
            })
        }
    }

    pub fn state(&self, id: &str) -> Result<Option<State>, OciError> {
        if !self.exists(id) {
            return Ok(None);
        }
        let out = self.runc(&["state", id])?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(OciError::Failed {
                action: "state",
                id: id.to_string(),
                message: clean_runc_message(&stderr),
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| OciError::Io(format!("runc state {id}: {e}")))
    }

    /// Every container runc knows, with their annotations.
    pub fn list(&self) -> Result<Vec<State>, OciError> {
        let out = self.runc(&["list", "--format", "json"])?;
        if !out.status.success() {
            return Err(OciError::Io(format!(
                "runc list: {}",
                clean_runc_message(&String::from_utf8_lossy(&out.stderr))
            )));
        }
        let listed: Option<Vec<State>> = serde_json::from_slice(&out.stdout)
            .map_err(|e| OciError::Io(format!("runc list: {e}")))?;
        Ok(listed.unwrap_or_default())
    }

    /// How the container ended, once conmon has recorded it.
    pub fn exit(&self, id: &str) -> Option<Exit> {
        let path = self.exits.join(id);
        let code = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
        let finished_at = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        let oom_killed = self.persist.join(id).join("oom").exists();
        Some(Exit {
            code,
            oom_killed,
            finished_at,
        })
    }

    /// Drops conmon's files of a removed container.
    pub fn forget(&self, id: &str) {
        let _ = std::fs::remove_file(self.exits.join(id));
        let _ = std::fs::remove_dir_all(self.persist.join(id));
    }

    /// The `runc exec` of `argv` in a running container, without stdin and with
    /// its output piped: runc exits with the command's exit code (128 + the
    /// signal that killed it) and passes signals it gets on to the command.
    pub fn exec_command(&self, id: &str, argv: &[String]) -> Command {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root")
            .arg(&self.root)
            .args(["exec", id])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `argv` in a running container (probes), killing it after `timeout`.
    pub fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, OciError> {
        let child = self
            .exec_command(id, argv)
            .spawn()
            .map_err(|source| OciError::Spawn {
                program: self.runc.display().to_string(),
                source,
            })?;
        let pid = child.id();
        // Collected on a thread so a full pipe never blocks the timeout.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(child.wait_with_output()));
        match finished.recv_timeout(timeout) {
            Ok(Ok(out)) => {
                let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
                output.push_str(&String::from_utf8_lossy(&out.stderr));
                Ok(ExecOutput {
                    code: out.status.code(),
                    output,
                    timed_out: false,
                })
            }
            Ok(Err(e)) => Err(OciError::Io(format!("waiting for exec in {id}: {e}"))),
            Err(_) => {
                // SAFETY: signalling the runc exec process we started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let _ = finished.recv();
                Ok(ExecOutput {
                    code: None,
                    output: String::new(),
                    timed_out: true,
                })
            }
        }
    }

    fn runc(&self, args: &[&str]) -> Result<Output, OciError> {
        Command::new(&self.runc)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .map_err(|source| OciError::Spawn {
                program: self.runc.display().to_string(),
                source,
            })
    }

    fn runc_checked(&self, action: &'static str, args: &[&str], id: &str) -> Result<(), OciError> {
        let out = self.runc(args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(OciError::Failed {
                action,
                id: id.to_string(),
                message: clean_runc_message(&String::from_utf8_lossy(&out.stderr)),
            })
        }
    }
}

/// runc's errors arrive as logfmt (`time=... level=error msg="..."`) or prefixed
/// lines; users want the message.
fn clean_runc_message(raw: &str) -> String {
    let line = raw.trim().lines().last().unwrap_or_default();
    match line.split_once("msg=") {
        Some((_, msg)) => msg.trim().trim_matches('"').replace("\\\"", "\""),
        None => line.trim().to_string(),
    }
}

fn find_binary(name: &str) -> PathBuf {
    [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/bin",
        "/usr/libexec/podman",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from(name))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), OciError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own; O_CLOEXEC keeps them from other children.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(OciError::Io(format!(
            "creating a pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: both fds are fresh and owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads conmon's first report from `fd`: one line, within `timeout`. (conmon keeps
/// the pipe open to report the container's exit later, so there is no EOF to wait for.)
fn read_with_timeout(fd: OwnedFd, timeout: Duration) -> std::io::Result<String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut file = std::fs::File::from(fd);
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, millis) } <= 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "conmon did not report in time",
            ));
        }
        match file.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => text.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_messages_are_cleaned() {
        assert_eq!(
            clean_runc_message("time=\"2026\" level=error msg=\"container does not exist\"\n"),
            "container does not exist"
        );
        assert_eq!(clean_runc_message("plain failure\n"), "plain failure");
    }
}
