//! The EndpointSlice controller: for each Service with a selector, one slice per IP
//! family (more when pods resolve a named targetPort differently, or past
//! [`MAX_ENDPOINTS_PER_SLICE`]) listing the pods it selects: ready from the pod's
//! Ready condition, terminating when the pod is being deleted, serving while it is
//! ready; the hostname of pods whose subdomain is the service; node name and
//! target reference. Slices are named `<service>-<family>[-<n>]`, labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, and
//! owned by the Service. Slices of Services without a selector are the user's (a
//! Service whose selector is removed loses the slices this controller wrote).

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::pods::{is_finished, is_ready};
use super::{
    Action, Cache, Context, Error, Reconciler, controlled_by, controller_owner, namespace_of,
    owner_reference,
};
use crate::api::registry::ObjectRef;
use crate::dataplane::desired::SERVICE_NAME_LABEL;
use crate::model::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString, IpFamily,
    Kind, Object, ObjectMeta, ObjectReference, Pod, Protocol, Service,
};

/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on the slices this controller writes.
pub const MANAGED_BY: &str = "endpointslice-controller.skiff.io";
/// Kubernetes' default --max-endpoints-per-slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

pub struct EndpointSliceController;

/// Each service port's name and the number a pod resolves it to.
type PortNumbers = Vec<(String, i32)>;

/// The endpoints of pods that resolve the service's ports alike.
struct Group {
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
}

/// The slices `service` should have, given the pods of its namespace.
pub fn desired_slices(service: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    let selected: Vec<&Pod> = {
        let mut selected: Vec<&Pod> = pods
            .iter()
            .filter(|p| selects(service, p) && !is_finished(p))
            .collect();
        selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        selected
    };
    let mut slices = Vec::new();
    for family in &service.spec.ip_families {
        let address_type = match family {
            IpFamily::IPv4 => AddressType::IPv4,
            IpFamily::IPv6 => AddressType::IPv6,
        };
        // Endpoints grouped by the ports their pod resolves (named target ports
        // may differ from pod to pod); one group when they do not.
        let mut groups: BTreeMap<PortNumbers, Group> = BTreeMap::new();
        for pod in &selected {
            let Some(address) = pod_address(pod, *family) else {
                continue;
            };
            let ports = endpoint_ports(service, pod);
            let key = ports
                .iter()
                .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or(0)))
                .collect();
            groups
                .entry(key)
                .or_insert_with(|| Group {
                    ports,
                    endpoints: Vec::new(),
                })
                .endpoints
                .push(endpoint(service, pod, address));
        }
        if groups.is_empty() {
            // An empty slice still says "this service has no endpoints" to readers.
            let ports = endpoint_ports(service, &Pod::default());
            groups.insert(
                Vec::new(),
                Group {
                    ports,
                    endpoints: Vec::new(),
                },
            );
        }
        let mut index = 0;
        for Group { ports, endpoints } in groups.into_values() {
            let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
                vec![Vec::new()]
            } else {
                endpoints
                    .chunks(MAX_ENDPOINTS_PER_SLICE)
                    .map(<[Endpoint]>::to_vec)
                    .collect()
            };
            for chunk in chunks {
                slices.push(slice(service, address_type, index, ports.clone(), chunk));
                index += 1;
            }
        }
    }
    slices
}

/// Whether `service` selects `pod` (same namespace, labels match).
fn selects(service: &Service, pod: &Pod) -> bool {
    let selector = &service.spec.selector;
    !selector.is_empty()
        && namespace_of(&pod.metadata) == namespace_of(&service.metadata)
        && selector
            .iter()
            .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
}

/// The pod's address in `family`, if it has one.
fn pod_address(pod: &Pod, family: IpFamily) -> Option<String> {
    let ips = pod
        .status
        .pod_ips
        .iter()
        .map(|ip| ip.ip.as_str())
        .chain(pod.status.pod_ip.as_deref());
    ips.filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() == (family == IpFamily::IPv4))
        .map(|ip| ip.to_string())
}

