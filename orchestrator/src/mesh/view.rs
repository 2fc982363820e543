//! The mesh's view of the cluster's workloads, as plain data: for each pod IP, the
//! pod's identity and whether its namespace is enrolled (label
//! `skiff.io/mesh: enabled`) and strict (`skiff.io/mesh-mode: strict`).
//!
//! Pods become [`PodEntry`]s (the few fields the mesh needs) and namespaces
//! [`Enrolment`]s, both from the node proxy's watches; [`MeshView::build`] joins
//! them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::identity::Identity;
use super::metrics::Workload as MetricsWorkload;
use crate::controllers::rollout::TEMPLATE_HASH_LABEL;
use crate::model::{DEFAULT_SERVICE_ACCOUNT, Namespace, Pod, PodPhase};

/// The namespace label that enrols its pods in the mesh, and its value.
pub const MESH_LABEL: &str = "skiff.io/mesh";
pub const MESH_ENABLED: &str = "enabled";
/// The namespace label that refuses plaintext from outside the mesh, and its value.
pub const MESH_MODE_LABEL: &str = "skiff.io/mesh-mode";
pub const MESH_STRICT: &str = "strict";

/// What the mesh needs of a pod that has addresses and is not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    /// What AuthorizationPolicy selectors match.
    pub labels: BTreeMap<String, String>,
    /// The workload the metrics name: the owning controller (a Deployment rather
    /// than its ReplicaSet), else the pod.
    pub workload: String,
}

impl PodEntry {
    /// None for a pod without addresses yet or whose containers have finished.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let finished = matches!(
            pod.status.phase,
            Some(PodPhase::Succeeded | PodPhase::Failed)
        );
        let ips: Vec<IpAddr> = pod
            .status
            .pod_ips
            .iter()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if finished || ips.is_empty() {
            return None;
        }
        Some(Self {
            uid: pod.metadata.uid.clone()?,
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone(),
            node: pod.spec.node_name.clone(),
            service_account: pod
                .spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.into()),
            ips,
            labels: pod.metadata.labels.clone(),
            workload: workload_name(pod),
        })
    }

    /// The pod's workload as the mesh's metrics label it.
    pub fn metrics_workload(&self) -> MetricsWorkload {
        MetricsWorkload {
            namespace: self.namespace.clone(),
            name: self.workload.clone(),
        }
    }
}

/// The name of what runs `pod`: its controller's, through a ReplicaSet to the
/// Deployment that made it (whose names add the pod template's hash).
fn workload_name(pod: &Pod) -> String {
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return pod.metadata.name.clone();
    };
    let hash = pod.metadata.labels.get(TEMPLATE_HASH_LABEL);
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .unwrap_or(&owner.name)
            .to_string(),
        _ => owner.name.clone(),
    }
}

/// How a namespace takes part in the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enrolment {
    pub enrolled: bool,
    /// Plaintext from outside the mesh is refused (only with `enrolled`).
    pub strict: bool,
}

impl Enrolment {
    pub fn of(namespace: &Namespace) -> Self {
        let label = |key: &str| namespace.metadata.labels.get(key).map(String::as_str);
        let enrolled = label(MESH_LABEL) == Some(MESH_ENABLED);
        Self {
            enrolled,
            strict: enrolled && label(MESH_MODE_LABEL) == Some(MESH_STRICT),
        }
    }
}

/// A pod as the mesh sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub pod: PodEntry,
    pub identity: Identity,
    pub enrolment: Enrolment,
}

/// Every workload by address.
#[derive(Clone, Debug, Default)]
pub struct MeshView {
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    workloads: Vec<Arc<Workload>>,
}

impl MeshView {
    /// Joins pods with their namespaces' enrolment (namespaces absent from
    /// `namespaces` are not enrolled).
    pub fn build(
        trust_domain: &str,
        namespaces: &BTreeMap<String, Enrolment>,
        pods: &[PodEntry],
    ) -> Self {
        let mut view = Self::default();
        for pod in pods {
            let workload = Arc::new(Workload {
                identity: Identity::new(trust_domain, &pod.namespace, &pod.service_account),
                enrolment: namespaces.get(&pod.namespace).copied().unwrap_or_default(),
                pod: pod.clone(),
            });
            for ip in &pod.ips {
                view.by_ip.insert(*ip, workload.clone());
            }
            view.workloads.push(workload);
        }
        view
    }

    /// The workload at `ip`, if a pod has it.
    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// The enrolled workloads on `node`.
    pub fn enrolled_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads
            .iter()
            .filter(move |w| w.enrolment.enrolled && w.pod.node.as_deref() == Some(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).expect("yaml");
        serde_json::from_value(value).expect("object")
    }

    fn pod(yaml: &str) -> Pod {
        decode(yaml)
    }

    fn namespace(yaml: &str) -> Namespace {
        decode(yaml)
    }

