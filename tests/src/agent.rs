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
    child: KillOnDrop,
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
        Self::start_in(state, Cgroup::new(), args, in_test_cgroup)
    }

    fn start_in(
        state: tempfile::TempDir,
        cgroup: Cgroup,
        extra_args: Vec<String>,
        in_test_cgroup: bool,
    ) -> Agent {
        let mut command = Command::new(workspace_bin("skiff"));
        command
            .arg("agent")
            .arg("--state-dir")
            .arg(state.path())
            .arg("--socket")
            .arg(state.path().join("skiff.sock"));
        if in_test_cgroup {
            command.arg("--cgroup").arg(cgroup.path());
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
        let mut agent = Agent {
            child: KillOnDrop(child),
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
    pub fn kill_and_restart(mut self) -> Agent {
        self.signal(libc::SIGKILL);
        self.wait();
        let Agent {
            state,
            cgroup,
            extra_args,
            in_test_cgroup,
            ..
        } = self;
        Self::start_in(state, cgroup, extra_args, in_test_cgroup)
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

    /// `skiff ARGS` against this agent, with its token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, b"")
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(workspace_bin("skiff"))
            .env("SKIFF_CONFIG", self.state.path().join("no-config.yaml"))
            .arg("--server")
            .arg(self.server())
            .arg("--token-file")
            .arg(self.state.path().join("token"))
            .args(args)
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

/// The agent process, killed if still running when the test lets go of it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
