//! The cluster zone as plain data: every name the Kubernetes DNS-Based Service
//! Discovery specification (schema 1.1.0) gives the Services and EndpointSlices
//! of the store, with its records. [`Records::build`] is a pure function of the
//! objects, so the rules are tested without sockets; the sync task rebuilds it
//! on every store change and the server reads whichever build is current.
//!
//! Every record is built whole (owner, TTL, data) with the zone, and so are the
//! additional records an SRV answer carries: an answer is references into the
//! current build, with nothing to allocate per question.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::publish;
use crate::dataplane::desired::SERVICE_NAME_LABEL;
use crate::model::{self, AddressType, Endpoint, EndpointSlice, Pod, Service, ServiceType};

/// The schema version `dns-version.<zone>` answers with.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// What one build of the zone holds.
#[derive(Debug, Clone)]
pub struct Records {
    /// The cluster zone, lower case, fully qualified.
    pub zone: Name,
    pub ttl: u32,
    /// The zone's SOA record (answered at the apex and in negative answers).
    pub soa: Record,
    /// The largest encoded size of the SOA record.
    pub soa_len: usize,
    /// Every name that exists: names with records and the empty names above
    /// them (so `<ns>.svc.<zone>` is NODATA, not NXDOMAIN, per RFC 8020).
    /// Reverse names are here too.
    names: HashMap<LowerName, Node>,
}

/// The records at one name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// Owned by the name in lower case.
    pub records: Vec<Record>,
    /// The addresses of the names this name's SRV and NS records point at,
    /// for the additional section.
    pub targets: Vec<Record>,
    /// The largest encoded size (names uncompressed) of any record above: what
    /// bounds an answer's size before it is encoded.
    pub largest: usize,
}

impl Node {
    /// Whether the name is an alias (which answers every type but CNAME itself).
    pub fn is_alias(&self) -> bool {
        self.records
            .iter()
            .any(|r| r.record_type() == RecordType::CNAME)
    }
}

/// What the index says about one name.
#[derive(Debug, PartialEq)]
pub enum Found<'a> {
    /// The name exists with these records (maybe none).
    Name(&'a Node),
    /// A name inside the zone that does not exist.
    NoSuchName,
    /// Outside the zone and not a reverse name the zone answers for.
    Elsewhere,
}

/// The store objects the zone is made of.
#[derive(Debug, Default)]
pub struct Sources {
    /// By namespace and name.
    pub services: BTreeMap<(String, String), Service>,
    /// By namespace and slice name.
    pub slices: BTreeMap<(String, String), EndpointSlice>,
    /// By namespace and name: an endpoint's pod gives it a hostname when the
    /// slice does not (spec.hostname, when spec.subdomain names the service).
    pub pods: BTreeMap<(String, String), Pod>,
}

/// The zone while it is built: record data by name.
struct Builder {
    zone: Name,
    names: HashMap<LowerName, Vec<RData>>,
}

