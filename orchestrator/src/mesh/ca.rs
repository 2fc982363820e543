//! The mesh's certificate authority and the node's cache of workload certificates.
//!
//! [`CaMaterial`] is the CA as plain data (PEM key and certificate): the agent loads
//! it from its state directory ([`CaMaterial::load_or_create`], key file mode 0600,
//! refused when others can read it, as ssh refuses a private key), and a multi-node
//! cluster can later hand the same material to every node through the store.
//! [`Ca`] signs leaf certificates: the workload's SPIFFE URI as the only subject
//! alternative name, server and client authentication, valid from a minute back
//! (clock skew between nodes) for 24 hours by default. [`Certificates`] issues a
//! certificate for an identity the first time it is asked and again once half of
//! its lifetime has passed, on the time of an injected [`Clock`].

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::identity::Identity;

/// How long a workload certificate is valid unless the caller says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How far back a certificate's validity starts, for nodes whose clocks differ.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long the CA's own certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// The CA's subject: this, a random suffix (no two CAs share a name, so a peer
/// told of another names it), and the organization.
const CA_COMMON_NAME: &str = "skiff mesh CA";
const CA_ORGANIZATION: &str = "skiff";
const KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "ca.crt";

/// The current time; injected so that tests can move it.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: mode {mode:04o} lets others read the CA key; it must be 0600 (chmod 600 {})",
        path.display(),
        path.display()
    )]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("the CA key is not a usable PEM private key: {0}")]
    Key(rcgen::Error),
    #[error("the CA certificate is not a PEM certificate: {0}")]
    Certificate(String),
    #[error("the CA certificate was not made for this key")]
    KeyMismatch,
    #[error("creating the CA: {0}")]
    Create(rcgen::Error),
    /// `identity` is the SPIFFE URI (a string keeps the error small).
    #[error("issuing a certificate for {identity}: {source}")]
    Issue {
        identity: String,
        source: rcgen::Error,
    },
    #[error("issuing a certificate for {identity}: {reason}")]
    Validity { identity: String, reason: String },
    #[error("loading the key of {identity} for TLS: {source}")]
    Load {
        identity: String,
        source: Box<rustls::Error>,
    },
}

/// The CA's key and certificate, PEM-encoded: what a node needs to issue
/// certificates, wherever it was kept.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaMaterial {
    pub key_pem: String,
    pub cert_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CaMaterial")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CaMaterial {
    /// A new CA: a fresh P-256 key and its self-signed certificate.
    pub fn generate(now: SystemTime) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(CaError::Create)?;
        let params = ca_params(now);
        let cert = params.self_signed(&key).map_err(CaError::Create)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
        })
    }

    /// The CA kept in `dir` (`ca.key`, mode 0600, and `ca.crt`), created there when
    /// the key is absent.
    pub fn load_or_create(dir: &Path, now: SystemTime) -> Result<Self, CaError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        if key_path.exists() {
            let mode = fs::metadata(&key_path)
                .map_err(|source| io(&key_path, source))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(CaError::KeyFileMode {
                    path: key_path,
                    mode: mode & 0o7777,
                });
            }
            let read = |path: &Path| fs::read_to_string(path).map_err(|source| io(path, source));
            let material = Self {
                key_pem: read(&key_path)?,
                cert_pem: read(&cert_path)?,
            };
            // Refuse a key and certificate that do not belong together now rather
            // than at the first handshake.
            Ca::new(&material)?;
            return Ok(material);
        }
        let material = Self::generate(now)?;
        fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
        // The certificate first: a crash between the two leaves no key, so the next
        // start creates both again.
        write_file(&cert_path, &material.cert_pem, 0o644)?;
        write_file(&key_path, &material.key_pem, 0o600)?;
        Ok(material)
    }
}

