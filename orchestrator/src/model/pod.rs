//! Pods (core/v1) and the pod template the workload kinds stamp them from: containers,
//! volumes, probes, scheduling constraints, and the status the node agent reports.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::account::DEFAULT_SERVICE_ACCOUNT;
use super::meta::Condition;
use super::object::{Resource, enum_name, is_default, spec_and_status};
use super::selector::{check_operator_values, validate_label_selector};
use super::validation::{
    FieldErrors, Format, Path, check_exactly_one, check_format, check_labels, check_min,
    check_name, check_optional, check_port, check_range, check_required, check_unique,
};
use super::{IntOrString, LabelSelector, ObjectMeta, ParsedQuantity, PreemptionPolicy, Quantity};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    #[serde(skip_serializing_if = "is_default")]
    pub status: PodStatus,
}

/// The pod a workload creates: its labels must match the workload's selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PodTemplateSpec {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Run to completion, one after the other, before `containers` start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    pub restart_policy: Option<RestartPolicy>,
    pub termination_grace_period_seconds: Option<i64>,
    /// The node the pod is bound to; set by the scheduler, or by the user to bypass it.
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Option<Affinity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    pub priority_class_name: Option<String>,
    /// Set at creation from the PriorityClass (admission); a pod may not choose it.
    pub priority: Option<i32>,
    /// Set at creation from the PriorityClass, like `priority`.
    pub preemption_policy: Option<PreemptionPolicy>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    /// The ServiceAccount the pod runs as (its mesh identity); `default` when unset.
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`, read when that is unset and kept
    /// equal to it, as Kubernetes does.
    pub service_account: Option<String>,
    pub dns_policy: Option<DnsPolicy>,
    pub host_network: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsPolicy {
    /// Cluster DNS first, then the node's resolvers.
    ClusterFirst,
    /// The node's resolv.conf.
    Default,
    /// No DNS configuration at all.
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: Option<ImagePullPolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(skip_serializing_if = "is_default")]
    pub resources: ResourceRequirements,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub lifecycle: Option<Lifecycle>,
    pub security_context: Option<SecurityContext>,
    pub termination_message_path: Option<String>,
    pub stdin: Option<bool>,
    pub tty: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<EnvVarSource>,
}

/// Where an environment variable's value comes from; exactly one is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVarSource {
    pub config_map_key_ref: Option<KeySelector>,
    pub secret_key_ref: Option<KeySelector>,
    pub field_ref: Option<ObjectFieldSelector>,
}

/// A key of a ConfigMap or Secret in the pod's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KeySelector {
    pub name: String,
    pub key: String,
    /// When true, a missing object or key leaves the variable unset instead of
    /// keeping the container from starting.
    pub optional: Option<bool>,
}

/// A field of the pod itself (`metadata.name`, `status.podIP`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectFieldSelector {
    pub field_path: String,
}

/// The pod fields `fieldRef` can read, besides `metadata.labels['key']` and
/// `metadata.annotations['key']`.
const POD_FIELD_PATHS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: i32,
    pub protocol: Option<Protocol>,
    pub host_port: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// Resource names ("cpu", "memory") to amounts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// The name of one of the pod's volumes.
    pub name: String,
    pub mount_path: String,
    pub read_only: Option<bool>,
    pub sub_path: Option<String>,
}

/// A health check; exactly one handler (`exec`, `httpGet`, `tcpSocket`) is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    pub exec: Option<ExecAction>,
    pub http_get: Option<HttpGetAction>,
    pub tcp_socket: Option<TcpSocketAction>,
    pub initial_delay_seconds: Option<i32>,
    pub period_seconds: Option<i32>,
    pub timeout_seconds: Option<i32>,
    pub success_threshold: Option<i32>,
    pub failure_threshold: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecAction {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetAction {
    pub path: Option<String>,
    /// A port number or the name of a container port.
    pub port: IntOrString,
    pub scheme: Option<Scheme>,
    /// Defaults to the pod IP.
    pub host: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSocketAction {
    pub port: IntOrString,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    pub privileged: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities: Option<Capabilities>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// A volume; exactly one source is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub empty_dir: Option<EmptyDirVolumeSource>,
    pub host_path: Option<HostPathVolumeSource>,
    pub config_map: Option<ConfigMapVolumeSource>,
    pub secret: Option<SecretVolumeSource>,
}

/// A directory that lives as long as the pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDirVolumeSource {
    pub medium: Option<StorageMedium>,
    pub size_limit: Option<Quantity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageMedium {
    /// The node's disk.
    #[serde(rename = "")]
    Default,
    /// tmpfs.
    Memory,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HostPathVolumeSource {
    pub path: String,
    pub r#type: Option<HostPathType>,
}

/// What must be at a host path (unset: anything, unchecked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPathType {
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    pub name: String,
    /// The keys to project, and where; all keys when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    pub default_mode: Option<i32>,
    pub optional: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretVolumeSource {
    pub secret_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    pub default_mode: Option<i32>,
    pub optional: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyToPath {
    pub key: String,
    /// Relative to the mount point.
    pub path: String,
    pub mode: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Affinity {
    pub node_affinity: Option<NodeAffinity>,
    pub pod_affinity: Option<PodAffinity>,
    /// The same terms as `podAffinity`, read as "not near".
    pub pod_anti_affinity: Option<PodAffinity>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeAffinity {
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
}

/// Terms ORed together; a node must satisfy one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSelector {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// Requirements ANDed together, on node labels (`matchExpressions`) or node fields
/// (`matchFields`, `metadata.name` only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<NodeSelectorRequirement>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    pub key: String,
    pub operator: NodeSelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// The label's value, as an integer, is greater than the single value.
    Gt,
    Lt,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PreferredSchedulingTerm {
    /// 1-100, added to a node's score when it matches.
    pub weight: i32,
    pub preference: NodeSelectorTerm,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PodAffinity {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTerm>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
}

/// Pods matching `labelSelector` (in the pod's namespace), on nodes with the same
/// value of the `topologyKey` label.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PodAffinityTerm {
    pub label_selector: Option<LabelSelector>,
    pub topology_key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightedPodAffinityTerm {
    pub weight: i32,
    pub pod_affinity_term: PodAffinityTerm,
}

/// Lets the pod run on nodes with a matching taint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    /// Empty with `Exists` tolerates every taint.
    pub key: Option<String>,
    pub operator: Option<TolerationOperator>,
    pub value: Option<String>,
    /// Unset matches every effect.
    pub effect: Option<TaintEffect>,
    /// How long a `NoExecute` taint is tolerated before eviction.
    pub toleration_seconds: Option<i64>,
}

impl Toleration {
    /// Kubernetes' toleration rules: an unset effect matches every effect, an empty
    /// key with Exists matches every taint, Equal compares values.
    pub fn tolerates(&self, taint: &super::Taint) -> bool {
        let key = self.key.as_deref().unwrap_or_default();
        self.effect.is_none_or(|e| Some(e) == taint.effect)
            && (key.is_empty() || key == taint.key)
            && match self.operator.unwrap_or(TolerationOperator::Equal) {
                TolerationOperator::Exists => true,
                TolerationOperator::Equal => {
                    !key.is_empty()
                        && self.value.as_deref().unwrap_or_default()
                            == taint.value.as_deref().unwrap_or_default()
                }
            }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TolerationOperator {
    Exists,
    Equal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: Option<PodPhase>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
    #[serde(rename = "hostIPs", skip_serializing_if = "Vec::is_empty")]
    pub host_ips: Vec<IpAddress>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<IpAddress>,
    pub start_time: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub nominated_node_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_container_statuses: Vec<ContainerStatus>,
    pub qos_class: Option<QosClass>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// One address of a pod or its host (`podIPs`, `hostIPs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct IpAddress {
    pub ip: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub ready: bool,
    pub started: Option<bool>,
    pub restart_count: i32,
    pub image: String,
    #[serde(rename = "imageID")]
    pub image_id: String,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    pub state: Option<ContainerState>,
    pub last_state: Option<ContainerState>,
}

