//! Resource usage through the store: the node samples its pods' cgroups and
//! publishes PodMetrics and NodeMetrics, which `skiff top` shows. A pod that
//! spins must show about a core; an idle one almost none.

use std::time::{Duration, Instant};

use skiff_tests::agent::{Agent, NODE_NAME};

fn pod(name: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: ["sh", "-c", "{script}"]
"#
    )
}

/// The CPU (millicores) and memory (MiB) `skiff top pods` shows for `name`.
fn top_row(agent: &Agent, name: &str) -> Option<(i64, i64)> {
    let out = agent.cli(&["top", "pods"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|line| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        match cells[..] {
            [n, cpu, memory] if n == name => Some((
                cpu.strip_suffix('m')?.parse().ok()?,
                memory.strip_suffix("Mi")?.parse().ok()?,
            )),
            _ => None,
        }
    })
}

#[test]
fn top_shows_what_pods_and_the_node_use() {
    let agent = Agent::start_node(&["--usage-interval", "1s"]);
    agent.apply(&pod("spinner", "while :; do :; done"));
    agent.apply(&pod("sleeper", "exec sleep 3600"));
    for name in ["spinner", "sleeper"] {
        agent.wait_pod(name, Duration::from_secs(30), |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Running")
        });
    }
    // A few samples in, the spinner runs a core (of two) flat out.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (spinner, sleeper) = loop {
        if let (Some(spinner), Some(sleeper)) =
            (top_row(&agent, "spinner"), top_row(&agent, "sleeper"))
            && spinner.0 >= 500
        {
            break (spinner, sleeper);
        }
        assert!(
            Instant::now() < deadline,
            "no usage for the spinner: {}",
            String::from_utf8_lossy(&agent.cli(&["top", "pods"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        spinner.0 <= 1100,
        "a single-threaded spinner used {}m",
        spinner.0
    );
    assert!(sleeper.0 < 50, "an idle pod used {}m", sleeper.0);
    // The metrics carry the pod's labels (kubectl top -l) and go with the pod.
    let labelled = agent.ok(&["top", "pods", "-l", "app=sleeper"]);
    assert!(
        labelled.contains("sleeper") && !labelled.contains("spinner"),
        "{labelled}"
    );
    let nodes = agent.ok(&["top", "nodes"]);
    let row: Vec<&str> = nodes
        .lines()
        .find(|l| l.starts_with(NODE_NAME))
        .unwrap_or_else(|| panic!("no node row in {nodes}"))
        .split_whitespace()
        .collect();
    let node_cpu: i64 = row[1].trim_end_matches('m').parse().expect("millicores");
    assert!(
        node_cpu >= spinner.0 / 2,
        "node {node_cpu}m < pod {}m",
        spinner.0
    );
    agent.ok(&["delete", "pod", "sleeper", "--grace-period", "0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.object("podmetrics", "sleeper").is_some() {
        assert!(Instant::now() < deadline, "the PodMetrics outlived its pod");
        std::thread::sleep(Duration::from_millis(200));
    }
}
