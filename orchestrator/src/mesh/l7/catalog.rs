//! The L7 proxy's view built from the API's objects: the cluster-IP frontends of
//! every Service port (those that declare HTTP are what the proxy takes
//! captured connections to; the others name the Service in metrics), every
//! Service port's ready endpoints as the dataplane balances them
//! (the same rules: ready first, terminating ones when none is, ports matched
//! by name), each named by its pod for metrics and policies, and the routes.

use std::collections::{BTreeMap, HashMap};

use crate::dataplane::desired::{SERVICE_NAME_LABEL, frontends};
use crate::mesh::metrics::Workload;
use crate::mesh::view::MeshView;
use crate::model::{AuthorizationPolicy, EndpointSlice, HTTPRoute, Service};

use super::proxy::{Endpoint, Frontend, L7View};
use super::routes::{Routes, ServicePort};

/// The view of `services` and their `slices`, with `routes` and `policies`;
/// `workloads` names the endpoints' pods.
pub fn l7_view<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    routes: &[HTTPRoute],
    policies: Vec<AuthorizationPolicy>,
    workloads: &MeshView,
) -> L7View {
    let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if let Some(service) = slice.metadata.labels.get(SERVICE_NAME_LABEL) {
            let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
            slices_of
                .entry((namespace, service))
                .or_default()
                .push(slice);
        }
    }
    let mut view = L7View {
        routes: Routes::new(routes),
        policies,
        ..L7View::default()
    };
    for service in services {
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        let name = service.metadata.name.as_str();
        let slices = slices_of.remove(&(namespace, name)).unwrap_or_default();
        let http_ports: Vec<i32> = service
            .spec
            .ports
            .iter()
            .filter(|p| p.declares_http())
            .map(|p| p.port)
            .collect();
        // One frontend per cluster IP family: their endpoints make one list.
        let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
        for (frontend, balancing) in frontends(service, &slices, &[]) {
            let port = frontend.addr.port();
            let service_port = ServicePort {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port,
            };
            let http = http_ports.contains(&i32::from(port));
            view.frontends.insert(
                frontend.addr,
                Frontend {
                    service: service_port,
                    http,
                },
            );
            let list = endpoints.entry(port).or_default();
            for addr in balancing.backends {
                if list.iter().any(|e| e.addr == addr) {
                    continue;
                }
                let pod = workloads.workload(addr.ip());
                list.push(Endpoint {
                    addr,
                    workload: pod.map_or_else(
                        || Workload {
                            namespace: namespace.to_string(),
                            name: String::new(),
                        },
                        |w| w.pod.metrics_workload(),
                    ),
                    labels: pod.map(|w| w.pod.labels.clone()).unwrap_or_default(),
                });
            }
        }
        for (port, list) in endpoints {
            let service_port = ServicePort {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port,
            };
            view.endpoints.insert(service_port, list);
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::mesh::view::PodEntry;

    fn decode<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_saphyr::from_str(yaml).expect("object")
    }

    const WEB: &str = "
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  clusterIPs: [10.96.0.5, 'fd00:10:96::5']
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: admin, port: 9000, targetPort: 9000}
";

    const SLICE: &str = "
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9000}]
endpoints:
- addresses: [10.244.0.2]
  conditions: {ready: true}
- addresses: [10.244.0.3]
  conditions: {ready: false}
";

    const SLICE6: &str = "
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ['fd00:10:244::2']
";

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn http_ports_are_frontends_and_every_port_has_its_ready_endpoints() {
        let service: Service = decode(WEB);
        let other: EndpointSlice = decode(&SLICE.replace("service-name: web", "service-name: db"));
        let slices: Vec<EndpointSlice> = vec![decode(SLICE), decode(SLICE6), other];
        let pod = PodEntry {
            uid: "u1".into(),
            namespace: "shop".into(),
            name: "web-7c9-x2".into(),
            node: Some("n1".into()),
            service_account: "default".into(),
            ips: vec!["10.244.0.2".parse().unwrap()],
            labels: [("app".to_string(), "web".to_string())].into(),
            workload: "web".into(),
        };
        let workloads = MeshView::build("cluster.local", &BTreeMap::new(), &[pod]);
        let view = l7_view([&service], &slices, &[], Vec::new(), &workloads);

        let http = ServicePort {
            namespace: "shop".into(),
            name: "web".into(),
            port: 80,
        };
        let admin = ServicePort {
            port: 9000,
            ..http.clone()
        };
        let frontend = |service: &ServicePort, http| Frontend {
            service: service.clone(),
            http,
        };
        assert_eq!(
            view.frontends,
            HashMap::from([
                (addr("10.96.0.5:80"), frontend(&http, true)),
                (addr("[fd00:10:96::5]:80"), frontend(&http, true)),
                (addr("10.96.0.5:9000"), frontend(&admin, false)),
                (addr("[fd00:10:96::5]:9000"), frontend(&admin, false)),
            ]),
            "both ports on both cluster IPs; only the one declaring http is taken"
        );
        let endpoints = &view.endpoints[&http];
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
        assert_eq!(
            addrs,
            [addr("10.244.0.2:8080"), addr("[fd00:10:244::2]:8080")]
        );
        assert_eq!(endpoints[0].workload.name, "web");
        assert_eq!(endpoints[0].labels["app"], "web");
        assert_eq!(endpoints[1].workload.name, "", "no pod has that address");
        let addrs: Vec<SocketAddr> = view.endpoints[&admin].iter().map(|e| e.addr).collect();
        assert_eq!(addrs, [addr("10.244.0.2:9000")], "a route may send there");
    }
}