/// One of `waiting`, `running` or `terminated`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerState {
    pub waiting: Option<ContainerStateWaiting>,
    pub running: Option<ContainerStateRunning>,
    pub terminated: Option<ContainerStateTerminated>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerStateWaiting {
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerStateRunning {
    pub started_at: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerStateTerminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

impl Resource for Pod {
    fn apply_defaults(&mut self) {
        self.spec.apply_defaults(Some(RestartPolicy::Always));
        // Pods only: a template's account is defaulted when its pods are created, so
        // templates (and the hashes computed from them) stay as written.
        let account = self
            .spec
            .service_account_name
            .take()
            .or_else(|| self.spec.service_account.take())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string());
        self.spec.service_account = Some(account.clone());
        self.spec.service_account_name = Some(account);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        self.spec.validate(errors, &Path::root().field("spec"));
    }

    spec_and_status!();
}

impl PodTemplateSpec {
    pub(crate) fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        check_labels(
            errors,
            &path.field("metadata").field("labels"),
            &self.metadata.labels,
        );
        self.spec.validate(errors, &path.field("spec"));
    }
}

impl PodSpec {
    /// Kubernetes's pod defaults. `restart_policy` is the policy to default to: Jobs
    /// have none, so their users must choose OnFailure or Never.
    pub(crate) fn apply_defaults(&mut self, restart_policy: Option<RestartPolicy>) {
        if self.restart_policy.is_none() {
            self.restart_policy = restart_policy;
        }
        self.termination_grace_period_seconds.get_or_insert(30);
        self.dns_policy.get_or_insert(DnsPolicy::ClusterFirst);
        for container in self.init_containers.iter_mut().chain(&mut self.containers) {
            container.apply_defaults();
        }
    }

