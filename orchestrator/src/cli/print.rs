//! How the CLI shows objects: kubectl's tables (columns per kind, `-o wide`, a
//! NAMESPACE column across namespaces), `-o yaml|json|name`, and `describe`.

use serde_json::{Value, json};

use crate::api::proto;
use crate::api::registry::resource;
use crate::model::{Kind, manifest};

/// `-o` formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Wide,
    Yaml,
    Json,
    Name,
}

/// A table of rows under a header, printed with kubectl's alignment: columns
/// padded to their widest cell plus three spaces.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(kind: Kind, wide: bool, with_namespace: bool) -> Self {
        let mut header: Vec<String> = columns(kind, wide).iter().map(|c| c.to_string()).collect();
        if with_namespace && kind.namespaced() {
            header.insert(0, "NAMESPACE".into());
        }
        Self {
            header,
            rows: Vec::new(),
        }
    }

    /// A table of anything, not of a kind's objects.
    pub fn with_header(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push_row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Adds a column after the kind's own, filled by [`Table::push_with`].
    pub fn with_column(mut self, name: &str) -> Self {
        self.header.push(name.into());
        self
    }

    pub fn push(&mut self, kind: Kind, object: &Value, wide: bool, now: i64) {
        self.push_with(kind, object, wide, now, []);
    }

    /// A row with cells for the columns added by [`Table::with_column`].
    pub fn push_with(
        &mut self,
        kind: Kind,
        object: &Value,
        wide: bool,
        now: i64,
        extra: impl IntoIterator<Item = String>,
    ) {
        let mut row = cells(kind, object, wide, now);
        row.extend(extra);
        if self.header.first().is_some_and(|h| h == "NAMESPACE") {
            row.insert(0, text(&object["metadata"]["namespace"]));
        }
        self.rows.push(row);
    }

    /// The rendered table, header first; `with_header` false renders rows only
    /// (watch output after the first batch).
    pub fn render(&self, with_header: bool) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(String::len).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    let pad = widths[i] + 3 - cell.chars().count();
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.push('\n');
            out
        };
        let mut out = String::new();
        if with_header {
            out.push_str(&line(&self.header));
        }
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// A Service's backends as this node's dataplane holds them, for `get services -o
/// wide`: the backends of its cluster-IP frontends, each once, with its weight
/// when it has more than one slot and the connections balanced to it:
/// `10.244.0.2:8080[w9]=120`.
pub fn service_backends(service: &Value, frontends: &[proto::Frontend]) -> String {
    let spec = &service["spec"];
    let ips: Vec<String> = items(&spec["clusterIPs"]).map(text).collect();
    let mut shown: Vec<String> = Vec::new();
    for port in items(&spec["ports"]) {
        let protocol = or(&port["protocol"], "TCP");
        for ip in &ips {
            let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
                continue;
            };
            let Some(number) = port["port"].as_u64() else {
                continue;
            };
            let address = std::net::SocketAddr::new(ip, number as u16).to_string();
            let frontend = frontends
                .iter()
                .find(|f| f.address == address && f.protocol == protocol);
            for backend in frontend.map(|f| f.backends.as_slice()).unwrap_or_default() {
                let weight = match backend.slots {
                    0 | 1 => String::new(),
                    slots => format!("[w{slots}]"),
                };
                shown.push(format!(
                    "{}{weight}={}",
                    backend.address, backend.connections
                ));
            }
        }
    }
    if shown.is_empty() {
        "<none>".into()
    } else {
        shown.join(",")
    }
}

