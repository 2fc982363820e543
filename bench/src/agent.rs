//! A `skiff agent` for a benchmark: its own state directory, socket and cgroup,
//! killed and cleaned up on drop when a run fails half way.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use skiff::api::client::{ApiClient, Connection, connect};

pub struct Agent {
    pub client: ApiClient,
    process: Process,
}

/// The process and what it was given, cleaned up on drop.
struct Process {
    child: Child,
    cgroup: PathBuf,
    state: tempfile::TempDir,
}

impl Agent {
    /// An agent serving the API only, logging `log_filter` (RUST_LOG syntax).
    pub async fn start(binary: &Path, log_filter: &str) -> Result<Self> {
        let mut command = Command::new(binary);
        let state = tempfile::Builder::new().prefix("skiff-bench-").tempdir()?;
        let cgroup = skiff::cgroup::v2_mount_point()?.join(
            state
                .path()
                .file_name()
                .context("a temporary directory without a name")?,
        );
        std::fs::create_dir_all(&cgroup)?;
        let socket = state.path().join("skiff.sock");
        command
            .args(["agent", "--state-dir"])
            .arg(state.path())
            .arg("--socket")
            .arg(&socket)
            .arg("--cgroup")
            .arg(&cgroup)
            .arg("--log-dir")
            .arg(state.path().join("logs"))
            .env("RUST_LOG", log_filter)
            .stderr(Stdio::piped());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir(&cgroup);
                return Err(e).context("starting skiff agent");
            }
        };
        let mut process = Process {
            child,
            cgroup,
            state,
        };
        let stderr = process.child.stderr.take().context("agent stderr")?;
        // The thread also keeps the pipe from filling up.
        let (ready_sender, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_sender = Some(ready_sender);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("skiff agent ready")
                    && let Some(ready) = ready_sender.take()
                {
                    let _ = ready.send(());
                }
            }
        });
        if ready.recv().is_err() {
            bail!("the agent exited before it was ready");
        }
        let token = std::fs::read_to_string(process.state.path().join("token"))?;
        let client = connect(&Connection {
            server: format!("unix://{}", socket.display()),
            token: token.trim().to_string(),
            ca_cert: None,
        })
        .await?;
        Ok(Self { client, process })
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Stops the agent as an operator would (SIGTERM).
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.process.child.wait()?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Still running only when the benchmark failed.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}