impl Records {
    /// The zone for `sources`. `serial` distinguishes builds in the SOA.
    pub fn build(zone: &Name, ttl: u32, serial: u32, sources: &Sources) -> Self {
        let zone = fqdn(&zone.to_lowercase());
        let in_zone = |labels: &str| name(&format!("{labels}.{}", zone.to_ascii()));
        let soa = SOA::new(
            in_zone("ns.dns").unwrap_or_else(|| zone.clone()),
            in_zone("hostmaster").unwrap_or_else(|| zone.clone()),
            serial,
            7200,
            1800,
            86400,
            ttl,
        );
        let mut builder = Builder {
            zone: zone.clone(),
            names: HashMap::new(),
        };
        builder.add(&zone, RData::SOA(soa.clone()));
        // The zone's name server is the SOA's: the cluster DNS Service's IPs.
        let name_server = soa.mname.clone();
        builder.add(&zone, RData::NS(NS(name_server.clone())));
        builder.add_existing(&name_server);
        let cluster_dns = (publish::NAMESPACE.to_string(), publish::SERVICE.to_string());
        for ip in sources
            .services
            .get(&cluster_dns)
            .map(cluster_ips)
            .unwrap_or_default()
        {
            builder.add(&name_server, address(ip));
        }
        if let Some(version) = in_zone("dns-version") {
            builder.add(&version, RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])));
        }
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for ((namespace, _), slice) in &sources.slices {
            if let Some(service) = slice.metadata.labels.get(SERVICE_NAME_LABEL) {
                slices
                    .entry((namespace.as_str(), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        for ((namespace, service_name), service) in &sources.services {
            let Some(base) = in_zone(&format!("{service_name}.{namespace}.svc")) else {
                continue;
            };
            let slices = slices
                .get(&(namespace.as_str(), service_name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let hostname =
                |endpoint: &Endpoint| hostname(endpoint, namespace, service_name, sources);
            builder.add_service(&base, service, slices, &hostname);
        }
        let soa = Record::from_rdata(zone.clone(), ttl, RData::SOA(soa));
        Self {
            soa_len: encoded_len(&soa),
            soa,
            names: builder.nodes(ttl),
            zone,
            ttl,
        }
    }

    /// Looks `name` up (names are compared in lower case).
    pub fn find(&self, name: &LowerName) -> Found<'_> {
        match self.names.get(name) {
            Some(node) => Found::Name(node),
            None if self.in_zone(name) => Found::NoSuchName,
            None => Found::Elsewhere,
        }
    }

    /// Whether `name` is inside the cluster zone.
    pub fn in_zone(&self, name: &LowerName) -> bool {
        self.zone.zone_of(name)
    }

    /// How many names exist (for logs).
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

impl Builder {
    /// The records of every name, built whole, with SRV and NS targets' addresses.
    fn nodes(self, ttl: u32) -> HashMap<LowerName, Node> {
        let record = |owner: &LowerName, data: &RData| {
            Record::from_rdata(Name::from(owner.clone()), ttl, data.clone())
        };
        self.names
            .iter()
            .map(|(owner, data)| {
                let records: Vec<Record> = data.iter().map(|d| record(owner, d)).collect();
                let mut targets: Vec<Record> = Vec::new();
                for target in data.iter().filter_map(|d| match d {
                    RData::SRV(srv) => Some(LowerName::new(&srv.target)),
                    RData::NS(ns) => Some(LowerName::new(&ns.0)),
                    _ => None,
                }) {
                    let addresses = self.names.get(&target).into_iter().flatten();
                    for address in addresses.filter(|d| matches!(d, RData::A(_) | RData::AAAA(_))) {
                        let extra = record(&target, address);
                        if !targets.contains(&extra) {
                            targets.push(extra);
                        }
                    }
                }
                let largest = records
                    .iter()
                    .chain(&targets)
                    .map(encoded_len)
                    .max()
                    .unwrap_or_default();
                let node = Node {
                    records,
                    targets,
                    largest,
                };
                (owner.clone(), node)
            })
            .collect()
    }

    fn add_service(
        &mut self,
        base: &Name,
        service: &Service,
        slices: &[&EndpointSlice],
        hostname: &dyn Fn(&Endpoint) -> Option<String>,
    ) {
        let spec = &service.spec;
        if spec.r#type == Some(ServiceType::ExternalName) {
            if let Some(target) = spec.external_name.as_deref().and_then(name) {
                self.add(base, RData::CNAME(CNAME(target)));
            }
            return;
        }
        let cluster_ips = cluster_ips(service);
        if !cluster_ips.is_empty() {
            for ip in cluster_ips {
                self.add(base, address(ip));
                self.add(&Name::from(ip), RData::PTR(PTR(base.clone())));
            }
            for port in spec.ports.iter() {
                if let (Some(srv), Ok(number)) = (srv_name(base, port), u16::try_from(port.port)) {
                    self.add(&srv, RData::SRV(SRV::new(0, 100, number, base.clone())));
                }
            }
            return;
        }
        // Headless: the endpoints themselves, each under its own name.
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        self.add_existing(base);
        for slice in slices {
            if !matches!(
                slice.address_type,
                Some(AddressType::IPv4 | AddressType::IPv6)
            ) {
                continue;
            }
            for endpoint in &slice.endpoints {
                let conditions = endpoint.conditions.clone().unwrap_or_default();
                if !publish_not_ready && !conditions.ready.unwrap_or(true) {
                    continue;
                }
                for ip in endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                {
                    // Without a hostname the spec asks for a unique name of the
                    // system's choosing: the address with dashes, as CoreDNS does.
                    let label = hostname(endpoint)
                        .unwrap_or_else(|| ip.to_string().replace(['.', ':'], "-"));
                    let Some(host) = label_under(&label, base) else {
                        continue;
                    };
                    self.add(base, address(ip));
                    self.add(&host, address(ip));
                    self.add(&Name::from(ip), RData::PTR(PTR(host.clone())));
                    for port in &slice.ports {
                        let (Some(number), Some(srv)) = (
                            port.port.and_then(|p| u16::try_from(p).ok()),
                            srv_name_parts(base, port.name.as_deref(), port.protocol),
                        ) else {
                            continue;
                        };
                        self.add(&srv, RData::SRV(SRV::new(0, 100, number, host.clone())));
                    }
                }
            }
        }
    }

    /// Adds a record at `owner`, and the names above it up to the zone.
    fn add(&mut self, owner: &Name, record: RData) {
        self.add_existing(owner);
        let records = self.names.entry(LowerName::new(owner)).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
    }

    /// Makes `owner` and its ancestors inside the zone exist.
    fn add_existing(&mut self, owner: &Name) {
        let mut current = owner.clone();
        loop {
            self.names.entry(LowerName::new(&current)).or_default();
            if current.num_labels() <= self.zone.num_labels() || !self.zone.zone_of(&current) {
                return;
            }
            current = current.base_name();
        }
    }
}

/// A Service's cluster IPs (none for a headless one), each once.
fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let spec = &service.spec;
    for ip in spec.cluster_ips.iter().chain(spec.cluster_ip.iter()) {
        if let Ok(ip) = ip.parse()
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    ips
}

/// An endpoint's hostname: the slice's, else its pod's spec.hostname when the
/// pod's spec.subdomain is the service (as the EndpointSlice controller sets it).
fn hostname(
    endpoint: &Endpoint,
    namespace: &str,
    service: &str,
    sources: &Sources,
) -> Option<String> {
    if let Some(hostname) = &endpoint.hostname {
        return Some(hostname.clone());
    }
    let target = endpoint.target_ref.as_ref().filter(|t| t.kind == "Pod")?;
    let pod_namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.to_string());
    let pod = sources.pods.get(&(pod_namespace, target.name.clone()))?;
    (pod.spec.subdomain.as_deref() == Some(service))
        .then(|| pod.spec.hostname.clone())
        .flatten()
}

/// The size of `record` encoded on its own with names uncompressed: an upper
/// bound of what it adds to a message.
fn encoded_len(record: &Record) -> usize {
    let mut bytes = Vec::new();
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    // Records built from valid names and data always encode.
    match record.emit(&mut encoder) {
        Ok(()) => bytes.len(),
        Err(_) => usize::from(u16::MAX),
    }
}

fn fqdn(name: &Name) -> Name {
    let mut name = name.clone();
    name.set_fqdn(true);
    name
}

/// A fully qualified name from text; None for text that is not a name.
fn name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok().map(|n| fqdn(&n.to_lowercase()))
}

fn label_under(label: &str, base: &Name) -> Option<Name> {
    base.prepend_label(label.to_ascii_lowercase()).ok()
}

fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// `_<port>._<proto>.<base>` for a named service port.
fn srv_name(base: &Name, port: &model::ServicePort) -> Option<Name> {
    srv_name_parts(base, port.name.as_deref(), port.protocol)
}

fn srv_name_parts(
    base: &Name,
    port: Option<&str>,
    protocol: Option<model::Protocol>,
) -> Option<Name> {
    let port = port.filter(|p| !p.is_empty())?;
    let protocol = match protocol.unwrap_or(model::Protocol::Tcp) {
        model::Protocol::Tcp => "_tcp",
        model::Protocol::Udp => "_udp",
        model::Protocol::Sctp => "_sctp",
    };
    label_under(protocol, base)?
        .prepend_label(format!("_{port}").to_ascii_lowercase())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sources(yaml: &[&str]) -> Sources {
        let mut sources = Sources::default();
        for doc in yaml {
            let value: serde_json::Value = serde_saphyr::from_str(doc).expect("yaml");
            let namespace = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let name = value["metadata"]["name"].as_str().unwrap_or("").to_string();
            // Pods are the documents with containers.
            if value["spec"].get("containers").is_some() {
                let pod: Pod = serde_json::from_value(value).expect("pod");
                sources.pods.insert((namespace, name), pod);
            } else if value.get("addressType").is_some() {
                let slice: EndpointSlice = serde_json::from_value(value).expect("slice");
                sources.slices.insert((namespace, name), slice);
            } else {
                let service: Service = serde_json::from_value(value).expect("service");
                sources.services.insert((namespace, name), service);
            }
        }
        sources
    }

    fn zone() -> Name {
        Name::from_ascii("cluster.local.").unwrap()
    }

    fn lookup(records: &Records, text: &str) -> Vec<String> {
        match records.find(&LowerName::new(&Name::from_ascii(text).unwrap())) {
            Found::Name(node) => node.records.iter().map(|r| r.data.to_string()).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn services_headless_endpoints_and_external_names() {
        let s = sources(&[
            "metadata: {name: web, namespace: shop}\nspec: {clusterIPs: [10.96.0.5, 'fd00:10:96::5'], ports: [{name: http, port: 80}]}",
            "metadata: {name: db, namespace: shop}\nspec: {clusterIP: None, ports: [{name: pg, port: 5432}]}",
            "metadata: {name: db-a, namespace: shop, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: pg, port: 5432, protocol: TCP}]\nendpoints:\n- {addresses: [10.244.0.7], hostname: db-0}\n- {addresses: [10.244.0.8]}\n- {addresses: [10.244.0.9], conditions: {ready: false}}\n- {addresses: [10.244.0.10], targetRef: {kind: Pod, name: db-1}}\n- {addresses: [10.244.0.11], targetRef: {kind: Pod, name: other}}",
            "metadata: {name: db-1, namespace: shop}\nspec: {hostname: db-1, subdomain: db, containers: []}",
            "metadata: {name: other, namespace: shop}\nspec: {hostname: other, subdomain: elsewhere, containers: []}",
            "metadata: {name: ext, namespace: shop}\nspec: {type: ExternalName, externalName: example.com}",
            "metadata: {name: kube-dns, namespace: kube-system}\nspec: {clusterIPs: [10.96.0.10]}",
        ]);
        let r = Records::build(&zone(), 5, 1, &s);
        assert_eq!(
            lookup(&r, "WEB.shop.svc.cluster.local."),
            ["10.96.0.5", "fd00:10:96::5"]
        );
        assert_eq!(
            lookup(&r, "_http._tcp.web.shop.svc.cluster.local."),
            ["0 100 80 web.shop.svc.cluster.local."]
        );
        assert_eq!(
            lookup(&r, "5.0.96.10.in-addr.arpa."),
            ["web.shop.svc.cluster.local."]
        );
        assert_eq!(
            lookup(&r, "db.shop.svc.cluster.local."),
            ["10.244.0.7", "10.244.0.8", "10.244.0.10", "10.244.0.11"]
        );
        assert_eq!(
            lookup(&r, "db-0.db.shop.svc.cluster.local."),
            ["10.244.0.7"]
        );
        // The pod names the endpoint when its subdomain is the service.
        assert_eq!(
            lookup(&r, "db-1.db.shop.svc.cluster.local."),
            ["10.244.0.10"]
        );
        assert_eq!(
            lookup(&r, "10-244-0-11.db.shop.svc.cluster.local."),
            ["10.244.0.11"]
        );
        assert_eq!(
            lookup(&r, "10-244-0-8.db.shop.svc.cluster.local."),
            ["10.244.0.8"]
        );
        assert_eq!(
            lookup(&r, "_pg._tcp.db.shop.svc.cluster.local."),
            [
                "0 100 5432 db-0.db.shop.svc.cluster.local.",
                "0 100 5432 10-244-0-8.db.shop.svc.cluster.local.",
                "0 100 5432 db-1.db.shop.svc.cluster.local.",
                "0 100 5432 10-244-0-11.db.shop.svc.cluster.local.",
            ]
        );
        assert_eq!(
            lookup(&r, "8.0.244.10.in-addr.arpa."),
            ["10-244-0-8.db.shop.svc.cluster.local."]
        );
        assert_eq!(lookup(&r, "ext.shop.svc.cluster.local."), ["example.com."]);
        assert_eq!(lookup(&r, "dns-version.cluster.local."), ["1.1.0"]);
        // The apex names its server, whose addresses are the cluster DNS IPs.
        let apex = lookup(&r, "cluster.local.");
        assert!(
            apex.contains(&"ns.dns.cluster.local.".to_string()),
            "{apex:?}"
        );
        assert_eq!(lookup(&r, "ns.dns.cluster.local."), ["10.96.0.10"]);
        let Found::Name(apex) = r.find(&LowerName::new(&zone())) else {
            panic!("no apex");
        };
        let glue: Vec<String> = apex.targets.iter().map(ToString::to_string).collect();
        assert_eq!(glue.len(), 1, "{glue:?}");
        assert!(glue[0].contains("10.96.0.10"), "{glue:?}");
        assert!(lookup(&r, "shop.svc.cluster.local.").is_empty());
        assert_eq!(lookup(&r, "nope.shop.svc.cluster.local."), ["NoSuchName"]);
        assert_eq!(lookup(&r, "9.0.244.10.in-addr.arpa."), ["Elsewhere"]);
        assert_eq!(lookup(&r, "example.com."), ["Elsewhere"]);
    }
}
