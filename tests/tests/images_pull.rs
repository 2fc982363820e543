//! Pulling images from a real registry: Debian's docker-registry, started by each
//! test in its agent's node namespace (where the agent reaches it on loopback),
//! with the busybox test image and layers of the test's own pushed by skopeo.

use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{Agent, NODE_NAME, container_status};
use skiff_tests::registry::{Registry, busybox_with, host_arch, layer, multi_platform_layout};

const START: Duration = Duration::from_secs(30);
const PORT: u16 = 5000;

fn node(agent: &Agent) -> &skiff_tests::netns::NetNs {
    agent.node_netns.as_ref().expect("a node agent")
}

/// An agent that pulls from 127.0.0.1:PORT (and PORT + 2) over plain HTTP, with
/// a registry on PORT holding test/app:1 and :2; the registry drops first.
fn agent_and_registry(images: &tempfile::TempDir) -> (Agent, Registry) {
    let insecure = format!("127.0.0.1:{PORT}");
    let also_insecure = format!("127.0.0.1:{}", PORT + 2);
    let agent = Agent::start_node(&[
        "--insecure-registry",
        &insecure,
        "--insecure-registry",
        &also_insecure,
    ]);
    let registry = Registry::start(node(&agent), PORT);
    // busybox (the layer the agent has imported already) with a layer of its own.
    let app = busybox_with(
        images.path(),
        "test/app:1",
        &[layer(&[("etc/app-version", "1\n")])],
    );
    registry.push(node(&agent), &app, "test/app:1");
    registry.push(node(&agent), &app, "test/app:2");
    (agent, registry)
}