    pub(crate) fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        if self.containers.is_empty() {
            errors.push(path.field("containers"), "required");
        }
        let all_containers = [
            ("initContainers", &self.init_containers),
            ("containers", &self.containers),
        ]
        .into_iter()
        .flat_map(|(field, list)| {
            list.iter()
                .enumerate()
                .map(move |(i, c)| (path.field(field).index(i), c))
        });
        // Names are unique across both lists: they name the containers on the node.
        check_unique(
            errors,
            all_containers
                .clone()
                .map(|(path, c)| (path.field("name"), format!("name {:?}", c.name))),
        );
        let volume_names: BTreeSet<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        for (path, container) in all_containers {
            container.validate(errors, &path, &volume_names);
        }
        check_unique(
            errors,
            self.volumes.iter().enumerate().map(|(i, v)| {
                (
                    path.field("volumes").index(i).field("name"),
                    format!("name {:?}", v.name),
                )
            }),
        );
        for (i, volume) in self.volumes.iter().enumerate() {
            volume.validate(errors, &path.field("volumes").index(i));
        }
        check_min(
            errors,
            &path.field("terminationGracePeriodSeconds"),
            self.termination_grace_period_seconds,
            0,
        );
        check_labels(errors, &path.field("nodeSelector"), &self.node_selector);
        check_optional(
            errors,
            &path.field("nodeName"),
            self.node_name.as_deref(),
            Format::Dns1123Subdomain,
        );
        check_optional(
            errors,
            &path.field("hostname"),
            self.hostname.as_deref(),
            Format::Dns1123Label,
        );
        check_optional(
            errors,
            &path.field("subdomain"),
            self.subdomain.as_deref(),
            Format::Dns1123Label,
        );
        check_optional(
            errors,
            &path.field("serviceAccountName"),
            self.service_account_name.as_deref(),
            Format::Dns1123Subdomain,
        );
        // The deprecated alias, when it says something else (a pod's mirrors it).
        if self.service_account != self.service_account_name {
            check_optional(
                errors,
                &path.field("serviceAccount"),
                self.service_account.as_deref(),
                Format::Dns1123Subdomain,
            );
        }
        if let Some(affinity) = &self.affinity {
            affinity.validate(errors, &path.field("affinity"));
        }
        for (i, toleration) in self.tolerations.iter().enumerate() {
            toleration.validate(errors, &path.field("tolerations").index(i));
        }
    }
}

