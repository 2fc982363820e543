//! The `skiff agent` binary: attaches its programs where it is told (or at the cgroup
//! v2 root), and leaves nothing attached or loaded once it exits, however it exits.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use skiff_tests::cgroup::Cgroup;
use skiff_tests::kernel::{assert_unloaded, cgroup_programs};
use skiff_tests::{require_root, workspace_bin};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `skiff agent`, killed on drop if a test fails before stopping it.
struct Agent {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    program_ids: Vec<u32>,
}

impl Agent {
    /// Starts the agent and waits until it reports ready.
    fn start(args: &[&str]) -> Agent {
        require_root();
        let mut child = Command::new(workspace_bin("skiff"))
            .arg("agent")
            .args(args)
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
            child,
            lines,
            log: Vec::new(),
            program_ids: Vec::new(),
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

    fn wait_for_line(&mut self, needle: &str) {
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

    fn signal(&self, signal: i32) {
        // SAFETY: kill() on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().expect("wait for agent");
        self.log.extend(self.lines.iter());
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attached_ids(cgroup: &Path, ours: &[u32]) -> Vec<(u32, String)> {
    let mut found: Vec<(u32, String)> = cgroup_programs(cgroup)
        .into_iter()
        .filter(|p| ours.contains(&p.id))
        .map(|p| (p.id, p.attach_type))
        .collect();
    found.sort();
    found
}

fn stops_cleanly_on(signal: i32, name: &str) {
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&["--cgroup", cgroup.path().to_str().expect("utf-8 path")]);
    let ids = agent.program_ids.clone();
    assert_eq!(ids.len(), 2, "{:#?}", agent.log);
    let attached = attached_ids(cgroup.path(), &ids);
    let types: Vec<&str> = attached.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(types, ["cgroup_inet4_connect", "cgroup_inet6_connect"]);

    agent.signal(signal);
    let status = agent.wait();
    assert!(
        status.success(),
        "agent exited with {status} after {name}: {:#?}",
        agent.log
    );
    assert!(
        agent
            .log
            .iter()
            .any(|l| l.contains(&format!("{name} received"))),
        "{:#?}",
        agent.log
    );
    assert_eq!(
        agent
            .log
            .iter()
            .filter(|l| l.contains("detached skiff_connect"))
            .count(),
        2
    );
    assert_eq!(
        cgroup_programs(cgroup.path()),
        vec![],
        "programs left attached"
    );
    assert_unloaded(&ids);
}

#[test]
fn agent_detaches_everything_on_sigterm() {
    stops_cleanly_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn agent_detaches_everything_on_sigint() {
    stops_cleanly_on(libc::SIGINT, "SIGINT");
}

#[test]
fn killed_agent_leaves_nothing_attached() {
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&["--cgroup", cgroup.path().to_str().expect("utf-8 path")]);
    let ids = agent.program_ids.clone();
    assert_eq!(attached_ids(cgroup.path(), &ids).len(), 2);
    agent.signal(libc::SIGKILL);
    agent.wait();
    // The links die with the process's file descriptors.
    assert_eq!(cgroup_programs(cgroup.path()), vec![]);
    assert_unloaded(&ids);
}

#[test]
fn agent_attaches_at_the_cgroup_v2_root_by_default() {
    let root = skiff::cgroup::v2_mount_point().expect("cgroup v2");
    let mut agent = Agent::start(&[]);
    let ids = agent.program_ids.clone();
    assert!(
        agent
            .log
            .iter()
            .any(|l| l.contains(&format!("to {}", root.display()))),
        "{:#?}",
        agent.log
    );
    assert_eq!(
        attached_ids(&root, &ids).len(),
        2,
        "not attached at {}",
        root.display()
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait().success());
    assert_eq!(attached_ids(&root, &ids), vec![]);
    assert_unloaded(&ids);
}

fn failed_start(args: &[&str]) -> (ExitStatus, String) {
    require_root();
    let out = Command::new(workspace_bin("skiff"))
        .arg("agent")
        .args(args)
        .output()
        .expect("run skiff agent");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agent_rejects_a_missing_cgroup() {
    let (status, stderr) =
        failed_start(&["--cgroup", "/sys/fs/cgroup/unified/skiff-no-such-cgroup"]);
    assert!(!status.success());
    assert!(
        stderr.contains("opening cgroup /sys/fs/cgroup/unified/skiff-no-such-cgroup")
            && stderr.contains("No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn agent_rejects_an_unknown_ebpf_log_level() {
    let (status, stderr) = failed_start(&["--ebpf-log", "loud"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'loud'") && stderr.contains("--ebpf-log"),
        "{stderr}"
    );
}
