//! The control plane end to end: a real agent process, its unix socket and store
//! file, driven through the `skiff` CLI and the gRPC client as users and
//! controllers would.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use skiff::api::proto;
use skiff_tests::agent::Agent;

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ipFamilyPolicy: PreferDualStack
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn yaml_of(agent: &Agent, args: &[&str]) -> Value {
    let json = agent.ok(&[args, &["-o", "json"]].concat());
    serde_json::from_str(&json).expect("JSON output")
}

#[test]
fn apply_get_and_round_trip_through_yaml() {
    let agent = Agent::start(&[]);
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], APP.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "namespace/shop created\ndeployment.apps/web created\nservice/web created\n"
    );

    let table = agent.ok(&["get", "deployments", "-n", "shop"]);
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"])
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("web ")),
        "{table}"
    );

    // The server filled in what it owns.
    let deployment = yaml_of(&agent, &["get", "deployment", "web", "-n", "shop"]);
    let meta = &deployment["metadata"];
    assert_eq!(meta["generation"], 1);
    assert!(
        meta["uid"].as_str().is_some_and(|u| u.len() == 36),
        "{meta}"
    );
    assert!(meta["resourceVersion"].as_str().is_some());
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");

    // -o yaml applies back unchanged, once the Deployment controller has settled (it
    // writes the revision annotation and the status; its pods stay pending here,
    // without a node, so nothing moves after that).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let d = yaml_of(&agent, &["get", "deployment", "web", "-n", "shop"]);
        if d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
            && d["status"]["observedGeneration"] == 1
            && d["status"]["replicas"] == 2
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "controller never settled: {d}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let yaml = agent.ok(&["get", "deployment", "web", "-n", "shop", "-o", "yaml"]);
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], yaml.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "deployment.apps/web unchanged\n"
    );

    // A spec change bumps the generation; a label change does not.
    let scaled = APP.replace("replicas: 2", "replicas: 3");
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], scaled.as_bytes());
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web configured"));
    let deployment = yaml_of(&agent, &["get", "deployment", "web", "-n", "shop"]);
    assert_eq!(deployment["metadata"]["generation"], 2);
    assert_eq!(
        deployment["metadata"]["uid"], meta["uid"],
        "uid kept across updates"
    );
}

#[test]
fn services_get_cluster_ips_from_the_service_cidrs() {
    let agent = Agent::start(&[]);
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], APP.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let service = yaml_of(&agent, &["get", "service", "web", "-n", "shop"]);
    let ips: Vec<&str> = service["spec"]["clusterIPs"]
        .as_array()
        .expect("clusterIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ips.len(), 2, "{service}");
    let v4: std::net::Ipv4Addr = ips[0].parse().expect("IPv4 first");
    assert!(
        "10.96.0.0/12"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&v4),
        "{v4}"
    );
    assert!(ips[1].starts_with("fd00:10:96::"), "{ips:?}");
    assert_eq!(service["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));

    // A requested address that is taken is refused, naming the holder.
    let taken = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: copy, namespace: shop}}\nspec:\n  clusterIP: {}\n  ports: [{{port: 80}}]\n",
        ips[0]
    );
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], taken.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: <stdin> doc 1: spec.clusterIPs[0]: {} is already allocated to service shop/web\n",
            ips[0]
        )
    );
    // Deleting the Service releases its addresses for others.
    agent.ok(&["delete", "service", "web", "-n", "shop"]);
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], taken.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_invalid_document_means_nothing_is_stored() {
    let agent = Agent::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    let bad = APP.replace("containerPort: 8080", "containerPort: 70000");
    std::fs::write(&file, bad).unwrap();
    let out = agent.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {} doc 2: spec.template.spec.containers[0].ports[0].containerPort: 70000 is not a valid port (1-65535)\n",
            file.display()
        )
    );
    assert!(out.stdout.is_empty());
    // The valid namespace of the same file was not applied either.
    let out = agent.cli(&["get", "namespace", "shop"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error from server (NotFound): namespaces \"shop\" not found\n"
    );
}