impl Container {
    /// The image pull policy, defaulted as Kubernetes does when unset.
    pub fn pull_policy(&self) -> ImagePullPolicy {
        self.image_pull_policy
            .unwrap_or_else(|| default_pull_policy(&self.image))
    }

    fn apply_defaults(&mut self) {
        if self.image_pull_policy.is_none() {
            self.image_pull_policy = Some(default_pull_policy(&self.image));
        }
        for port in &mut self.ports {
            port.protocol.get_or_insert(Protocol::Tcp);
        }
        for probe in [
            &mut self.liveness_probe,
            &mut self.readiness_probe,
            &mut self.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            probe.apply_defaults();
        }
    }

    fn validate(&self, errors: &mut FieldErrors, path: &Path, volume_names: &BTreeSet<&str>) {
        check_name(
            errors,
            &path.field("name"),
            &self.name,
            Format::Dns1123Label,
        );
        check_required(errors, &path.field("image"), &self.image);
        for (i, var) in self.env.iter().enumerate() {
            var.validate(errors, &path.field("env").index(i));
        }
        for (i, port) in self.ports.iter().enumerate() {
            let path = path.field("ports").index(i);
            check_port(errors, &path.field("containerPort"), port.container_port);
            if let Some(host_port) = port.host_port {
                check_port(errors, &path.field("hostPort"), host_port);
            }
            check_optional(
                errors,
                &path.field("name"),
                port.name.as_deref(),
                Format::PortName,
            );
        }
        check_unique(
            errors,
            self.ports.iter().enumerate().map(|(i, port)| {
                let protocol = enum_name(&port.protocol.unwrap_or(Protocol::Tcp));
                (
                    path.field("ports").index(i),
                    format!("port {}/{protocol}", port.container_port),
                )
            }),
        );
        self.resources.validate(errors, &path.field("resources"));
        for (i, mount) in self.volume_mounts.iter().enumerate() {
            let path = path.field("volumeMounts").index(i);
            if mount.name.is_empty() {
                errors.push(path.field("name"), "required");
            } else if !volume_names.contains(mount.name.as_str()) {
                errors.push(
                    path.field("name"),
                    format!("no volume named {:?}", mount.name),
                );
            }
            check_required(errors, &path.field("mountPath"), &mount.mount_path);
            if let Some(sub_path) = &mount.sub_path {
                check_relative_path(errors, &path.field("subPath"), sub_path);
            }
        }
        check_unique(
            errors,
            self.volume_mounts.iter().enumerate().map(|(i, m)| {
                (
                    path.field("volumeMounts").index(i).field("mountPath"),
                    format!("mount path {:?}", m.mount_path),
                )
            }),
        );
        for (field, probe) in [
            ("livenessProbe", &self.liveness_probe),
            ("readinessProbe", &self.readiness_probe),
            ("startupProbe", &self.startup_probe),
        ] {
            if let Some(probe) = probe {
                probe.validate(errors, &path.field(field));
            }
        }
        if let Some(lifecycle) = &self.lifecycle {
            let path = path.field("lifecycle");
            for (field, handler) in [
                ("postStart", &lifecycle.post_start),
                ("preStop", &lifecycle.pre_stop),
            ] {
                if let Some(handler) = handler {
                    handler.validate(errors, &path.field(field));
                }
            }
        }
    }
}

/// Kubernetes pulls `:latest` (or untagged) images every time, as they move, and
/// other tags or digests only when missing.
fn default_pull_policy(image: &str) -> ImagePullPolicy {
    // A ':' before the last '/' belongs to a registry port, not a tag.
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    let tag = last_segment.split_once(':').map(|(_, tag)| tag);
    if image.contains('@') || tag.is_some_and(|tag| tag != "latest") {
        ImagePullPolicy::IfNotPresent
    } else {
        ImagePullPolicy::Always
    }
}

