//! Manifest-level tests: valid objects of every kind, and invalid manifests checked
//! against the exact error text a user sees.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::manifest::{Document, ManifestError, load, parse, to_yaml};
use super::*;

/// One valid object of every kind, as a user would write it.
const ALL_KINDS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    kubernetes.io/hostname: node-a
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]
  taints:
  - key: dedicated
    value: db
    effect: NoSchedule
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: shop
spec:
  containers:
  - name: shell
    image: busybox:1.36
    command: [sleep, infinity]
    env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: MODE
      valueFrom:
        configMapKeyRef:
          name: web-config
          key: mode
    volumeMounts:
    - name: scratch
      mountPath: /scratch
    - name: config
      mountPath: /etc/web
      readOnly: true
  volumes:
  - name: scratch
    emptyDir: {}
  - name: config
    configMap:
      name: web-config
      defaultMode: 0644
  tolerations:
  - key: dedicated
    operator: Equal
    value: db
    effect: NoSchedule
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - key: kubernetes.io/hostname
            operator: In
            values: [node-a]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app.kubernetes.io/name: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - name: http
          containerPort: 80
        resources:
          requests: {cpu: 100m, memory: 64Mi}
          limits: {cpu: 1, memory: 128Mi}
        readinessProbe:
          httpGet:
            path: /healthz
            port: http
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels:
                  app: web
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d4f8
spec:
  selector:
    matchExpressions:
    - {key: app, operator: In, values: [web]}
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.25
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: https
    port: 443
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions:
    ready: true
  nodeName: node-a
  targetRef:
    kind: Pod
    namespace: shop
    name: web-5d4f8-x2x7k
ports:
- name: http
  port: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  mode: production
  nginx.conf: |
    server { listen 80; }
binaryData:
  logo.png: iVBORw0KGgo=
---
apiVersion: v1
kind: Secret
metadata:
  name: web-tls
data:
  password: aHVudGVyMg==
stringData:
  username: admin
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: builder
  namespace: shop
automountServiceAccountToken: false
---
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: OnFailure
      containers:
      - name: migrate
        image: registry.local:5000/shop/migrate
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "30 2 * * MON-FRI"
  timeZone: Europe/Berlin
  jobTemplate:
    metadata:
      labels: {task: report}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: report
            image: registry.local:5000/shop/report
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: web
  maxReplicas: 10
  metrics:
  - type: Resource
    resource:
      name: memory
      target:
        type: AverageValue
        averageValue: 100Mi
---
apiVersion: v1
kind: Event
metadata:
  name: web-1.started
involvedObject:
  kind: Pod
  name: web-1
  uid: 3f6c3b1e-0000-4000-8000-000000000001
reason: Started
message: Started container web
type: Normal
count: 1
---
apiVersion: metrics.k8s.io/v1beta1
kind: PodMetrics
metadata:
  name: web-1
timestamp: "2026-01-01T00:00:15Z"
window: 15s
containers:
- name: web
  usage: {cpu: 250m, memory: 12Mi}
---
apiVersion: metrics.k8s.io/v1beta1
kind: NodeMetrics
metadata:
  name: node-1
timestamp: "2026-01-01T00:00:15Z"
window: 15s
usage: {cpu: 1200m, memory: 2Gi}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata:
  name: critical
