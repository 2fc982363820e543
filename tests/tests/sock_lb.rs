//! Socket-level service load balancing at connect(): real programs attached to a
//! test cgroup, a real client process in a test network namespace, real listeners.

use std::net::SocketAddr;

use skiff::dataplane::{Balancing, Frontend};
use skiff_tests::backend::NamedBackend;
use skiff_tests::kernel::{assert_unloaded, cgroup_programs};
use skiff_tests::lab::{Lab, tally};

const ENETUNREACH: &str = "error 101";
const ECONNREFUSED: &str = "error 111";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// 300 connections to the VIP (at `connect_to`) reach every backend, in
/// proportions a fair random choice explains. Returns the lab, still serving.
fn spreads_over_every_backend(
    vip: &str,
    connect_to: &str,
    backend_ip: &str,
) -> (Lab, Vec<NamedBackend>) {
    let mut lab = Lab::new();
    let backends = lab.backends(backend_ip, 3);
    let targets: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    lab.dataplane
        .upsert_service(
            &Frontend::tcp(addr(vip)),
            &Balancing::from(targets.to_vec()),
        )
        .expect("publish service");

    let replies = lab.connect(addr(connect_to), 300);
    let counts = tally(&replies);
    let names: Vec<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(names, ["backend-0", "backend-1", "backend-2"], "{counts:?}");
    // Chi-square against a uniform split, 2 degrees of freedom: 27.6 is p = 1e-6,
    // so a fair choice essentially never fails while a skew (say 150/100/50,
    // chi-square 50) does.
    let expected = 100.0;
    let chi2: f64 = counts
        .values()
        .map(|&n| (n as f64 - expected).powi(2) / expected)
        .sum();
    assert!(
        chi2 < 27.6,
        "split {counts:?} is not uniform (chi-square {chi2:.1})"
    );
    (lab, backends)
}

#[test]
fn ipv4_vip_spreads_connections_over_every_backend() {
    spreads_over_every_backend("10.96.7.1:80", "10.96.7.1:80", "127.0.0.1");
}

#[test]
fn ipv6_vip_spreads_connections_over_every_backend() {
    spreads_over_every_backend("[fd00:10:96::7]:80", "[fd00:10:96::7]:80", "::1");
}

#[test]
fn an_ipv6_socket_reaches_an_ipv4_vip_at_its_mapped_address() {
    // Java, for one, connects IPv6 sockets to IPv4 addresses this way.
    let mapped = "[::ffff:10.96.7.1]:80";
    let (lab, backends) = spreads_over_every_backend("10.96.7.1:80", mapped, "127.0.0.1");
    let mut client = lab.client();
    assert_eq!(client.run(&format!("tcp-connect {mapped}")), "ok");
    // The socket's peer is the mapped VIP, not the mapped backend.
    assert_eq!(client.run("peer"), mapped);
    // A mapped backend address is not a service.
    let direct = format!("[::ffff:127.0.0.1]:{}", backends[0].addr().port());
    let replies = lab.connect(addr(&direct), 20);
    assert_eq!(
        tally(&replies).into_iter().collect::<Vec<_>>(),
        [("backend-0".to_string(), 20)]
    );
}

#[test]
fn destinations_not_in_the_map_are_left_alone() {
    let mut lab = Lab::new();
    let backends = lab.backends("127.0.0.1", 3);
    let targets: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    lab.dataplane
        .upsert_service(
            &Frontend::tcp(addr("10.96.7.1:80")),
            &Balancing::from(targets.to_vec()),
        )
        .expect("publish service");

    // Another port of the VIP, another VIP, and the other family: the lab namespace
    // has no route to any of them, so connect() fails exactly as without skiff.
    for other in ["10.96.7.1:81", "10.96.7.2:80", "[fd00:10:96::7]:80"] {
        let with = lab.connect(addr(other), 1);
        assert_eq!(with, lab.connect_without_skiff(addr(other), 1), "{other}");
        assert_eq!(with, [ENETUNREACH], "{other}");
    }
    // A backend's own address is not a service: it reaches that backend only.
    let direct = lab.connect(backends[1].addr(), 30);
    assert_eq!(
        tally(&direct).into_iter().collect::<Vec<_>>(),
        [("backend-1".to_string(), 30)]
    );
}

#[test]
fn removed_backend_receives_no_new_connections() {
    let mut lab = Lab::new();
    let vip = addr("10.96.7.1:80");
    let backends = lab.backends("127.0.0.1", 3);
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    lab.dataplane
        .upsert_service(&Frontend::tcp(vip), &Balancing::from(all.to_vec()))
        .expect("publish service");
    // Missing one of three backends in 60 tries has probability 3 * (2/3)^60 < 1e-10.
    assert_eq!(tally(&lab.connect(vip, 60)).len(), 3);

    lab.dataplane
        .upsert_service(
            &Frontend::tcp(vip),
            &Balancing::from([all[0], all[2]].to_vec()),
        )
        .expect("update service");
    let counts = tally(&lab.connect(vip, 200));
    let names: Vec<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(names, ["backend-0", "backend-2"], "{counts:?}");

    // Removing the service entirely stops the rewriting.
    assert!(
        lab.dataplane
            .remove_service(&Frontend::tcp(vip))
            .expect("remove")
    );
    assert_eq!(lab.connect(vip, 1), [ENETUNREACH]);
}

#[test]
fn service_without_backends_refuses_connections() {
    let mut lab = Lab::new();
    for vip in ["10.96.7.1:80", "[fd00:10:96::7]:80"] {
        lab.dataplane
            .upsert_service(&Frontend::tcp(addr(vip)), &Balancing::default())
            .expect("publish service");
        // As kube-proxy does: connection refused, not a timeout or EPERM.
        assert_eq!(
            lab.connect(addr(vip), 2),
            [ECONNREFUSED, ECONNREFUSED],
            "{vip}"
        );
    }
}

#[test]
fn invalid_service_is_rejected_and_nothing_is_published() {
    let mut lab = Lab::new();
    let backends = lab.backends("127.0.0.1", 1);
    let vip = addr("[fd00:10:96::7]:80");
    let err = lab
        .dataplane
        .upsert_service(
            &Frontend::tcp(vip),
            &Balancing::from([backends[0].addr()].to_vec()),
        )
        .expect_err("an IPv4 backend for an IPv6 VIP");
    assert!(err.to_string().contains("backends[0]: 127.0.0.1:"), "{err}");
    assert_eq!(lab.connect(vip, 1), [ENETUNREACH]);
}

#[test]
fn dropping_the_dataplane_detaches_and_unloads_its_programs() {
    let lab = Lab::new();
    let mut ids: Vec<u32> = lab.dataplane.attached().map(|p| p.id).collect();
    ids.sort();
    let mut attached: Vec<u32> = cgroup_programs(lab.cgroup.path())
        .iter()
        .map(|p| p.id)
        .collect();
    attached.sort();
    assert_eq!(attached, ids);

    let Lab {
        dataplane,
        cgroup,
        netns: _netns,
    } = lab;
    drop(dataplane);
    assert_eq!(cgroup_programs(cgroup.path()), vec![]);
    assert_unloaded(&ids);
}