impl EnvVar {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        check_required(errors, &path.field("name"), &self.name);
        let Some(source) = &self.value_from else {
            return;
        };
        let path = path.field("valueFrom");
        if self.value.is_some() {
            errors.push(&path, "may not be set together with value");
        }
        check_exactly_one(
            errors,
            &path,
            &[
                ("configMapKeyRef", source.config_map_key_ref.is_some()),
                ("secretKeyRef", source.secret_key_ref.is_some()),
                ("fieldRef", source.field_ref.is_some()),
            ],
        );
        for (field, selector) in [
            ("configMapKeyRef", &source.config_map_key_ref),
            ("secretKeyRef", &source.secret_key_ref),
        ] {
            if let Some(selector) = selector {
                let path = path.field(field);
                check_name(
                    errors,
                    &path.field("name"),
                    &selector.name,
                    Format::Dns1123Subdomain,
                );
                check_name(errors, &path.field("key"), &selector.key, Format::ConfigKey);
            }
        }
        if let Some(field_ref) = &source.field_ref {
            let field_path = field_ref.field_path.as_str();
            let keyed = ["metadata.labels['", "metadata.annotations['"]
                .iter()
                .any(|prefix| field_path.starts_with(prefix) && field_path.ends_with("']"));
            if !keyed && !POD_FIELD_PATHS.contains(&field_path) {
                errors.push(
                    path.field("fieldRef").field("fieldPath"),
                    format!(
                        "{field_path:?} is not supported (supported: {}, metadata.labels['KEY'], \
                         metadata.annotations['KEY'])",
                        POD_FIELD_PATHS.join(", ")
                    ),
                );
            }
        }
    }
}

impl ResourceRequirements {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        let requests = parse_quantities(errors, &path.field("requests"), &self.requests);
        let limits = parse_quantities(errors, &path.field("limits"), &self.limits);
        for (name, request) in &requests {
            if let Some(limit) = limits.get(name)
                && request > limit
            {
                errors.push(
                    path.field("requests").key(name),
                    format!(
                        "{} must be less than or equal to the {name} limit {}",
                        self.requests[*name], self.limits[*name]
                    ),
                );
            }
        }
    }
}

/// The valid, non-negative quantities of a requests or limits map, by resource name.
pub(crate) fn parse_quantities<'a>(
    errors: &mut FieldErrors,
    path: &Path,
    quantities: &'a BTreeMap<String, Quantity>,
) -> BTreeMap<&'a str, ParsedQuantity> {
    let mut parsed = BTreeMap::new();
    for (name, quantity) in quantities {
        let path = path.key(name);
        check_format(errors, &path, name, Format::QualifiedName);
        match quantity.parse() {
            Ok(value) if value.millis() < 0 => {
                errors.push(&path, format!("{quantity} must not be negative"))
            }
            Ok(value) => {
                parsed.insert(name.as_str(), value);
            }
            Err(reason) => errors.push(&path, reason),
        }
    }
    parsed
}

/// Hooks run around a container's life: `preStop` before it is sent SIGTERM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Lifecycle {
    pub post_start: Option<LifecycleHandler>,
    pub pre_stop: Option<LifecycleHandler>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LifecycleHandler {
    pub exec: Option<ExecAction>,
    pub http_get: Option<HttpGetAction>,
}

impl LifecycleHandler {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        check_exactly_one(
            errors,
            path,
            &[
                ("exec", self.exec.is_some()),
                ("httpGet", self.http_get.is_some()),
            ],
        );
        if let Some(exec) = &self.exec
            && exec.command.is_empty()
        {
            errors.push(path.field("exec").field("command"), "required");
        }
        if let Some(http) = &self.http_get {
            check_port_reference(errors, &path.field("httpGet").field("port"), &http.port);
        }
    }
}