#[test]
fn requests_without_the_token_are_refused() {
    let agent = Agent::start(&[]);
    let socket = agent.socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket {}", socket.display());
    let token_mode = std::fs::metadata(agent.state_dir().join("token"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(token_mode, 0o600);

    let run = |token: &str| {
        std::process::Command::new(skiff_tests::workspace_bin("skiff"))
            .env("SKIFF_CONFIG", agent.state_dir().join("none.yaml"))
            .args([
                "--server",
                &agent.server(),
                "--token",
                token,
                "get",
                "namespaces",
            ])
            .output()
            .unwrap()
    };
    let out = run("not-the-token");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error from server (Unauthorized): invalid bearer token\n"
    );
    let out = run(&agent.token());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"));
}

#[test]
fn secrets_are_not_in_the_store_file_in_clear() {
    let agent = Agent::start(&[]);
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n  password: hunter2-correct-horse\n";
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], secret.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = yaml_of(&agent, &["get", "secret", "db"]);
    // "hunter2-correct-horse" in base64.
    let encoded = "aHVudGVyMi1jb3JyZWN0LWhvcnNl";
    assert_eq!(stored["data"]["password"], encoded);

    let file = std::fs::read(agent.state_dir().join("store.redb")).unwrap();
    for needle in ["hunter2-correct-horse", encoded] {
        assert!(
            !file.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is in the store file"
        );
    }
    // The file does hold the object (encrypted), not nothing.
    assert!(
        file.windows(b"skiff:enc:aesgcm:v1:".len())
            .any(|w| w == b"skiff:enc:aesgcm:v1:")
    );
}

#[test]
fn a_thousand_objects_are_listed() {
    let agent = Agent::start(&[]);
    let mut manifest = String::new();
    for i in 0..1000 {
        manifest.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:04}\n  labels: {{batch: \"{}\"}}\ndata:\n  n: \"{i}\"\n---\n",
            i % 2
        ));
    }
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], manifest.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let names = agent.ok(&["get", "configmaps", "-o", "name"]);
    let listed: BTreeSet<&str> = names.lines().collect();
    assert_eq!(listed.len(), 1000);
    assert!(listed.contains("configmap/cm-0999"));
    // Label and field selectors narrow the list on the server.
    assert_eq!(
        agent
            .ok(&["get", "cm", "-l", "batch=1", "-o", "name"])
            .lines()
            .count(),
        500
    );
    assert_eq!(
        agent.ok(&[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=cm-0042",
            "-o",
            "name"
        ]),
        "configmap/cm-0042\n"
    );
}

#[test]
fn stale_resource_version_is_a_conflict() {
    let agent = Agent::start(&[]);
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: a}\n";
    agent.cli_with_stdin(&["apply", "-f", "-"], cm.as_bytes());
    let yaml = agent.ok(&["get", "cm", "settings", "-o", "yaml"]);
    // Two edits from the same read: the first wins, the second conflicts.
    let first = yaml.replace("mode: a", "mode: b");
    let second = yaml.replace("mode: a", "mode: c");
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], first.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = agent.cli_with_stdin(&["apply", "-f", "-"], second.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "Error from server (Conflict): Operation cannot be fulfilled on configmaps \"settings\": the object has been modified; please apply your changes to the latest version and try again\n"
    );
    assert_eq!(
        yaml_of(&agent, &["get", "cm", "settings"])["data"]["mode"],
        "b"
    );
}

#[test]
fn deleting_an_owner_deletes_what_it_owns_unless_orphaned() {
    let agent = Agent::start(&[]);
    for (propagation, survives) in [("background", false), ("orphan", true)] {
        let owner =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: owner-{propagation}}}\n");
        agent.cli_with_stdin(&["apply", "-f", "-"], owner.as_bytes());
        let uid =
            yaml_of(&agent, &["get", "cm", &format!("owner-{propagation}")])["metadata"]["uid"]
                .as_str()
                .unwrap()
                .to_string();
        let child = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child-{propagation}\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: owner-{propagation}, uid: {uid}}}\n"
        );
        let out = agent.cli_with_stdin(&["apply", "-f", "-"], child.as_bytes());
        assert!(out.status.success(), "{}", stderr(&out));
        agent.ok(&[
            "delete",
            "cm",
            &format!("owner-{propagation}"),
            "--cascade",
            propagation,
        ]);
        let out = agent.cli(&["get", "cm", &format!("child-{propagation}"), "-o", "json"]);
        assert_eq!(
            out.status.success(),
            survives,
            "{propagation}: {}",
            stderr(&out)
        );
        if survives {
            let child: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(child["metadata"]["ownerReferences"].is_null(), "{child}");
        }
    }
}

