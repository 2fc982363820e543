//! skiff-cni as runtimes call it: the real binary, real namespaces and veths. Each
//! test gets a "node" namespace the plugin runs in (so its routes and sysctls stay
//! there) and pod namespaces to wire.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use skiff_tests::netns::NetNs;
use skiff_tests::{require_root, workspace_bin};

/// A node namespace with its own allocation directory.
struct Node {
    netns: NetNs,
    data: tempfile::TempDir,
}

/// What one plugin call printed and how it exited.
struct Answer {
    ok: bool,
    json: Value,
}

impl Node {
    fn new() -> Self {
        require_root();
        Node {
            netns: NetNs::new(),
            data: tempfile::tempdir().expect("data dir"),
        }
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "skiff-test",
            "type": "skiff-cni",
            "mtu": 1400,
            "ipam": {
                "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"],
                "dataDir": self.data.path(),
            },
        })
    }

    /// Runs `plugin` inside the node namespace with `env` and `stdin`.
    fn call(&self, plugin: &Path, env: &[(&str, &str)], stdin: &Value) -> Answer {
        let mut child = self
            .netns
            .command(plugin)
            .env_clear()
            .env("CNI_PATH", "/usr/lib/cni")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.to_string().as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        let json = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).expect("stdout is JSON")
        };
        Answer {
            ok: out.status.success(),
            json,
        }
    }

    fn skiff(&self, command: &str, pod: Option<&NetNs>, id: &str, conf: &Value) -> Answer {
        let netns = pod.map(|p| p.path().display().to_string());
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", "eth0"),
        ];
        if let Some(netns) = &netns {
            env.push(("CNI_NETNS", netns));
        }
        self.call(&workspace_bin("skiff-cni"), &env, conf)
    }

    fn allocations(&self) -> Vec<Value> {
        skiff_tests::cni::allocations(self.data.path(), "skiff-test")
    }

    fn veths(&self) -> Vec<String> {
        skiff_tests::cni::veths(&self.netns)
    }

    fn ping(&self, ip: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                self.netns.name(),
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                ip,
            ])
            .output()
            .unwrap()
            .status
            .success()
    }
}

fn pod_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            let address = ip["address"].as_str().unwrap();
            address.split('/').next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn bad_inputs_get_the_spec_codes_and_messages() {
    let node = Node::new();
    let pod = NetNs::new();
    let conf = node.conf("1.1.0");
    let netns = pod.path().display().to_string();
    // The environment of a valid ADD with one variable changed (None: unset).
    let env = |var: &str, value: Option<&'static str>| -> Vec<(String, String)> {
        [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "bad-inputs"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
        ]
        .into_iter()
        .filter_map(|(k, v)| match (k == var, value) {
            (true, None) => None,
            (true, Some(other)) => Some((k.to_string(), other.to_string())),
            (false, _) => Some((k.to_string(), v.to_string())),
        })
        .collect()
    };
    let edited = |f: &dyn Fn(&mut Value)| {
        let mut c = conf.clone();
        f(&mut c);
        c
    };
    type Env = Vec<(String, String)>;
    let cases: Vec<(Env, Value, u64, &str)> = vec![
        (
            env("CNI_COMMAND", None),
            conf.clone(),
            4,
            "CNI_COMMAND is not set",
        ),
        (
            env("CNI_CONTAINERID", None),
            conf.clone(),
            4,
            "CNI_CONTAINERID is not set",
        ),
        (
            env("CNI_NETNS", None),
            conf.clone(),
            4,
            "CNI_NETNS is not set",
        ),
        (
            env("CNI_IFNAME", None),
            conf.clone(),
            4,
            "CNI_IFNAME is not set",
        ),
        (
            env("CNI_IFNAME", Some("eth0-far-too-long")),
            conf.clone(),
            4,
            "CNI_IFNAME \"eth0-far-too-long\" is not a valid interface name: 17 bytes is longer than the 15 Linux allows",
        ),
        (
            env("CNI_NETNS", Some("/run/netns/skiff-test-absent")),
            conf.clone(),
            3,
            "CNI_NETNS /run/netns/skiff-test-absent: no such network namespace",
        ),
        (
            env("", None),
            edited(&|c| c["cniVersion"] = json!("0.2.0")),
            1,
            "cniVersion \"0.2.0\" is not supported",
        ),
        (
            env("", None),
            edited(&|c| c["hairpinMode"] = json!(true)),
            2,
            "unsupported field hairpinMode: true",
        ),
        (
            env("", None),
            edited(&|c| c["ipam"]["podCIDRs"][0] = json!("10.244.0.0/40")),
            7,
            "ipam.podCIDRs[0]: \"10.244.0.0/40\" is not a CIDR",
        ),
    ];
    let plugin = workspace_bin("skiff-cni");
    for (env, stdin, code, msg) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let answer = node.call(&plugin, &env, &stdin);
        assert!(!answer.ok, "{msg}: succeeded");
        assert_eq!(answer.json["code"], code, "{msg}: {}", answer.json);
        assert_eq!(answer.json["msg"], msg);
    }
    // Undecodable configuration: code 6.
    let env = env("", None);
    let mut child = node
        .netns
        .command(&plugin)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{nope").unwrap();
    let out = child.wait_with_output().unwrap();
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success());
    assert_eq!(error["code"], 6);
    // Nothing was made by any of it.
    assert!(node.allocations().is_empty());
    assert!(node.veths().is_empty());
}