impl Probe {
    fn apply_defaults(&mut self) {
        self.period_seconds.get_or_insert(10);
        self.timeout_seconds.get_or_insert(1);
        self.success_threshold.get_or_insert(1);
        self.failure_threshold.get_or_insert(3);
        if let Some(http) = &mut self.http_get {
            http.path.get_or_insert_with(|| "/".to_string());
            http.scheme.get_or_insert(Scheme::Http);
        }
    }

    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        check_exactly_one(
            errors,
            path,
            &[
                ("exec", self.exec.is_some()),
                ("httpGet", self.http_get.is_some()),
                ("tcpSocket", self.tcp_socket.is_some()),
            ],
        );
        if let Some(exec) = &self.exec
            && exec.command.is_empty()
        {
            errors.push(path.field("exec").field("command"), "required");
        }
        if let Some(http) = &self.http_get {
            check_port_reference(errors, &path.field("httpGet").field("port"), &http.port);
        }
        if let Some(tcp) = &self.tcp_socket {
            check_port_reference(errors, &path.field("tcpSocket").field("port"), &tcp.port);
        }
        check_min(
            errors,
            &path.field("initialDelaySeconds"),
            self.initial_delay_seconds,
            0,
        );
        for (field, value) in [
            ("periodSeconds", self.period_seconds),
            ("timeoutSeconds", self.timeout_seconds),
            ("successThreshold", self.success_threshold),
            ("failureThreshold", self.failure_threshold),
        ] {
            check_min(errors, &path.field(field), value, 1);
        }
    }
}

/// A port given by number (1-65535) or by the name of a container port.
pub(crate) fn check_port_reference(errors: &mut FieldErrors, path: &Path, port: &IntOrString) {
    match port {
        IntOrString::Int(number) => check_port(errors, path, *number),
        IntOrString::String(name) => check_format(errors, path, name, Format::PortName),
    }
}

impl Volume {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        check_name(
            errors,
            &path.field("name"),
            &self.name,
            Format::Dns1123Label,
        );
        check_exactly_one(
            errors,
            path,
            &[
                ("emptyDir", self.empty_dir.is_some()),
                ("hostPath", self.host_path.is_some()),
                ("configMap", self.config_map.is_some()),
                ("secret", self.secret.is_some()),
            ],
        );
        if let Some(size) = self.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref())
            && let Err(reason) = size.parse()
        {
            errors.push(path.field("emptyDir").field("sizeLimit"), reason);
        }
        if let Some(host_path) = &self.host_path
            && !host_path.path.starts_with('/')
        {
            errors.push(
                path.field("hostPath").field("path"),
                format!("{:?} is not an absolute path", host_path.path),
            );
        }
        if let Some(source) = &self.config_map {
            let path = path.field("configMap");
            check_name(
                errors,
                &path.field("name"),
                &source.name,
                Format::Dns1123Subdomain,
            );
            validate_projection(errors, &path, &source.items, source.default_mode);
        }
        if let Some(source) = &self.secret {
            let path = path.field("secret");
            check_name(
                errors,
                &path.field("secretName"),
                &source.secret_name,
                Format::Dns1123Subdomain,
            );
            validate_projection(errors, &path, &source.items, source.default_mode);
        }
    }
}

/// The keys a ConfigMap or Secret volume projects, and their file modes.
/// A path inside a volume (an item's path, a subPath): it may not leave it.
fn check_relative_path(errors: &mut FieldErrors, path: &Path, value: &str) {
    if value.starts_with('/') || value.split('/').any(|part| part == "..") {
        errors.push(
            path.clone(),
            format!("{value:?} must be a relative path without '..'"),
        );
    }
}

fn validate_projection(
    errors: &mut FieldErrors,
    path: &Path,
    items: &[KeyToPath],
    default_mode: Option<i32>,
) {
    check_range(errors, &path.field("defaultMode"), default_mode, 0, 0o777);
    for (i, item) in items.iter().enumerate() {
        let path = path.field("items").index(i);
        check_name(errors, &path.field("key"), &item.key, Format::ConfigKey);
        if item.path.is_empty() {
            errors.push(path.field("path"), "required");
        }
        check_relative_path(errors, &path.field("path"), &item.path);
        check_range(errors, &path.field("mode"), item.mode, 0, 0o777);
    }
}