    #[test]
    fn a_pods_workload_is_its_deployment_its_controller_or_itself() {
        let status = "status: {phase: Running, podIPs: [{ip: 10.244.0.7}]}";
        let workload = |metadata: &str| {
            let yaml = format!(
                "metadata: {{name: web-5d8f7-x2k9p, uid: u1, {metadata}}}\nspec: {{containers: []}}\n{status}"
            );
            PodEntry::from_pod(&pod(&yaml)).expect("entry").workload
        };
        let owned = |kind: &str, name: &str| {
            format!(
                "ownerReferences: [{{apiVersion: apps/v1, kind: {kind}, name: {name}, uid: o1, controller: true}}]"
            )
        };
        let from_deployment = format!(
            "labels: {{pod-template-hash: 5d8f7}}, {}",
            owned("ReplicaSet", "web-5d8f7")
        );
        assert_eq!(workload(&from_deployment), "web");
        // A ReplicaSet of its own keeps its name.
        assert_eq!(workload(&owned("ReplicaSet", "web-5d8f7")), "web-5d8f7");
        assert_eq!(workload(&owned("Job", "nightly")), "nightly");
        assert_eq!(workload("labels: {app: web}"), "web-5d8f7-x2k9p");
    }

    #[test]
    fn a_pod_with_addresses_is_an_entry_with_its_service_account() {
        let running = pod(
            "metadata: {name: web, namespace: shop, uid: u1}\nspec: {nodeName: n1, serviceAccountName: front, containers: []}\nstatus: {phase: Running, podIPs: [{ip: 10.244.0.7}, {ip: 'fd00:10:244::7'}]}",
        );
        let entry = PodEntry::from_pod(&running).expect("entry");
        assert_eq!(entry.service_account, "front");
        assert_eq!(entry.ips.len(), 2);
        assert_eq!(entry.node.as_deref(), Some("n1"));
        let pending =
            pod("metadata: {name: web, namespace: shop, uid: u1}\nspec: {containers: []}");
        assert_eq!(PodEntry::from_pod(&pending), None);
        let done = pod(
            "metadata: {name: job, uid: u2}\nspec: {containers: []}\nstatus: {phase: Succeeded, podIPs: [{ip: 10.244.0.8}]}",
        );
        assert_eq!(PodEntry::from_pod(&done), None);
        let default_account = pod(
            "metadata: {name: a, uid: u3}\nspec: {containers: []}\nstatus: {podIPs: [{ip: 10.244.0.9}]}",
        );
        let entry = PodEntry::from_pod(&default_account).expect("entry");
        assert_eq!(
            (entry.namespace.as_str(), entry.service_account.as_str()),
            ("default", "default")
        );
    }

    #[test]
    fn namespace_labels_decide_enrolment_and_strictness() {
        let of = |labels: &str| {
            Enrolment::of(&namespace(&format!(
                "metadata: {{name: shop, labels: {{{labels}}}}}"
            )))
        };
        assert_eq!(of(""), Enrolment::default());
        assert_eq!(
            of("skiff.io/mesh: enabled"),
            Enrolment {
                enrolled: true,
                strict: false
            }
        );
        assert!(!of("skiff.io/mesh: disabled").enrolled);
        assert_eq!(
            of("skiff.io/mesh: enabled, skiff.io/mesh-mode: strict"),
            Enrolment {
                enrolled: true,
                strict: true
            }
        );
        // Strict means nothing outside the mesh.
        assert_eq!(of("skiff.io/mesh-mode: strict"), Enrolment::default());
    }

    #[test]
    fn the_view_finds_workloads_by_address_and_the_enrolled_ones_by_node() {
        let entry = |uid: &str, ns: &str, node: &str, ip: &str| PodEntry {
            uid: uid.into(),
            namespace: ns.into(),
            name: uid.into(),
            node: Some(node.into()),
            service_account: "default".into(),
            ips: vec![ip.parse().expect("ip")],
            labels: BTreeMap::new(),
            workload: uid.into(),
        };
        let pods = [
            entry("a", "shop", "n1", "10.244.0.7"),
            entry("b", "shop", "n2", "10.244.1.7"),
            entry("c", "plain", "n1", "10.244.0.8"),
        ];
        let namespaces = BTreeMap::from([(
            "shop".to_string(),
            Enrolment {
                enrolled: true,
                strict: false,
            },
        )]);
        let view = MeshView::build("cluster.local", &namespaces, &pods);
        let b = view.workload("10.244.1.7".parse().expect("ip")).expect("b");
        assert_eq!(
            b.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/default"
        );
        assert!(b.enrolment.enrolled);
        let c = view.workload("10.244.0.8".parse().expect("ip")).expect("c");
        assert!(!c.enrolment.enrolled);
        let on_n1: Vec<&str> = view.enrolled_on("n1").map(|w| w.pod.uid.as_str()).collect();
        assert_eq!(on_n1, ["a"]);
    }
}
