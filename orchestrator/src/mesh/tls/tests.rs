use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::mesh::ca::{Ca, CaMaterial, DEFAULT_TTL};

fn identity(account: &str) -> Identity {
    Identity::new("cluster.local", "shop", account)
}

/// Certificates from `ca`, on a clock `past` behind the real one.
fn certificates(ca: Arc<Ca>, past: Duration) -> Arc<Certificates> {
    let clock = Arc::new(move || SystemTime::now() - past);
    Arc::new(Certificates::new(ca, DEFAULT_TTL, clock))
}

fn new_ca() -> Arc<Ca> {
    let material = CaMaterial::generate(SystemTime::now()).expect("CA");
    Arc::new(Ca::new(&material).expect("CA"))
}

/// What each side of one handshake concluded: the identity the server saw, or why
/// a side failed.
struct Outcome {
    server: Result<Identity, String>,
    client: Result<(), String>,
}

async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let server_side = async {
        let mut tls = TlsAcceptor::from(server)
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let connection = tls.get_ref().1;
        assert_eq!(
            connection.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let identity = peer_identity(connection.peer_certificates()).map_err(|e| e.to_string());
        // close_notify, so that the client's read ends cleanly.
        tokio::io::AsyncWriteExt::shutdown(&mut tls)
            .await
            .map_err(|e| e.to_string())?;
        identity
    };
    let client_side = async {
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let mut tls = TlsConnector::from(client)
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        // A TLS 1.3 client finishes before the server checked its certificate;
        // reading shows whether the server accepted it.
        let mut byte = [0u8; 1];
        match tokio::io::AsyncReadExt::read(&mut tls, &mut byte).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    };
    let (server, client) = tokio::join!(server_side, client_side);
    Outcome { server, client }
}

/// The configurations of a server ("server") and a client ("client") workload.
fn configs(
    server_certs: Arc<Certificates>,
    client_certs: Arc<Certificates>,
    expected_server: Identity,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let server = server_config(server_certs, identity("server")).expect("server config");
    let client =
        client_config(client_certs, identity("client"), expected_server).expect("client config");
    (server, client)
}

#[tokio::test]
async fn both_sides_authenticate_and_the_server_learns_the_client_identity() {
    let ca = new_ca();
    let certs = certificates(ca, Duration::ZERO);
    let (server, client) = configs(certs.clone(), certs, identity("server"));
    let outcome = handshake(server, client).await;
    assert_eq!(outcome.server, Ok(identity("client")));
    assert_eq!(outcome.client, Ok(()));
}

#[tokio::test]
async fn the_client_refuses_a_server_of_another_identity() {
    let certs = certificates(new_ca(), Duration::ZERO);
    let (server, client) = configs(certs.clone(), certs, identity("someone-else"));
    let outcome = handshake(server, client).await;
    let error = outcome
        .client
        .expect_err("client accepted the wrong server");
    assert!(
        error.contains(
            "the peer is spiffe://cluster.local/ns/shop/sa/server, expected spiffe://cluster.local/ns/shop/sa/someone-else"
        ),
        "{error}"
    );
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn the_server_refuses_a_client_certificate_of_another_ca() {
    let ours = certificates(new_ca(), Duration::ZERO);
    let theirs = certificates(new_ca(), Duration::ZERO);
    let server = server_config(ours.clone(), identity("server")).expect("server config");
    // A client that trusts our CA but presents a certificate from theirs.
    let client = client_trusting(
        &ours,
        Arc::new(WorkloadCertResolver {
            certificates: theirs,
            identity: identity("client"),
        }),
    );
    let outcome = handshake(server, client).await;
    let error = outcome
        .server
        .expect_err("server accepted another CA's client");
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn the_client_refuses_a_server_certificate_of_another_ca() {
    let ours = certificates(new_ca(), Duration::ZERO);
    let theirs = certificates(new_ca(), Duration::ZERO);
    let (server, client) = configs(theirs, ours, identity("server"));
    let outcome = handshake(server, client).await;
    let error = outcome
        .client
        .expect_err("client accepted another CA's server");
    assert!(error.contains("UnknownIssuer"), "{error}");
}

/// A client that verifies the server ("server") against `trusted`'s CA and
/// presents what `certificate` resolves.
fn client_trusting(
    trusted: &Certificates,
    certificate: Arc<dyn ResolvesClientCert>,
) -> Arc<ClientConfig> {
    let verifier = SpiffeServerVerifier {
        roots: roots(trusted).expect("roots"),
        provider: provider(),
        expected: identity("server"),
    };
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(certificate);
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(client)
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let ca = new_ca();
    // Issued two days ago for one day.
    let expired = certificates(ca.clone(), Duration::from_secs(2 * 24 * 3600));
    let current = certificates(ca, Duration::ZERO);
    let (server, client) = configs(current, expired, identity("server"));
    let outcome = handshake(server, client).await;
    let error = outcome
        .server
        .expect_err("server accepted an expired certificate");
    assert!(error.contains("certificate expired"), "{error}");
}

#[tokio::test]
async fn a_client_certificate_without_a_spiffe_id_is_refused() {
    let ca = new_ca();
    let certs = certificates(ca.clone(), Duration::ZERO);
    let server = server_config(certs.clone(), identity("server")).expect("server config");
    // Signed by the right CA, for client auth, but naming a host, not a workload.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["client.example".to_string()]).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = ca.sign(&params, &key);
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .expect("key");
    let client = client_trusting(
        &certs,
        Arc::new(FixedCert(Arc::new(CertifiedKey::new(
            vec![leaf],
            signing_key,
        )))),
    );
    let outcome = handshake(server, client).await;
    let error = outcome
        .server
        .expect_err("server accepted a certificate without SPIFFE ID");
    assert!(error.contains("no SPIFFE URI SAN"), "{error}");
}

/// Presents one certificate, whatever it is.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
