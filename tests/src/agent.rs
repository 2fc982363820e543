//! A real `skiff agent` process for a test: its own state directory, socket and
//! cgroup, so agents of parallel tests never meet; killed on drop if a test fails
//! before stopping it. The CLI is run against it as a user would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;
use crate::{require_root, workspace_bin};

const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Agent {
    // Fields drop in order: the agent, then what its pods left, then the rest.
    child: KillOnDrop,
    _leftovers: PodLeftovers,
    /// The dataplane's bpffs pins (they outlive a killed agent).
    pins: Option<PinDir>,
    /// The node namespace the agent runs in, for agents that run pods (their
    /// CNI routes and forwarding sysctls stay there).
    pub node_netns: Option<crate::netns::NetNs>,
    lines: Receiver<String>,
    /// What the agent logged so far.
    pub log: Vec<String>,
    /// Program ids it reported attaching.
    pub program_ids: Vec<u32>,
    // Dropped after the process is gone.
    pub cgroup: Cgroup,
    state: tempfile::TempDir,
    extra_args: Vec<String>,
    /// Whether the dataplane attaches to `cgroup` (else to the agent's default).
    in_test_cgroup: bool,
}

impl Agent {
    /// Starts an agent with a fresh state directory, its dataplane attached to a
    /// cgroup of its own, and waits until it is ready.
    pub fn start(extra_args: &[&str]) -> Agent {
        Self::start_fresh(extra_args, true)
    }

    /// The same, with the dataplane where the agent puts it by default.
    pub fn start_with_default_cgroup(extra_args: &[&str]) -> Agent {
        Self::start_fresh(extra_args, false)
    }

    fn start_fresh(extra_args: &[&str], in_test_cgroup: bool) -> Agent {
        require_root();
        let state = tempfile::Builder::new()
            .prefix("skiff-test-state-")
            .tempdir()
            .expect("state dir");
        let args = extra_args.iter().map(|a| a.to_string()).collect();
        let pins = PinDir::for_state(state.path());
        Self::start_in(state, Cgroup::new(), args, in_test_cgroup, None, pins)
    }

    /// An agent that runs pods: inside a node network namespace of its own, named
    /// `test-node`, with its logs in its state directory, and the busybox test
    /// image imported (as busybox:latest and busybox:1.36).
    pub fn start_node(extra_args: &[&str]) -> Agent {
        Self::start_node_with(extra_args, |_| {})
    }

    /// Like [`Agent::start_node`], running `prepare` on the node namespace before
    /// the agent starts (devices and addresses the agent should find there).
    pub fn start_node_with(
        extra_args: &[&str],
        prepare: impl FnOnce(&crate::netns::NetNs),
    ) -> Agent {
        Self::start_node_named(NODE_NAME, extra_args, prepare)
    }

    /// Like [`Agent::start_node_with`], for the node called `name` (one of several
    /// nodes of a cluster).
    pub fn start_node_named(
        name: &str,
        extra_args: &[&str],
        prepare: impl FnOnce(&crate::netns::NetNs),
    ) -> Agent {
        require_root();
        let state = tempfile::Builder::new()
            .prefix("skiff-test-node-")
            .tempdir()
            .expect("state dir");
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            name.into(),
            "--log-dir".into(),
            state.path().join("logs").display().to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let netns = crate::netns::NetNs::new();
        prepare(&netns);
        let pins = PinDir::for_state(state.path());
        let agent = Self::start_in(state, Cgroup::new(), args, true, Some(netns), pins);
        for reference in ["busybox:latest", "busybox:1.36"] {
            agent.ok(&[
                "image",
                "import",
                busybox_archive(reference).to_str().expect("utf-8"),
            ]);
        }
        agent
    }