/// The service's ports as `pod` serves them: targetPort as a number, a container
/// port's name (skipped when the pod has none by that name and protocol), or unset
/// (the service port).
pub fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    service
        .spec
        .ports
        .iter()
        .filter_map(|port| {
            let protocol = port.protocol.unwrap_or(Protocol::Tcp);
            let number = match &port.target_port {
                None => port.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => {
                    pod.spec
                        .containers
                        .iter()
                        .flat_map(|c| &c.ports)
                        .find(|p| {
                            p.name.as_deref() == Some(name.as_str())
                                && p.protocol.unwrap_or(Protocol::Tcp) == protocol
                        })?
                        .container_port
                }
            };
            Some(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                protocol: Some(protocol),
                port: Some(number),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

fn endpoint(service: &Service, pod: &Pod, address: String) -> Endpoint {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let serving = is_ready(pod) || service.spec.publish_not_ready_addresses == Some(true);
    let hostname = pod
        .spec
        .hostname
        .clone()
        .filter(|_| pod.spec.subdomain.as_deref() == Some(service.metadata.name.as_str()));
    Endpoint {
        addresses: vec![address],
        conditions: Some(EndpointConditions {
            ready: Some(serving && !terminating),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: pod.spec.node_name.clone(),
        zone: None,
        target_ref: Some(ObjectReference {
            kind: "Pod".into(),
            namespace: Some(namespace_of(&pod.metadata).to_string()),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        }),
    }
}

fn slice(
    service: &Service,
    address_type: AddressType,
    index: usize,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let family = match address_type {
        AddressType::IPv6 => "ipv6",
        AddressType::IPv4 | AddressType::Fqdn => "ipv4",
    };
    let name = match index {
        0 => format!("{}-{family}", service.metadata.name),
        n => format!("{}-{family}-{n}", service.metadata.name),
    };
    let labels = BTreeMap::from([
        (
            SERVICE_NAME_LABEL.to_string(),
            service.metadata.name.clone(),
        ),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    EndpointSlice {
        metadata: ObjectMeta {
            name,
            namespace: Some(namespace_of(&service.metadata).to_string()),
            labels,
            owner_references: vec![owner_reference(Kind::Service, &service.metadata)],
            ..Default::default()
        },
        address_type: Some(address_type),
        endpoints,
        ports,
    }
}

/// Whether a slice is this controller's for `service`.
fn managed_for(slice: &EndpointSlice, service: &Service) -> bool {
    slice
        .metadata
        .labels
        .get(MANAGED_BY_LABEL)
        .map(String::as_str)
        == Some(MANAGED_BY)
        && controlled_by(&slice.metadata, service.metadata.uid.as_deref())
}

#[async_trait]
impl Reconciler for EndpointSliceController {
    const NAME: &'static str = "endpointslice-controller";
    const KIND: Kind = Kind::Service;
    const RELATED: &'static [Kind] = &[Kind::Pod, Kind::EndpointSlice];

    /// A pod concerns the services of its namespace that select it; a slice, the
    /// service that owns it.
    fn owners_of(&self, object: &Object, cache: &Cache) -> Vec<ObjectRef> {
        match object {
            Object::Pod(pod) => cache
                .objects(Kind::Service)
                .filter_map(|o| match o {
                    Object::Service(service) if selects(service, pod) => Some(ObjectRef::of(o)),
                    _ => None,
                })
                .collect(),
            other => controller_owner(other, Kind::Service).into_iter().collect(),
        }
    }

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let Ok(service) = Service::try_from(object.clone()) else {
            return Ok(Action::await_change());
        };
        if service.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let namespace = namespace_of(&service.metadata);
        // A Service whose selector was removed keeps no slice of ours.
        let desired = if service.spec.selector.is_empty() {
            Vec::new()
        } else {
            let pods: Vec<Pod> = ctx.list(Kind::Pod, namespace).await?;
            desired_slices(&service, &pods)
        };
        for slice in &desired {
            ctx.apply::<EndpointSlice>(slice.clone().into()).await?;
        }
        let existing: Vec<EndpointSlice> = ctx.list(Kind::EndpointSlice, namespace).await?;
        for stale in existing.iter().filter(|s| {
            managed_for(s, &service) && !desired.iter().any(|d| d.metadata.name == s.metadata.name)
        }) {
            ctx.delete(Kind::EndpointSlice, &stale.metadata).await?;
        }
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::pods::tests::pod;
    use crate::model::{Container, ContainerPort, IpAddress, ServicePort};

    fn service(name: &str, families: &[IpFamily], ports: Vec<ServicePort>) -> Service {
        let mut service = Service::default();
        service.metadata.name = name.into();
        service.metadata.uid = Some("svc-uid".into());
        service.spec.selector.insert("app".into(), "web".into());
        service.spec.ip_families = families.to_vec();
        service.spec.ports = ports;
        service
    }

    fn web_pod(name: &str, ips: &[&str], ready: bool, http_port: i32) -> Pod {
        let mut p = pod(name, 1, ready.then_some(2));
        p.metadata.labels.insert("app".into(), "web".into());
        p.metadata.uid = Some(format!("{name}-uid"));
        p.status.pod_ips = ips
            .iter()
            .map(|ip| IpAddress { ip: ip.to_string() })
            .collect();
        p.spec.containers.push(Container {
            name: "c".into(),
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: http_port,
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    fn http_port() -> ServicePort {
        ServicePort {
            name: Some("web".into()),
            port: 80,
            target_port: Some(IntOrString::String("http".into())),
            ..Default::default()
        }
    }

    fn conditions(endpoint: &Endpoint) -> (bool, bool, bool) {
        let c = endpoint.conditions.clone().unwrap_or_default();
        (
            c.ready.unwrap_or_default(),
            c.serving.unwrap_or_default(),
            c.terminating.unwrap_or_default(),
        )
    }

    #[test]
    fn one_slice_per_family_with_ready_serving_and_terminating_flags() {
        let svc = service("web", &[IpFamily::IPv4, IpFamily::IPv6], vec![http_port()]);
        let ready = web_pod("a", &["10.244.0.5", "fd00::5"], true, 8080);
        let starting = web_pod("b", &["10.244.0.6", "fd00::6"], false, 8080);
        let mut leaving = web_pod("c", &["10.244.0.7", "fd00::7"], true, 8080);
        leaving.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        let mut other = web_pod("d", &["10.244.0.8"], true, 8080);
        other.metadata.labels.insert("app".into(), "db".into());
        let slices = desired_slices(&svc, &[ready, starting, leaving, other]);
        let names: Vec<&str> = slices.iter().map(|s| s.metadata.name.as_str()).collect();
        assert_eq!(names, ["web-ipv4", "web-ipv6"]);
        let v4 = &slices[0];
        assert_eq!(v4.address_type, Some(AddressType::IPv4));
        assert_eq!(v4.metadata.labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(v4.metadata.labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(v4.metadata.owner_references[0].uid, "svc-uid");
        assert_eq!(v4.ports[0].port, Some(8080), "named targetPort resolved");
        assert_eq!(v4.ports[0].name.as_deref(), Some("web"));
        let flags: Vec<(String, (bool, bool, bool))> = v4
            .endpoints
            .iter()
            .map(|e| (e.addresses[0].clone(), conditions(e)))
            .collect();
        assert_eq!(
            flags,
            [
                ("10.244.0.5".to_string(), (true, true, false)),
                ("10.244.0.6".to_string(), (false, false, false)),
                ("10.244.0.7".to_string(), (false, true, true)),
            ]
        );
        assert_eq!(slices[1].endpoints[0].addresses, ["fd00::5"]);
        let target = v4.endpoints[0].target_ref.clone().unwrap_or_default();
        assert_eq!((target.kind.as_str(), target.name.as_str()), ("Pod", "a"));
        assert_eq!(v4.endpoints[0].node_name.as_deref(), Some("node"));
    }

    #[test]
    fn pods_resolving_a_named_port_differently_get_separate_slices() {
        let svc = service("web", &[IpFamily::IPv4], vec![http_port()]);
        let slices = desired_slices(
            &svc,
            &[
                web_pod("a", &["10.0.0.1"], true, 8080),
                web_pod("b", &["10.0.0.2"], true, 9090),
            ],
        );
        let summary: Vec<(String, Option<i32>, usize)> = slices
            .iter()
            .map(|s| (s.metadata.name.clone(), s.ports[0].port, s.endpoints.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("web-ipv4".to_string(), Some(8080), 1),
                ("web-ipv4-1".to_string(), Some(9090), 1)
            ]
        );
    }

    #[test]
    fn numbers_and_unset_target_ports_and_empty_services() {
        let mut svc = service(
            "web",
            &[IpFamily::IPv4],
            vec![
                ServicePort {
                    name: Some("a".into()),
                    port: 80,
                    target_port: Some(IntOrString::Int(8080)),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("b".into()),
                    port: 53,
                    protocol: Some(Protocol::Udp),
                    ..Default::default()
                },
            ],
        );
        let slices = desired_slices(&svc, &[]);
        assert_eq!(slices.len(), 1, "an empty slice still exists");
        assert!(slices[0].endpoints.is_empty());
        let ports: Vec<(Option<i32>, Option<Protocol>)> = slices[0]
            .ports
            .iter()
            .map(|p| (p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (Some(8080), Some(Protocol::Tcp)),
                (Some(53), Some(Protocol::Udp))
            ]
        );
        svc.spec.publish_not_ready_addresses = Some(true);
        let slices = desired_slices(&svc, &[web_pod("a", &["10.0.0.1"], false, 1)]);
        assert_eq!(conditions(&slices[0].endpoints[0]), (true, true, false));
    }

    #[test]
    fn headless_members_get_their_hostname_and_big_services_are_split() {
        let svc = service("db", &[IpFamily::IPv4], vec![]);
        let mut member = web_pod("db-0", &["10.0.0.1"], true, 1);
        member.spec.hostname = Some("db-0".into());
        member.spec.subdomain = Some("db".into());
        let mut stranger = web_pod("x", &["10.0.0.2"], true, 1);
        stranger.spec.hostname = Some("x".into());
        stranger.spec.subdomain = Some("other".into());
        let slices = desired_slices(&svc, &[member, stranger]);
        let hostnames: Vec<Option<String>> = slices[0]
            .endpoints
            .iter()
            .map(|e| e.hostname.clone())
            .collect();
        assert_eq!(hostnames, [Some("db-0".to_string()), None]);

        let many: Vec<Pod> = (0..250)
            .map(|i| {
                web_pod(
                    &format!("p{i:03}"),
                    &[&format!("10.0.{}.{}", i / 200, i % 200)],
                    true,
                    1,
                )
            })
            .collect();
        let sizes: Vec<usize> = desired_slices(&svc, &many)
            .iter()
            .map(|s| s.endpoints.len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
