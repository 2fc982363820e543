//! Socket-level load balancing beyond connect(): unconnected UDP (sendmsg), replies
//! and peer names translated back to the service (recvmsg, getpeername), connected
//! UDP sockets destroyed when their backend is removed, and per-backend counters.
//! Real programs attached to a test cgroup, real client processes in a test network
//! namespace, real UDP and TCP backends.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use skiff::dataplane::{BackendCount, Balancing, Frontend};
use skiff_tests::lab::{Lab, SockClient, tally};

/// What a UDP socket reports once skiff destroyed it: recv() gets the error
/// bpf_sock_destroy set (udp_abort), send() finds the socket disconnected.
const ECONNABORTED: &str = "error 103";
const EDESTADDRREQ: &str = "error 89";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Chi-square of `counts` against a uniform split of their total.
fn chi_square(counts: &BTreeMap<String, usize>) -> f64 {
    let total: usize = counts.values().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .values()
        .map(|&n| (n as f64 - expected).powi(2) / expected)
        .sum()
}

/// 300 datagrams sent with sendto() to the VIP (at `send_to`) reach every backend,
/// fairly, and every reply comes from `send_to` as recvfrom() reports it.
fn unconnected_udp_spreads_and_replies_come_from_the_vip(
    vip: &str,
    send_to: &str,
    backend_ip: &str,
) {
    let mut lab = Lab::new();
    let backends = lab.udp_backends(backend_ip, 3);
    let targets: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    lab.dataplane
        .upsert_service(
            &Frontend::udp(addr(vip)),
            &Balancing::from(targets.to_vec()),
        )
        .expect("publish service");

    let mut client = lab.client();
    let replies = client.lines(&format!("sendto {send_to} 300"), 300);
    let mut names = Vec::new();
    for reply in &replies {
        let (name, from) = reply.split_once(' ').unwrap_or((reply, ""));
        assert_eq!(from, send_to, "reply {reply:?} does not come from the VIP");
        names.push(name.to_string());
    }
    let counts = tally(&names);
    let seen: Vec<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(seen, ["backend-0", "backend-1", "backend-2"], "{counts:?}");
    // 2 degrees of freedom: 27.6 is p = 1e-6 (see sock_lb.rs).
    let chi2 = chi_square(&counts);
    assert!(chi2 < 27.6, "split {counts:?} is not uniform ({chi2:.1})");
    let received: usize = backends.iter().map(|b| b.received()).sum();
    assert_eq!(received, 300);
}

#[test]
fn ipv4_unconnected_udp_spreads_and_replies_come_from_the_vip() {
    let vip = "10.96.8.1:53";
    unconnected_udp_spreads_and_replies_come_from_the_vip(vip, vip, "127.0.0.1");
}

#[test]
fn ipv6_unconnected_udp_spreads_and_replies_come_from_the_vip() {
    let vip = "[fd00:10:96::8]:53";
    unconnected_udp_spreads_and_replies_come_from_the_vip(vip, vip, "::1");
}

#[test]
fn an_ipv6_socket_sends_to_an_ipv4_vip_at_its_mapped_address() {
    unconnected_udp_spreads_and_replies_come_from_the_vip(
        "10.96.8.1:53",
        "[::ffff:10.96.8.1]:53",
        "127.0.0.1",
    );
}

#[test]
fn unconnected_udp_to_a_service_without_backends_is_refused() {
    let mut lab = Lab::new();
    let vip = "10.96.8.1:53";
    lab.dataplane
        .upsert_service(&Frontend::udp(addr(vip)), &Balancing::default())
        .expect("publish service");
    let mut client = lab.client();
    assert_eq!(client.lines(&format!("sendto {vip} 1"), 1), ["error 111"]);
}

