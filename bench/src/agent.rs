//! A `skiff agent` for a benchmark: its own state directory, socket and cgroup,
//! killed and cleaned up on drop when a run fails half way. As a node (running
//! pods) it lives in a network namespace of its own, so its CNI routes and
//! forwarding sysctls stay there.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use skiff::api::client::{ApiClient, Connection, connect};

use crate::netns::Netns;

/// The node name of agents started with [`Agent::start_node`].
pub const NODE_NAME: &str = "bench-node";

pub struct Agent {
    pub client: ApiClient,
    /// The agent's log lines after "ready", each with when it arrived.
    pub log: Receiver<(Instant, String)>,
    process: Process,
}

/// The process and what it was given, cleaned up on drop.
struct Process {
    child: Child,
    cgroup: PathBuf,
    /// Only for nodes; dropped after the agent and its pods are gone.
    netns: Option<Netns>,
    state: tempfile::TempDir,
}

impl Agent {
    /// An agent serving the API only, logging `log_filter` (RUST_LOG syntax), with
    /// `args` added to its command line.
    pub async fn start(binary: &Path, log_filter: &str, args: &[&str]) -> Result<Self> {
        Self::start_in(Command::new(binary), None, args, log_filter).await
    }

    /// An agent that runs pods bound to [`NODE_NAME`], in a network namespace of
    /// its own, logging `log_filter`.
    pub async fn start_node(binary: &Path, log_filter: &str) -> Result<Self> {
        let netns = Netns::create()?;
        let lo = Command::new("ip")
            .args(["-n", netns.name(), "link", "set", "lo", "up"])
            .status()?;
        if !lo.success() {
            bail!("ip link set lo up in {} failed: {lo}", netns.name());
        }
        let command = netns.command(binary)?;
        Self::start_in(
            command,
            Some(netns),
            &["--node-name", NODE_NAME],
            log_filter,
        )
        .await
    }

    async fn start_in(
        mut command: Command,
        netns: Option<Netns>,
        args: &[&str],
        log_filter: &str,
    ) -> Result<Self> {
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
            // Any free port, so that agents never meet on the default one.
            .args(["--metrics-addr", "127.0.0.1:0"])
            // The dataplane goes with the process, even when the run fails and it
            // is killed: nothing pinned in bpffs to clean up.
            .arg("--no-bpf-pin")
            // The benches measure pods and the socket path; tc programs on the
            // host's own device would only touch the machine's other traffic.
            .arg("--no-nodeport")
            .args(args)
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
            netns,
            state,
        };
        let stderr = process.child.stderr.take().context("agent stderr")?;
        // Lines are stamped as they arrive, so a benchmark can tell when the agent
        // reached a step; the thread also keeps the pipe from filling up.
        let (sender, log) = mpsc::channel();
        let (ready_sender, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_sender = Some(ready_sender);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if ready_sender.is_some() {
                    if line.contains("skiff agent ready")
                        && let Some(ready) = ready_sender.take()
                    {
                        let _ = ready.send(());
                    }
                } else if sender.send((Instant::now(), line)).is_err() {
                    break;
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
        Ok(Self {
            client,
            log,
            process,
        })
    }

    /// Applies `objects` in one Apply call, all or nothing.
    pub async fn apply(&mut self, objects: &[serde_json::Value]) -> Result<()> {
        let objects = objects
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()?;
        self.client
            .apply(skiff::api::proto::ApplyRequest { objects })
            .await
            .context("Apply")?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn state_dir(&self) -> &Path {
        self.process.state.path()
    }

    /// The cgroup its dataplane is attached to: only processes in it have their
    /// connections balanced (and, in enrolled pods, captured for the mesh).
    pub fn cgroup(&self) -> &Path {
        &self.process.cgroup
    }

    /// Where a node agent pins the network namespace of its pod `uid`.
    pub fn pod_netns(&self, uid: &str) -> PathBuf {
        node_paths(self.state_dir()).netns(uid)
    }

    /// Stops the agent as an operator would (SIGTERM). A node's pods keep running:
    /// delete them first.
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
        if self.netns.is_some() {
            remove_pods(self.state.path());
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Pods outlive their agent by design (a restarted agent adopts them), so what a
/// failed run left is removed here: containers, overlay and volume mounts,
/// network namespaces and cgroups. After a clean run there is nothing to remove.
fn remove_pods(state: &Path) {
    let oci = skiff::runtime::oci::Oci::new(state);
    for container in oci.list().unwrap_or_default() {
        let _ = oci.delete(&container.id, true);
    }
    let paths = node_paths(state);
    let pods = std::fs::read_dir(&paths.pods)
        .into_iter()
        .flatten()
        .flatten();
    for pod in pods {
        let uid = pod.file_name().to_string_lossy().into_owned();
        let attempts = std::fs::read_dir(pod.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten();
        for attempt in attempts {
            let _ = skiff::runtime::rootfs::unmount(&attempt.path());
        }
        let _ = skiff::runtime::volumes::teardown(&paths, &uid);
        let _ = skiff::runtime::netns::remove(&paths.netns(&uid));
        skiff::cgroup::remove_everywhere(&paths.pod_cgroup(&uid));
    }
}

/// Where a node agent with state directory `state` keeps its pods' things.
fn node_paths(state: &Path) -> skiff::runtime::paths::Paths {
    skiff::runtime::paths::Paths {
        pods: state.join("pods"),
        netns: PathBuf::from("/run/netns"),
        logs: state.join("logs"),
        cgroup_parent: "/skiff".into(),
    }
}
