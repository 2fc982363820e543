//! Cluster DNS metrics on the agent's /metrics: answers by question type and
//! response code, and how long each took (forwarded ones included).

use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::ResponseCode;
use hickory_server::server::{Request, ResponseInfo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// The question's type ("none" when it had none).
    pub r#type: &'static str,
    pub rcode: &'static str,
    pub protocol: &'static str,
}

#[derive(Clone)]
pub struct DnsMetrics {
    pub queries: Family<QueryLabels, Counter>,
    pub duration: Histogram,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            queries: Family::default(),
            // 50 µs to about 3 s: in-zone answers sit at the bottom, forwarded
            // ones at the top.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 3.0, 11,
            )),
        }
    }
}

impl DnsMetrics {
    /// Counts the answer `info` to `request`, which took `took`.
    pub fn count(&self, request: &Request, info: &ResponseInfo, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        let labels = QueryLabels {
            r#type: request
                .queries
                .queries()
                .first()
                .map_or("none", |q| q.query_type().into()),
            rcode: rcode_name(info.response_code),
            protocol: match request.protocol() {
                Protocol::Udp => "udp",
                _ => "tcp",
            },
        };
        self.queries.get_or_create(&labels).inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "skiff_dns_queries",
            "DNS queries answered, by question type, response code and protocol",
            self.queries.clone(),
        );
        registry.register(
            "skiff_dns_request_duration_seconds",
            "Time from a DNS request's arrival to its answer",
            self.duration.clone(),
        );
    }
}

/// The mnemonic of a response code, as dig prints it (hickory's Display is prose).
fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}