#[test]
fn getpeername_reports_the_vip_for_tcp_and_connected_udp() {
    let mut lab = Lab::new();
    let tcp4 = lab.backends("127.0.0.1", 2);
    let tcp6 = lab.backends("::1", 2);
    let udp4 = lab.udp_backends("127.0.0.1", 2);
    let udp6 = lab.udp_backends("::1", 2);
    let cases = [
        (
            Frontend::tcp(addr("10.96.8.1:80")),
            vec![tcp4[0].addr(), tcp4[1].addr()],
        ),
        (
            Frontend::tcp(addr("[fd00:10:96::8]:80")),
            vec![tcp6[0].addr(), tcp6[1].addr()],
        ),
        (
            Frontend::udp(addr("10.96.8.1:53")),
            vec![udp4[0].addr(), udp4[1].addr()],
        ),
        (
            Frontend::udp(addr("[fd00:10:96::8]:53")),
            vec![udp6[0].addr(), udp6[1].addr()],
        ),
    ];
    let mut client = lab.client();
    for (frontend, backends) in &cases {
        lab.dataplane
            .upsert_service(frontend, &Balancing::from(backends.to_vec()))
            .expect("publish service");
        let vip = frontend.addr;
        let tcp = frontend.protocol == skiff::dataplane::Protocol::Tcp;
        let connect = if tcp { "tcp-connect" } else { "udp-connect" };
        for _ in 0..5 {
            assert_eq!(client.run(&format!("{connect} {vip}")), "ok", "{frontend}");
            assert_eq!(client.run("peer"), vip.to_string(), "{frontend}");
            if !tcp {
                // The connected socket talks to the backend behind the VIP.
                assert_eq!(client.run("send"), "ok");
                let reply = client.run("recv");
                assert!(reply.starts_with("backend-"), "{frontend}: {reply:?}");
            }
        }
    }
    // A socket that reached a backend directly sees that backend.
    assert_eq!(client.run(&format!("udp-connect {}", udp4[1].addr())), "ok");
    assert_eq!(client.run("peer"), udp4[1].addr().to_string());
    assert_eq!(client.run(&format!("tcp-connect {}", tcp6[0].addr())), "ok");
    assert_eq!(client.run("peer"), tcp6[0].addr().to_string());
}

/// Connects `client` to `vip` over UDP until its socket is pinned to the backend
/// named `want`; returns how many tries that took.
fn pin(client: &mut SockClient, vip: SocketAddr, want: &str) {
    for _ in 0..100 {
        assert_eq!(client.run(&format!("udp-connect {vip}")), "ok");
        assert_eq!(client.run("send"), "ok");
        if client.run("recv") == want {
            return;
        }
    }
    panic!("100 UDP connects to {vip} never reached {want}");
}

/// A connected UDP socket pinned to a backend that is then removed is destroyed: it
/// fails its next send and receive, and a new connect() reaches a live backend.
/// Sockets to live backends, to the removed backend's address directly, and to it
/// through another service that keeps it, are left alone.
fn removed_backend_destroys_its_connected_udp_sockets(vip: &str, other_vip: &str, ip: &str) {
    let mut lab = Lab::new();
    let (vip, other_vip) = (addr(vip), addr(other_vip));
    let backends = lab.udp_backends(ip, 2);
    let (gone, kept) = (&backends[0], &backends[1]);
    let service = Frontend::udp(vip);
    lab.dataplane
        .upsert_service(
            &service,
            &Balancing::from([gone.addr(), kept.addr()].to_vec()),
        )
        .expect("publish service");
    // Another service whose only backend is the one about to leave the first.
    lab.dataplane
        .upsert_service(
            &Frontend::udp(other_vip),
            &Balancing::from([gone.addr()].to_vec()),
        )
        .expect("publish the other service");
    assert_eq!(lab.dataplane.sockets_destroyed(), Some(0), "kfunc support");

    let mut pinned = lab.client();
    pin(&mut pinned, vip, gone.name());
    // An IPv6 socket pinned through the IPv4 VIP's mapped address goes the same way.
    let mut pinned_mapped = match vip.ip() {
        std::net::IpAddr::V4(v4) => {
            let mut client = lab.client();
            let mapped = SocketAddr::new(v4.to_ipv6_mapped().into(), vip.port());
            pin(&mut client, mapped, gone.name());
            Some(client)
        }
        std::net::IpAddr::V6(_) => None,
    };
    let mut live = lab.client();
    pin(&mut live, vip, kept.name());
    let mut direct = lab.client();
    assert_eq!(direct.run(&format!("udp-connect {}", gone.addr())), "ok");
    let mut via_other = lab.client();
    assert_eq!(via_other.run(&format!("udp-connect {other_vip}")), "ok");
    let mut outside = lab.client_without_skiff();
    assert_eq!(outside.run(&format!("udp-connect {}", gone.addr())), "ok");
    for client in [&mut direct, &mut via_other, &mut outside] {
        assert_eq!(client.run("send"), "ok");
        assert_eq!(client.run("recv"), gone.name());
    }

    lab.dataplane
        .upsert_service(&service, &Balancing::from([kept.addr()].to_vec()))
        .expect("remove a backend");
    let pinned_sockets = 1 + u64::from(pinned_mapped.is_some());
    assert_eq!(lab.dataplane.sockets_destroyed(), Some(pinned_sockets));
    let received = gone.received();

    // The pinned sockets were aborted and disconnected.
    for client in std::iter::once(&mut pinned).chain(pinned_mapped.as_mut()) {
        assert_eq!(client.run("recv"), ECONNABORTED);
        assert_eq!(client.run("send"), EDESTADDRREQ);
    }
    assert_eq!(
        gone.received(),
        received,
        "a datagram reached the removed backend"
    );
    // Connecting again goes through connect() and so to a live backend.
    for _ in 0..10 {
        assert_eq!(pinned.run(&format!("udp-connect {vip}")), "ok");
        assert_eq!(pinned.run("send"), "ok");
        assert_eq!(pinned.run("recv"), kept.name());
    }
    // Nothing else was touched.
    assert_eq!(live.run("send"), "ok");
    assert_eq!(live.run("recv"), kept.name());
    for client in [&mut direct, &mut via_other, &mut outside] {
        assert_eq!(client.run("send"), "ok");
        assert_eq!(client.run("recv"), gone.name());
    }

    // Removing the other service destroys the socket it balanced.
    assert!(
        lab.dataplane
            .remove_service(&Frontend::udp(other_vip))
            .expect("remove the other service")
    );
    assert_eq!(lab.dataplane.sockets_destroyed(), Some(pinned_sockets + 1));
    assert_eq!(via_other.run("recv"), ECONNABORTED);
    assert_eq!(direct.run("send"), "ok");
    assert_eq!(direct.run("recv"), gone.name());
}

