//! The cluster DNS request path: any bytes, from a client allowed recursion or
//! not, over UDP or TCP, against a zone holding every kind of record, decoded as
//! hickory-server decodes them and answered by the RequestHandler the server
//! uses. It must answer or drop, never panic or hang; every answer must decode
//! as a DNS message and fit the UDP size when it went over UDP.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use hickory_server::net::xfer::Protocol;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use skiff::dns::handler::{Handler, MAX_UDP_PAYLOAD};
use skiff::dns::metrics::DnsMetrics;
use skiff::dns::records::{Records, Sources};
use skiff::dns::server::answer_bytes;

fn handler() -> &'static Handler {
    static HANDLER: OnceLock<Handler> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let mut sources = Sources::default();
        let services = [
            json!({"metadata": {"name": "web", "namespace": "shop"},
                   "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00:10:96::5"],
                            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"name": "db", "namespace": "shop"},
                   "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"name": "ext", "namespace": "shop"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ];
        for service in services {
            let service: skiff::model::Service =
                serde_json::from_value(service).expect("a valid Service");
            let name = service.metadata.name.clone();
            sources.services.insert(("shop".into(), name), service);
        }
        let slice: skiff::model::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432}],
            "endpoints": [{"addresses": ["10.244.0.8"], "hostname": "db-0"},
                          {"addresses": ["10.244.0.9"]}],
        }))
        .expect("a valid EndpointSlice");
        sources.slices.insert(("shop".into(), "db-1".into()), slice);
        let zone = Name::from_ascii("cluster.local.").expect("a valid zone");
        let records = Records::build(&zone, 5, 1, &sources);
        // No upstream: a forwarded question is answered SERVFAIL.
        Handler::new(
            Arc::new(ArcSwap::from_pointee(records)),
            Box::new(|ip: IpAddr| ip.is_loopback()),
            None,
            DnsMetrics::default(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the client and the transport; the rest is the packet.
    let Some((&choice, packet)) = data.split_first() else {
        return;
    };
    let client = if choice & 1 == 0 {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
    };
    let protocol = if choice & 2 == 0 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    if let Some(reply) = answer_bytes(handler(), packet, client, protocol) {
        assert!(
            Message::from_vec(&reply).is_ok(),
            "a reply that does not decode"
        );
        if protocol == Protocol::Udp {
            assert!(
                reply.len() <= usize::from(MAX_UDP_PAYLOAD),
                "{} bytes over UDP",
                reply.len()
            );
        }
    }
});