    fn start_in(
        state: tempfile::TempDir,
        cgroup: Cgroup,
        extra_args: Vec<String>,
        in_test_cgroup: bool,
        node_netns: Option<crate::netns::NetNs>,
        pins: PinDir,
    ) -> Agent {
        let mut command = match &node_netns {
            Some(netns) => netns.command(workspace_bin("skiff")),
            None => Command::new(workspace_bin("skiff")),
        };
        command
            .arg("agent")
            .arg("--state-dir")
            .arg(state.path())
            .arg("--socket")
            .arg(state.path().join("skiff.sock"));
        if in_test_cgroup {
            command.arg("--cgroup").arg(cgroup.path());
        }
        if !extra_args.iter().any(|a| a == "--metrics-addr") {
            command.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        // Cluster DNS on a free loopback port: the default (port 53 on the pods'
        // gateway) would be one address for every agent in the host namespace.
        if !extra_args.iter().any(|a| a == "--dns-addr") {
            command.args(["--dns-addr", "127.0.0.1:0"]);
        }
        if !extra_args.iter().any(|a| a == "--no-bpf-pin") {
            command.arg("--bpf-pin-dir").arg(&pins.0);
        }
        // The NodePort tc programs only where a test asks for them: by default the
        // agent would attach them to the default route's device (the host's own).
        if !extra_args
            .iter()
            .any(|a| a.starts_with("--nodeport-device") || a == "--no-nodeport")
        {
            command.arg("--no-nodeport");
        }
        let mut child = command
            .args(&extra_args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skiff agent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Agents outside a node namespace run pods too (their links then end in
        // the root namespace): every agent's are removed.
        let leftovers = PodLeftovers {
            state: Some(state.path().to_path_buf()),
        };
        let mut agent = Agent {
            child: KillOnDrop(child),
            _leftovers: leftovers,
            pins: Some(pins),
            node_netns,
            lines,
            log: Vec::new(),
            program_ids: Vec::new(),
            cgroup,
            state,
            extra_args,
            in_test_cgroup,
        };
        agent.wait_for_line("skiff agent ready");
        agent.program_ids = agent
            .log
            .iter()
            .filter_map(|l| {
                l.split("(program id ")
                    .nth(1)?
                    .split(')')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        agent
    }

    /// Kills the agent with SIGKILL and starts a new one on the same state.
    pub fn kill_and_restart(self) -> Agent {
        self.kill_and_restart_after(|_| {})
    }

    /// Like [`Agent::kill_and_restart`], running `while_down` between the two.
    pub fn kill_and_restart_after(mut self, while_down: impl FnOnce(&Agent)) -> Agent {
        self.signal(libc::SIGKILL);
        self.wait();
        while_down(&self);
        let Agent {
            state,
            cgroup,
            extra_args,
            in_test_cgroup,
            node_netns,
            _leftovers: mut leftovers,
            mut pins,
            ..
        } = self;
        // The pods stay for the new agent to adopt; its own guard takes over.
        leftovers.state = None;
        let pins = pins.take().expect("an agent holds its pin directory");
        Self::start_in(state, cgroup, extra_args, in_test_cgroup, node_netns, pins)
    }

    /// The agent's `GET /metrics` body (asked from its namespace).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr: std::net::SocketAddr = self
            .log
            .iter()
            .find_map(|l| l.split("metrics on http://").nth(1))
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .expect("the agent logs its metrics address");
        let fetch = || -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: skiff\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        };
        let response = match &self.node_netns {
            Some(netns) => netns.run(fetch),
            None => fetch(),
        }
        .expect("GET /metrics");
        assert!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "{response}"
        );
        response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// The addresses the agent serves cluster DNS on, as it logged them.
    pub fn dns_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.log
            .iter()
            .filter_map(|l| l.split("cluster DNS on udp+tcp ").nth(1))
            .filter_map(|addr| addr.trim().parse().ok())
            .collect()
    }

    /// Where the agent pins its dataplane in bpffs.
    pub fn pin_dir(&self) -> &Path {
        &self
            .pins
            .as_ref()
            .expect("an agent holds its pin directory")
            .0
    }

    /// Applies a manifest from a string; fails the test if apply fails.
    pub fn apply(&self, manifest: &str) -> String {
        let out = self.cli_with_stdin(&["apply", "-f", "-"], manifest.as_bytes());
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An object as JSON (None when it does not exist).
    pub fn object(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["get", kind, name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("JSON output"))
    }

    /// The Lease of node `node` in `kube-node-lease`, its heartbeat (None when
    /// it does not exist).
    pub fn node_lease(&self, node: &str) -> Option<serde_json::Value> {
        let out = self.cli(&["get", "lease", node, "-n", "kube-node-lease", "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("JSON output"))
    }

    /// The objects of `kind` whose labels match `selector` (e.g. `app=web`).
    pub fn list(&self, kind: &str, selector: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["get", kind, "-l", selector, "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
        match list["kind"].as_str() {
            Some("List") => list["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![list],
        }
    }

    /// Polls a pod until `until` holds for it (None: the pod is gone), failing the
    /// test after `timeout` with the pod's last state.
    pub fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        until: impl Fn(Option<&serde_json::Value>) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let pod = self.object("pod", name);
            if until(pod.as_ref()) {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} did not get there in {timeout:?}; it is: {}",
                pod.map_or("gone".to_string(), |p| serde_json::to_string_pretty(
                    &p["status"]
                )
                .unwrap_or_default())
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `program` in the node namespace (e.g. to reach pods), returning its output.
    pub fn in_node(&self, program: &str, args: &[&str]) -> Output {
        let netns = self
            .node_netns
            .as_ref()
            .expect("an agent started with start_node");
        netns
            .command(program)
            .args(args)
            .output()
            .expect("run in the node namespace")
    }

    /// Runs `args` in a running container of `pod` (its JSON) with `runc exec`.
    pub fn exec(&self, pod: &serde_json::Value, container: &str, args: &[&str]) -> Output {
        let id = container_status(pod, container)["containerID"]
            .as_str()
            .and_then(|id| id.strip_prefix("skiff://"))
            .unwrap_or_else(|| panic!("container {container} has no ID: {}", pod["status"]));
        Command::new("runc")
            .arg("--root")
            .arg(self.state.path().join("runc"))
            .args(["exec", id])
            .args(args)
            .output()
            .expect("run runc exec")
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.state.path().join("skiff.sock")
    }

    pub fn server(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("token"))
            .expect("token file")
            .trim()
            .to_string()
    }

    /// The join token of the cluster on etcd this agent created or joined.
    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("join-token"))
            .expect("join-token file (an agent on etcd writes it)")
            .trim()
            .to_string()
    }

    /// `skiff ARGS` against this agent, with its token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, b"")
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cli_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run skiff");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        child.wait_with_output().expect("wait for skiff")
    }

    /// The command `skiff ARGS` against this agent, to spawn (e.g. `logs -f`).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(workspace_bin("skiff"));
        command
            .env("SKIFF_CONFIG", self.state.path().join("no-config.yaml"))
            .arg("--server")
            .arg(self.server())
            .arg("--token-file")
            .arg(self.state.path().join("token"))
            .args(args);
        command
    }

    /// Like [`Agent::cli`], failing the test unless the command succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "skiff {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A Rust API client connected to this agent.
    pub async fn client(&self) -> skiff::api::client::ApiClient {
        skiff::api::client::connect(&skiff::api::client::Connection {
            server: self.server(),
            token: self.token(),
            ca_cert: None,
        })
        .await
        .expect("connect to the agent")
    }

    /// Everything the agent logged so far (reading what came since the last
    /// look, without waiting).
    pub fn logged(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    pub fn wait_for_line(&mut self, needle: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("agent never said {needle:?}; it said: {:#?}", self.log);
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill() on our own child's pid.
        let rc = unsafe { libc::kill(self.child.0.id() as i32, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the agent to exit and collects the rest of its log.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self.child.0.wait().expect("wait for agent");
        self.log.extend(self.lines.iter());
        status
    }
}

/// Runs `skiff agent ARGS` where it is expected to fail, and returns its exit status
/// and stderr. It gets a state directory and socket of its own and pins nothing, so a
/// start that gets further than expected touches nothing another agent uses.
pub fn failed_start(args: &[&str]) -> (ExitStatus, String) {
    require_root();
    let state = tempfile::Builder::new()
        .prefix("skiff-test-state-")
        .tempdir()
        .expect("state dir");
    let out = Command::new(workspace_bin("skiff"))
        .arg("agent")
        .arg("--state-dir")
        .arg(state.path())
        .arg("--socket")
        .arg(state.path().join("skiff.sock"))
        .args(["--metrics-addr", "127.0.0.1:0", "--no-bpf-pin"])
        .args(args)
        .output()
        .expect("run skiff agent");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The node name of agents started with [`Agent::start_node`].
pub const NODE_NAME: &str = "test-node";

/// Whether a pod (its JSON) is Ready and not being deleted.
pub fn is_ready(pod: &serde_json::Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|all| {
            all.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The status of container `name` in a pod's JSON (null when it has none).
pub fn container_status<'a>(pod: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// The busybox test image as an OCI archive named `reference`, built once per
/// test process from Debian's busybox-static.
fn busybox_archive(reference: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("image dir"));
    let path = dir
        .path()
        .join(format!("{}.tar", reference.replace([':', '/'], "_")));
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        skiff::image::build::build_busybox_oci_archive(Path::new("/bin/busybox"), reference, &path)
            .expect("build the busybox test image (busybox-static is installed by setup)");
    }
    path
}

/// Pods outlive their agent by design (a restarted agent adopts them), so a
/// test's pods are removed here: containers, their overlay and tmpfs mounts,
/// network namespaces and cgroups.
struct PodLeftovers {
    /// None once another guard took over.
    state: Option<PathBuf>,
}

impl Drop for PodLeftovers {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let root = state.join("runc");
        let listed = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output();
        for id in listed
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .output();
        }
        let pods = std::fs::read_dir(state.join("pods"))
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
                let rootfs = attempt.path().join("rootfs");
                let _ = Command::new("umount").arg("-l").arg(&rootfs).output();
            }
            // Memory emptyDirs and secrets are tmpfs mounts (others fail to unmount).
            let volumes = std::fs::read_dir(pod.path().join("volumes"))
                .into_iter()
                .flatten()
                .flatten();
            for volume in volumes {
                let _ = Command::new("umount").arg("-l").arg(volume.path()).output();
            }
            let netns = Path::new("/run/netns").join(format!("skiff-{uid}"));
            if netns.exists() {
                let _ = Command::new("umount").arg("-l").arg(&netns).output();
                let _ = std::fs::remove_file(&netns);
            }
            skiff::cgroup::remove_everywhere(&format!("/skiff/pod{uid}"));
        }
    }
}

/// A test agent's bpffs pin directory, removed (which detaches what is pinned
/// there) when the test lets go of the agent.
struct PinDir(PathBuf);

impl PinDir {
    fn for_state(state: &Path) -> Self {
        let name = state.file_name().expect("a state directory has a name");
        Self(Path::new(skiff::dataplane::BPFFS).join(name))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent process, killed if still running when the test lets go of it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