impl Affinity {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        if let Some(node) = &self.node_affinity {
            let path = path.field("nodeAffinity");
            if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
                let path = path.field("requiredDuringSchedulingIgnoredDuringExecution");
                if required.node_selector_terms.is_empty() {
                    errors.push(path.field("nodeSelectorTerms"), "required");
                }
                for (i, term) in required.node_selector_terms.iter().enumerate() {
                    term.validate(errors, &path.field("nodeSelectorTerms").index(i));
                }
            }
            for (i, preferred) in node
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let path = path
                    .field("preferredDuringSchedulingIgnoredDuringExecution")
                    .index(i);
                check_range(
                    errors,
                    &path.field("weight"),
                    Some(preferred.weight),
                    1,
                    100,
                );
                preferred
                    .preference
                    .validate(errors, &path.field("preference"));
            }
        }
        for (field, affinity) in [
            ("podAffinity", &self.pod_affinity),
            ("podAntiAffinity", &self.pod_anti_affinity),
        ] {
            let Some(affinity) = affinity else { continue };
            let path = path.field(field);
            for (i, term) in affinity
                .required_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                term.validate(
                    errors,
                    &path
                        .field("requiredDuringSchedulingIgnoredDuringExecution")
                        .index(i),
                );
            }
            for (i, weighted) in affinity
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let path = path
                    .field("preferredDuringSchedulingIgnoredDuringExecution")
                    .index(i);
                check_range(errors, &path.field("weight"), Some(weighted.weight), 1, 100);
                weighted
                    .pod_affinity_term
                    .validate(errors, &path.field("podAffinityTerm"));
            }
        }
    }
}

impl NodeSelectorTerm {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        for (field, requirements) in [
            ("matchExpressions", &self.match_expressions),
            ("matchFields", &self.match_fields),
        ] {
            for (i, requirement) in requirements.iter().enumerate() {
                requirement.validate(errors, &path.field(field).index(i), field == "matchFields");
            }
        }
    }
}

impl NodeSelectorRequirement {
    /// `field` requirements select node fields, of which skiff (like Kubernetes)
    /// supports `metadata.name` with In and NotIn.
    fn validate(&self, errors: &mut FieldErrors, path: &Path, field: bool) {
        use NodeSelectorOperator::*;
        let operator = enum_name(&self.operator);
        if !field {
            check_format(errors, &path.field("key"), &self.key, Format::QualifiedName);
        } else if self.key != "metadata.name" {
            errors.push(
                path.field("key"),
                format!("{:?} is not supported (supported: metadata.name)", self.key),
            );
        } else if !matches!(self.operator, In | NotIn) {
            errors.push(
                path.field("operator"),
                format!("{operator} is not supported for matchFields (use In or NotIn)"),
            );
        }
        match self.operator {
            In | NotIn => check_operator_values(errors, path, &operator, true, &self.values),
            Exists | DoesNotExist => {
                check_operator_values(errors, path, &operator, false, &self.values)
            }
            Gt | Lt => {
                if self.values.len() != 1 || self.values[0].parse::<i64>().is_err() {
                    errors.push(
                        path.field("values"),
                        format!("must be a single integer when the operator is {operator}"),
                    );
                }
            }
        }
    }
}

impl PodAffinityTerm {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        if let Some(selector) = &self.label_selector {
            validate_label_selector(errors, &path.field("labelSelector"), selector);
        }
        check_name(
            errors,
            &path.field("topologyKey"),
            &self.topology_key,
            Format::QualifiedName,
        );
    }
}

impl Toleration {
    fn validate(&self, errors: &mut FieldErrors, path: &Path) {
        let key = self.key.as_deref().unwrap_or_default();
        if !key.is_empty() {
            check_format(errors, &path.field("key"), key, Format::QualifiedName);
        }
        match self.operator.unwrap_or(TolerationOperator::Equal) {
            TolerationOperator::Exists if self.value.as_deref().is_some_and(|v| !v.is_empty()) => {
                errors.push(
                    path.field("value"),
                    "must be empty when the operator is Exists",
                )
            }
            TolerationOperator::Equal if key.is_empty() => {
                errors.push(path.field("key"), "required unless the operator is Exists")
            }
            TolerationOperator::Equal => check_format(
                errors,
                &path.field("value"),
                self.value.as_deref().unwrap_or_default(),
                Format::LabelValue,
            ),
            TolerationOperator::Exists => {}
        }
        if self.toleration_seconds.is_some() && self.effect != Some(TaintEffect::NoExecute) {
            errors.push(
                path.field("tolerationSeconds"),
                "may only be set when the effect is NoExecute",
            );
        }
    }
}
