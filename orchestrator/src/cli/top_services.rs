//! `skiff top services`: the mesh's golden metrics as a table, read from an
//! agent's Prometheus endpoint (the mesh counts traffic there, not in the API):
//! per source workload and destination Service (of the current namespace, or
//! all with -A), the requests since the agent
//! started, the share that did not fail (not 5xx) and the p50 and p99 latency
//! estimated from the histogram as Prometheus' histogram_quantile does.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::print::Table;

/// The Prometheus text an agent serves at `url` (http only).
pub async fn fetch(url: &str) -> Result<String, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// URLs are supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .clone();
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connecting to {authority}: {e} (is `skiff agent` running?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
}

/// One row: a source workload and a destination Service.
#[derive(Debug, Default, PartialEq)]
struct Traffic {
    requests: f64,
    failures: f64,
    /// Cumulative counts by upper bound (seconds), as the histogram's buckets.
    buckets: BTreeMap<Bound, f64>,
}

/// A bucket bound, ordered as a number (+Inf last).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bound(f64);

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The table of the mesh series in `metrics`, of the traffic to `namespace`
/// (None: to every namespace).
pub fn table(metrics: &str, namespace: Option<&str>) -> String {
    let mut rows: BTreeMap<(String, String), Traffic> = BTreeMap::new();
    for Sample {
        name,
        labels,
        value,
    } in metrics.lines().filter_map(parse_line)
    {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map_or("", |(_, v)| v.as_str())
        };
        if namespace.is_some_and(|ns| ns != label("destination_namespace")) {
            continue;
        }
        let destination = match label("destination_service") {
            "" => label("destination_workload"),
            service => service,
        };
        let key = (
            format!("{}/{}", label("source_namespace"), label("source_workload")),
            format!("{}/{destination}", label("destination_namespace")),
        );
        match name {
            "skiff_mesh_requests_total" => {
                let traffic = rows.entry(key).or_default();
                traffic.requests += value;
                if label("status_class") == "5xx" {
                    traffic.failures += value;
                }
            }
            "skiff_mesh_request_duration_seconds_bucket" => {
                if let Ok(bound) = label("le").parse::<f64>() {
                    *rows
                        .entry(key)
                        .or_default()
                        .buckets
                        .entry(Bound(bound))
                        .or_default() += value;
                }
            }
            _ => {}
        }
    }
    let mut table =
        Table::with_header(&["SOURCE", "DESTINATION", "REQUESTS", "SUCCESS", "P50", "P99"]);
    for ((source, destination), traffic) in rows {
        let success = if traffic.requests > 0.0 {
            format!(
                "{:.2}%",
                100.0 * (1.0 - traffic.failures / traffic.requests)
            )
        } else {
            "-".into()
        };
        table.push_row(vec![
            source,
            destination,
            format!("{}", traffic.requests),
            success,
            quantile_text(&traffic.buckets, 0.5),
            quantile_text(&traffic.buckets, 0.99),
        ]);
    }
    table.render(true)
}

fn quantile_text(buckets: &BTreeMap<Bound, f64>, q: f64) -> String {
    quantile(buckets, q).map_or_else(|| "-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

/// histogram_quantile: the bucket the q-th observation falls in, interpolated
/// linearly inside it; in the +Inf bucket, the highest finite bound.
fn quantile(buckets: &BTreeMap<Bound, f64>, q: f64) -> Option<f64> {
    let total = *buckets.values().last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (Bound(upper), count) in buckets {
        if *count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * share);
        }
        (lower, below) = (*upper, *count);
    }
    None
}

/// One line of the Prometheus text format.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(String, String)>,
    value: f64,
}

/// `name{key="value",...} number` (or without labels); None for comments and
/// lines that are not a sample.
fn parse_line(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let Some((name, labels)) = series.split_once('{') else {
        return Some(Sample {
            name: series,
            labels: Vec::new(),
            value,
        });
    };
    let mut pairs = Vec::new();
    let mut rest = labels.strip_suffix('}')?;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(chars.next()?.1),
                (_, c) => value.push(c),
            }
        };
        pairs.push((key.trim_start_matches(',').to_string(), value));
        rest = &after[end + 1..];
    }
    Some(Sample {
        name,
        labels: pairs,
        value,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::mesh::{MeshMetrics, TrafficLabels, Workload};

    #[test]
    fn the_table_sums_series_and_estimates_quantiles() {
        let metrics = MeshMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let workload = |name: &str| Workload {
            namespace: "shop".into(),
            name: name.into(),
        };
        let web = workload("web");
        for (backend, status, millis) in [
            ("cart-v1", 200, 3),
            ("cart-v1", 200, 3),
            ("cart-v1", 503, 3),
            ("cart-v2", 200, 3),
        ] {
            let labels = TrafficLabels::new(&web, &workload(backend), "cart");
            metrics.request(&labels, status, Duration::from_millis(millis));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert_eq!(
            table(&text, Some("default")),
            "SOURCE   DESTINATION   REQUESTS   SUCCESS   P50   P99\n"
        );
        assert_eq!(
            table(&text, Some("shop")),
            "SOURCE     DESTINATION   REQUESTS   SUCCESS   P50     P99\n\
             shop/web   shop/cart     4          75.00%    3.0ms   4.0ms\n"
        );
    }
}