#[test]
fn ipv4_removed_backend_destroys_its_connected_udp_sockets() {
    removed_backend_destroys_its_connected_udp_sockets("10.96.8.1:53", "10.96.8.2:53", "127.0.0.1");
}

#[test]
fn ipv6_removed_backend_destroys_its_connected_udp_sockets() {
    removed_backend_destroys_its_connected_udp_sockets(
        "[fd00:10:96::8]:53",
        "[fd00:10:96::9]:53",
        "::1",
    );
}

/// The counters of `frontend` by backend.
fn counts_of(counts: &[BackendCount], frontend: &Frontend) -> BTreeMap<SocketAddr, u64> {
    counts
        .iter()
        .filter(|c| c.frontend == *frontend)
        .map(|c| (c.backend, c.connections))
        .collect()
}

#[test]
fn counters_count_every_balanced_connection_per_backend() {
    let mut lab = Lab::new();
    let tcp = lab.backends("127.0.0.1", 3);
    let udp = lab.udp_backends("::1", 2);
    let tcp_service = Frontend::tcp(addr("10.96.8.1:80"));
    let udp_service = Frontend::udp(addr("[fd00:10:96::8]:53"));
    let tcp_addrs: Vec<SocketAddr> = tcp.iter().map(|b| b.addr()).collect();
    let udp_addrs: Vec<SocketAddr> = udp.iter().map(|b| b.addr()).collect();
    lab.dataplane
        .upsert_service(&tcp_service, &Balancing::from(tcp_addrs.to_vec()))
        .expect("publish TCP service");
    lab.dataplane
        .upsert_service(&udp_service, &Balancing::from(udp_addrs.to_vec()))
        .expect("publish UDP service");
    assert_eq!(lab.dataplane.counters().expect("counters"), []);

    // 60 TCP connections, counted per backend as the backends' names tell.
    let replies = tally(&lab.connect(tcp_service.addr, 60));
    let expected: BTreeMap<SocketAddr, u64> = tcp
        .iter()
        .filter_map(|b| replies.get(b.name()).map(|&n| (b.addr(), n as u64)))
        .collect();
    let counts = lab.dataplane.counters().expect("counters");
    assert_eq!(counts_of(&counts, &tcp_service), expected);
    assert_eq!(expected.values().sum::<u64>(), 60);

    // UDP: every datagram sent with sendto() and every connect() counts once.
    let mut client = lab.client();
    client.lines(&format!("sendto {} 40", udp_service.addr), 40);
    for _ in 0..5 {
        assert_eq!(
            client.run(&format!("udp-connect {}", udp_service.addr)),
            "ok"
        );
    }
    let counts = lab.dataplane.counters().expect("counters");
    let udp_counts = counts_of(&counts, &udp_service);
    assert_eq!(udp_counts.values().sum::<u64>(), 45, "{udp_counts:?}");
    let received: usize = udp.iter().map(|b| b.received()).sum();
    assert_eq!(received, 40, "connect() sends nothing");
    // Unbalanced traffic counts nowhere.
    assert_eq!(lab.connect(tcp[0].addr(), 3).len(), 3);
    assert_eq!(lab.dataplane.counters().expect("counters"), counts);

    // A removed backend's counter goes with it; a removed service's too.
    lab.dataplane
        .upsert_service(&tcp_service, &Balancing::from(tcp_addrs[1..].to_vec()))
        .expect("remove a backend");
    let counts = lab.dataplane.counters().expect("counters");
    let mut rest = expected.clone();
    rest.remove(&tcp_addrs[0]);
    assert_eq!(counts_of(&counts, &tcp_service), rest);
    assert!(lab.dataplane.remove_service(&udp_service).expect("remove"));
    let counts = lab.dataplane.counters().expect("counters");
    assert!(counts_of(&counts, &udp_service).is_empty(), "{counts:?}");
}
