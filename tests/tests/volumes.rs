//! Pod volumes on a real node: emptyDirs shared by a pod's containers (on a tmpfs
//! for medium Memory), ConfigMaps projected with their modes and updated in
//! place, Secrets kept off the disk, hostPath type checks, and nothing left once
//! the pod is gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME, container_status};

const START: Duration = Duration::from_secs(30);

/// Every container of the pod runs.
fn running(pod: Option<&Value>) -> bool {
    pod.is_some_and(|p| {
        p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|all| all.iter().all(|c| c["ready"] == true))
    })
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().expect("uid").to_string()
}

/// The host directory of a pod's volume.
fn volume_dir(agent: &Agent, pod: &Value, volume: &str) -> PathBuf {
    agent
        .state_dir()
        .join("pods")
        .join(uid(pod))
        .join("volumes")
        .join(volume)
}

/// The mounts of the host's mount namespace (the agent's), as
/// (mount point, file system type).
fn mounts() -> Vec<(PathBuf, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            // Spaces in mount points are escaped as \040; test paths have none.
            Some((
                PathBuf::from(fields.get(4)?),
                fields.get(separator + 1)?.to_string(),
            ))
        })
        .collect()
}

fn tmpfs_mounts_at(path: &Path) -> usize {
    mounts()
        .iter()
        .filter(|(point, kind)| point == path && kind == "tmpfs")
        .count()
}

/// Waits for `path` to exist on the host, then returns its contents.
fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + START;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(path).expect("read")
}

/// What `args` prints in the container, failing the test if it fails.
fn exec_ok(agent: &Agent, pod: &Value, container: &str, args: &[&str]) -> String {
    let out = agent.exec(pod, container, args);
    assert!(
        out.status.success(),
        "{args:?} in {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the pod and checks that none of its volumes is left: no mount, no
/// directory.
fn delete_and_check_nothing_left(agent: &Agent, pod: &Value) {
    let name = pod["metadata"]["name"].as_str().expect("name");
    let pod_dir = agent.state_dir().join("pods").join(uid(pod));
    assert!(pod_dir.join("volumes").exists(), "the pod has volumes");
    agent.ok(&["delete", "pod", name]);
    agent.wait_pod(name, START, |p| p.is_none());
    let left: Vec<_> = mounts()
        .into_iter()
        .filter(|(point, _)| point.starts_with(&pod_dir))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(!pod_dir.exists(), "{} left", pod_dir.display());
}

#[test]
fn an_empty_dir_is_shared_by_the_pods_containers_and_survives_adoption() {
    let agent = Agent::start_node(&[]);
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: shared}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: writer
    image: busybox:1.36
    command: [sh, -c, "echo from-writer > /shared/x && grep ' /cache ' /proc/mounts > /shared/cache-mount; exec sleep 3600"]
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: cache, mountPath: /cache}}
  - name: reader
    image: busybox:1.36
    command: [sh, -c, "until [ -f /data/x ]; do sleep 1; done; cat /data/x > /data/seen; echo in-sub-path > /logs/f; touch /ro/y || echo refused > /data/read-only; exec sleep 3600"]
    volumeMounts:
    - {{name: shared, mountPath: /data}}
    - {{name: shared, mountPath: /ro, readOnly: true}}
    - {{name: shared, mountPath: /logs, subPath: nested/logs}}
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: cache, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}
"#
    ));
    let pod = agent.wait_pod("shared", START, running).unwrap();
    let shared = volume_dir(&agent, &pod, "shared");
    // The reader saw the writer's file, wrote through its subPath, and could
    // not write through its read-only mount.
    assert_eq!(wait_for_file(&shared.join("read-only")), "refused\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("seen")).unwrap(),
        "from-writer\n"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("nested/logs/f")).unwrap(),
        "in-sub-path\n"
    );
    assert!(!shared.join("y").exists());
    // The Memory emptyDir is a tmpfs of its size limit, in the container and on the host.
    let cache_mount = std::fs::read_to_string(shared.join("cache-mount")).unwrap();
    assert!(
        cache_mount.starts_with("tmpfs /cache tmpfs "),
        "{cache_mount}"
    );
    assert!(cache_mount.contains("size=16384k"), "{cache_mount}");
    let cache = volume_dir(&agent, &pod, "cache");
    assert_eq!(tmpfs_mounts_at(&cache), 1);
    assert_eq!(tmpfs_mounts_at(&shared), 0, "a disk emptyDir is no tmpfs");
    exec_ok(
        &agent,
        &pod,
        "writer",
        &["sh", "-c", "echo kept > /cache/marker"],
    );

    // A restarted agent adopts the pod without wiping or remounting its volumes.
    let agent = agent.kill_and_restart();
    // The pod's status is already Running: give the new agent's worker a few
    // passes over the volumes before looking.
    std::thread::sleep(Duration::from_secs(3));
    let after = agent.wait_pod("shared", START, running).unwrap();
    for name in ["writer", "reader"] {
        assert_eq!(
            container_status(&after, name)["containerID"],
            container_status(&pod, name)["containerID"]
        );
    }
    assert_eq!(
        std::fs::read_to_string(cache.join("marker")).unwrap(),
        "kept\n"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("x")).unwrap(),
        "from-writer\n"
    );
    assert_eq!(tmpfs_mounts_at(&cache), 1, "mounted once");
    assert_eq!(
        exec_ok(&agent, &after, "reader", &["cat", "/data/seen"]),
        "from-writer\n"
    );

    delete_and_check_nothing_left(&agent, &after);
}