fn columns(kind: Kind, wide: bool) -> Vec<&'static str> {
    let (mut base, extra): (Vec<&str>, Vec<&str>) = match kind {
        Kind::Namespace => (vec!["NAME", "STATUS", "AGE"], vec![]),
        Kind::Node => (
            vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            vec![
                "INTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ],
        ),
        Kind::Pod => (
            vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            vec!["IP", "NODE"],
        ),
        Kind::Deployment => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::ReplicaSet => (
            vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::Service => (
            vec![
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
            vec!["SELECTOR"],
        ),
        Kind::EndpointSlice => (
            vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            vec![],
        ),
        Kind::ConfigMap => (vec!["NAME", "DATA", "AGE"], vec![]),
        Kind::Secret => (vec!["NAME", "TYPE", "DATA", "AGE"], vec![]),
        Kind::ServiceAccount => (vec!["NAME", "AGE"], vec![]),
        Kind::AuthorizationPolicy => (vec!["NAME", "ACTION", "AGE"], vec![]),
        Kind::HTTPRoute => (vec!["NAME", "PARENTS", "AGE"], vec![]),
        // kubectl's columns.
        Kind::Lease => (vec!["NAME", "HOLDER", "AGE"], vec![]),
        Kind::Job => (
            vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::CronJob => (
            vec![
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE",
            ],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::HorizontalPodAutoscaler => (
            vec![
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE",
            ],
            vec![],
        ),
        Kind::Event => (
            vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            vec![],
        ),
        Kind::PodMetrics | Kind::NodeMetrics => {
            (vec!["NAME", "CPU(cores)", "MEMORY(bytes)"], vec!["WINDOW"])
        }
        Kind::PriorityClass => (
            vec!["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE"],
            vec!["PREEMPTIONPOLICY"],
        ),
    };
    if wide {
        base.extend(extra);
    }
    base
}

fn cells(kind: Kind, o: &Value, wide: bool, now: i64) -> Vec<String> {
    let meta = &o["metadata"];
    let spec = &o["spec"];
    let status = &o["status"];
    let name = text(&meta["name"]);
    let age = age(&meta["creationTimestamp"], now);
    let mut cells = match kind {
        Kind::Namespace => vec![name, or(&status["phase"], "Active"), age],
        Kind::Node => {
            let ready = conditions(status)
                .find(|c| c["type"] == "Ready")
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let mut state = ready.to_string();
            if spec["unschedulable"] == json!(true) {
                state.push_str(",SchedulingDisabled");
            }
            let mut row = vec![
                name,
                state,
                "<none>".into(),
                age,
                or(&status["nodeInfo"]["kubeletVersion"], "<none>"),
            ];
            if wide {
                let internal = items(&status["addresses"])
                    .find(|a| a["type"] == "InternalIP")
                    .map(|a| text(&a["address"]))
                    .unwrap_or_else(|| "<none>".into());
                row.extend([
                    internal,
                    or(&status["nodeInfo"]["osImage"], "<unknown>"),
                    or(&status["nodeInfo"]["kernelVersion"], "<unknown>"),
                    or(&status["nodeInfo"]["containerRuntimeVersion"], "<unknown>"),
                ]);
            }
            return row;
        }
        Kind::Pod => {
            let statuses: Vec<&Value> = items(&status["containerStatuses"]).collect();
            let total = items(&spec["containers"]).count();
            let ready = statuses
                .iter()
                .filter(|s| s["ready"] == json!(true))
                .count();
            let restarts: u64 = statuses
                .iter()
                .filter_map(|s| s["restartCount"].as_u64())
                .sum();
            let phase = if !meta["deletionTimestamp"].is_null() {
                "Terminating".to_string()
            } else {
                statuses
                    .iter()
                    .find_map(|s| s["state"]["waiting"]["reason"].as_str().map(str::to_string))
                    .unwrap_or_else(|| or(&status["phase"], "Pending"))
            };
            let mut row = vec![
                name,
                format!("{ready}/{total}"),
                phase,
                restarts.to_string(),
                age,
            ];
            if wide {
                row.push(or(&status["podIP"], "<none>"));
                row.push(or(&spec["nodeName"], "<none>"));
            }
            return row;
        }
        Kind::Deployment => vec![
            name,
            format!(
                "{}/{}",
                count(&status["readyReplicas"]),
                count(&spec["replicas"])
            ),
            count(&status["updatedReplicas"]),
            count(&status["availableReplicas"]),
            age,
        ],
        Kind::ReplicaSet => vec![
            name,
            count(&spec["replicas"]),
            count(&status["replicas"]),
            count(&status["readyReplicas"]),
            age,
        ],
        Kind::Service => {
            let ports: Vec<String> = items(&spec["ports"])
                .map(|p| match p["nodePort"].as_u64() {
                    Some(node_port) => format!(
                        "{}:{node_port}/{}",
                        text(&p["port"]),
                        or(&p["protocol"], "TCP")
                    ),
                    None => format!("{}/{}", text(&p["port"]), or(&p["protocol"], "TCP")),
                })
                .collect();
            let cluster_ips: Vec<String> = items(&spec["clusterIPs"]).map(text).collect();
            let external = match spec["type"].as_str() {
                Some("ExternalName") => text(&spec["externalName"]),
                _ => "<none>".into(),
            };
            vec![
                name,
                or(&spec["type"], "ClusterIP"),
                if cluster_ips.is_empty() {
                    "<none>".into()
                } else {
                    cluster_ips.join(",")
                },
                external,
                if ports.is_empty() {
                    "<none>".into()
                } else {
                    ports.join(",")
                },
                age,
            ]
        }
        Kind::EndpointSlice => {
            let ports: Vec<String> = items(&o["ports"]).map(|p| text(&p["port"])).collect();
            let addresses: Vec<String> = items(&o["endpoints"])
                .flat_map(|e| items(&e["addresses"]).map(text).collect::<Vec<_>>())
                .collect();
            vec![
                name,
                text(&o["addressType"]),
                if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                },
                if addresses.is_empty() {
                    "<unset>".into()
                } else {
                    addresses.join(",")
                },
                age,
            ]
        }
        Kind::ConfigMap => {
            let data = entries(&o["data"]) + entries(&o["binaryData"]);
            vec![name, data.to_string(), age]
        }
        Kind::Secret => vec![
            name,
            or(&o["type"], "Opaque"),
            entries(&o["data"]).to_string(),
            age,
        ],
        Kind::ServiceAccount => vec![name, age],
        Kind::AuthorizationPolicy => vec![name, or(&spec["action"], "ALLOW"), age],
        Kind::HTTPRoute => {
            let parents: Vec<String> = items(&spec["parentRefs"])
                .map(|p| text(&p["name"]))
                .collect();
            vec![name, parents.join(","), age]
        }
        Kind::Lease => vec![name, or(&spec["holderIdentity"], "<none>"), age],
        Kind::Job => {
            let state = conditions(status)
                .find(|c| {
                    c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed")
                })
                .map(|c| text(&c["type"]))
                .unwrap_or_else(|| "Running".into());
            let duration = match (
                status["startTime"].as_str(),
                status["completionTime"].as_str(),
            ) {
                (Some(start), Some(end)) => seconds_between(start, end).map(human_duration),
                (Some(start), None) => parse_time(start).map(|s| human_duration(now - s)),
                _ => None,
            };
            vec![
                name,
                state,
                format!(
                    "{}/{}",
                    count(&status["succeeded"]),
                    or(&spec["completions"], "1")
                ),
                duration.unwrap_or_default(),
                age,
            ]
        }
        Kind::CronJob => vec![
            name,
            text(&spec["schedule"]),
            or(&spec["timeZone"], "<none>"),
            or(&spec["suspend"], "false"),
            items(&status["active"]).count().to_string(),
            match status["lastScheduleTime"] {
                Value::Null => "<none>".into(),
                ref last => self::age(last, now),
            },
            age,
        ],
        Kind::Event => {
            let object = &o["involvedObject"];
            vec![
                self::age(&o["lastTimestamp"], now),
                or(&o["type"], "Normal"),
                text(&o["reason"]),
                format!(
                    "{}/{}",
                    text(&object["kind"]).to_lowercase(),
                    text(&object["name"])
                ),
                text(&o["message"]),
            ]
        }
        Kind::PriorityClass => {
            let mut row = vec![
                name,
                text(&o["value"]),
                or(&o["globalDefault"], "false"),
                age,
            ];
            if wide {
                row.push(or(&o["preemptionPolicy"], "PreemptLowerPriority"));
            }
            return row;
        }
        Kind::HorizontalPodAutoscaler => {
            let target = &spec["scaleTargetRef"];
            let targets: Vec<String> = items(&spec["metrics"])
                .map(|m| {
                    let goal = &m["resource"]["target"];
                    let current = items(&status["currentMetrics"])
                        .find(|c| c["resource"]["name"] == m["resource"]["name"])
                        .map(|c| text(&c["resource"]["current"]["averageUtilization"]))
                        .unwrap_or_else(|| "<unknown>".into());
                    format!(
                        "{}: {current}/{}%",
                        text(&m["resource"]["name"]),
                        text(&goal["averageUtilization"])
                    )
                })
                .collect();
            vec![
                name,
                format!("{}/{}", text(&target["kind"]), text(&target["name"])),
                if targets.is_empty() {
                    "<none>".into()
                } else {
                    targets.join(", ")
                },
                or(&spec["minReplicas"], "1"),
                text(&spec["maxReplicas"]),
                count(&status["currentReplicas"]),
                age,
            ]
        }
        Kind::PodMetrics | Kind::NodeMetrics => {
            let usage = usage(o);
            vec![
                name,
                cpu_text(usage.cpu_millis),
                memory_text(usage.memory_bytes),
            ]
        }
    };
    if wide {
        match kind {
            Kind::Deployment | Kind::ReplicaSet | Kind::Job | Kind::CronJob => {
                // A CronJob's pods are described one level down, in its Jobs' template.
                let spec = match kind {
                    Kind::CronJob => &spec["jobTemplate"]["spec"],
                    _ => spec,
                };
                let containers: Vec<&Value> =
                    items(&spec["template"]["spec"]["containers"]).collect();
                cells.push(
                    containers
                        .iter()
                        .map(|c| text(&c["name"]))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                cells.push(
                    containers
                        .iter()
                        .map(|c| text(&c["image"]))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                cells.push(selector_text(&spec["selector"]));
            }
            Kind::Service => cells.push(match spec["selector"].as_object() {
                Some(map) if !map.is_empty() => map
                    .iter()
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => "<none>".into(),
            }),
            Kind::PodMetrics | Kind::NodeMetrics => cells.push(text(&o["window"])),
            _ => {}
        }
    }
    cells
}

/// `skiff image ls`: REFERENCE, IMAGE ID (short, as crictl shows it), SIZE.
pub fn images(images: &[crate::api::proto::Image]) -> String {
    let rows: Vec<[String; 3]> = images
        .iter()
        .map(|i| {
            let id = i.id.trim_start_matches("sha256:");
            [
                i.reference.clone(),
                id.get(..13).unwrap_or(id).to_string(),
                human_size(i.size),
            ]
        })
        .collect();
    let header = ["IMAGE", "IMAGE ID", "SIZE"].map(String::from);
    let widths: Vec<usize> = (0..3)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            format!(
                "{:<w0$}   {:<w1$}   {}",
                row[0],
                row[1],
                row[2],
                w0 = widths[0],
                w1 = widths[1]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sizes as crictl prints them: 1.2MB.
fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1}GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1}MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1}kB", b as f64 / 1e3),
        b => format!("{b}B"),
    }
}

/// `-o name`: "deployment.apps/web".
pub fn name_of(kind: Kind, object: &Value) -> String {
    format!("{}/{}", singular(kind), text(&object["metadata"]["name"]))
}

/// "deployment.apps", "pod": the resource in singular, as kubectl prints it.
pub fn singular(kind: Kind) -> String {
    let lower = kind.name().to_lowercase();
    match resource(kind).split_once('.') {
        Some((_, group)) => format!("{lower}.{group}"),
        None => lower,
    }
}

/// `-o yaml` / `-o json` for one object, or a `List` of several (which `apply`
/// accepts back).
pub fn serialize(objects: &[Value], format: Format, as_list: bool) -> String {
    let value = if as_list {
        json!({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {}})
    } else {
        objects.first().cloned().unwrap_or(Value::Null)
    };
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ),
        _ => manifest::to_yaml(&[value]),
    }
}

