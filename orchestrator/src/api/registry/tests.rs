//! The registry's rules against a real embedded store in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use super::*;
use crate::api::allocator::ServiceNetworks;
use crate::api::encryption::{KEY_LEN, SecretBox};
use crate::model::{FieldSelector, Kind, Selector};
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;

struct Fixture {
    registry: Registry,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
    let registry = Registry::new(
        store.clone(),
        SecretBox::new(&[3u8; KEY_LEN]).unwrap(),
        ServiceNetworks::default(),
    );
    registry.bootstrap().await.unwrap();
    Fixture {
        registry,
        store,
        _dir: dir,
    }
}

fn configmap(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
        }
    })
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

fn reference(kind: Kind, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: kind.namespaced().then(|| "default".to_string()),
        name: name.into(),
    }
}

async fn apply_one(registry: &Registry, value: Value) -> Applied {
    registry.apply(vec![value]).await.unwrap().remove(0)
}

#[tokio::test]
async fn create_sets_server_owned_metadata() {
    let f = fixture().await;
    let applied = apply_one(&f.registry, configmap("settings", json!({"a": "1"}))).await;
    assert_eq!(applied.outcome, Outcome::Created);
    let meta = &applied.object["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["generation"], 1);
    assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    let revision = f.store.revision().await.unwrap();
    assert_eq!(meta["resourceVersion"], revision.to_string());
}

#[tokio::test]
async fn reapplying_is_unchanged_and_writes_nothing() {
    let f = fixture().await;
    apply_one(&f.registry, configmap("settings", json!({"a": "1"}))).await;
    let before = f.store.revision().await.unwrap();
    let again = apply_one(&f.registry, configmap("settings", json!({"a": "1"}))).await;
    assert_eq!(again.outcome, Outcome::Unchanged);
    assert_eq!(f.store.revision().await.unwrap(), before);
    assert_eq!(
        again.object["metadata"]["resourceVersion"],
        before.to_string()
    );
}

#[tokio::test]
async fn generation_counts_spec_changes_only() {
    let f = fixture().await;
    let created = apply_one(&f.registry, deployment("web", 2)).await;
    let mut relabelled = deployment("web", 2);
    relabelled["metadata"]["labels"]["tier"] = json!("front");
    let relabelled = apply_one(&f.registry, relabelled).await;
    assert_eq!(relabelled.outcome, Outcome::Configured);
    assert_eq!(relabelled.object["metadata"]["generation"], 1);
    let scaled = apply_one(&f.registry, deployment("web", 5)).await;
    assert_eq!(scaled.object["metadata"]["generation"], 2);
    assert_eq!(
        scaled.object["metadata"]["uid"],
        created.object["metadata"]["uid"]
    );
    assert_eq!(
        scaled.object["metadata"]["creationTimestamp"],
        created.object["metadata"]["creationTimestamp"]
    );
}

#[tokio::test]
async fn status_is_kept_by_apply_and_changed_only_by_update_status() {
    let f = fixture().await;
    let created = apply_one(&f.registry, deployment("web", 2)).await;
    let mut with_status = created.object.clone();
    with_status["status"] = json!({"replicas": 2, "readyReplicas": 1});
    let updated = f.registry.update_status(with_status).await.unwrap();
    assert_eq!(updated["status"]["readyReplicas"], 1);
    assert_eq!(updated["metadata"]["generation"], 1);

    // A user's apply (status or not) keeps the stored status.
    let mut manifest = deployment("web", 3);
    manifest["status"] = json!({"replicas": 99});
    let applied = apply_one(&f.registry, manifest).await;
    assert_eq!(applied.object["status"]["readyReplicas"], 1);
    assert_eq!(applied.object["status"]["replicas"], 2);

    // A status update from a stale read conflicts.
    let mut stale = updated.clone();
    stale["status"]["readyReplicas"] = json!(2);
    let err = f.registry.update_status(stale).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn a_request_is_all_or_nothing() {
    let f = fixture().await;
    let mut bad = deployment("broken", 1);
    bad["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 70000}]);
    let err = f
        .registry
        .apply(vec![configmap("fine", json!({})), bad])
        .await
        .unwrap_err();
    let ApiError::Invalid(violations) = err else {
        panic!("expected a validation error")
    };
    assert_eq!(
        violations,
        [Violation {
            index: 1,
            field: "spec.template.spec.containers[0].ports[0].containerPort".into(),
            reason: "70000 is not a valid port (1-65535)".into()
        }]
    );
    let missing = f.registry.get(&reference(Kind::ConfigMap, "fine")).await;
    assert!(matches!(missing, Err(ApiError::NotFound { .. })));
}

#[tokio::test]
async fn objects_need_their_namespace_unless_it_comes_along() {
    let f = fixture().await;
    let mut cm = configmap("x", json!({}));
    cm["metadata"]["namespace"] = json!("shop");
    let err = f.registry.apply(vec![cm.clone()]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "objects[0]: metadata.namespace: namespaces \"shop\" not found"
    );
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
    let applied = f.registry.apply(vec![cm, namespace]).await.unwrap();
    assert_eq!(applied[0].object["metadata"]["namespace"], "shop");
}

#[tokio::test]
async fn the_same_object_twice_in_a_request_is_refused() {
    let f = fixture().await;
    let err = f
        .registry
        .apply(vec![
            configmap("x", json!({})),
            configmap("x", json!({"a": "b"})),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "objects[1]: configmaps \"x\" appears twice in one request (also objects[0])"
    );
}

#[tokio::test]
async fn generate_name_gets_a_unique_suffix() {
    let f = fixture().await;
    let template =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "job-"}});
    let a = apply_one(&f.registry, template.clone()).await;
    let b = apply_one(&f.registry, template).await;
    let (a, b) = (
        a.object["metadata"]["name"].as_str().unwrap().to_string(),
        b.object["metadata"]["name"].as_str().unwrap().to_string(),
    );
    assert!(a.starts_with("job-") && a.len() == 9, "{a}");
    assert_ne!(a, b);
}

async fn allocation_keys_in_store(store: &Arc<dyn Store>) -> Vec<String> {
    let mut keys = Vec::new();
    for prefix in ["/registry/serviceips/", "/registry/servicenodeports/"] {
        keys.extend(
            store
                .list(prefix)
                .await
                .unwrap()
                .0
                .into_iter()
                .map(|kv| kv.key),
        );
    }
    keys
}

#[tokio::test]
async fn services_get_addresses_by_family_policy_and_keep_them() {
    let f = fixture().await;
    let single = apply_one(&f.registry, service("a", json!({"ports": [{"port": 80}]}))).await;
    let spec = &single.object["spec"];
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    let ip = spec["clusterIP"].as_str().unwrap().to_string();
    assert!(
        ServiceNetworks::default().assignable(ip.parse().unwrap()),
        "{ip}"
    );

    let dual = apply_one(
        &f.registry,
        service(
            "b",
            json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
        ),
    )
    .await;
    let ips = dual.object["spec"]["clusterIPs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(ips.len(), 2);
    assert!(ips[1].as_str().unwrap().starts_with("fd00:10:96::"));

    // An update that leaves the ClusterIP out keeps it.
    let updated = apply_one(&f.registry, service("a", json!({"ports": [{"port": 81}]}))).await;
    assert_eq!(updated.object["spec"]["clusterIP"], ip);
    assert_eq!(allocation_keys_in_store(&f.store).await.len(), 3);
}

#[tokio::test]
async fn headless_and_external_name_services_allocate_nothing() {
    let f = fixture().await;
    let headless = apply_one(
        &f.registry,
        service(
            "h",
            json!({"clusterIP": "None", "selector": {"app": "h"}, "ports": [{"port": 80}]}),
        ),
    )
    .await;
    assert_eq!(headless.object["spec"]["clusterIPs"], json!(["None"]));
    let external = apply_one(
        &f.registry,
        service(
            "e",
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
        ),
    )
    .await;
    assert!(external.object["spec"]["clusterIP"].is_null());
    assert_eq!(
        allocation_keys_in_store(&f.store).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn node_ports_are_allocated_kept_and_released() {
    let f = fixture().await;
    let svc = service(
        "np",
        json!({"type": "NodePort", "ports": [{"port": 80}, {"name": "b", "port": 81}]}),
    );
    let mut svc_named = svc.clone();
    svc_named["spec"]["ports"][0]["name"] = json!("a");
    let created = apply_one(&f.registry, svc_named.clone()).await;
    let ports: Vec<u64> = created.object["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["nodePort"].as_u64().unwrap())
        .collect();
    assert!(
        ports.iter().all(|p| (30000..=32767).contains(p)),
        "{ports:?}"
    );
    assert_ne!(ports[0], ports[1]);
    let again = apply_one(&f.registry, svc_named).await;
    assert_eq!(again.outcome, Outcome::Unchanged);

    // Taking a held port elsewhere is refused with the holder's name.
    let thief = service(
        "thief",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": ports[0]}]}),
    );
    let err = f.registry.apply(vec![thief]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "objects[0]: spec.ports[0].nodePort: {} is already allocated to service default/np",
            ports[0]
        )
    );

    f.registry
        .delete(
            &reference(Kind::Service, "np"),
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    assert_eq!(
        allocation_keys_in_store(&f.store).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn requested_cluster_ips_are_checked() {
    let f = fixture().await;
    for (ip, reason) in [
        (
            "10.0.0.1",
            "10.0.0.1 is not in the service CIDR 10.96.0.0/12",
        ),
        ("banana", "\"banana\" is not a valid IP address or \"None\""),
    ] {
        let err = f
            .registry
            .apply(vec![service(
                "s",
                json!({"clusterIP": ip, "ports": [{"port": 80}]}),
            )])
            .await
            .unwrap_err();
        assert!(err.to_string().ends_with(reason), "{err}");
    }
    let ok = apply_one(
        &f.registry,
        service(
            "dns",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
        ),
    )
    .await;
    assert_eq!(ok.object["spec"]["clusterIP"], "10.96.0.10");
}

#[tokio::test]
async fn concurrent_applies_never_share_an_address() {
    let f = fixture().await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let registry = f.registry.clone();
        tasks.push(tokio::spawn(async move {
            apply_one(
                &registry,
                service(&format!("s{i}"), json!({"ports": [{"port": 80}]})),
            )
            .await
        }));
    }
    let mut ips = std::collections::HashSet::new();
    for task in tasks {
        let applied = task.await.unwrap();
        assert!(
            ips.insert(
                applied.object["spec"]["clusterIP"]
                    .as_str()
                    .unwrap()
                    .to_string()
            )
        );
    }
    assert_eq!(ips.len(), 24);
}

fn pod(name: &str, node: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}

#[tokio::test]
async fn bound_pods_terminate_gracefully_unbound_ones_go_at_once() {
    let f = fixture().await;
    apply_one(&f.registry, pod("bound", Some("node-1"))).await;
    apply_one(&f.registry, pod("loose", None)).await;

    let deleted = f
        .registry
        .delete(
            &reference(Kind::Pod, "bound"),
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    assert!(deleted.terminating);
    assert_eq!(deleted.object["metadata"]["deletionGracePeriodSeconds"], 30);
    let still = f
        .registry
        .get(&reference(Kind::Pod, "bound"))
        .await
        .unwrap();
    assert!(still["metadata"]["deletionTimestamp"].is_string());
    // Grace 0 forces the removal.
    let forced = f
        .registry
        .delete(
            &reference(Kind::Pod, "bound"),
            Some(0),
            Propagation::Background,
        )
        .await
        .unwrap();
    assert!(!forced.terminating);
    assert!(
        f.registry
            .get(&reference(Kind::Pod, "bound"))
            .await
            .is_err()
    );

    let loose = f
        .registry
        .delete(
            &reference(Kind::Pod, "loose"),
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    assert!(!loose.terminating);
}

#[tokio::test]
async fn finalizers_hold_an_object_until_they_are_removed() {
    let f = fixture().await;
    let mut held = configmap("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/cleanup"]);
    apply_one(&f.registry, held).await;
    let deleted = f
        .registry
        .delete(
            &reference(Kind::ConfigMap, "held"),
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    assert!(deleted.terminating);
    assert!(
        f.registry
            .get(&reference(Kind::ConfigMap, "held"))
            .await
            .is_ok()
    );
    // The controller finishes its cleanup and drops the finalizer: the object goes.
    apply_one(&f.registry, configmap("held", json!({}))).await;
    assert!(matches!(
        f.registry.get(&reference(Kind::ConfigMap, "held")).await,
        Err(ApiError::NotFound { .. })
    ));
}

async fn owned_by(registry: &Registry, name: &str, owner: &Value) -> Value {
    let mut cm = configmap(name, json!({}));
    cm["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "ConfigMap",
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"]
    }]);
    apply_one(registry, cm).await.object
}

#[tokio::test]
async fn cascading_deletes_follow_owner_references() {
    let f = fixture().await;
    // owner -> child -> grandchild
    let owner = apply_one(&f.registry, configmap("owner", json!({})))
        .await
        .object;
    let child = owned_by(&f.registry, "child", &owner).await;
    owned_by(&f.registry, "grandchild", &child).await;
    f.registry
        .delete(
            &reference(Kind::ConfigMap, "owner"),
            None,
            Propagation::Foreground,
        )
        .await
        .unwrap();
    for name in ["owner", "child", "grandchild"] {
        assert!(
            f.registry
                .get(&reference(Kind::ConfigMap, name))
                .await
                .is_err(),
            "{name}"
        );
    }

    let owner = apply_one(&f.registry, configmap("owner", json!({})))
        .await
        .object;
    owned_by(&f.registry, "orphan", &owner).await;
    f.registry
        .delete(
            &reference(Kind::ConfigMap, "owner"),
            None,
            Propagation::Orphan,
        )
        .await
        .unwrap();
    let orphan = f
        .registry
        .get(&reference(Kind::ConfigMap, "orphan"))
        .await
        .unwrap();
    assert!(orphan["metadata"]["ownerReferences"].is_null(), "{orphan}");
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents() {
    let f = fixture().await;
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}});
    let mut cm = configmap("inside", json!({}));
    cm["metadata"]["namespace"] = json!("gone");
    f.registry.apply(vec![namespace, cm]).await.unwrap();
    f.registry
        .delete(
            &ObjectRef {
                kind: Kind::Namespace,
                namespace: None,
                name: "gone".into(),
            },
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    let (left, _) = f
        .registry
        .list(
            Kind::ConfigMap,
            Some("gone"),
            &Selector::everything(),
            &FieldSelector::everything(),
        )
        .await
        .unwrap();
    assert!(left.is_empty());
}

#[tokio::test]
async fn secrets_are_sealed_in_the_store() {
    let f = fixture().await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                        "stringData": {"password": "s3cr3t-value"}});
    apply_one(&f.registry, secret).await;
    let (kv, _) = f.store.get("/registry/secrets/default/db").await.unwrap();
    let raw = kv.unwrap().value;
    assert!(SecretBox::is_sealed(&raw));
    assert!(!raw.windows(12).any(|w| w == b"s3cr3t-value"));
    let read = f
        .registry
        .get(&reference(Kind::Secret, "db"))
        .await
        .unwrap();
    assert_eq!(read["data"]["password"], "czNjcjN0LXZhbHVl");
}

#[tokio::test]
async fn watches_follow_selectors_as_kubernetes_does() {
    let f = fixture().await;
    let labelled = |name: &str, tier: &str| {
        let mut cm = configmap(name, json!({}));
        cm["metadata"]["labels"] = json!({"tier": tier});
        cm
    };
    apply_one(&f.registry, labelled("a", "web")).await;
    let mut events = f
        .registry
        .watch(
            Kind::ConfigMap,
            Some("default"),
            Selector::parse("tier=web").unwrap(),
            FieldSelector::everything(),
            "",
        )
        .await
        .unwrap();
    apply_one(&f.registry, labelled("b", "db")).await; // never matches: no event
    apply_one(&f.registry, labelled("b", "web")).await; // starts matching: ADDED
    apply_one(&f.registry, labelled("a", "db")).await; // stops matching: DELETED
    f.registry
        .delete(
            &reference(Kind::ConfigMap, "b"),
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push((event.event_type, event.object.metadata().name.clone()));
    }
    let names = |v: &[(EventType, String)]| {
        v.iter()
            .map(|(t, n)| format!("{t:?} {n}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&seen),
        ["Added a", "Added b", "Deleted a", "Deleted b"]
    );
}

/// What a watch told: (type, namespace/name, resourceVersion) per event.
async fn told(events: &mut WatchStream, count: usize) -> Vec<(EventType, String, String)> {
    let mut seen = Vec::new();
    for _ in 0..count {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event within 5 s")
            .expect("the watch goes on")
            .expect("no error");
        let meta = event.object.metadata();
        seen.push((
            event.event_type,
            format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name),
            meta.resource_version.clone().unwrap_or_default(),
        ));
    }
    seen
}

#[tokio::test]
async fn watches_from_the_cache_window_and_from_the_store_tell_the_same() {
    let f = fixture().await;
    let watch_from = |revision: u64| {
        let registry = f.registry.clone();
        async move {
            registry
                .watch(
                    Kind::ConfigMap,
                    Some("default"),
                    Selector::everything(),
                    FieldSelector::everything(),
                    &revision.to_string(),
                )
                .await
                .unwrap()
        }
    };
    let before_cache = f.store.revision().await.unwrap();
    apply_one(&f.registry, configmap("early", json!({}))).await;
    // The first watch starts the kind's cache at the current revision.
    let started = f.store.revision().await.unwrap();
    let mut live = watch_from(started).await;
    apply_one(&f.registry, configmap("a", json!({"v": "1"}))).await;
    let mut other = configmap("elsewhere", json!({}));
    other["metadata"]["namespace"] = json!("kube-system");
    apply_one(&f.registry, other).await;
    apply_one(&f.registry, configmap("a", json!({"v": "2"}))).await;
    f.registry
        .delete(
            &reference(Kind::ConfigMap, "a"),
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    // Starting behind the cache: replayed from its window...
    let mut from_window = watch_from(started).await;
    // ...or, from before the cache started, read from the store.
    let mut from_store = watch_from(before_cache).await;

    let expected = told(&mut live, 3).await;
    let kinds: Vec<_> = expected.iter().map(|(t, n, _)| (*t, n.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (EventType::Added, "default/a"),
            (EventType::Modified, "default/a"),
            (EventType::Deleted, "default/a"),
        ]
    );
    let deleted_at = f.store.revision().await.unwrap().to_string();
    assert_eq!(
        expected[2].2, deleted_at,
        "a deletion's version is the deleting revision"
    );
    assert_eq!(told(&mut from_window, 3).await, expected);
    let store_told = told(&mut from_store, 4).await;
    assert_eq!(store_told[0].1, "default/early");
    assert_eq!(store_told[1..], expected[..]);
}

#[tokio::test]
async fn watchers_of_a_kind_share_one_decoded_object() {
    let f = fixture().await;
    let now = f.store.revision().await.unwrap().to_string();
    let watch = || {
        f.registry.watch(
            Kind::ConfigMap,
            None,
            Selector::everything(),
            FieldSelector::everything(),
            &now,
        )
    };
    let (mut first, mut second) = (watch().await.unwrap(), watch().await.unwrap());
    apply_one(&f.registry, configmap("shared", json!({}))).await;
    let a = first.next().await.unwrap().unwrap().object;
    let b = second.next().await.unwrap().unwrap().object;
    assert_eq!(a.metadata().name, "shared");
    assert!(Arc::ptr_eq(&a, &b), "decoded once for both watchers");
}

#[tokio::test]
async fn watching_a_compacted_version_is_expired() {
    let f = fixture().await;
    let first = apply_one(&f.registry, configmap("x", json!({"v": "1"}))).await;
    let version = first.object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    apply_one(&f.registry, configmap("x", json!({"v": "2"}))).await;
    let now = f.store.revision().await.unwrap();
    f.store.compact(now).await.unwrap();
    let result = f
        .registry
        .watch(
            Kind::ConfigMap,
            None,
            Selector::everything(),
            FieldSelector::everything(),
            "1",
        )
        .await;
    let Err(err) = result else {
        panic!("expected expiry")
    };
    assert_eq!(
        err.to_string(),
        format!("too old resource version: 1 ({now})")
    );
    assert!(version.parse::<u64>().is_ok());
}

#[tokio::test]
async fn binding_sets_the_node_once_and_clears_the_nomination() {
    let f = fixture().await;
    let created = apply_one(&f.registry, pod("pending", None)).await;
    let uid = created.object["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nominated = created.object.clone();
    nominated["status"] = json!({"nominatedNodeName": "node-1"});
    f.registry.update_status(nominated).await.unwrap();
    let at = reference(Kind::Pod, "pending");

    let error = f
        .registry
        .bind(&at, Some("not-its-uid"), "node-1")
        .await
        .unwrap_err();
    assert!(matches!(error, ApiError::Conflict { .. }), "{error}");

    let bound = f
        .registry
        .bind(&at, Some(&uid), "node-1")
        .await
        .unwrap()
        .to_value();
    assert_eq!(bound["spec"]["nodeName"], "node-1");
    assert!(bound["status"]["nominatedNodeName"].is_null());
    assert_eq!(
        f.registry.get(&at).await.unwrap()["spec"]["nodeName"],
        "node-1"
    );

    let error = f.registry.bind(&at, None, "node-2").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "Operation cannot be fulfilled on pods/binding \"pending\": pod pending is already \
         assigned to node \"node-1\""
    );
    let missing = f
        .registry
        .bind(&reference(Kind::Pod, "nobody"), None, "node-1")
        .await
        .unwrap_err();
    assert!(matches!(missing, ApiError::NotFound { .. }), "{missing}");
    let not_a_pod = f
        .registry
        .bind(&reference(Kind::ConfigMap, "settings"), None, "node-1")
        .await
        .unwrap_err();
    assert_eq!(
        not_a_pod.to_string(),
        "only pods can be bound to nodes, not configmaps"
    );
}

/// A pod with `spec` fields besides its one container.
#[tokio::test]
async fn binding_from_a_stale_watch_cache_still_binds_once() {
    let f = fixture().await;
    // A pod watch starts the pods' watch cache, which bindings start from.
    let now = f.store.revision().await.unwrap().to_string();
    let _watch = f
        .registry
        .watch(
            Kind::Pod,
            None,
            Selector::everything(),
            FieldSelector::everything(),
            &now,
        )
        .await
        .unwrap();
    let mut uids = Vec::new();
    for name in ["a", "b", "c"] {
        let created = apply_one(&f.registry, pod(name, None)).await;
        uids.push(
            created.object["metadata"]["uid"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for (name, uid) in ["a", "b", "c"].iter().zip(&uids) {
        let at = reference(Kind::Pod, name);
        f.registry.bind(&at, Some(uid), "node-1").await.unwrap();
        // At once, while the cache may still hold the unbound pod.
        let again = f.registry.bind(&at, Some(uid), "node-2").await.unwrap_err();
        assert!(matches!(again, ApiError::AlreadyBound { .. }), "{again}");
        assert_eq!(
            f.registry.get(&at).await.unwrap()["spec"]["nodeName"],
            "node-1"
        );
    }
}

fn pod_with(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "image": "busybox:1.36"}]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn priority_class(name: &str, value: i32, extra: Value) -> Value {
    let mut class = json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": name}, "value": value
    });
    if let (Some(class), Some(extra)) = (class.as_object_mut(), extra.as_object()) {
        class.extend(extra.clone());
    }
    class
}

/// The one violation of a refused request.
fn violation(err: ApiError) -> Violation {
    let ApiError::Invalid(mut violations) = err else {
        panic!("expected a validation error, got {err}")
    };
    assert_eq!(violations.len(), 1, "{violations:?}");
    violations.remove(0)
}

#[tokio::test]
async fn pods_get_their_priority_from_their_class_at_creation() {
    let f = fixture().await;
    // No class at all: 0, and the default policy.
    let plain = apply_one(&f.registry, pod_with("plain", json!({}))).await;
    assert_eq!(plain.object["spec"]["priority"], 0);
    assert_eq!(
        plain.object["spec"]["preemptionPolicy"],
        "PreemptLowerPriority"
    );
    assert!(plain.object["spec"]["priorityClassName"].is_null());
    apply_one(
        &f.registry,
        priority_class("gold", 1000, json!({"preemptionPolicy": "Never"})),
    )
    .await;
    apply_one(
        &f.registry,
        priority_class("usual", 10, json!({"globalDefault": true})),
    )
    .await;
    let gold = apply_one(
        &f.registry,
        pod_with("gold", json!({"priorityClassName": "gold"})),
    )
    .await;
    assert_eq!(gold.object["spec"]["priority"], 1000);
    assert_eq!(gold.object["spec"]["preemptionPolicy"], "Never");
    // The global default class is named on pods that name none.
    let usual = apply_one(&f.registry, pod_with("usual", json!({}))).await;
    assert_eq!(usual.object["spec"]["priority"], 10);
    assert_eq!(usual.object["spec"]["priorityClassName"], "usual");
    // Agreeing with the class is fine; an update without the fields keeps them.
    let same = pod_with(
        "same",
        json!({"priorityClassName": "gold", "priority": 1000}),
    );
    apply_one(&f.registry, same).await;
    let again = apply_one(
        &f.registry,
        pod_with("gold", json!({"priorityClassName": "gold"})),
    )
    .await;
    assert_eq!(again.outcome, Outcome::Unchanged);
    // The class may go later; its pods keep their priority.
    f.registry
        .delete(
            &reference(Kind::PriorityClass, "gold"),
            None,
            Propagation::Background,
        )
        .await
        .unwrap();
    let kept = f.registry.get(&reference(Kind::Pod, "gold")).await.unwrap();
    assert_eq!(kept["spec"]["priority"], 1000);
}

#[tokio::test]
async fn pods_naming_a_missing_class_or_another_priority_are_refused() {
    let f = fixture().await;
    let err = f
        .registry
        .apply(vec![pod_with(
            "lost",
            json!({"priorityClassName": "platinum"}),
        )])
        .await
        .unwrap_err();
    assert_eq!(
        violation(err),
        Violation {
            index: 0,
            field: "spec.priorityClassName".into(),
            reason: "no PriorityClass named \"platinum\" was found".into()
        }
    );
    apply_one(&f.registry, priority_class("gold", 1000, json!({}))).await;
    let err = f
        .registry
        .apply(vec![pod_with(
            "greedy",
            json!({"priorityClassName": "gold", "priority": 2000}),
        )])
        .await
        .unwrap_err();
    assert_eq!(
        violation(err).to_string(),
        "objects[0]: spec.priority: 2000 disagrees with the PriorityClass \"gold\" (1000): \
         leave it unset"
    );
    let err = f
        .registry
        .apply(vec![pod_with(
            "polite",
            json!({"priorityClassName": "gold", "preemptionPolicy": "Never"}),
        )])
        .await
        .unwrap_err();
    assert_eq!(violation(err).field, "spec.preemptionPolicy");
    for name in ["lost", "greedy", "polite"] {
        let missing = f.registry.get(&reference(Kind::Pod, name)).await;
        assert!(matches!(missing, Err(ApiError::NotFound { .. })), "{name}");
    }
}

#[tokio::test]
async fn a_new_pod_must_name_an_existing_service_account_but_default() {
    let f = fixture().await;
    // `default` is the controller's to create; a pod need not wait for it.
    let applied = apply_one(&f.registry, pod("plain", None)).await;
    assert_eq!(applied.object["spec"]["serviceAccountName"], "default");
    assert_eq!(applied.object["spec"]["serviceAccount"], "default");

    let mut named = pod("named", None);
    named["spec"]["serviceAccountName"] = json!("builder");
    let err = f.registry.apply(vec![named.clone()]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "objects[0]: spec.serviceAccountName: error looking up service account default/builder: serviceaccount \"builder\" not found"
    );
    assert!(matches!(
        f.registry.get(&reference(Kind::Pod, "named")).await,
        Err(ApiError::NotFound { .. })
    ));
    // The deprecated alias names the account just the same.
    let mut aliased = pod("aliased", None);
    aliased["spec"]["serviceAccount"] = json!("builder");
    let err = f.registry.apply(vec![aliased]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("serviceaccount \"builder\" not found"),
        "{err}"
    );

    // The account in the same request, or created before, is found.
    let account =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}});
    let applied = f.registry.apply(vec![named, account]).await.unwrap();
    assert_eq!(applied[0].object["spec"]["serviceAccountName"], "builder");
    let mut second = pod("second", None);
    second["spec"]["serviceAccount"] = json!("builder");
    let applied = apply_one(&f.registry, second).await;
    assert_eq!(applied.object["spec"]["serviceAccountName"], "builder");
}