#[test]
fn fifty_concurrent_adds_get_distinct_reachable_addresses() {
    let node = Node::new();
    let pods: Vec<NetNs> = (0..50).map(|_| NetNs::new()).collect();
    let conf = node.conf("1.1.0");
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                scope.spawn(move || node.skiff("ADD", Some(pod), &format!("pod-{i}"), conf))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let answer = h.join().unwrap();
                assert!(answer.ok, "{}", answer.json);
                answer.json
            })
            .collect()
    });
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for result in &results {
        let ips = pod_ips(result);
        assert_eq!(ips.len(), 2, "{result}");
        assert!(v4.insert(ips[0].clone()), "{} given twice", ips[0]);
        assert!(v6.insert(ips[1].clone()), "{} given twice", ips[1]);
        assert_eq!(
            result["interfaces"][1]["sandbox"]
                .as_str()
                .map(|s| s.starts_with("/run/netns/")),
            Some(true)
        );
    }
    assert_eq!((v4.len(), v6.len()), (50, 50));
    for ip in v4.iter().chain(&v6) {
        assert!(node.ping(ip), "{ip} is not reachable from the node");
    }

    std::thread::scope(|scope| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            scope.spawn(move || {
                let answer = node.skiff("DEL", Some(pod), &format!("pod-{i}"), conf);
                assert!(answer.ok, "{}", answer.json);
            });
        }
    });
    assert_eq!(node.allocations(), Vec::<Value>::new());
    assert_eq!(node.veths(), Vec::<String>::new());
}

#[test]
fn del_is_idempotent_and_check_reports_what_differs() {
    let node = Node::new();
    let pod = NetNs::new();
    let conf = node.conf("1.1.0");
    let added = node.skiff("ADD", Some(&pod), "checked", &conf);
    assert!(added.ok, "{}", added.json);
    let mut with_previous = conf.clone();
    with_previous["prevResult"] = added.json.clone();
    let check = node.skiff("CHECK", Some(&pod), "checked", &with_previous);
    assert!(check.ok, "{}", check.json);

    // Someone removes the IPv6 default route: CHECK names it.
    let removed = Command::new("ip")
        .args(["-n", pod.name(), "-6", "route", "del", "default"])
        .status()
        .unwrap();
    assert!(removed.success());
    let check = node.skiff("CHECK", Some(&pod), "checked", &with_previous);
    assert!(!check.ok);
    assert_eq!(check.json["code"], 102);
    assert_eq!(
        check.json["msg"],
        "eth0: the default route via fd00:10:244::1 is missing"
    );

    for _ in 0..2 {
        let del = node.skiff("DEL", Some(&pod), "checked", &with_previous);
        assert!(del.ok, "{}", del.json);
    }
    // DEL without a netns (it is gone) also succeeds.
    assert!(node.skiff("DEL", None, "checked", &conf).ok);
    assert!(node.veths().is_empty() && node.allocations().is_empty());
}

#[test]
fn results_follow_the_requested_version() {
    let node = Node::new();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let pod = NetNs::new();
        let id = format!("v{}", version.replace('.', ""));
        let added = node.skiff("ADD", Some(&pod), &id, &node.conf(version));
        assert!(added.ok, "{}", added.json);
        assert_eq!(added.json["cniVersion"], version);
        // 0.4.0 results carry the IP version; later ones do not.
        let ip_version = &added.json["ips"][0]["version"];
        assert_eq!(
            ip_version.as_str(),
            (version == "0.4.0").then_some("4"),
            "{}",
            added.json
        );
        // Interface MTUs exist from 1.1.0 on.
        assert_eq!(
            added.json["interfaces"][1]["mtu"].as_u64(),
            (version == "1.1.0").then_some(1400)
        );
        assert!(node.skiff("DEL", Some(&pod), &id, &node.conf(version)).ok);
    }
}