value: 1000000
description: Pods that must run.
---
apiVersion: mesh.skiff.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-readers
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/frontend, "*/sa/admin"]
        namespaces: [shop]
    to:
    - operation:
        ports: ["8080"]
        methods: [GET, HEAD]
        paths: [/api/*, /healthz]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web-canary
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, port: 80}
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
    backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
    timeouts: {request: 2s}
    retry: {attempts: 2, codes: [502, 503], backoff: 100ms}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: node-1, namespace: kube-node-lease}
spec:
  holderIdentity: node-1
  leaseDurationSeconds: 40
  renewTime: "2026-12-06T19:20:01.123456Z"
"#;

fn parse_ok(source: &str, text: &str) -> Vec<Document> {
    parse(source, text).unwrap_or_else(|errors| panic!("{}", lines(&errors)))
}

fn lines(errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The errors of a manifest named app.yaml (or app.json), one per line.
fn parse_err(text: &str) -> String {
    let source = if text.trim_start().starts_with('{') {
        "app.json"
    } else {
        "app.yaml"
    };
    match parse(source, text) {
        Ok(documents) => panic!("expected errors, parsed {documents:?}"),
        Err(errors) => lines(&errors),
    }
}

/// A manifest with a header, to keep the invalid cases short.
fn pod(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n{spec}")
}

fn deployment(spec: &str) -> String {
    format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n{spec}")
}

fn service(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}")
}

const TEMPLATE: &str = "  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx
";

// ---- Invalid manifests: the exact text the user sees. ----

#[test]
fn yaml_syntax_error_names_document_line_and_column() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n  labels: {a: 1\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 2: unclosed bracket '{' at line 10, column 11"
    );
}

#[test]
fn yaml_bad_indentation() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n   labels: {}\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: mapping values are not allowed in this context at line 5, column 10"
    );
}

#[test]
fn yaml_duplicate_key() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: duplicate mapping key `name` is not allowed here at line 5, column 3"
    );
}

#[test]
fn every_bad_document_is_reported_and_nothing_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.yaml");
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: good\n---\n\
                apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replics: 3\n---\n\
                apiVersion: v1\nkind: Namespace\nmetadata:\n  name: Bad_Name\n";
    std::fs::write(&path, text).unwrap();
    let errors = load(std::slice::from_ref(&path), false, &mut std::io::empty()).unwrap_err();
    let source = path.display();
    assert_eq!(
        lines(&errors),
        format!(
            "{source} doc 2: spec.replics: unknown field\n\
             {source} doc 3: metadata.name: \"Bad_Name\" is not a valid DNS-1123 label (lowercase \
             letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
        )
    );
}

#[test]
fn unknown_field() {
    assert_eq!(
        parse_err(&deployment("  replics: 3\n")),
        "app.yaml doc 1: spec.replics: unknown field"
    );
    assert_eq!(
        parse_err(&pod(
            "  containers:\n  - name: web\n    image: nginx\n    imagePullPolcy: Always\n"
        )),
        "app.yaml doc 1: spec.containers[0].imagePullPolcy: unknown field"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        parse_err(&deployment("  replicas: three\n")),
        "app.yaml doc 1: spec.replicas: expected an integer, found a string \"three\""
    );
    assert_eq!(
        parse_err(&pod("  containers:\n    name: web\n")),
        "app.yaml doc 1: spec.containers: expected a list, found an object"
    );
    assert_eq!(
        parse_err(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    version: 1.0\n"
        ),
        "app.yaml doc 1: metadata.labels[version]: expected a string, found a number 1.0"
    );
    assert_eq!(
        parse_err(&service("  ports:\n  - port: 80\n    targetPort: true\n")),
        "app.yaml doc 1: spec.ports[0].targetPort: expected an integer or a string, found a boolean true"
    );
}

#[test]
fn struct_written_as_a_list() {
    assert_eq!(
        parse_err(&pod("  []\n")),
        "app.yaml doc 1: spec: expected an object, found a list"
    );
    assert_eq!(
        parse_err("apiVersion: v1\nkind: Namespace\nmetadata: [web]\n"),
        "app.yaml doc 1: metadata: expected an object, found a list"
    );
}

#[test]
fn integer_out_of_range() {
    assert_eq!(
        parse_err(&pod(
            "  containers:\n  - name: web\n    image: nginx\n    ports:\n    - containerPort: 99999999999\n"
        )),
        "app.yaml doc 1: spec.containers[0].ports[0].containerPort: 99999999999 is out of range for a 32-bit integer"
    );
}

#[test]
fn unsupported_enum_value() {
    assert_eq!(
        parse_err(&pod("  restartPolicy: Sometimes\n  containers: []\n")),
        "app.yaml doc 1: spec.restartPolicy: unsupported value \"Sometimes\" (supported: \"Always\", \"OnFailure\", \"Never\")"
    );
    assert_eq!(
        parse_err(&pod(
            "  containers:\n  - name: web\n    image: nginx\n    imagePullPolicy: IfMissing\n"
        )),
        "app.yaml doc 1: spec.containers[0].imagePullPolicy: unsupported value \"IfMissing\" (supported: \"Always\", \"IfNotPresent\", \"Never\")"
    );
}

#[test]
fn pull_policy_defaults_as_kubernetes_does() {
    let digest = format!("busybox@sha256:{}", "ab".repeat(32));
    let cases = [
        ("busybox", ImagePullPolicy::Always),
        ("busybox:latest", ImagePullPolicy::Always),
        ("registry.local:5000/app", ImagePullPolicy::Always),
        ("registry.local:5000/app:1", ImagePullPolicy::IfNotPresent),
        ("busybox:1.36", ImagePullPolicy::IfNotPresent),
        (digest.as_str(), ImagePullPolicy::IfNotPresent),
    ];
    for (image, expected) in cases {
        let container = Container {
            image: image.into(),
            ..Container::default()
        };
        assert_eq!(container.pull_policy(), expected, "{image}");
    }
    let explicit = Container {
        image: "busybox".into(),
        image_pull_policy: Some(ImagePullPolicy::Never),
        ..Container::default()
    };
    assert_eq!(explicit.pull_policy(), ImagePullPolicy::Never);
}

#[test]
fn bad_object_name() {
    assert_eq!(
        parse_err(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: Web_App\nspec:\n{TEMPLATE}"
        )),
        "app.yaml doc 1: metadata.name: \"Web_App\" is not a valid DNS-1123 subdomain (lowercase \
         letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
    );
    assert_eq!(
        parse_err(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: 1web\nspec:\n  ports: [{port: 80}]\n"
        ),
        "app.yaml doc 1: metadata.name: \"1web\" is not a valid RFC 1035 label (lowercase letters, \
         digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters)"
    );
}

#[test]
fn bad_generate_name() {
    assert_eq!(
        parse_err("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: Web-\n"),
        "app.yaml doc 1: metadata.generateName: \"Web-\" is not a valid DNS-1123 subdomain \
         (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at \
         most 253 characters)"
    );
    // A trailing '-' is what a prefix usually ends with.
    parse_ok(
        "app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: web-\n",
    );
}

#[test]
fn bad_labels() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  labels:\n    \
                app.kubernetes.io/name: web server\n    -tier: db\n  annotations:\n    \
                example.com/ok: anything goes here\n    bad key: x\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: metadata.labels[-tier]: \"-tier\" is not a valid key (an optional DNS-1123 \
         subdomain and '/', then at most 63 letters, digits, '-', '_' and '.', starting and ending \
         with a letter or digit)\n\
         app.yaml doc 1: metadata.labels[app.kubernetes.io/name]: \"web server\" is not a valid \
         label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a \
         letter or digit)\n\
         app.yaml doc 1: metadata.annotations[bad key]: \"bad key\" is not a valid key (an optional \
         DNS-1123 subdomain and '/', then at most 63 letters, digits, '-', '_' and '.', starting and \
         ending with a letter or digit)"
    );
}

#[test]
fn missing_name() {
    assert_eq!(
        parse_err("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {app: web}\n"),
        "app.yaml doc 1: metadata.name: required"
    );
}

#[test]
fn cluster_scoped_with_namespace() {
    assert_eq!(
        parse_err("apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  namespace: default\n"),
        "app.yaml doc 1: metadata.namespace: not allowed: Node is cluster-scoped"
    );
}

#[test]
fn unknown_kind_and_unsupported_api_version() {
    assert_eq!(
        parse_err("apiVersion: apps/v1\nkind: Deploymnt\nmetadata:\n  name: web\n"),
        "app.yaml doc 1: kind: unknown kind \"Deploymnt\""
    );
    assert_eq!(
        parse_err(&format!(
            "apiVersion: apps/v2\nkind: Deployment\nmetadata:\n  name: web\nspec:\n{TEMPLATE}"
        )),
        "app.yaml doc 1: apiVersion: \"apps/v2\" is not served for Deployment (use \"apps/v1\")"
    );
    assert_eq!(
        parse_err("metadata:\n  name: web\n"),
        "app.yaml doc 1: apiVersion: required\napp.yaml doc 1: kind: required"
    );
    assert_eq!(
        parse_err("apiVersion: v1\nkind: 5\n"),
        "app.yaml doc 1: kind: expected a string, found a number 5"
    );
}

#[test]
fn not_an_object() {
    assert_eq!(
        parse_err("- a\n- b\n"),
        "app.yaml doc 1: expected an object, found a list"
    );
    assert_eq!(
        parse_err("hello\n"),
        "app.yaml doc 1: expected an object, found a string \"hello\""
    );
}

#[test]
fn bad_ports() {
    let text = pod(
        "  containers:\n  - name: web\n    image: nginx\n    ports:\n    - containerPort: 80\n    \
         - containerPort: 70000\n    - containerPort: 80\n      name: HTTP\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.containers[0].ports[1].containerPort: 70000 is not a valid port (1-65535)\n\
         app.yaml doc 1: spec.containers[0].ports[2].name: \"HTTP\" is not a valid port name \
         (lowercase letters, digits and '-', at least one letter, no '--', starting and ending with \
         a letter or digit, at most 15 characters)\n\
         app.yaml doc 1: spec.containers[0].ports[2]: duplicate port 80/TCP"
    );
}

#[test]
fn duplicate_container_names() {
    let text = pod(
        "  initContainers:\n  - name: web\n    image: busybox\n  containers:\n  - name: web\n    \
         image: nginx\n  - name: sidecar\n    image: envoy\n  - name: sidecar\n    image: envoy\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.containers[0].name: duplicate name \"web\"\n\
         app.yaml doc 1: spec.containers[2].name: duplicate name \"sidecar\""
    );
}

#[test]
fn pod_without_containers() {
    assert_eq!(
        parse_err(&pod("  restartPolicy: Never\n")),
        "app.yaml doc 1: spec.containers: required"
    );
}

#[test]
fn bad_volumes_and_mounts() {
    let text = pod(
        "  containers:\n  - name: web\n    image: nginx\n    volumeMounts:\n    - name: data\n      \
         mountPath: /data\n    - name: cache\n      mountPath: /data\n    - name: cache\n      \
         mountPath: /up\n      subPath: a/../../etc\n    - name: cache\n      mountPath: /abs\n      \
         subPath: /etc\n    - name: cache\n      mountPath: /ok\n      subPath: a/b\n  volumes:\n  - name: cache\n    \
         emptyDir: {}\n    hostPath: {path: /tmp}\n  - name: cache\n    secret: {secretName: s, defaultMode: 0777}\n  \
         - name: conf\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.containers[0].volumeMounts[0].name: no volume named \"data\"\n\
         app.yaml doc 1: spec.containers[0].volumeMounts[2].subPath: \"a/../../etc\" must be a relative path without '..'\n\
         app.yaml doc 1: spec.containers[0].volumeMounts[3].subPath: \"/etc\" must be a relative path without '..'\n\
         app.yaml doc 1: spec.containers[0].volumeMounts[1].mountPath: duplicate mount path \"/data\"\n\
         app.yaml doc 1: spec.volumes[1].name: duplicate name \"cache\"\n\
         app.yaml doc 1: spec.volumes[0]: exactly one of emptyDir, hostPath, configMap or secret must be set, found 2\n\
         app.yaml doc 1: spec.volumes[2]: exactly one of emptyDir, hostPath, configMap or secret must be set, found 0"
    );
}

#[test]
fn bad_resources() {
    let text = pod(
        "  containers:\n  - name: web\n    image: nginx\n    resources:\n      requests:\n        \
         cpu: 2\n        memory: 256Mi\n        ephemeral-storage: lots\n      limits:\n        \
         cpu: 500m\n        memory: 1Gi\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.containers[0].resources.requests[ephemeral-storage]: \"lots\" is not a \
         valid quantity (a number with an optional suffix such as m, k, M, G, Ki, Mi, Gi or an \
         exponent like e3)\n\
         app.yaml doc 1: spec.containers[0].resources.requests[cpu]: 2 must be less than or equal to \
         the cpu limit 500m"
    );
}

#[test]
fn bad_probes_and_env() {
    let text = pod(
        "  containers:\n  - name: web\n    image: nginx\n    env:\n    - name: A\n      value: x\n      \
         valueFrom:\n        secretKeyRef: {name: s, key: k}\n    - value: other\n    - name: C\n      \
         valueFrom:\n        fieldRef: {fieldPath: spec.hostname}\n    livenessProbe:\n      \
         exec: {command: [/bin/true]}\n      tcpSocket: {port: 8080}\n      periodSeconds: 0\n    \
         readinessProbe:\n      httpGet: {port: 0}\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.containers[0].env[0].valueFrom: may not be set together with value\n\
         app.yaml doc 1: spec.containers[0].env[1].name: required\n\
         app.yaml doc 1: spec.containers[0].env[2].valueFrom.fieldRef.fieldPath: \"spec.hostname\" is \
         not supported (supported: metadata.name, metadata.namespace, metadata.uid, spec.nodeName, \
         spec.serviceAccountName, status.hostIP, status.hostIPs, status.podIP, status.podIPs, \
         metadata.labels['KEY'], metadata.annotations['KEY'])\n\
         app.yaml doc 1: spec.containers[0].livenessProbe: exactly one of exec, httpGet or tcpSocket must be set, found 2\n\
         app.yaml doc 1: spec.containers[0].livenessProbe.periodSeconds: 0 must be greater than or equal to 1\n\
         app.yaml doc 1: spec.containers[0].readinessProbe.httpGet.port: 0 is not a valid port (1-65535)"
    );
}

#[test]
fn bad_scheduling_constraints() {
    let text = pod(
        "  containers:\n  - name: web\n    image: nginx\n  tolerations:\n  - operator: Exists\n    \
         value: x\n  - key: k\n    tolerationSeconds: 30\n  affinity:\n    nodeAffinity:\n      \
         requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        \
         - matchExpressions:\n          - {key: cores, operator: Gt, values: [many]}\n          \
         - {key: zone, operator: In}\n      preferredDuringSchedulingIgnoredDuringExecution:\n      \
         - weight: 0\n        preference: {}\n    podAntiAffinity:\n      \
         requiredDuringSchedulingIgnoredDuringExecution:\n      - labelSelector: {matchLabels: {app: web}}\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: must be a single integer when the operator is Gt\n\
         app.yaml doc 1: spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[1].values: required when the operator is In\n\
         app.yaml doc 1: spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: 0 must be between 1 and 100\n\
         app.yaml doc 1: spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: required\n\
         app.yaml doc 1: spec.tolerations[0].value: must be empty when the operator is Exists\n\
         app.yaml doc 1: spec.tolerations[1].tolerationSeconds: may only be set when the effect is NoExecute"
    );
}

#[test]
fn deployment_selector_mismatch() {
    let text = deployment(
        "  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: api}\n    \
         spec:\n      containers:\n      - name: web\n        image: nginx\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.template.metadata.labels: does not match spec.selector"
    );
}

#[test]
fn deployment_without_selector() {
    let text = deployment(
        "  template:\n    spec:\n      containers:\n      - name: web\n        image: nginx\n",
    );
    assert_eq!(parse_err(&text), "app.yaml doc 1: spec.selector: required");
}

#[test]
fn deployment_bad_numbers_and_strategy() {
    let text = deployment(&format!(
        "  replicas: -1\n  revisionHistoryLimit: -2\n  strategy:\n    rollingUpdate:\n      \
         maxSurge: 0\n      maxUnavailable: 0%\n{TEMPLATE}"
    ));
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.replicas: -1 must be greater than or equal to 0\n\
         app.yaml doc 1: spec.revisionHistoryLimit: -2 must be greater than or equal to 0\n\
         app.yaml doc 1: spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0"
    );
    let text = deployment(&format!(
        "  strategy:\n    rollingUpdate:\n      maxSurge: 150%\n      maxUnavailable: one\n{TEMPLATE}"
    ));
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.strategy.rollingUpdate.maxSurge: \"150%\" is not a valid percentage (0%-100%)\n\
         app.yaml doc 1: spec.strategy.rollingUpdate.maxUnavailable: \"one\" is not an integer or a percentage"
    );
    let text = deployment(&format!(
        "  strategy:\n    type: Recreate\n    rollingUpdate: {{maxSurge: 1}}\n{TEMPLATE}"
    ));
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.strategy.rollingUpdate: may not be set when type is Recreate"
    );
}

#[test]
fn deployment_pods_must_restart_always() {
    let text = format!("{}      restartPolicy: Never\n", deployment(TEMPLATE));
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.template.spec.restartPolicy: unsupported value \"Never\" (supported: \"Always\")"
    );
}

#[test]
fn job_restart_policy() {
    let job = |policy: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  template:\n    spec:\n{policy}      \
             containers:\n      - name: migrate\n        image: migrate\n"
        )
    };
    assert_eq!(
        parse_err(&job("")),
        "app.yaml doc 1: spec.template.spec.restartPolicy: required (supported: \"OnFailure\", \"Never\")"
    );
    assert_eq!(
        parse_err(&job("      restartPolicy: Always\n")),
        "app.yaml doc 1: spec.template.spec.restartPolicy: unsupported value \"Always\" (supported: \"OnFailure\", \"Never\")"
    );
}

#[test]
fn bad_cronjobs_name_the_field() {
    let cronjob = |name: &str, spec: &str| {
        format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {name}\nspec:\n{spec}  \
             jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n          \
             - name: main\n            image: busybox\n"
        )
    };
    assert_eq!(
        parse_err(&cronjob(
            "nightly",
            "  schedule: \"61 * * * *\"\n  timeZone: Nowhere/City\n  concurrencyPolicy: Replace\n"
        )),
        "app.yaml doc 1: spec.schedule: minute field \"61\": out of range 0-59\n\
         app.yaml doc 1: spec.timeZone: \"Nowhere/City\" is not an IANA time zone name (such as \
         \"Europe/Berlin\" or \"UTC\")\n\
         app.yaml doc 1: spec.jobTemplate.spec.template.spec.restartPolicy: required (supported: \
         \"OnFailure\", \"Never\")"
    );
    let long = "n".repeat(53);
    let text = cronjob(
        &long,
        "  schedule: \"@hourly\"\n  startingDeadlineSeconds: -1\n",
    );
    let errors = parse_err(&text);
    assert!(
        errors.contains("metadata.name: must be no more than 52 characters"),
        "{errors}"
    );
    assert!(
        errors.contains("spec.startingDeadlineSeconds: -1 must be greater than or equal to 0"),
        "{errors}"
    );
    assert!(
        parse_err(&cronjob("nightly", "")).contains("spec.schedule: required"),
        "no schedule"
    );
}

#[test]
fn headless_service_with_node_port() {
    let text = service(
        "  clusterIP: None\n  selector: {app: web}\n  ports:\n  - port: 80\n    nodePort: 30080\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.ports[0].nodePort: may not be set when type is ClusterIP"
    );
    let text = service("  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 8080\n");
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.ports[0].nodePort: 8080 is not in the node port range (30000-32767)"
    );
}

#[test]
fn load_balancer_is_not_supported() {
    assert_eq!(
        parse_err(&service("  type: LoadBalancer\n  ports: [{port: 80}]\n")),
        "app.yaml doc 1: spec.type: \"LoadBalancer\" is not supported by skiff"
    );
}

#[test]
fn service_ports() {
    assert_eq!(
        parse_err(&service("  selector: {app: web}\n")),
        "app.yaml doc 1: spec.ports: required"
    );
    let text = service(
        "  ports:\n  - port: 80\n  - name: b\n    port: 0\n    targetPort: 70000\n  - name: b\n    port: 80\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.ports[0].name: required when there is more than one port\n\
         app.yaml doc 1: spec.ports[1].port: 0 is not a valid port (1-65535)\n\
         app.yaml doc 1: spec.ports[1].targetPort: 70000 is not a valid port (1-65535)\n\
         app.yaml doc 1: spec.ports[2].name: duplicate name \"b\"\n\
         app.yaml doc 1: spec.ports[2]: duplicate port 80/TCP"
    );
}

#[test]
fn service_addresses() {
    let text = service("  type: ExternalName\n  clusterIP: 10.96.0.20\n");
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.externalName: required when type is ExternalName\n\
         app.yaml doc 1: spec.clusterIP: may not be set when type is ExternalName"
    );
    let text = service(
        "  clusterIP: 10.96.0.300\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4]\n  \
         sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports: [{port: 80}]\n",
    );
    assert_eq!(
        parse_err(&text),
        "app.yaml doc 1: spec.clusterIP: \"10.96.0.300\" is not a valid IP address or \"None\"\n\
         app.yaml doc 1: spec.ipFamilies: must list both IPv4 and IPv6 when ipFamilyPolicy is RequireDualStack\n\
         app.yaml doc 1: spec.sessionAffinityConfig: may only be set when sessionAffinity is ClientIP"
    );
}

#[test]
fn bad_authorization_policies_name_the_field() {
    let text = "apiVersion: mesh.skiff.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n\
        spec:\n  action: MAYBE\n  rules:\n  - from:\n    - source: {principals: [\"a*b\"]}\n    \
        to:\n    - operation: {ports: [\"http\"], methods: [get], paths: [api]}\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: spec.action: \"MAYBE\" is not ALLOW or DENY\n\
         app.yaml doc 1: spec.rules[0].from[0].source.principals[0]: \"a*b\": '*' may only be the first or the last character\n\
         app.yaml doc 1: spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number (1-65535)\n\
         app.yaml doc 1: spec.rules[0].to[0].operation.methods[0]: \"get\" is not an HTTP method in capitals (\"GET\")\n\
         app.yaml doc 1: spec.rules[0].to[0].operation.paths[0]: \"api\" must start with '/' or '*'"
    );
}

#[test]
fn bad_http_routes_name_the_field() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n\
        spec:\n  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  \
        rules:\n  - matches: [{path: {value: api}}]\n    \
        backendRefs: [{name: web, weight: -1}]\n    timeouts: {request: 2 seconds}\n    \
        retry: {codes: [200]}\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: spec.parentRefs[0].group: \"gateway.networking.k8s.io\" is not supported (only \"\", the core group of Service)\n\
         app.yaml doc 1: spec.parentRefs[0].kind: \"Gateway\" is not supported (only \"Service\")\n\
         app.yaml doc 1: spec.rules[0].matches[0].path.value: \"api\" must start with '/'\n\
         app.yaml doc 1: spec.rules[0].backendRefs[0].port: required for a Service backend\n\
         app.yaml doc 1: spec.rules[0].backendRefs[0].weight: -1 must be between 0 and 1000000\n\
         app.yaml doc 1: spec.rules[0].timeouts.request: \"2 seconds\" is not a duration (one to four parts of up to 5 digits and a unit h, m, s or ms: \"2s\", \"500ms\", \"1m30s\")\n\
         app.yaml doc 1: spec.rules[0].retry.codes[0]: 200 must be between 400 and 599"
    );
}

#[test]
fn invalid_base64_in_secret() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  user: YWRtaW4=\n  password: hunter2!\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: data[password]: invalid base64 (Invalid symbol 33, offset 7.)"
    );
}

#[test]
fn bad_config_keys() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  a/b: x\nbinaryData:\n  a/b: eA==\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: data[a/b]: \"a/b\" is not a valid config key (letters, digits, '-', '_' and '.', at most 253 characters)\n\
         app.yaml doc 1: binaryData[a/b]: \"a/b\" is not a valid config key (letters, digits, '-', '_' and '.', at most 253 characters)\n\
         app.yaml doc 1: binaryData[a/b]: duplicate of a key in data"
    );
}

#[test]
fn bad_hpa() {
    let text = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  \
                scaleTargetRef: {kind: Deployment}\n  minReplicas: 5\n  maxReplicas: 2\n  metrics:\n  \
                - type: Resource\n    resource:\n      name: gpu\n      target: {type: Utilization}\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: spec.scaleTargetRef.name: required\n\
         app.yaml doc 1: spec.maxReplicas: 2 must be greater than or equal to minReplicas (5)\n\
         app.yaml doc 1: spec.metrics[0].resource.name: \"gpu\" is not supported (supported: cpu, memory)\n\
         app.yaml doc 1: spec.metrics[0].resource.target.averageUtilization: required when type is Utilization"
    );
    let text = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  \
                maxReplicas: 2\n  metrics:\n  - type: Pods\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: spec.metrics[0].type: unsupported value \"Pods\" (supported: \"Resource\")"
    );
}

#[test]
fn bad_metrics() {
    let text = "apiVersion: metrics.k8s.io/v1beta1\nkind: PodMetrics\nmetadata:\n  name: web\n\
                containers:\n- name: web\n  usage: {cpu: lots}\n- name: web\n  usage: {memory: -1}\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: timestamp: required\n\
         app.yaml doc 1: window: required\n\
         app.yaml doc 1: containers[1].name: duplicate name \"web\"\n\
         app.yaml doc 1: containers[0].usage[cpu]: \"lots\" is not a valid quantity \
         (a number with an optional suffix such as m, k, M, G, Ki, Mi, Gi or an exponent like e3)\n\
         app.yaml doc 1: containers[1].usage[memory]: -1 must not be negative"
    );
}

#[test]
fn bad_node_and_endpoint_slice() {
    let text = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\nspec:\n  podCIDR: 10.244.1.0/33\n  \
                taints:\n  - key: dedicated\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: spec.podCIDR: \"10.244.1.0/33\" is not a valid CIDR (like 10.244.0.0/24)\n\
         app.yaml doc 1: spec.taints[0].effect: required"
    );
    let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\naddressType: IPv4\n\
                endpoints:\n- addresses: [\"fd00::1\"]\n- addresses: []\nports:\n- port: 0\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: endpoints[0].addresses[0]: \"fd00::1\" is not a valid IPv4 address\n\
         app.yaml doc 1: endpoints[1].addresses: must have 1 to 100 addresses, found 0\n\
         app.yaml doc 1: ports[0].port: 0 is not a valid port (1-65535)"
    );
}

#[test]
fn bad_lease() {
    let text = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: n1, namespace: kube-node-lease}\n\
                spec: {leaseDurationSeconds: 0, leaseTransitions: -1, renewTime: yesterday}\n";
    let errors = parse_err(text);
    assert!(
        errors.starts_with(
            "app.yaml doc 1: spec.leaseDurationSeconds: 0 must be greater than or equal to 1\n\
             app.yaml doc 1: spec.leaseTransitions: -1 must be greater than or equal to 0\n\
             app.yaml doc 1: spec.renewTime: \"yesterday\" is not an RFC 3339 time: "
        ),
        "{errors}"
    );
}

#[test]
fn bad_priority_class() {
    let class = |body: &str| {
        format!("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: {body}")
    };
    assert_eq!(
        parse_err(&class("batch\ndescription: no value\n")),
        "app.yaml doc 1: value: required"
    );
    assert_eq!(
        parse_err(&class(
            "system-mine\nvalue: 2000000000\npreemptionPolicy: Sometimes\n"
        )),
        "app.yaml doc 1: preemptionPolicy: unsupported value \"Sometimes\" (supported: \
         \"PreemptLowerPriority\", \"Never\")"
    );
    assert_eq!(
        parse_err(&class("system-mine\nvalue: 2000000000\n")),
        "app.yaml doc 1: value: 2000000000 must be less than or equal to 1000000000 (higher values \
         are reserved for system classes)\n\
         app.yaml doc 1: metadata.name: the prefix \"system-\" is reserved for system classes"
    );
    let old = object(&class("batch\nvalue: 10\n"));
    assert_eq!(
        old.to_value()["preemptionPolicy"],
        "PreemptLowerPriority",
        "defaulted"
    );
    let changed = object(&class("batch\nvalue: 11\npreemptionPolicy: Never\n"));
    assert_eq!(
        update_errors(&changed, &old),
        "value: field is immutable\npreemptionPolicy: field is immutable"
    );
}

#[test]
fn json_input_with_errors() {
    let text = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                  "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": "80"}]}]}}"#;
    assert_eq!(
        parse_err(text),
        "app.json doc 1: spec.containers[0].ports[0].containerPort: expected an integer, found a string \"80\""
    );
    let text = "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"a\"}}\n{\"apiVersion\": \"v1\",\n \"kind\": }";
    assert_eq!(
        parse_err(text),
        "app.json doc 2: expected value at line 3 column 10"
    );
}

#[test]
fn bad_list_items() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n\
                - apiVersion: v1\n  kind: Namespace\n  metadata: {name: B}\n";
    assert_eq!(
        parse_err(text),
        "app.yaml doc 1: items[1].metadata.name: \"B\" is not a valid DNS-1123 label (lowercase \
         letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
    );
}

#[test]
fn files_without_objects() {
    assert_eq!(
        parse_err("# nothing here\n---\n"),
        "app.yaml: no objects found"
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let errors = load(
        &[missing.clone(), dir.path().to_path_buf()],
        false,
        &mut std::io::empty(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert_eq!(
        errors[1].to_string(),
        format!(
            "{}: no manifest files (*.yaml, *.yml, *.json)",
            dir.path().display()
        )
    );
}

// ---- Valid manifests. ----

#[test]
fn every_kind_decodes_defaults_and_validates() {
    let documents = parse_ok("all.yaml", ALL_KINDS);
    let kinds: Vec<Kind> = documents.iter().map(|d| d.object.kind()).collect();
    assert_eq!(kinds, Kind::ALL);
    assert!(
        documents
            .iter()
            .enumerate()
            .all(|(i, d)| d.index == i + 1 && d.source == "all.yaml")
    );

    let [
        _,
        Object::Node(node),
        Object::Pod(pod),
        Object::Deployment(deployment),
        Object::ReplicaSet(rs),
        Object::Service(service),
        Object::EndpointSlice(slice),
        Object::ConfigMap(config),
        Object::Secret(secret),
        Object::ServiceAccount(account),
        Object::Job(job),
        Object::CronJob(cronjob),
        Object::HorizontalPodAutoscaler(hpa),
        Object::Event(event),
        Object::PodMetrics(pod_metrics),
        Object::NodeMetrics(node_metrics),
        Object::PriorityClass(class),
        Object::AuthorizationPolicy(policy),
        Object::HTTPRoute(route),
        Object::Lease(lease),
    ] = documents.iter().map(|d| &d.object).collect::<Vec<_>>()[..]
    else {
        panic!("unexpected kinds");
    };
    assert_eq!(node.spec.taints[0].effect, Some(TaintEffect::NoSchedule));
    // CronJob defaults; the Job's own come when each Job is created.
    let cron = &cronjob.spec;
    assert_eq!(
        (
            cron.concurrency_policy,
            cron.suspend,
            cron.successful_jobs_history_limit,
            cron.failed_jobs_history_limit
        ),
        (
            Some(ConcurrencyPolicy::Allow),
            Some(false),
            Some(3),
            Some(1)
        )
    );
    assert_eq!(cron.job_template.spec.backoff_limit, None);
    assert_eq!(
        cron.job_template
            .spec
            .template
            .spec
            .termination_grace_period_seconds,
        Some(30)
    );
    assert_eq!(event.involved_object.name, "web-1");
    assert_eq!(pod_metrics.containers[0].usage["cpu"].0, "250m");
    assert_eq!(node_metrics.usage["memory"].0, "2Gi");
    assert_eq!(
        class.preemption_policy,
        Some(PreemptionPolicy::PreemptLowerPriority)
    );
    assert_eq!(policy.spec.rules[0].to[0].operation.ports, ["8080"]);
    assert_eq!(route.spec.rules[0].backend_refs[1].weight, Some(10));
    assert_eq!(lease.spec.holder_identity.as_deref(), Some("node-1"));

    // Pod defaults.
    assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(pod.spec.restart_policy, Some(RestartPolicy::Always));
    assert_eq!(pod.spec.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.spec.dns_policy, Some(DnsPolicy::ClusterFirst));
    assert_eq!(pod.spec.service_account_name.as_deref(), Some("default"));
    assert_eq!(pod.spec.service_account.as_deref(), Some("default"));
    assert_eq!(account.automount_service_account_token, Some(false));
    assert_eq!(
        pod.spec.containers[0].image_pull_policy,
        Some(ImagePullPolicy::IfNotPresent)
    );
    // YAML 1.1 octal, as Kubernetes reads it.
    assert_eq!(
        pod.spec.volumes[1]
            .config_map
            .as_ref()
            .and_then(|c| c.default_mode),
        Some(0o644)
    );
    assert_eq!(
        pod.spec.volumes[0].empty_dir,
        Some(EmptyDirVolumeSource::default())
    );

    // Deployment defaults, and the pod template's.
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    let strategy = spec.strategy.as_ref().unwrap();
    assert_eq!(strategy.r#type, Some(DeploymentStrategyType::RollingUpdate));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::String("25%".into())));
    assert_eq!(
        rolling.max_unavailable,
        Some(IntOrString::String("25%".into()))
    );
    let web = &spec.template.spec.containers[0];
    assert_eq!(web.image_pull_policy, Some(ImagePullPolicy::Always));
    assert_eq!(web.ports[0].protocol, Some(Protocol::Tcp));
    assert_eq!(
        web.resources.limits["memory"].parse().map(|q| q.value()),
        Ok(134_217_728)
    );
    let probe = web.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (
            probe.period_seconds,
            probe.timeout_seconds,
            probe.success_threshold,
            probe.failure_threshold
        ),
        (Some(10), Some(1), Some(1), Some(3))
    );
    assert_eq!(
        probe.http_get.as_ref().and_then(|h| h.scheme),
        Some(Scheme::Http)
    );
    assert_eq!(
        spec.template.spec.restart_policy,
        Some(RestartPolicy::Always)
    );

    assert_eq!(rs.spec.replicas, Some(1));

    // Service defaults.
    assert_eq!(service.spec.r#type, Some(ServiceType::ClusterIP));
    assert_eq!(service.spec.session_affinity, Some(SessionAffinity::None));
    assert_eq!(
        service.spec.ports[0].target_port,
        Some(IntOrString::String("http".into()))
    );
    assert_eq!(
        service.spec.ports[1].target_port,
        Some(IntOrString::Int(443))
    );
    assert_eq!(service.spec.ports[1].protocol, Some(Protocol::Tcp));

    assert_eq!(slice.ports[0].protocol, Some(Protocol::Tcp));
    assert_eq!(config.binary_data["logo.png"].0, b"\x89PNG\r\n\x1a\n");

    // stringData moves into data.
    assert_eq!(secret.r#type.as_deref(), Some("Opaque"));
    assert!(secret.string_data.is_empty());
    assert_eq!(secret.data["username"].0, b"admin");
    assert_eq!(secret.data["password"].0, b"hunter2");

    // Jobs keep their own restart policy and get theirs defaults.
    assert_eq!(
        (
            job.spec.parallelism,
            job.spec.completions,
            job.spec.backoff_limit
        ),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(
        job.spec.template.spec.restart_policy,
        Some(RestartPolicy::OnFailure)
    );
    assert_eq!(
        job.spec.template.spec.containers[0].image_pull_policy,
        Some(ImagePullPolicy::Always)
    );

    assert_eq!(hpa.spec.min_replicas, Some(1));
    assert_eq!(hpa.spec.metrics.len(), 1);
}

#[test]
fn hpa_without_metrics_targets_cpu() {
    let text = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  \
                scaleTargetRef: {kind: Deployment, name: web}\n  maxReplicas: 3\n";
    let documents = parse_ok("hpa.yaml", text);
    assert_eq!(
        documents[0].object.spec_value()["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}])
    );
}

#[test]
fn round_trips_through_yaml() {
    let objects: Vec<Object> = parse_ok("all.yaml", ALL_KINDS)
        .into_iter()
        .map(|d| d.object)
        .collect();
    let values: Vec<_> = objects.iter().map(Object::to_value).collect();
    let yaml = to_yaml(&values);
    let again: Vec<Object> = parse_ok("again.yaml", &yaml)
        .into_iter()
        .map(|d| d.object)
        .collect();
    assert_eq!(again, objects);
    // Strings that look like other YAML types stay strings.
    let mut config = ConfigMap::default();
    config.metadata.name = "tricky".into();
    for value in [
        "yes",
        "no",
        "on",
        "0755",
        "1e3",
        "~",
        "null",
        "true",
        "0x1F",
        "- x",
        "a: b",
        "#c",
        "",
        " x",
        "multi\nline\n",
    ] {
        config
            .data
            .insert(format!("k{}", config.data.len()), value.into());
    }
    let object = Object::from(config);
    let yaml = to_yaml(&[object.to_value(), object.to_value()]);
    let again = parse_ok("tricky.yaml", &yaml);
    assert_eq!(again.len(), 2);
    assert_eq!(again[1].object, object);
    assert_eq!(again[1].index, 2);
}

#[test]
fn json_bytes_hold_the_json_of_to_value() {
    for document in parse_ok("all.yaml", ALL_KINDS) {
        let mut object = document.object;
        let kind = object.kind();
        object.metadata_mut().resource_version = Some("42".into());
        let value = object.to_value();
        let written: Value = serde_json::from_slice(&object.to_json_bytes()).unwrap();
        assert_eq!(written, value, "{kind}");
        // The store's copy: the same without the version, and it reads back whole.
        let stored: Value = serde_json::from_slice(&object.to_stored_bytes()).unwrap();
        let mut unversioned = value;
        unversioned["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert_eq!(stored, unversioned, "{kind}");
        let mut read = Object::decode_stored(stored).unwrap();
        read.metadata_mut().resource_version = Some("42".into());
        assert_eq!(read, object, "{kind}");
    }
}

#[test]
fn to_value_looks_like_kubectl() {
    let documents = parse_ok("all.yaml", ALL_KINDS);
    let value = documents[3].object.to_value();
    assert_eq!(value["apiVersion"], "apps/v1");
    assert_eq!(value["kind"], "Deployment");
    assert_eq!(
        value["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"name": "http", "containerPort": 80, "protocol": "TCP"}])
    );
    // Unset fields and empty collections are left out, and so is an empty status.
    assert!(value.get("status").is_none());
    assert!(value["metadata"].get("annotations").is_none());
    assert!(value["spec"].get("paused").is_none());
    assert!(!value.to_string().contains("null"));
    // The empty-dir volume keeps its (empty) source.
    assert_eq!(
        documents[2].object.to_value()["spec"]["volumes"][0],
        json!({"name": "scratch", "emptyDir": {}})
    );
}

#[test]
fn json_manifests() {
    let text = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
        {"apiVersion": "v1", "kind": "List", "items": [
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {"k": "v"}},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]}"#;
    let documents = parse_ok("app.json", text);
    let names: Vec<(usize, &str)> = documents
        .iter()
        .map(|d| (d.index, d.object.metadata().name.as_str()))
        .collect();
    assert_eq!(names, [(1, "a"), (2, "b"), (2, "c")]);
}

#[test]
fn empty_documents_count_for_the_index() {
    let text = "# header comment\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n# nothing\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n";
    let indexes: Vec<usize> = parse_ok("app.yaml", text).iter().map(|d| d.index).collect();
    assert_eq!(indexes, [2, 4]);
}

#[test]
fn loads_directories_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let namespace =
        |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    std::fs::write(dir.path().join("b.yaml"), namespace("b")).unwrap();
    std::fs::write(dir.path().join("a.yml"), namespace("a")).unwrap();
    std::fs::write(
        dir.path().join("c.json"),
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    std::fs::create_dir(dir.path().join("b-sub")).unwrap();
    std::fs::write(dir.path().join("b-sub/d.yaml"), namespace("d")).unwrap();
    let names = |recursive| -> Vec<(String, String)> {
        load(
            &[dir.path().to_path_buf()],
            recursive,
            &mut std::io::empty(),
        )
        .unwrap_or_else(|errors| panic!("{}", lines(&errors)))
        .into_iter()
        .map(|d| (d.source, d.object.metadata().name.clone()))
        .collect()
    };
    let source = |file: &str| dir.path().join(file).display().to_string();
    assert_eq!(
        names(false),
        [
            (source("a.yml"), "a".into()),
            (source("b.yaml"), "b".into()),
            (source("c.json"), "c".into())
        ]
    );
    assert_eq!(
        names(true),
        [
            (source("a.yml"), "a".into()),
            (source("b-sub/d.yaml"), "d".into()),
            (source("b.yaml"), "b".into()),
            (source("c.json"), "c".into()),
        ]
    );
}

#[test]
fn loads_stdin_and_files_together() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ns.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: from-file\n",
    )
    .unwrap();
    let mut stdin = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: from-stdin\n".as_bytes();
    let documents = load(&["-".into(), file.clone()], false, &mut stdin).unwrap();
    let sources: Vec<(&str, &str)> = documents
        .iter()
        .map(|d| (d.source.as_str(), d.object.metadata().name.as_str()))
        .collect();
    assert_eq!(
        sources,
        [
            ("<stdin>", "from-stdin"),
            (file.display().to_string().as_str(), "from-file")
        ]
    );

    let mut stdin = "apiVersion: v1\nkind: Namespace\n".as_bytes();
    let errors = load(&["-".into()], false, &mut stdin).unwrap_err();
    assert_eq!(lines(&errors), "<stdin> doc 1: metadata.name: required");
}

// ---- Object operations. ----

fn object(text: &str) -> Object {
    parse_ok("app.yaml", text).remove(0).object
}

fn update_errors(new: &Object, old: &Object) -> String {
    new.validate_update(old)
        .map_or_else(|e| e.to_string(), |()| String::new())
}

#[test]
fn service_cluster_ip_is_immutable() {
    let old = object(&service("  clusterIP: 10.96.0.20\n  ports: [{port: 80}]\n"));
    let changed = object(&service("  clusterIP: 10.96.0.21\n  ports: [{port: 80}]\n"));
    let unset = object(&service("  ports: [{port: 81}]\n"));
    assert_eq!(
        update_errors(&changed, &old),
        "spec.clusterIP: field is immutable"
    );
    assert_eq!(update_errors(&unset, &old), "");
    assert_eq!(update_errors(&old, &unset), "");
}

#[test]
fn workload_selectors_and_job_templates_are_immutable() {
    let old = object(&deployment(TEMPLATE));
    let new = object(&deployment(&TEMPLATE.replace("app: web", "app: api")));
    assert_eq!(
        update_errors(&new, &old),
        "spec.selector: field is immutable"
    );
    let scaled = object(&deployment(&format!("  replicas: 5\n{TEMPLATE}")));
    assert_eq!(update_errors(&scaled, &old), "");

    let job = |image: &str| {
        object(&format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  template:\n    spec:\n      \
             restartPolicy: Never\n      containers:\n      - name: migrate\n        image: {image}\n"
        ))
    };
    assert_eq!(
        update_errors(&job("migrate:2"), &job("migrate:1")),
        "spec.template: field is immutable"
    );
}

#[test]
fn immutable_config_and_identity() {
    let config = |data: &str, immutable: &str| {
        object(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n{immutable}data: {{mode: {data}}}\n"
        ))
    };
    let old = config("a", "immutable: true\n");
    assert_eq!(
        update_errors(&config("b", "immutable: true\n"), &old),
        "data: field is immutable"
    );
    assert_eq!(
        update_errors(&config("a", ""), &old),
        "immutable: field is immutable"
    );
    assert_eq!(update_errors(&config("b", ""), &config("a", "")), "");

    let mut renamed = old.clone();
    renamed.metadata_mut().name = "other".into();
    assert_eq!(
        update_errors(&renamed, &old),
        "metadata.name: field is immutable"
    );
    let namespace = object("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n");
    assert_eq!(
        update_errors(&namespace, &old),
        "kind: field is immutable (stored object is a ConfigMap)"
    );
}

#[test]
fn spec_and_status_views() {
    let mut pod = object(&pod("  containers: [{name: web, image: nginx}]\n"));
    assert_eq!(pod.spec_value()["containers"][0]["name"], "web");
    assert_eq!(pod.status_value(), serde_json::Value::Null);
    pod.set_status(json!({"phase": "Running", "podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]}))
        .unwrap();
    assert_eq!(
        pod.status_value(),
        json!({"phase": "Running", "podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]})
    );
    assert_eq!(pod.to_value()["status"]["phase"], "Running");
    assert_eq!(
        pod.set_status(json!({"phase": "Running", "podIp": "10.244.1.5"}))
            .unwrap_err()
            .to_string(),
        "status.podIp: unknown field"
    );
    assert_eq!(
        pod.set_status(json!({"containerStatuses": [{"name": "web", "restartCount": "x"}]}))
            .unwrap_err()
            .to_string(),
        "status.containerStatuses[0].restartCount: expected an integer, found a string \"x\""
    );
    pod.clear_status();
    assert_eq!(pod.status_value(), serde_json::Value::Null);

    let mut config =
        object("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata: {a: b}\n");
    assert_eq!(
        config.spec_value(),
        json!({"data": {"a": "b"}, "binaryData": {}})
    );
    assert_eq!(config.status_value(), serde_json::Value::Null);
    assert_eq!(
        config.set_status(json!({})).unwrap_err().to_string(),
        "status: this kind has no status"
    );
}

#[test]
fn decode_applies_no_defaults() {
    let value = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
    let decoded = Object::decode(value.clone()).unwrap();
    assert_eq!(decoded.to_value(), value);
    let mut defaulted = decoded.clone();
    defaulted.apply_defaults();
    assert_eq!(defaulted.to_value()["spec"]["ports"][0]["targetPort"], 80);
    // A status comes and goes with the object read back from the store.
    let stored = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}, "spec": {}, "status": {"phase": "Active"}});
    assert_eq!(Object::decode(stored.clone()).unwrap().to_value(), stored);
}

#[test]
fn kinds() {
    assert_eq!(Kind::ALL.len(), 20);
    for (name, kind) in [
        ("deploy", Kind::Deployment),
        ("Deployments", Kind::Deployment),
        ("deployment.apps", Kind::Deployment),
        ("deployments.apps", Kind::Deployment),
        ("po", Kind::Pod),
        ("pods", Kind::Pod),
        ("Pod", Kind::Pod),
        ("svc", Kind::Service),
        ("ns", Kind::Namespace),
        ("no", Kind::Node),
        ("rs", Kind::ReplicaSet),
        ("cm", Kind::ConfigMap),
        ("secrets", Kind::Secret),
        ("sa", Kind::ServiceAccount),
        ("serviceaccounts", Kind::ServiceAccount),
        ("jobs.batch", Kind::Job),
        ("cj", Kind::CronJob),
        ("cronjobs.batch", Kind::CronJob),
        ("hpa", Kind::HorizontalPodAutoscaler),
        (
            "horizontalpodautoscalers.autoscaling",
            Kind::HorizontalPodAutoscaler,
        ),
        ("endpointslices.discovery.k8s.io", Kind::EndpointSlice),
        ("EndpointSlice", Kind::EndpointSlice),
        ("ev", Kind::Event),
        ("events", Kind::Event),
        ("pods.metrics.k8s.io", Kind::PodMetrics),
        ("podmetrics", Kind::PodMetrics),
        ("NodeMetrics", Kind::NodeMetrics),
        ("pc", Kind::PriorityClass),
        ("priorityclasses.scheduling.k8s.io", Kind::PriorityClass),
        ("ap", Kind::AuthorizationPolicy),
        (
            "authorizationpolicies.mesh.skiff.io",
            Kind::AuthorizationPolicy,
        ),
        ("httproutes", Kind::HTTPRoute),
        ("httproutes.gateway.networking.k8s.io", Kind::HTTPRoute),
    ] {
        assert_eq!(Kind::from_cli_name(name), Some(kind), "{name}");
    }
    for name in ["deployments.batch", "pods.v1", "deploymnt", "", "endpoints"] {
        assert_eq!(Kind::from_cli_name(name), None, "{name}");
    }
    assert_eq!(
        Kind::from_type("apps/v1", "Deployment"),
        Some(Kind::Deployment)
    );
    assert_eq!(Kind::from_type("v1", "Deployment"), None);
    assert_eq!(
        Kind::from_type("discovery.k8s.io/v1", "EndpointSlice"),
        Some(Kind::EndpointSlice)
    );
    assert_eq!(
        Kind::HorizontalPodAutoscaler.to_string(),
        "HorizontalPodAutoscaler"
    );
    assert_eq!(
        Kind::HorizontalPodAutoscaler.api_version(),
        "autoscaling/v2"
    );
    assert_eq!(Kind::Job.api_version(), "batch/v1");
    assert_eq!(Kind::ConfigMap.plural(), "configmaps");
    assert_eq!(Kind::EndpointSlice.short_names(), &[] as &[&str]);
    assert_eq!(Kind::Deployment.short_names(), ["deploy"]);
    assert!(!Kind::Node.namespaced() && !Kind::Namespace.namespaced() && Kind::Pod.namespaced());
}

#[test]
fn object_labels_are_selectable() {
    let object = object(&deployment(TEMPLATE));
    let labels: &BTreeMap<String, String> = &object.metadata().labels;
    assert!(labels.is_empty());
    let selector = Selector::parse("!app").unwrap();
    assert!(selector.matches(labels));
}

#[test]
fn a_pod_runs_as_default_or_the_account_it_names() {
    let pod = |accounts: serde_json::Value| {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(accounts.as_object().unwrap().clone());
        Object::from_value(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}),
        )
    };
    let accounts = |object: Object| {
        let value = object.to_value();
        (
            value["spec"]["serviceAccountName"].clone(),
            value["spec"]["serviceAccount"].clone(),
        )
    };
    assert_eq!(
        accounts(pod(json!({})).unwrap()),
        (json!("default"), json!("default"))
    );
    // The deprecated field is read when the current one is unset, and mirrors it.
    assert_eq!(
        accounts(pod(json!({"serviceAccount": "builder"})).unwrap()),
        (json!("builder"), json!("builder"))
    );
    assert_eq!(
        accounts(pod(json!({"serviceAccountName": "web", "serviceAccount": "old"})).unwrap()),
        (json!("web"), json!("web"))
    );
    assert_eq!(
        pod(json!({"serviceAccountName": "Web_Admin"}))
            .unwrap_err()
            .to_string(),
        "spec.serviceAccountName: \"Web_Admin\" is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
    );
    // Templates keep what was written: their pods get the default when created.
    let template = Object::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "r"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}
    }))
    .unwrap();
    assert!(
        template.to_value()["spec"]["template"]["spec"]
            .get("serviceAccountName")
            .is_none()
    );
}