/// `describe`: the object's identity, its spec and status as YAML, then the
/// events about it.
pub fn describe(kind: Kind, object: &Value, events: &[Value]) -> String {
    let meta = &object["metadata"];
    let pairs = |v: &Value| match v.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join("\n              "),
        _ => "<none>".into(),
    };
    let mut out = format!("Name:         {}\n", text(&meta["name"]));
    if kind.namespaced() {
        out.push_str(&format!("Namespace:    {}\n", text(&meta["namespace"])));
    }
    out.push_str(&format!("Kind:         {}\n", kind.name()));
    out.push_str(&format!("Labels:       {}\n", pairs(&meta["labels"])));
    out.push_str(&format!("Annotations:  {}\n", pairs(&meta["annotations"])));
    out.push_str(&format!(
        "Created:      {}\n",
        or(&meta["creationTimestamp"], "<unknown>")
    ));
    if let Some(deleting) = meta["deletionTimestamp"].as_str() {
        out.push_str(&format!("Terminating:  since {deleting}\n"));
    }
    for owner in items(&meta["ownerReferences"]) {
        out.push_str(&format!(
            "Controlled By:  {}/{}\n",
            text(&owner["kind"]),
            text(&owner["name"])
        ));
    }
    let body: serde_json::Map<String, Value> = object
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (section, value) in body {
        let yaml = manifest::to_yaml(&[value]);
        out.push_str(&format!("{}:\n", title(&section)));
        for line in yaml.lines().filter(|l| *l != "---") {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str("Events:");
    if events.is_empty() {
        out.push_str("  <none>\n");
        return out;
    }
    let now = jiff::Timestamp::now().as_second();
    let rows: Vec<[String; 5]> = events
        .iter()
        .map(|e| {
            [
                or(&e["type"], "Normal"),
                text(&e["reason"]),
                age(&e["lastTimestamp"], now),
                text(&e["source"]["component"]),
                text(&e["message"]),
            ]
        })
        .collect();
    let header = ["Type", "Reason", "Age", "From", "Message"].map(String::from);
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    out.push('\n');
    for row in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "  {:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        ));
    }
    out
}