#[test]
fn both_ends_get_the_configured_mtu() {
    let node = Node::new();
    let pod = NetNs::new();
    let conf = node.conf("1.1.0");
    let added = node.skiff("ADD", Some(&pod), "mtu", &conf);
    assert!(added.ok, "{}", added.json);
    let host_veth = added.json["interfaces"][0]["name"].as_str().unwrap();
    for (netns, ifname) in [(&node.netns, host_veth), (&pod, "eth0")] {
        let out = Command::new("ip")
            .args(["-n", netns.name(), "-o", "link", "show", ifname])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        assert!(line.contains(" mtu 1400 "), "{ifname}: {line}");
    }
    assert!(node.skiff("DEL", Some(&pod), "mtu", &conf).ok);
}

#[test]
fn standard_plugins_chained_after_skiff_cni_consume_its_result() {
    let node = Node::new();
    let pod = NetNs::new();
    let conf = node.conf("1.0.0");
    let added = node.skiff("ADD", Some(&pod), "chained", &conf);
    assert!(added.ok, "{}", added.json);
    let netns = pod.path().display().to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "chained"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let bandwidth = json!({
        "cniVersion": "1.0.0", "name": "skiff-test", "type": "bandwidth",
        "ingressRate": 1_000_000, "ingressBurst": 100_000,
        "egressRate": 1_000_000, "egressBurst": 100_000,
        "prevResult": added.json,
    });
    let shaped = node.call(Path::new("/usr/lib/cni/bandwidth"), &env, &bandwidth);
    assert!(shaped.ok, "bandwidth: {}", shaped.json);
    // It passed our result on, with our interfaces and addresses intact.
    assert_eq!(shaped.json["ips"], added.json["ips"]);
    assert_eq!(shaped.json["interfaces"][0], added.json["interfaces"][0]);

    let portmap = json!({
        "cniVersion": "1.0.0", "name": "skiff-test", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": shaped.json,
    });
    let mapped = node.call(Path::new("/usr/lib/cni/portmap"), &env, &portmap);
    assert!(mapped.ok, "portmap: {}", mapped.json);
    assert_eq!(mapped.json["ips"], added.json["ips"]);
}

#[test]
fn killed_adds_leak_nothing() {
    let node = Node::new();
    let pod = NetNs::new();
    let conf = node.conf("1.1.0");
    let netns = pod.path().display().to_string();
    for i in 0..15u64 {
        let mut child = node
            .netns
            .command(workspace_bin("skiff-cni"))
            .env_clear()
            .envs([
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "killed"),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        // Anywhere from before the allocation to after the routes.
        std::thread::sleep(Duration::from_micros(i * 700));
        let _ = child.kill();
        let _ = child.wait();
    }
    // A completed ADD reuses the attachment's addresses and replaces any half-made veth.
    let added = node.skiff("ADD", Some(&pod), "killed", &conf);
    assert!(added.ok, "{}", added.json);
    assert_eq!(node.allocations().len(), 2, "{:?}", node.allocations());
    assert_eq!(node.veths().len(), 1, "{:?}", node.veths());
    assert!(node.skiff("DEL", Some(&pod), "killed", &conf).ok);
    assert!(node.allocations().is_empty());
    assert!(node.veths().is_empty(), "{:?}", node.veths());
}

#[test]
fn gc_releases_attachments_the_runtime_no_longer_lists() {
    let node = Node::new();
    let keep = NetNs::new();
    let drop = NetNs::new();
    let conf = node.conf("1.1.0");
    assert!(node.skiff("ADD", Some(&keep), "keep", &conf).ok);
    assert!(node.skiff("ADD", Some(&drop), "drop", &conf).ok);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let answer = node.call(&workspace_bin("skiff-cni"), &[("CNI_COMMAND", "GC")], &gc);
    assert!(answer.ok, "{}", answer.json);
    let owners: BTreeSet<String> = node
        .allocations()
        .iter()
        .map(|a| a["containerID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(owners, BTreeSet::from(["keep".to_string()]));
    assert_eq!(node.veths().len(), 1);
    assert!(node.skiff("DEL", Some(&keep), "keep", &conf).ok);
}

#[test]
fn status_and_version_answer_without_a_container() {
    let node = Node::new();
    let plugin = workspace_bin("skiff-cni");
    let status = node.call(&plugin, &[("CNI_COMMAND", "STATUS")], &node.conf("1.1.0"));
    assert!(status.ok, "{}", status.json);
    let version = node.call(
        &plugin,
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.1.0"}),
    );
    assert!(version.ok);
    assert_eq!(
        version.json["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}
