//! The mesh's tunnel between node proxies, on loopback: a client's bytes go
//! through an HBONE client, over mutual TLS 1.3 to an HBONE server, to an echo
//! server and back. A packet capture (tcpdump) shows the tunnel carries them
//! encrypted; the server learns the client's identity from its certificate;
//! a client of another CA and a denied identity get nowhere.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use skiff::mesh::{
    Authorize, Ca, CaMaterial, Certificates, HboneClient, HboneServer, Identity, system_clock,
};
use skiff_tests::capture::{Capture, contains, stream_of};
use skiff_tests::unique_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn identity(account: &str) -> Identity {
    Identity::new("cluster.local", "shop", account)
}

fn new_certificates() -> Arc<Certificates> {
    let material = CaMaterial::generate(SystemTime::now()).expect("CA");
    let ca = Ca::new(&material).expect("CA from material");
    Arc::new(Certificates::new(Arc::new(ca), DAY, system_clock()))
}

/// An HBONE server on 127.0.0.1 presenting `identity("server")`, which denies the
/// identity `shop/sa/denied` and records every (source, destination) it is asked
/// about. Stops on drop.
struct Proxy {
    addr: SocketAddr,
    certificates: Arc<Certificates>,
    asked: Arc<Mutex<Vec<(Identity, SocketAddr)>>>,
    stats: Arc<skiff::mesh::hbone::ServerStats>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let certificates = new_certificates();
        let asked: Arc<Mutex<Vec<(Identity, SocketAddr)>>> = Arc::default();
        let authorize: Authorize = {
            let asked = asked.clone();
            Arc::new(move |source: &Identity, destination| {
                asked
                    .lock()
                    .expect("asked")
                    .push((source.clone(), destination));
                source.service_account != "denied"
            })
        };
        let server = HboneServer::bind(
            "127.0.0.1:0".parse().expect("address"),
            certificates.clone(),
            identity("server"),
            authorize,
        )
        .await
        .expect("HBONE server");
        let addr = server.local_addr().expect("local address");
        let stats = server.stats();
        let task = tokio::spawn(server.serve());
        Self {
            addr,
            certificates,
            asked,
            stats,
            task,
        }
    }

    fn asked(&self) -> Vec<(Identity, SocketAddr)> {
        self.asked.lock().expect("asked").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server on 127.0.0.1 that echoes each connection until its client
/// half-closes, and records what each connection sent, in accept order.
struct Echo {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("local address");
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let task = {
            let received = received.clone();
            tokio::spawn(async move {
                while let Ok((mut connection, _)) = listener.accept().await {
                    // The slot is taken at accept, so the order is the accept order.
                    let slot = {
                        let mut received = received.lock().expect("received");
                        received.push(Vec::new());
                        received.len() - 1
                    };
                    let received = received.clone();
                    tokio::spawn(async move {
                        let mut data = Vec::new();
                        let _ = connection.read_to_end(&mut data).await;
                        let _ = connection.write_all(&data).await;
                        let _ = connection.shutdown().await;
                        received.lock().expect("received")[slot] = data;
                    });
                }
            })
        };
        Self {
            addr,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().expect("received").clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `data` through a tunnel, half-closes, and returns what came back.
async fn exchange(
    mut tunnel: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    data: &[u8],
) -> Vec<u8> {
    tunnel
        .write_all(data)
        .await
        .expect("write through the tunnel");
    tunnel.shutdown().await.expect("half-close the tunnel");
    let mut back = Vec::new();
    tunnel
        .read_to_end(&mut back)
        .await
        .expect("read through the tunnel");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelled_bytes_are_echoed_and_never_plaintext_on_the_wire() {
    let proxy = Proxy::start().await;
    let echo = Echo::start().await;
    let capture = Capture::on_loopback(&[proxy.addr.port(), echo.addr.port()]);
    let marker = format!("{}-payload-marker", unique_name("skiff-mesh")).repeat(8);
    let client = HboneClient::new(proxy.certificates.clone());

    for round in 0..2 {
        let tunnel = client
            .connect(
                &identity("client"),
                proxy.addr,
                &identity("server"),
                echo.addr,
            )
            .await
            .expect("tunnel");
        let data = format!("{marker}{round}");
        assert_eq!(exchange(tunnel, data.as_bytes()).await, data.as_bytes());
    }
    // The server knew who was asking, from the client's certificate.
    assert_eq!(
        proxy.asked(),
        [
            (identity("client"), echo.addr),
            (identity("client"), echo.addr)
        ]
    );
    // Both streams shared one TLS connection.
    let stats = &proxy.stats;
    assert_eq!(
        stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        stats.connected.load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    drop(client);
    // A last plaintext connection marks the end of what the capture must hold.
    let sentinel = unique_name("skiff-mesh-sentinel");
    let mut direct = TcpStream::connect(echo.addr).await.expect("direct");
    assert_eq!(
        exchange(&mut direct, sentinel.as_bytes()).await,
        sentinel.as_bytes()
    );
    let segments = capture.flush_through(sentinel.as_bytes());

    let plaintext = stream_of(&segments, echo.addr.port());
    let tunnel = stream_of(&segments, proxy.addr.port());
    // The capture sees plaintext where there is some: the proxy-to-echo leg.
    assert!(
        contains(&plaintext, marker.as_bytes()),
        "the capture missed the plaintext leg"
    );
    assert!(!tunnel.is_empty(), "the capture missed the tunnel");
    assert!(
        !contains(&tunnel, marker.as_bytes()),
        "the payload crossed the tunnel in plaintext"
    );
    // A TLS handshake: a ClientHello record, and a ServerHello whose
    // supported_versions extension selects TLS 1.3 (0x0304).
    assert!(contains(&tunnel, &[0x16, 0x03, 0x01]) || contains(&tunnel, &[0x16, 0x03, 0x03]));
    let server_hello_at = tunnel
        .windows(6)
        .position(|w| w[0] == 0x16 && w[1] == 0x03 && w[2] == 0x03 && w[5] == 0x02)
        .expect("no ServerHello in the tunnel");
    assert!(
        contains(
            &tunnel[server_hello_at..],
            &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]
        ),
        "the ServerHello does not select TLS 1.3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_ca_is_refused() {
    let proxy = Proxy::start().await;
    let echo = Echo::start().await;
    let stranger = HboneClient::new(new_certificates());
    let result = stranger
        .connect(
            &identity("client"),
            proxy.addr,
            &identity("server"),
            echo.addr,
        )
        .await;
    assert!(result.is_err(), "a client of another CA got a tunnel");
    assert!(proxy.asked().is_empty(), "the server authorized a stranger");
    assert!(
        echo.received().is_empty(),
        "the destination saw a connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_identity_gets_403_and_the_destination_never_sees_it() {
    let proxy = Proxy::start().await;
    let echo = Echo::start().await;
    let client = HboneClient::new(proxy.certificates.clone());
    let error = client
        .connect(
            &identity("denied"),
            proxy.addr,
            &identity("server"),
            echo.addr,
        )
        .await
        .expect_err("a denied identity got a tunnel");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(403), "{error}");
    assert_eq!(
        proxy
            .stats
            .denied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The server connects before it answers, so a connection for the denied
    // stream would have been accepted before this allowed one.
    let tunnel = client
        .connect(
            &identity("client"),
            proxy.addr,
            &identity("server"),
            echo.addr,
        )
        .await
        .expect("tunnel");
    assert_eq!(exchange(tunnel, b"allowed").await, b"allowed");
    assert_eq!(echo.received(), [b"allowed".to_vec()]);
    assert_eq!(
        proxy.asked(),
        [
            (identity("denied"), echo.addr),
            (identity("client"), echo.addr)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_proxy_that_is_not_the_expected_identity() {
    let proxy = Proxy::start().await;
    let echo = Echo::start().await;
    let client = HboneClient::new(proxy.certificates.clone());
    let error = client
        .connect(&identity("client"), proxy.addr, &identity("db"), echo.addr)
        .await
        .expect_err("the client accepted the wrong proxy");
    assert!(
        error
            .to_string()
            .contains("expected spiffe://cluster.local/ns/shop/sa/db"),
        "{error}"
    );
    assert!(echo.received().is_empty());
}
