//! The mesh's golden metrics on the agent's /metrics, per source and destination
//! workload (and the destination Service, when the traffic went to one), as
//! Istio and Linkerd publish them: TCP connections opened and closed and the
//! bytes they carried each way; HTTP requests by status class and their latency
//! (to the response's headers); and what AuthorizationPolicies denied.
//! `skiff top services` reads them back.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A workload: its namespace and name (a Deployment's, else the pod's).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
}

/// Who talked to whom. Empty strings stand for what the proxy does not know (a
/// plaintext source, a connection to a pod address rather than a Service).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub source_namespace: String,
    pub source_workload: String,
    pub destination_namespace: String,
    pub destination_workload: String,
    pub destination_service: String,
}

impl TrafficLabels {
    pub fn new(source: &Workload, destination: &Workload, service: &str) -> Self {
        Self {
            source_namespace: source.namespace.clone(),
            source_workload: source.name.clone(),
            destination_namespace: destination.namespace.clone(),
            destination_workload: destination.name.clone(),
            destination_service: service.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    /// "2xx" to "5xx" ("1xx" never reaches here: hyper handles interim responses).
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    /// "namespace/name" of the DENY policy that matched; empty when ALLOW
    /// policies applied and none matched.
    pub policy: String,
}

/// Latency buckets from 1 ms to about 16 s, doubling (Linkerd's range).
#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }
}

/// The families; clones share their values.
#[derive(Clone)]
pub struct MeshMetrics {
    tcp_opened: Family<TrafficLabels, Counter>,
    tcp_closed: Family<TrafficLabels, Counter>,
    /// Bytes from the source to the destination.
    tcp_sent_bytes: Family<TrafficLabels, Counter>,
    /// Bytes from the destination back to the source.
    tcp_received_bytes: Family<TrafficLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<TrafficLabels, Histogram, LatencyBuckets>,
    denials: Family<DenialLabels, Counter>,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        Self {
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent_bytes: Family::default(),
            tcp_received_bytes: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(LatencyBuckets),
            denials: Family::default(),
        }
    }
}

/// The class of an HTTP status: "2xx" for 204.
pub fn status_class(status: u16) -> &'static str {
    match status {
        ..200 => "1xx",
        200..300 => "2xx",
        300..400 => "3xx",
        400..500 => "4xx",
        _ => "5xx",
    }
}

impl MeshMetrics {
    pub fn tcp_opened(&self, labels: &TrafficLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// A connection ended after carrying `sent` bytes to the destination and
    /// `received` back.
    pub fn tcp_closed(&self, labels: &TrafficLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent_bytes.get_or_create(labels).inc_by(sent);
        self.tcp_received_bytes
            .get_or_create(labels)
            .inc_by(received);
    }

    /// An HTTP request answered with `status` after `took`.
    pub fn request(&self, labels: &TrafficLabels, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                traffic: labels.clone(),
                status_class: status_class(status),
            })
            .inc();
        self.request_duration
            .get_or_create(labels)
            .observe(took.as_secs_f64());
    }

    /// A connection or request AuthorizationPolicies denied (`policy` as in
    /// [`DenialLabels`]).
    pub fn denied(&self, labels: &TrafficLabels, policy: &str) {
        self.denials
            .get_or_create(&DenialLabels {
                traffic: labels.clone(),
                policy: policy.to_string(),
            })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "skiff_mesh_tcp_connections_opened",
            "Mesh TCP connections opened, by source and destination workload",
            self.tcp_opened.clone(),
        );
        registry.register(
            "skiff_mesh_tcp_connections_closed",
            "Mesh TCP connections closed, by source and destination workload",
            self.tcp_closed.clone(),
        );
        registry.register(
            "skiff_mesh_tcp_sent_bytes",
            "Bytes mesh TCP connections carried from the source to the destination",
            self.tcp_sent_bytes.clone(),
        );
        registry.register(
            "skiff_mesh_tcp_received_bytes",
            "Bytes mesh TCP connections carried from the destination back to the source",
            self.tcp_received_bytes.clone(),
        );
        registry.register(
            "skiff_mesh_requests",
            "HTTP requests through the mesh's L7 proxy, by status class",
            self.requests.clone(),
        );
        registry.register(
            "skiff_mesh_request_duration_seconds",
            "Time from an HTTP request's arrival at the L7 proxy to its response's headers",
            self.request_duration.clone(),
        );
        registry.register(
            "skiff_mesh_authorization_denials",
            "Connections and requests AuthorizationPolicies denied, by the deciding policy",
            self.denials.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_labels() {
        let metrics = MeshMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let source = Workload {
            namespace: "shop".into(),
            name: "frontend".into(),
        };
        let destination = Workload {
            namespace: "shop".into(),
            name: "cart".into(),
        };
        let labels = TrafficLabels::new(&source, &destination, "cart");
        metrics.tcp_opened(&labels);
        metrics.tcp_closed(&labels, 100, 2_000);
        metrics.request(&labels, 204, Duration::from_millis(3));
        metrics.request(&labels, 503, Duration::from_millis(30));
        metrics.denied(&labels, "shop/deny-admin");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let series = "source_namespace=\"shop\",source_workload=\"frontend\",\
                      destination_namespace=\"shop\",destination_workload=\"cart\",\
                      destination_service=\"cart\"";
        for line in [
            format!("skiff_mesh_tcp_connections_opened_total{{{series}}} 1"),
            format!("skiff_mesh_tcp_connections_closed_total{{{series}}} 1"),
            format!("skiff_mesh_tcp_sent_bytes_total{{{series}}} 100"),
            format!("skiff_mesh_tcp_received_bytes_total{{{series}}} 2000"),
            format!("skiff_mesh_requests_total{{{series},status_class=\"2xx\"}} 1"),
            format!("skiff_mesh_requests_total{{{series},status_class=\"5xx\"}} 1"),
            format!("skiff_mesh_request_duration_seconds_count{{{series}}} 2"),
            format!("skiff_mesh_request_duration_seconds_bucket{{le=\"0.004\",{series}}} 1"),
            format!(
                "skiff_mesh_authorization_denials_total{{{series},policy=\"shop/deny-admin\"}} 1"
            ),
        ] {
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
    }
}