#[test]
fn a_config_map_is_projected_with_its_modes_and_follows_updates() {
    let agent = Agent::start_node(&[]);
    // The pod comes first: it waits for its ConfigMap.
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: configured}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox:1.36
    command: [sleep, "3600"]
    volumeMounts:
    - {{name: config, mountPath: /etc/app}}
    - {{name: config, mountPath: /pinned.txt, subPath: conf/greeting.txt}}
  volumes:
  - name: config
    configMap:
      name: settings
      defaultMode: 288 # 0440
      items:
      - {{key: greeting, path: conf/greeting.txt, mode: 384}} # 0600
      - {{key: level, path: level}}
"#
    ));
    let pod = agent
        .wait_pod("configured", START, |p| {
            p.is_some_and(|p| {
                container_status(p, "app")["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            })
        })
        .unwrap();
    let message = container_status(&pod, "app")["state"]["waiting"]["message"].clone();
    assert_eq!(
        message, "volume \"config\": ConfigMap \"settings\" not found",
        "{}",
        pod["status"]
    );
    let config_map = |greeting: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata:\n  greeting: {greeting}\n  level: debug\n  unused: x\n"
        )
    };
    agent.apply(&config_map("hello"));
    let pod = agent.wait_pod("configured", START, running).unwrap();
    let read = |path: &str| exec_ok(&agent, &pod, "app", &["cat", path]);
    let mode = |path: &str| exec_ok(&agent, &pod, "app", &["stat", "-L", "-c", "%a", path]);
    assert_eq!(read("/etc/app/conf/greeting.txt"), "hello");
    assert_eq!(read("/etc/app/level"), "debug");
    assert_eq!(read("/pinned.txt"), "hello");
    assert_eq!(mode("/etc/app/conf/greeting.txt"), "600\n");
    assert_eq!(mode("/etc/app/level"), "440\n");
    // Only the items, and the volume is read-only.
    assert_eq!(
        exec_ok(&agent, &pod, "app", &["ls", "/etc/app"]),
        "conf\nlevel\n"
    );
    let touch = agent.exec(&pod, "app", &["touch", "/etc/app/new"]);
    assert!(!touch.status.success(), "a ConfigMap volume is read-only");

    // Nothing changes: nothing is rewritten.
    let data_link = volume_dir(&agent, &pod, "config").join("..data");
    let written = std::fs::read_link(&data_link).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(std::fs::read_link(&data_link).unwrap(), written);

    agent.apply(&config_map("hello-again"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while read("/etc/app/conf/greeting.txt") != "hello-again" {
        assert!(
            Instant::now() < deadline,
            "the update never reached the pod"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(mode("/etc/app/conf/greeting.txt"), "600\n");
    assert_eq!(read("/etc/app/level"), "debug");
    // As in Kubernetes, a subPath mount keeps the file it was started with.
    assert_eq!(read("/pinned.txt"), "hello");
    assert_ne!(std::fs::read_link(&data_link).unwrap(), written);
    // The previous data directory went with the update.
    let entries: Vec<String> = std::fs::read_dir(volume_dir(&agent, &pod, "config"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("..") && name != "..data")
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    delete_and_check_nothing_left(&agent, &pod);
}

/// Regular files under `dir` whose bytes contain `needle`, not descending into
/// mount points of the types in `skip`.
fn files_containing(dir: &Path, needle: &[u8], skip: &[(PathBuf, String)]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            if !skip.iter().any(|(point, _)| *point == path) {
                found.extend(files_containing(&path, needle, skip));
            }
        } else if file_type.is_file()
            && std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_secret_lives_on_a_tmpfs_and_never_on_disk() {
    let agent = Agent::start_node(&[]);
    let token = format!(
        "s3cret-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: {token}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: vault}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox:1.36
    command: [sleep, "3600"]
    volumeMounts:
    - {{name: creds, mountPath: /secret}}
  volumes:
  - {{name: creds, secret: {{secretName: creds}}}}
"#
    ));
    let pod = agent.wait_pod("vault", START, running).unwrap();
    assert_eq!(
        exec_ok(&agent, &pod, "app", &["cat", "/secret/password"]),
        token
    );
    let volume = volume_dir(&agent, &pod, "creds");
    assert_eq!(tmpfs_mounts_at(&volume), 1, "the secret volume is a tmpfs");
    // The scan finds the secret where it is, and nowhere off the tmpfs.
    let everywhere = files_containing(agent.state_dir(), token.as_bytes(), &[]);
    assert!(
        everywhere.iter().all(|p| p.starts_with(&volume)) && !everywhere.is_empty(),
        "{everywhere:?}"
    );
    let tmpfs: Vec<_> = mounts()
        .into_iter()
        .filter(|(_, kind)| kind == "tmpfs")
        .collect();
    let on_disk = files_containing(agent.state_dir(), token.as_bytes(), &tmpfs);
    assert!(on_disk.is_empty(), "the secret is on disk in {on_disk:?}");

    delete_and_check_nothing_left(&agent, &pod);
}

#[test]
fn a_failed_host_path_check_holds_its_pod_back_and_no_other() {
    let host = tempfile::Builder::new()
        .prefix("skiff-test-host-path-")
        .tempdir()
        .unwrap();
    let missing = host.path().join("missing");
    let created = host.path().join("made/here");
    let agent = Agent::start_node(&[]);
    let pod = |name: &str, path: &Path, kind: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox:1.36
    command: [sh, -c, "echo from-{name} > /host/file; exec sleep 3600"]
    volumeMounts:
    - {{name: data, mountPath: /host}}
  volumes:
  - name: data
    hostPath: {{path: {path}, type: {kind}}}
"#,
            path = path.display()
        )
    };
    agent.apply(&pod("broken", &missing, "Directory"));
    agent.apply(&pod("fine", &created, "DirectoryOrCreate"));
    let broken = agent
        .wait_pod("broken", START, |p| {
            p.is_some_and(|p| {
                container_status(p, "app")["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            })
        })
        .unwrap();
    let message = container_status(&broken, "app")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        message,
        format!(
            "volume \"data\": hostPath {} (type Directory): does not exist",
            missing.display()
        )
    );
    assert!(!missing.exists(), "type Directory creates nothing");
    // The other pod runs, its directory made 0755 and mounted.
    agent.wait_pod("fine", START, running);
    assert_eq!(wait_for_file(&created.join("file")), "from-fine\n");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&created).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);
    // Once the directory is there, the held-back pod starts.
    std::fs::create_dir(&missing).unwrap();
    agent.wait_pod("broken", START, running);
    assert_eq!(wait_for_file(&missing.join("file")), "from-broken\n");
    // Deleting a pod leaves its host path alone.
    agent.ok(&["delete", "pod", "fine"]);
    agent.wait_pod("fine", START, |p| p.is_none());
    assert!(created.join("file").exists());
}
