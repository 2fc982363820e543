//! `skiff logs` and `skiff exec` against real pods: an agent in a node namespace
//! runs busybox containers under conmon, and the CLI reads their log files and
//! runs commands in them through the agent's API.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME};

const START: Duration = Duration::from_secs(30);
/// How long a followed line may take to arrive.
const LINE: Duration = Duration::from_secs(10);

fn pod(name: &str, policy: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {NODE_NAME}
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, {script:?}]
"#
    )
}

fn phase(pod: Option<&Value>, phase: &str) -> bool {
    pod.is_some_and(|p| p["status"]["phase"] == phase)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `skiff ARGS` until its stdout is `expected` (the container may not have
/// written everything yet), failing the test with the last output otherwise.
fn wait_for_output(agent: &Agent, args: &[&str], expected: &str) {
    let deadline = Instant::now() + START;
    loop {
        let out = agent.cli(args);
        if out.status.success() && text(&out.stdout) == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "skiff {args:?} never printed {expected:?}; last: {:?} {:?}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that `skiff ARGS` fails with exit status 1 and exactly `message`.
fn assert_fails(agent: &Agent, args: &[&str], message: &str) {
    let out = agent.cli(args);
    assert_eq!(out.status.code(), Some(1), "skiff {args:?}: {out:?}");
    assert_eq!(text(&out.stderr).trim_end(), message, "skiff {args:?}");
}

/// A spawned `skiff logs -f`, its stdout lines arriving on a channel; killed on drop.
struct Follower {
    child: Child,
    lines: Receiver<String>,
}

impl Follower {
    fn start(agent: &Agent, args: &[&str]) -> Follower {
        let mut child = agent
            .cli_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn skiff logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(LINE)
            .expect("a followed line in time")
    }

    /// The next `n` lines.
    fn take(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.next()).collect()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_show_stdout_and_stderr_in_order_joined_and_tailed() {
    let agent = Agent::start_node(&[]);
    // Pauses keep the two pipes' order certain; "partial " reaches conmon
    // before the rest of its line, so it is logged as a P piece.
    agent.apply(&pod(
        "talker",
        "Always",
        "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; sleep 0.2; \
         printf 'partial '; sleep 0.2; echo line; exec sleep 3600",
    ));
    let all = "one\ntwo\nthree\npartial line\n";
    wait_for_output(&agent, &["logs", "talker"], all);
    assert_eq!(agent.ok(&["logs", "talker", "-c", "main"]), all);
    assert_eq!(
        agent.ok(&["logs", "talker", "--tail", "2"]),
        "three\npartial line\n"
    );
    assert_eq!(agent.ok(&["logs", "talker", "--tail", "0"]), "");
    assert_eq!(agent.ok(&["logs", "talker", "--tail", "-1"]), all);
    // The raw file has the CRI prefixes and the split line that were taken off.
    let pod = agent.object("pod", "talker").unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let file = agent
        .state_dir()
        .join(format!("logs/default_talker_{uid}/main/1.log"));
    let raw = std::fs::read_to_string(&file).unwrap();
    assert!(raw.contains(" stderr F two\n"), "{raw}");
    assert!(raw.contains(" stdout P partial \n"), "{raw}");
}

#[test]
fn previous_shows_the_attempt_before_the_restart_and_follow_crosses_it() {
    let agent = Agent::start_node(&[]);
    // /etc/hosts belongs to the pod, not to one attempt: it counts them. The
    // first attempt fails after 3 s (restarted at once), the second stays.
    agent.apply(&pod(
        "restarter",
        "Always",
        "n=$(( $(grep -c '^# attempt' /etc/hosts) + 1 )); echo \"# attempt $n\" >> /etc/hosts; \
         echo \"attempt $n out\"; echo \"attempt $n err\" >&2; \
         [ $n -ge 2 ] && exec sleep 3600; sleep 3; exit 1",
    ));
    agent.wait_pod("restarter", START, |p| phase(p, "Running"));
    assert_fails(
        &agent,
        &["logs", "restarter", "--previous"],
        "Error from server (BadRequest): previous terminated container \"main\" in pod \"restarter\" not found",
    );
    // Started during the first attempt, it goes on into the second.
    let follower = Follower::start(&agent, &["logs", "-f", "restarter"]);
    let mut mine = follower.take(4);
    mine.sort();
    assert_eq!(
        mine,
        [
            "attempt 1 err",
            "attempt 1 out",
            "attempt 2 err",
            "attempt 2 out"
        ]
    );
    wait_for_output(
        &agent,
        &["logs", "restarter"],
        "attempt 2 out\nattempt 2 err\n",
    );
    assert_eq!(
        agent.ok(&["logs", "restarter", "-p"]),
        "attempt 1 out\nattempt 1 err\n"
    );
    // With --previous there is nothing to follow: it prints and ends.
    assert_eq!(
        agent.ok(&["logs", "restarter", "--previous", "-f", "--tail", "1"]),
        "attempt 1 err\n"
    );
    let pod = agent.object("pod", "restarter").unwrap();
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 1);

    // The agent reads the second attempt's file for the follower until it goes.
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let file = agent
        .state_dir()
        .join(format!("logs/default_restarter_{uid}/main/2.log"));
    assert!(agent_holds(&file), "the follower reads {}", file.display());
    drop(follower);
    let deadline = Instant::now() + LINE;
    while agent_holds(&file) {
        assert!(
            Instant::now() < deadline,
            "the agent still follows for a client that went away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a `skiff` process (an agent: the CLI opens no log file) has `path` open.
fn agent_holds(path: &Path) -> bool {
    let processes = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    processes
        .filter(|p| {
            std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "skiff")
        })
        .any(|p| {
            let fds = std::fs::read_dir(p.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten();
            fds.filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| target == path)
        })
}

#[test]
fn follow_receives_lines_as_they_are_written_and_ends_with_the_container() {
    let agent = Agent::start_node(&[]);
    agent.apply(&pod(
        "waiter",
        "Never",
        "echo before; while [ ! -e /go ]; do sleep 0.1; done; echo after; \
         while [ ! -e /stop ]; do sleep 0.1; done; echo bye",
    ));
    wait_for_output(&agent, &["logs", "waiter"], "before\n");
    let mut follower = Follower::start(&agent, &["logs", "waiter", "--follow"]);
    assert_eq!(follower.next(), "before");
    // Written only now, after the call started.
    agent.ok(&["exec", "waiter", "--", "touch", "/go"]);
    assert_eq!(follower.next(), "after");
    std::thread::sleep(Duration::from_millis(500));
    assert!(follower.still_running(), "-f stopped early");
    // The container ends for good (restartPolicy Never): so does the follower.
    agent.ok(&["exec", "waiter", "--", "touch", "/stop"]);
    assert_eq!(follower.next(), "bye");
    let deadline = Instant::now() + LINE;
    let status = loop {
        if let Some(status) = follower.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "-f did not end with the container"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn logs_of_rotated_files_stay_readable_and_bounded() {
    const MAX: u64 = 4096;
    let agent = Agent::start_node(&["--container-log-max-bytes", &MAX.to_string()]);
    // About 55 bytes per logged line: conmon replaces the file every ~75 lines,
    // slowly enough (~1 s) for a follower looking every 200 ms.
    agent.apply(&pod(
        "chatty",
        "Always",
        "while [ ! -e /go ]; do sleep 0.1; done; \
         i=0; while [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.01; done; \
         echo done; exec sleep 3600",
    ));
    let pod = agent
        .wait_pod("chatty", START, |p| phase(p, "Running"))
        .unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let file = agent
        .state_dir()
        .join(format!("logs/default_chatty_{uid}/main/1.log"));
    let follower = Follower::start(&agent, &["logs", "chatty", "-f"]);
    let deadline = Instant::now() + LINE;
    while !agent_holds(&file) {
        assert!(Instant::now() < deadline, "the follower never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.ok(&["exec", "chatty", "--", "touch", "/go"]);
    let followed = follower.take(301);
    let expected: Vec<String> = (0..300)
        .map(|i| format!("line {i}"))
        .chain(["done".to_string()])
        .collect();
    assert_eq!(followed, expected, "every line once, in order");

    // The file holds the lines since the last replacement, within the limit.
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= MAX, "{} is {size} bytes", file.display());
    let shown = agent.ok(&["logs", "chatty"]);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.last(), Some(&"done"), "{shown}");
    let numbers: Vec<usize> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    assert!(!numbers.is_empty() && numbers[0] > 0, "rotated: {shown}");
    assert_eq!(numbers.last(), Some(&299));
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{shown}");
    assert_eq!(
        agent.ok(&["logs", "chatty", "--tail", "2"]),
        "line 299\ndone\n"
    );
}

#[test]
fn logs_errors_say_what_is_wrong() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: multi}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: a, image: busybox:1.36, command: [sh, -c, "echo from a; exec sleep 3600"]}}
  - {{name: b, image: busybox:1.36, command: [sh, -c, "echo from b; exec sleep 3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: far}}
spec:
  nodeName: other-node
  containers:
  - {{name: main, image: busybox:1.36}}
"#
    ));
    // Never: a missing image is not pulled (these tests reach no registry).
    agent.apply(&pod("no-image", "Always", "true").replace(
        "image: busybox:1.36",
        "image: nosuch:1.0\n    imagePullPolicy: Never",
    ));
    assert_fails(
        &agent,
        &["logs", "multi"],
        "Error from server (BadRequest): a container name must be specified for pod multi, choose one of: [a b]",
    );
    assert_fails(
        &agent,
        &["logs", "multi", "-c", "c"],
        "Error from server (BadRequest): container c is not valid for pod multi: choose one of: [a b]",
    );
    wait_for_output(&agent, &["logs", "multi", "-c", "b"], "from b\n");
    assert_fails(
        &agent,
        &["logs", "missing"],
        "Error from server (NotFound): pods \"missing\" not found",
    );
    assert_fails(
        &agent,
        &["logs", "multi", "-n", "elsewhere", "-c", "a"],
        "Error from server (NotFound): pods \"multi\" not found",
    );
    assert_fails(
        &agent,
        &["logs", "far"],
        &format!(
            "Error from server (BadRequest): pod far runs on node other-node, not on this node ({NODE_NAME}): ask that node's API"
        ),
    );
    agent.wait_pod("no-image", START, |p| {
        p.is_some_and(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
        })
    });
    assert_fails(
        &agent,
        &["logs", "no-image"],
        "Error from server (BadRequest): container \"main\" in pod \"no-image\" is waiting to start: ErrImageNeverPull",
    );
}

fn exec(agent: &Agent, args: &[&str]) -> Output {
    agent.cli(&[&["exec"], args].concat())
}

#[test]
fn exec_prints_the_output_and_returns_the_exit_code() {
    let agent = Agent::start_node(&[]);
    agent.apply(&pod("box", "Always", "exec sleep 3600"));
    agent.apply(&pod("done", "Never", "true"));
    agent.wait_pod("box", START, |p| phase(p, "Running"));

    let out = exec(
        &agent,
        &["box", "--", "sh", "-c", "echo hi; echo oops >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(
        text(&out.stderr),
        "oops\ncommand terminated with exit code 7\n"
    );
    // The container's environment and file system, and success.
    let out = exec(&agent, &["box", "-c", "main", "--", "cat", "/etc/hostname"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "box\n");
    // Killed by a signal: 128 + its number, as a shell reports it.
    let out = exec(&agent, &["box", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    // Output larger than one message arrives whole.
    let out = exec(&agent, &["box", "--", "sh", "-c", "seq 1 100000"]);
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert!(text(&out.stdout) == expected, "seq output differs");

    // A client that goes away takes its command with it.
    let processes = || text(&exec(&agent, &["box", "--", "ps"]).stdout);
    let wait_for = |present: bool| {
        let deadline = Instant::now() + LINE;
        while processes().contains("sleep 1001") != present {
            assert!(Instant::now() < deadline, "{}", processes());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut client = agent
        .cli_command(&["exec", "box", "--", "sleep", "1001"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(true);
    client.kill().unwrap();
    client.wait().unwrap();
    wait_for(false);

    assert_fails(
        &agent,
        &["exec", "nope", "--", "true"],
        "Error from server (NotFound): pods \"nope\" not found",
    );
    agent.wait_pod("done", START, |p| phase(p, "Succeeded"));
    assert_fails(
        &agent,
        &["exec", "done", "--", "true"],
        "Error from server (BadRequest): container \"main\" in pod \"done\" is not running",
    );
    // The command is required, after --.
    let out = exec(&agent, &["box"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("COMMAND"), "{out:?}");
}
