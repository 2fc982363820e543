//! Mutual TLS between node proxies: rustls configurations (TLS 1.3 only, ring,
//! ALPN "h2") in which both sides present a workload certificate from
//! [`Certificates`] and verify the other's against the mesh CA.
//!
//! Certificates name no host: a workload is its SPIFFE URI. So the verifiers are
//! our own, wrapping webpki's chain checks (signature, validity, extended key
//! usage) with one more rule: the peer certificate carries exactly one SPIFFE URI
//! SAN. The server accepts any identity the CA vouches for and tells the caller
//! which one it was ([`peer_identity`]; authorization is the caller's); the client
//! accepts only the identity it expected to reach.

use std::fmt;
use std::sync::Arc;

use log::warn;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use super::ca::Certificates;
use super::identity::{Identity, IdentityError};

/// The application protocol inside the tunnel.
const ALPN_H2: &[u8] = b"h2";

#[derive(thiserror::Error)]
pub enum TlsError {
    #[error("building the TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer certificate cannot be parsed: {0}")]
    Parse(webpki::Error),
    #[error("the peer certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("the peer certificate has {0} SPIFFE URI SANs; a workload has one")]
    ManySpiffeIds(usize),
    #[error("the peer certificate's SPIFFE ID: {0}")]
    BadSpiffeId(#[from] IdentityError),
    /// SPIFFE URIs (strings keep the error small).
    #[error("the peer is {found}, expected {expected}")]
    UnexpectedPeer { expected: String, found: String },
}

/// rustls shows a verifier's own error with `Debug` ("invalid peer certificate:
/// Other(OtherError(..))"), so `Debug` is the message, for logs people can read.
impl fmt::Debug for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<TlsError> for rustls::Error {
    fn from(error: TlsError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(certificates: &Certificates) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(certificates.ca().root().clone())
        .map_err(TlsError::Config)?;
    Ok(Arc::new(roots))
}

/// The identity in a peer certificate chain (its first certificate, already
/// verified by the handshake).
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Result<Identity, TlsError> {
    let leaf = chain
        .and_then(|chain| chain.first())
        .ok_or(TlsError::NoCertificate)?;
    identity_of(leaf)
}

fn identity_of(certificate: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let parsed = webpki::EndEntityCert::try_from(certificate).map_err(TlsError::Parse)?;
    let spiffe_ids: Vec<&str> = parsed
        .valid_uri_names()
        .filter(|uri| uri.starts_with("spiffe://"))
        .collect();
    match spiffe_ids[..] {
        [] => Err(TlsError::NoSpiffeId),
        [uri] => Ok(uri.parse()?),
        _ => Err(TlsError::ManySpiffeIds(spiffe_ids.len())),
    }
}

/// The server side: presents `identity`'s certificate, requires a client
/// certificate from the CA carrying a SPIFFE ID.
pub fn server_config(
    certificates: Arc<Certificates>,
    identity: Identity,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let webpki =
        WebPkiClientVerifier::builder_with_provider(roots(&certificates)?, provider.clone())
            .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier { webpki }))
        .with_cert_resolver(Arc::new(WorkloadCertResolver {
            certificates,
            identity,
        }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: presents `source`'s certificate and accepts only a server
/// certificate from the CA for `expected`.
pub fn client_config(
    certificates: Arc<Certificates>,
    source: Identity,
    expected: Identity,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots: roots(&certificates)?,
        provider: provider.clone(),
        expected,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(WorkloadCertResolver {
            certificates,
            identity: source,
        }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Presents the current certificate of one identity, renewed by the cache.
struct WorkloadCertResolver {
    certificates: Arc<Certificates>,
    identity: Identity,
}

impl WorkloadCertResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self.certificates.get(&self.identity) {
            Ok(cert) => Some(cert.certified.clone()),
            Err(error) => {
                // The handshake fails without a certificate; say why here.
                warn!("mesh: no certificate to present: {error}");
                None
            }
        }
    }
}

impl fmt::Debug for WorkloadCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertResolver")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for WorkloadCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for WorkloadCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// webpki's client verification (chain to the CA, validity, client-auth usage,
/// certificate mandatory), plus: the certificate names one workload.
#[derive(Debug)]
struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        identity_of(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// webpki's chain checks for a server certificate (to the CA, validity,
/// server-auth usage), with the expected SPIFFE ID in place of a host name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Identity,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found = identity_of(end_entity)?;
        if found != self.expected {
            return Err(TlsError::UnexpectedPeer {
                expected: self.expected.to_string(),
                found: found.to_string(),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