/// kubectl's human-readable ages: 45s, 5m30s, 3h, 12d.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => match s % 60 {
            0 => format!("{m}m"),
            rest => format!("{m}m{rest}s"),
        },
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            rest => format!("{h}h{rest}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => match h % 24 {
            0 => format!("{d}d"),
            rest => format!("{d}d{rest}h"),
        },
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

fn age(created: &Value, now: i64) -> String {
    created
        .as_str()
        .and_then(parse_time)
        .map(|t| human_duration(now - t))
        .unwrap_or_else(|| "<unknown>".into())
}

fn parse_time(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

fn seconds_between(start: &str, end: &str) -> Option<i64> {
    Some(parse_time(end)? - parse_time(start)?)
}

fn title(section: &str) -> String {
    let mut chars = section.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn selector_text(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    for e in items(&selector["matchExpressions"]) {
        let values: Vec<String> = items(&e["values"]).map(text).collect();
        parts.push(match e["operator"].as_str() {
            Some("In") => format!("{} in ({})", text(&e["key"]), values.join(",")),
            Some("NotIn") => format!("{} notin ({})", text(&e["key"]), values.join(",")),
            Some("DoesNotExist") => format!("!{}", text(&e["key"])),
            _ => text(&e["key"]),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn conditions(status: &Value) -> impl Iterator<Item = &Value> {
    items(&status["conditions"])
}

fn entries(value: &Value) -> usize {
    value.as_object().map_or(0, |m| m.len())
}

/// A scalar as text; absent values print empty.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or(value: &Value, fallback: &str) -> String {
    match text(value) {
        t if t.is_empty() => fallback.to_string(),
        t => t,
    }
}

fn count(value: &Value) -> String {
    value.as_u64().unwrap_or(0).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        for (seconds, expected) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (40 * 86400, "40d"),
        ] {
            assert_eq!(human_duration(seconds), expected, "{seconds}");
        }
    }

    #[test]
    fn tables_align_columns_like_kubectl() {
        let now = parse_time("2026-01-01T00:10:00Z").unwrap();
        let svc = |name: &str, ip: &str| {
            json!({"metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"},
                   "spec": {"type": "NodePort", "clusterIPs": [ip], "selector": {"app": name},
                            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}})
        };
        let mut table = Table::new(Kind::Service, true, true);
        table.push(Kind::Service, &svc("web", "10.96.0.20"), true, now);
        table.push(
            Kind::Service,
            &svc("checkout-api", "10.96.100.200"),
            true,
            now,
        );
        assert_eq!(
            table.render(true),
            "\
NAMESPACE   NAME           TYPE       CLUSTER-IP      EXTERNAL-IP   PORT(S)        AGE   SELECTOR
shop        web            NodePort   10.96.0.20      <none>        80:30080/TCP   10m   app=web
shop        checkout-api   NodePort   10.96.100.200   <none>        80:30080/TCP   10m   app=checkout-api
"
        );
    }

    #[test]
    fn pod_rows_show_readiness_restarts_and_termination() {
        let now = parse_time("2026-01-01T00:00:30Z").unwrap();
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2026-01-01T00:00:00Z", "deletionTimestamp": "2026-01-01T00:00:20Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5",
                       "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}
        });
        assert_eq!(
            cells(Kind::Pod, &pod, true, now),
            [
                "web-1",
                "1/2",
                "Terminating",
                "3",
                "30s",
                "10.244.0.5",
                "node-1"
            ]
        );
    }

    #[test]
    fn names_carry_the_group() {
        let object = json!({"metadata": {"name": "web"}});
        assert_eq!(name_of(Kind::Deployment, &object), "deployment.apps/web");
        assert_eq!(name_of(Kind::Pod, &object), "pod/web");
        assert_eq!(
            singular(Kind::HorizontalPodAutoscaler),
            "horizontalpodautoscaler.autoscaling"
        );
    }
}

/// CPU and memory a PodMetrics (summed over its containers) or NodeMetrics reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_millis: i128,
    pub memory_bytes: i128,
}

pub fn usage(metrics: &Value) -> Usage {
    let maps: Vec<&Value> = match metrics["containers"].as_array() {
        Some(containers) => containers.iter().map(|c| &c["usage"]).collect(),
        None => vec![&metrics["usage"]],
    };
    let quantity = |map: &Value, name: &str| {
        map[name]
            .as_str()
            .and_then(|q| crate::model::Quantity(q.to_string()).parse().ok())
    };
    maps.into_iter().fold(Usage::default(), |sum, map| Usage {
        cpu_millis: sum.cpu_millis + quantity(map, "cpu").map_or(0, |q| q.millis()),
        memory_bytes: sum.memory_bytes + quantity(map, "memory").map_or(0, |q| q.value()),
    })
}

/// As `kubectl top` shows CPU: millicores.
pub fn cpu_text(millis: i128) -> String {
    format!("{millis}m")
}

/// As `kubectl top` shows memory: whole mebibytes.
pub fn memory_text(bytes: i128) -> String {
    format!("{}Mi", bytes / (1024 * 1024))
}