fn io(path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` through a temporary file created with `mode`, so the
/// file is never seen half-written or with a wider mode.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let temporary = path.with_extension("tmp");
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|source| io(&temporary, source))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&temporary, source))?;
    fs::rename(&temporary, path).map_err(|source| io(path, source))
}

fn ca_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_subject();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + CA_VALIDITY).into();
    params.serial_number = Some(random_serial());
    params
}

fn ca_subject() -> DistinguishedName {
    let suffix: [u8; 6] = rand::random();
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("{CA_COMMON_NAME} {suffix}"));
    name.push(DnType::OrganizationName, CA_ORGANIZATION);
    name
}

/// A random positive 128-bit serial number (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// The certificate authority: signs workload certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl Ca {
    pub fn new(material: &CaMaterial) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(&material.key_pem).map_err(CaError::Key)?;
        let root = rustls::pki_types::pem::PemObject::from_pem_slice(material.cert_pem.as_bytes())
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let parsed = webpki::EndEntityCert::try_from(&root)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        if parsed.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&root, key)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        Ok(Self { issuer, root })
    }

    /// The CA's certificate: the trust anchor peers verify against.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// A leaf certificate for `identity` and `public_key` (a [`KeyPair`] or just a
    /// public key), valid from a minute before `now` until `now + ttl`.
    pub fn issue(
        &self,
        identity: &Identity,
        public_key: &impl PublicKeyData,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        let issue_error = |source| CaError::Issue {
            identity: identity.to_string(),
            source,
        };
        let uri = identity.to_string().try_into().map_err(issue_error)?;
        let mut params = CertificateParams::default();
        // The identity is the URI; the subject stays empty, as SPIFFE asks.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let not_after = now.checked_add(ttl).ok_or_else(|| CaError::Validity {
            identity: identity.to_string(),
            reason: format!("a lifetime of {ttl:?} ends beyond what a certificate can say"),
        })?;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(issue_error)?;
        Ok(cert.der().clone())
    }
}

#[cfg(test)]
impl Ca {
    /// Signs whatever `params` say: for tests of certificates the CA never issues.
    pub(crate) fn sign(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> CertificateDer<'static> {
        params
            .signed_by(key, &self.issuer)
            .expect("test parameters sign")
            .der()
            .clone()
    }
}

/// A workload's certificate and key, ready for rustls.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    /// The leaf certificate and its private key.
    pub certified: Arc<CertifiedKey>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

impl WorkloadCert {
    /// When the cache issues a new one: half-way through its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + lifetime / 2
    }
}

/// The certificates of the identities one node serves, issued on demand and
/// renewed at half-life.
pub struct Certificates {
    ca: Arc<Ca>,
    ttl: Duration,
    clock: Clock,
    issued: Mutex<HashMap<Identity, Arc<WorkloadCert>>>,
}

impl Certificates {
    pub fn new(ca: Arc<Ca>, ttl: Duration, clock: Clock) -> Self {
        Self {
            ca,
            ttl,
            clock,
            issued: Mutex::default(),
        }
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The current certificate of `identity`: the cached one until its half-life,
    /// then a new one (a new key too).
    pub fn get(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, CaError> {
        let now = (self.clock)();
        // A poisoned lock only means another thread panicked mid-insert; the map is
        // still a valid cache.
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = issued.get(identity).filter(|c| now < c.renew_at()) {
            return Ok(current.clone());
        }
        let fresh = Arc::new(self.issue(identity, now)?);
        issued.insert(identity.clone(), fresh.clone());
        Ok(fresh)
    }

    fn issue(&self, identity: &Identity, now: SystemTime) -> Result<WorkloadCert, CaError> {
        let key = KeyPair::generate().map_err(|source| CaError::Issue {
            identity: identity.to_string(),
            source,
        })?;
        let leaf = self.ca.issue(identity, &key, now, self.ttl)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|source| CaError::Load {
                identity: identity.to_string(),
                source: Box::new(source),
            })?;
        // The leaf alone: peers hold the CA certificate as their trust anchor.
        let chain = vec![leaf];
        Ok(WorkloadCert {
            identity: identity.clone(),
            certified: Arc::new(CertifiedKey::new(chain, signing_key)),
            issued_at: now,
            expires_at: now + self.ttl,
        })
    }
}

#[cfg(test)]
mod tests;