fn pod(name: &str, image: &str, policy: Option<&str>) -> String {
    let policy = policy
        .map(|p| format!("\n    imagePullPolicy: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {NODE_NAME}\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}{policy}\n    \
         command: [sh, -c, 'cat /etc/app-version; exec sleep 3600']\n"
    )
}

fn running(pod: Option<&Value>) -> bool {
    pod.is_some_and(|p| p["status"]["phase"] == "Running")
}

fn waiting_reason(pod: &Value) -> String {
    container_status(pod, "main")["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The pod's events as (reason, message), oldest first.
fn events(agent: &Agent, pod: &str) -> Vec<(String, String)> {
    let listed: Value =
        serde_json::from_str(&agent.ok(&["get", "events", "-o", "json"])).expect("events JSON");
    let items = listed["items"].as_array().cloned().unwrap_or_default();
    let mut events: Vec<&Value> = items
        .iter()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .collect();
    events.sort_by_key(|e| e["metadata"]["name"].as_str().map(str::to_string));
    events
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            (text("reason"), text("message"))
        })
        .collect()
}

/// Waits until the pod has an event `reason` whose message contains `needle`.
fn wait_event(agent: &Agent, pod: &str, reason: &str, needle: &str) -> String {
    let deadline = Instant::now() + START;
    loop {
        let all = events(agent, pod);
        if let Some((_, message)) = all.iter().find(|(r, m)| r == reason && m.contains(needle)) {
            return message.clone();
        }
        assert!(
            Instant::now() < deadline,
            "pod {pod} got no {reason} event with {needle:?}; it has {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn field<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in {output:?}"))
        .trim()
}

#[test]
fn pull_downloads_only_missing_layers_and_the_image_runs() {
    let images = tempfile::tempdir().expect("image dir");
    let (agent, registry) = agent_and_registry(&images);
    let reference = format!("{}/test/app:1", registry.host);

    let first = agent.ok(&["image", "pull", &reference]);
    assert_eq!(field(&first, "pulled "), reference, "{first}");
    assert!(field(&first, "id: ").starts_with("sha256:"), "{first}");
    assert!(field(&first, "digest: ").starts_with("sha256:"), "{first}");
    // The busybox layer is shared with the imported busybox image.
    assert!(
        field(&first, "layers: ").starts_with("1 downloaded")
            && first.contains("1 already present"),
        "{first}"
    );
    // The config and the new layer.
    assert_eq!(registry.blob_downloads(), 2, "{}", registry.log());

    let again = agent.ok(&["image", "pull", &reference]);
    assert_eq!(field(&again, "id: "), field(&first, "id: "));
    assert_eq!(field(&again, "digest: "), field(&first, "digest: "));
    assert!(
        field(&again, "layers: ").starts_with("0 downloaded (0 bytes), 2 already present"),
        "{again}"
    );
    assert_eq!(
        registry.blob_downloads(),
        2,
        "a second pull downloads no blob: {}",
        registry.log()
    );
    let listed = agent.ok(&["image", "ls"]);
    assert!(listed.contains(&reference), "{listed}");

    // It runs, with both layers in its root file system.
    agent.apply(&pod("pulled", &reference, None));
    let running_pod = agent.wait_pod("pulled", START, running).expect("pod");
    let out = agent.exec(&running_pod, "main", &["cat", "/etc/app-version"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let out = agent.exec(&running_pod, "main", &["busybox", "true"]);
    assert!(out.status.success(), "{out:?}");
    wait_event(
        &agent,
        "pulled",
        "Pulled",
        &format!("Container image \"{reference}\" already present on machine"),
    );
    assert_eq!(
        registry.blob_downloads(),
        2,
        "IfNotPresent pulls nothing for an image on the node"
    );
}

#[test]
fn a_multi_platform_image_gives_this_machines_manifest() {
    let images = tempfile::tempdir().expect("image dir");
    let (agent, registry) = agent_and_registry(&images);
    let here = busybox_with(
        images.path(),
        "test/here:1",
        &[layer(&[("etc/app-version", "this machine's\n")])],
    );
    let there = busybox_with(
        images.path(),
        "test/there:1",
        &[layer(&[("etc/app-version", "another machine's\n")])],
    );
    let other_arch = if host_arch() == "arm64" {
        "s390x"
    } else {
        "arm64"
    };
    // The other platform first: taking the index's first entry would be wrong.
    let layout = multi_platform_layout(
        images.path(),
        "multi",
        &[(other_arch, &there), (host_arch(), &here)],
    );
    registry.push_index(node(&agent), &layout, "test/multi:1");
    let reference = format!("{}/test/multi:1", registry.host);
    let out = agent.ok(&["image", "pull", &reference]);
    // The digest the reference names: the index's.
    assert_eq!(
        field(&out, "digest: "),
        registry.manifest_digest(node(&agent), "test/multi:1")
    );
    agent.apply(&pod("multi", &reference, None));
    let running_pod = agent.wait_pod("multi", START, running).expect("pod");
    let version = agent.exec(&running_pod, "main", &["cat", "/etc/app-version"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout), "this machine's\n");

    // An index with nothing for this machine.
    let layout = multi_platform_layout(images.path(), "foreign", &[(other_arch, &there)]);
    registry.push_index(node(&agent), &layout, "test/foreign:1");
    let reference = format!("{}/test/foreign:1", registry.host);
    let out = agent.cli(&["image", "pull", &reference]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        error.contains(&format!(
            "pulling {reference}: no matching platform: the image index has no manifest for linux/{} (it has linux/{other_arch})",
            host_arch()
        )),
        "{error}"
    );
}

#[test]
fn pods_pull_per_policy_and_back_off_on_failure() {
    let images = tempfile::tempdir().expect("image dir");
    let (agent, registry) = agent_and_registry(&images);

    // Only in the registry; tag 2 defaults to IfNotPresent.
    let only_remote = format!("{}/test/app:2", registry.host);
    agent.apply(&pod("fetched", &only_remote, None));
    agent.wait_pod("fetched", START, running);
    wait_event(
        &agent,
        "fetched",
        "Pulling",
        &format!("Pulling image \"{only_remote}\""),
    );
    let pulled = wait_event(
        &agent,
        "fetched",
        "Pulled",
        &format!("Successfully pulled image \"{only_remote}\" in "),
    );
    assert!(pulled.contains("Image size: "), "{pulled}");
    let names: Vec<String> = events(&agent, "fetched")
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    let position = |reason: &str| names.iter().position(|r| r == reason);
    assert!(
        position("Pulling") < position("Pulled") && position("Pulled") < position("Started"),
        "{names:?}"
    );

    // A tag the registry lacks: ErrImagePull, then ImagePullBackOff.
    let missing = format!("{}/test/app:missing", registry.host);
    agent.apply(&pod("missing", &missing, None));
    let failed = agent
        .wait_pod("missing", START, |p| {
            p.is_some_and(|p| waiting_reason(p) == "ErrImagePull")
        })
        .expect("pod");
    let message = container_status(&failed, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(&format!("pulling {missing}: manifest unknown")),
        "{message}"
    );
    let backing_off = agent
        .wait_pod("missing", START, |p| {
            p.is_some_and(|p| waiting_reason(p) == "ImagePullBackOff")
        })
        .expect("pod");
    let message = container_status(&backing_off, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with(&format!("Back-off pulling image \"{missing}\"")),
        "{message}"
    );
    wait_event(
        &agent,
        "missing",
        "Failed",
        &format!("Failed to pull image \"{missing}\": pulling {missing}: manifest unknown"),
    );
    wait_event(&agent, "missing", "Failed", "Error: ErrImagePull");
    wait_event(
        &agent,
        "missing",
        "BackOff",
        &format!("Back-off pulling image \"{missing}\""),
    );
    wait_event(&agent, "missing", "Failed", "Error: ImagePullBackOff");
    // Back-off: one attempt in the first seconds, not one per pass.
    assert_eq!(
        registry.gets("/v2/test/app/manifests/missing"),
        1,
        "{}",
        registry.log()
    );

    // Never: not pulled, though the registry has it.
    let never = format!("{}/test/app:1", registry.host);
    agent.apply(&pod("never", &never, Some("Never")));
    let pod_json = agent
        .wait_pod("never", START, |p| {
            p.is_some_and(|p| waiting_reason(p) == "ErrImageNeverPull")
        })
        .expect("pod");
    assert_eq!(
        container_status(&pod_json, "main")["state"]["waiting"]["message"],
        format!("Container image \"{never}\" is not present with pull policy of Never")
    );
    wait_event(
        &agent,
        "never",
        "ErrImageNeverPull",
        &format!("Container image \"{never}\""),
    );
    assert_eq!(
        registry.gets("/v2/test/app/manifests/1 "),
        0,
        "Never must not reach the registry: {}",
        registry.log()
    );

    // Always: pulled even though the node has it (the pod "fetched" pulled tag 2).
    agent.apply(&pod("always", &only_remote, Some("Always")));
    agent.wait_pod("always", START, running);
    wait_event(
        &agent,
        "always",
        "Pulled",
        &format!("Successfully pulled image \"{only_remote}\""),
    );
}

#[test]
fn failed_pulls_say_why_and_name_the_reference() {
    let images = tempfile::tempdir().expect("image dir");
    let (agent, registry) = agent_and_registry(&images);
    let fails = |reference: &str| -> String {
        let out = agent.cli(&["image", "pull", reference]);
        assert!(!out.status.success(), "pulling {reference} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let error = fails("Bad:Ref");
    assert!(
        error.contains("Error from server (BadRequest): invalid image reference \"Bad:Ref\""),
        "{error}"
    );

    let missing = format!("{}/test/nothing:1", registry.host);
    let error = fails(&missing);
    assert!(
        error.contains(&format!(
            "Error from server (NotFound): pulling {missing}: manifest unknown"
        )),
        "{error}"
    );

    // A name that cannot resolve (.invalid); the node namespace has no route
    // out, so the lookup fails at once without leaving it.
    let unknown = "registry.invalid/test/app:1";
    let error = fails(unknown);
    assert!(
        error.contains(&format!(
            "Error from server (ServiceUnavailable): pulling {unknown}: unknown host: registry.invalid does not resolve"
        )),
        "{error}"
    );

    // Nothing listens there.
    let unreachable = "127.0.0.1:5009/test/app:1";
    let error = fails(unreachable);
    assert!(
        error.contains(&format!(
            "pulling {unreachable}: cannot reach the registry 127.0.0.1:5009"
        )) && error.contains("Connection refused"),
        "{error}"
    );

    // HTTPS to a plain-HTTP registry: the agent was not told it is insecure.
    let plain = Registry::start(node(&agent), PORT + 1);
    let error = fails(&format!("{}/test/app:1", plain.host));
    assert!(
        error.contains(&format!("--insecure-registry {}", plain.host)),
        "{error}"
    );

    // A layer whose bytes the registry changed: refused, and nothing stored.
    let corrupt = busybox_with(
        images.path(),
        "test/corrupt:1",
        &[layer(&[("etc/corrupt", "the original bytes\n")])],
    );
    registry.push(node(&agent), &corrupt, "test/corrupt:1");
    let manifest = registry.manifest(node(&agent), "test/corrupt:1");
    let layer_digest = manifest["layers"][1]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string();
    let blob = registry.blob_file(&layer_digest);
    let mut bytes = std::fs::read(&blob).expect("layer blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).expect("corrupt the layer blob");
    let reference = format!("{}/test/corrupt:1", registry.host);
    let error = fails(&reference);
    assert!(
        error.contains(&format!(
            "pulling {reference}: digest mismatch: the layer {layer_digest} hashes to sha256:"
        )),
        "{error}"
    );
    let listed = agent.ok(&["image", "ls"]);
    assert!(!listed.contains("test/corrupt"), "{listed}");
    let leftovers: Vec<_> = std::fs::read_dir(agent.state_dir().join("images/tmp"))
        .expect("tmp dir")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A registry that wants credentials skiff does not have.
    let guarded = Registry::start_requiring_auth(node(&agent), PORT + 2);
    let reference = format!("{}/test/app:1", guarded.host);
    let error = fails(&reference);
    assert!(
        error.contains(&format!(
            "Error from server (Forbidden): pulling {reference}: unauthorized"
        )),
        "{error}"
    );
}