#[test]
fn acknowledged_applies_survive_sigkill() {
    let agent = Agent::start(&[]);
    let server = agent.server();
    let token = agent.token();
    // A client applying ConfigMaps one request at a time, printing each success.
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while [ $i -lt 100000 ]; do printf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata: {{name: w-%s}}\\n' $i | {bin} --server {server} --token {token} apply -f - >/dev/null 2>&1 && echo $i; i=$((i+1)); done",
            bin = skiff_tests::workspace_bin("skiff").display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = writer.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 40 {
        acked.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the writer makes progress"),
        );
    }
    let agent = agent.kill_and_restart();
    let _ = writer.kill();
    let _ = writer.wait();
    acked.extend(rx.try_iter());
    let names = agent.ok(&["get", "configmaps", "-o", "name"]);
    let stored: BTreeSet<&str> = names.lines().collect();
    for i in &acked {
        assert!(
            stored.contains(format!("configmap/w-{i}").as_str()),
            "w-{i} was acknowledged but is gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_ordered_and_resumable() {
    let agent = Agent::start(&[]);
    let mut client = agent.client().await;
    let list = client
        .list(proto::ListRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let start = list.resource_version;
    let mut events = client
        .watch(proto::WatchRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            resource_version: start.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "seq", "namespace": "default"}, "data": {"i": i.to_string()}});
        client
            .apply(proto::ApplyRequest {
                objects: vec![serde_json::to_vec(&cm).unwrap()],
            })
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut versions = Vec::new();
    while seen.len() < 20 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        let object: Value = serde_json::from_slice(&event.object).unwrap();
        seen.push((
            event.r#type,
            object["data"]["i"].as_str().unwrap().to_string(),
        ));
        versions.push(
            object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let expected: Vec<(i32, String)> = (0..20)
        .map(|i| {
            let kind = if i == 0 {
                proto::EventType::Added
            } else {
                proto::EventType::Modified
            };
            (kind as i32, i.to_string())
        })
        .collect();
    assert_eq!(seen, expected);

    // Resume from the 10th event: exactly the last ten follow.
    let mut resumed = client
        .watch(proto::WatchRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            resource_version: versions[9].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 10..20 {
        let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let object: Value = serde_json::from_slice(&event.object).unwrap();
        assert_eq!(object["data"]["i"], i.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_from_compacted_history_is_too_old() {
    let agent = Agent::start(&["--compaction-interval", "1s"]);
    let mut client = agent.client().await;
    let start = client
        .list(proto::ListRequest {
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .resource_version;
    // Two changes after the start: once history before the second is dropped, the
    // first change after the start is gone.
    for name in ["c1", "c2"] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}});
        client
            .apply(proto::ApplyRequest {
                objects: vec![serde_json::to_vec(&cm).unwrap()],
            })
            .await
            .unwrap();
    }
    // Once compaction passes the start, watching from it is "too old".
    let mut status = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let result = client
            .watch(proto::WatchRequest {
                kind: "ConfigMap".into(),
                namespace: "default".into(),
                resource_version: start.clone(),
                ..Default::default()
            })
            .await;
        if let Err(s) = result {
            status = Some(s);
            break;
        }
    }
    let status = status.expect("the start revision is compacted within 10 s");
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(
        status.message().starts_with("too old resource version: "),
        "{}",
        status.message()
    );
}

#[test]
fn unknown_kinds_and_bad_selectors_are_clear_errors() {
    let agent = Agent::start(&[]);
    let out = agent.cli(&["get", "widgets"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: the server doesn't have a resource type \"widgets\"\n"
    );
    let out = agent.cli(&["get", "pods", "-l", "app in (a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("Error from server (BadRequest): label selector: "),
        "{}",
        stderr(&out)
    );
    let out = agent.cli(&["get", "pods", "--field-selector", "spec.image=x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("spec.image"), "{}", stderr(&out));
    let out = agent.cli(&["get", "services", "--field-selector", "spec.nodeName=n1"]);
    assert_eq!(
        stderr(&out),
        "Error from server (BadRequest): field selector: field \"spec.nodeName\" is not supported for Service (supported: metadata.name, metadata.namespace)\n"
    );
}

#[test]
fn the_api_is_served_over_tls_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start(&[
        "--listen",
        &listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let server = format!("https://localhost:{port}");
    let run = |extra: &[&str]| {
        std::process::Command::new(skiff_tests::workspace_bin("skiff"))
            .env("SKIFF_CONFIG", agent.state_dir().join("none.yaml"))
            .args(["--server", &server, "--token", &agent.token()])
            .args(extra)
            .args(["get", "namespaces", "-o", "name"])
            .output()
            .unwrap()
    };
    let out = run(&["--certificate-authority", cert.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));
    // Without the CA the client refuses to start rather than trust blindly.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("needs --certificate-authority"),
        "{}",
        stderr(&out)
    );
}
