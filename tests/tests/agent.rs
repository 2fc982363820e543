//! The `skiff agent` binary: attaches its programs where it is told (or at the cgroup
//! v2 root) and leaves nothing attached or loaded once it stops. A killed agent's
//! pinned dataplane goes on serving until the next agent takes it over.

use std::path::Path;

use skiff_tests::agent::{Agent, failed_start};
use skiff_tests::kernel::{assert_unloaded, cgroup_programs};

/// The socket load balancer's hooks as bpftool names their attach types, sorted.
const HOOKS: [&str; 9] = [
    "cgroup_inet4_connect",
    "cgroup_inet4_getpeername",
    "cgroup_inet6_connect",
    "cgroup_inet6_getpeername",
    // The mesh's TCP connect callback.
    "cgroup_sock_ops",
    "cgroup_udp4_recvmsg",
    "cgroup_udp4_sendmsg",
    "cgroup_udp6_recvmsg",
    "cgroup_udp6_sendmsg",
];

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
    let mut agent = Agent::start(&[]);
    let cgroup = agent.cgroup.path().to_path_buf();
    let ids = agent.program_ids.clone();
    assert_eq!(ids.len(), HOOKS.len(), "{:#?}", agent.log);
    let attached = attached_ids(&cgroup, &ids);
    let mut types: Vec<&str> = attached.iter().map(|(_, t)| t.as_str()).collect();
    types.sort();
    assert_eq!(types, HOOKS);

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
            .filter(|l| l.contains("detached skiff_"))
            .count(),
        HOOKS.len()
    );
    assert_eq!(cgroup_programs(&cgroup), vec![], "programs left attached");
    assert_unloaded(&ids);
    assert!(
        !agent.pin_dir().exists(),
        "pins left in {}",
        agent.pin_dir().display()
    );
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
fn a_killed_agent_without_pins_leaves_nothing_attached() {
    let mut agent = Agent::start(&["--no-bpf-pin"]);
    let ids = agent.program_ids.clone();
    assert_eq!(attached_ids(agent.cgroup.path(), &ids).len(), HOOKS.len());
    agent.signal(libc::SIGKILL);
    agent.wait();
    // The links die with the process's file descriptors.
    assert_eq!(cgroup_programs(agent.cgroup.path()), vec![]);
    assert_unloaded(&ids);
}

#[test]
fn a_killed_agents_pinned_programs_stay_until_the_next_agent_replaces_them() {
    let agent = Agent::start(&[]);
    let cgroup = agent.cgroup.path().to_path_buf();
    let old = agent.program_ids.clone();
    let pins = agent.pin_dir().to_path_buf();
    let mut agent = agent.kill_and_restart_after(|_| {
        assert_eq!(
            attached_ids(&cgroup, &old).len(),
            HOOKS.len(),
            "pinned programs stay attached"
        );
        for pin in [
            "SERVICES",
            "BACKENDS",
            "REVERSE_SK",
            "LB_COUNTERS",
            "AFFINITY",
            "AFFINITY_BACKENDS",
            "links/skiff_connect4",
            "links/skiff_connect6",
        ] {
            assert!(pins.join(pin).exists(), "{pin} is not pinned");
        }
    });
    let new = agent.program_ids.clone();
    assert_eq!(attached_ids(&cgroup, &new).len(), HOOKS.len());
    // The old programs are detached and unloaded once their pins are replaced.
    assert_eq!(
        cgroup_programs(&cgroup).len(),
        HOOKS.len(),
        "only the new agent's programs"
    );
    assert_unloaded(&old);

    agent.signal(libc::SIGTERM);
    assert!(agent.wait().success());
    assert_eq!(cgroup_programs(&cgroup), vec![]);
    assert_unloaded(&new);
    assert!(!pins.exists(), "pins left in {}", pins.display());
}

#[test]
fn agent_attaches_at_the_cgroup_v2_root_by_default() {
    let root = skiff::cgroup::v2_mount_point().expect("cgroup v2");
    let mut agent = Agent::start_with_default_cgroup(&[]);
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
        HOOKS.len(),
        "not attached at {}",
        root.display()
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait().success());
    assert_eq!(attached_ids(&root, &ids), vec![]);
    assert_unloaded(&ids);
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
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("'loud'") && stderr.contains("--ebpf-log"),
        "{stderr}"
    );
}

#[test]
fn agent_rejects_bad_reservations_and_intervals_naming_them() {
    for (args, needles) in [
        (
            &["--system-reserved", "gpu=1"][..],
            &["--system-reserved", "\"gpu\" cannot be reserved"][..],
        ),
        (
            &["--system-reserved", "cpu=lots"],
            &["--system-reserved", "cpu: \"lots\" is not a valid quantity"],
        ),
        (
            &["--system-reserved", "memory=-1Gi"],
            &["memory: -1Gi must not be negative"],
        ),
        (
            &["--usage-interval", "0s"],
            &["--usage-interval", "must be positive"],
        ),
        (
            &["--node-heartbeat-interval", "soon"],
            &["--node-heartbeat-interval", "not a duration"],
        ),
    ] {
        let (status, stderr) = failed_start(args);
        assert!(!status.success(), "{args:?} started");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle} not in {stderr}"
            );
        }
    }
}
