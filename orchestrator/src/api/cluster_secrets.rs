//! The secrets every agent of a cluster shares (the key that encrypts Secrets at
//! rest, the API bearer token users hold), and how agents on one etcd come to share
//! them, as k3s does with its bootstrap data:
//!
//! - The cluster's first agent creates them and writes them to one store key,
//!   [`BOOTSTRAP_KEY`], sealed (AES-256-GCM) with a key derived from the cluster's
//!   join token by PBKDF2-HMAC-SHA256. The key is created with a compare-and-swap on
//!   its absence, so of two first agents racing only one creates the cluster.
//! - Every further agent starts with `--join --token TOKEN`, reads that key and opens
//!   it with the token. A wrong token opens nothing.
//! - Each agent keeps the join token in its state directory ([`JOIN_TOKEN_FILE`],
//!   0600) and reads the bootstrap data again at every start, so the store stays the
//!   one place the shared secrets live; it also writes the API token to its
//!   [`TOKEN_FILE`] for the CLI on that host.
//!
//! An agent on the embedded store is a cluster of one: its secrets are files in its
//! state directory ([`load_or_create_local`]).
//!
//! Fields added later (the mesh CA) are optional in [`ClusterSecrets`], so agents
//! that do not know them still open the data. An agent that finds bootstrap data
//! without a mesh CA adds one by compare-and-swap (or takes the one another agent
//! added first), so every node of a cluster issues certificates from one CA.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::api::credentials::{self, CredentialError};
use crate::api::encryption::{self, SecretBox};
use crate::mesh::ca::{CaError, CaMaterial};
use crate::store::{Store, StoreError, Txn};

/// The store key that holds the sealed bootstrap data.
pub const BOOTSTRAP_KEY: &str = "/skiff/bootstrap";
/// The API bearer token, in the state directory.
pub const TOKEN_FILE: &str = "token";
/// The key that encrypts Secrets, in an embedded store's state directory.
pub const ENCRYPTION_KEY_FILE: &str = "encryption.key";
/// The cluster's join token, in the state directory of every agent on etcd.
pub const JOIN_TOKEN_FILE: &str = "join-token";
/// Marks tokens skiff generates; the version leaves room for another format.
const TOKEN_PREFIX: &str = "skiff1::";
/// A token a person chooses must be at least this long; generated ones carry 256
/// random bits.
const MIN_TOKEN_LEN: usize = 16;
/// PBKDF2-HMAC-SHA256 rounds: OWASP's recommendation (2023). A generated token
/// needs none, but `--token` may be a passphrase, and the sealed data is readable
/// by anyone who can read etcd.
pub const KDF_ITERATIONS: u32 = 600_000;
const KDF_NAME: &str = "pbkdf2-hmac-sha256";
const SALT_LEN: usize = 16;
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ClusterSecretsError {
    #[error(
        "--join needs the cluster's join token: --token TOKEN or --token-file FILE (the first \
         agent wrote it to {JOIN_TOKEN_FILE} in its state directory)"
    )]
    NoToken,
    #[error("the join token must be at least {MIN_TOKEN_LEN} characters without spaces")]
    BadToken,
    #[error(
        "there is no cluster to join at {cluster}: {BOOTSTRAP_KEY} is absent (start the \
         cluster's first agent without --join)"
    )]
    NoCluster { cluster: String },
    #[error(
        "the cluster at {cluster} already exists: start this agent with --join --token TOKEN \
         (the first agent's {JOIN_TOKEN_FILE} file)"
    )]
    AlreadyExists { cluster: String },
    #[error(
        "another agent created the cluster at {cluster} at the same time: start this agent \
         with --join --token TOKEN (that agent's {JOIN_TOKEN_FILE} file)"
    )]
    Raced { cluster: String },
    #[error(
        "the join token does not open the cluster's bootstrap data {BOOTSTRAP_KEY} at {cluster} (wrong token?)"
    )]
    WrongToken { cluster: String },
    #[error("the cluster's bootstrap data {BOOTSTRAP_KEY} at {cluster} is unreadable: {reason}")]
    Unreadable { cluster: String, reason: String },
    #[error("the cluster's bootstrap data {BOOTSTRAP_KEY} at {cluster}: {source}")]
    Store { cluster: String, source: StoreError },
    #[error("{}: not a join token (at least {MIN_TOKEN_LEN} characters without spaces)", path.display())]
    BadTokenFile { path: PathBuf },
    #[error("sealing the cluster's bootstrap data: {0}")]
    Seal(String),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("the mesh CA: {0}")]
    MeshCa(#[from] CaError),
}

/// What every agent of one cluster must hold the same.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSecrets {
    /// Encrypts Secrets at rest ([`encryption::KEY_LEN`] bytes, base64).
    #[serde(with = "base64_bytes")]
    pub encryption_key: Vec<u8>,
    /// The bearer token the API accepts.
    pub api_token: String,
    /// The mesh's certificate authority (None only in data written before the mesh
    /// existed, until an agent adds one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_ca: Option<CaMaterial>,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecrets { .. }")
    }
}

/// The cluster's join token; its Debug hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(..)")
    }
}

impl JoinToken {
    /// A token as a person gave it (surrounding white space dropped).
    pub fn parse(text: &str) -> Result<Self, ClusterSecretsError> {
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_LEN || token.contains(char::is_whitespace) {
            return Err(ClusterSecretsError::BadToken);
        }
        Ok(Self(token.to_owned()))
    }

    /// A new random token, `skiff1::` and 64 hex digits.
    pub fn generate() -> Self {
        Self(format!("{TOKEN_PREFIX}{}", credentials::random_token()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How this agent takes part in a cluster on etcd.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    /// Join an existing cluster (never create one).
    pub join: bool,
    /// The join token from `--token` or `--token-file`; else the state directory's.
    pub token: Option<JoinToken>,
}

/// The cluster's secrets as this agent obtained them.
#[derive(Debug)]
pub struct Obtained {
    pub secrets: ClusterSecrets,
    pub token: JoinToken,
    /// Whether this agent created the cluster (and its token is new to others).
    pub created: bool,
}

impl Obtained {
    /// Keeps the join token and the API token in `state_dir` (0600), so the agent
    /// restarts without `--token` and the CLI on this host finds the API token.
    pub fn save(&self, state_dir: &Path) -> Result<(), CredentialError> {
        let token_line = format!("{}\n", self.token.expose());
        credentials::write_private(&state_dir.join(JOIN_TOKEN_FILE), token_line.as_bytes())?;
        let api_line = format!("{}\n", self.secrets.api_token);
        credentials::write_private(&state_dir.join(TOKEN_FILE), api_line.as_bytes())
    }
}

/// The embedded store's secrets: the files in `state_dir`, created at first start.
pub fn load_or_create_local(state_dir: &Path) -> Result<ClusterSecrets, CredentialError> {
    Ok(ClusterSecrets {
        encryption_key: credentials::load_or_create_key(
            &state_dir.join(ENCRYPTION_KEY_FILE),
            encryption::KEY_LEN,
        )?,
        api_token: credentials::load_or_create_token(&state_dir.join(TOKEN_FILE))?,
        // The embedded store's CA is files in the state directory (see the agent).
        mesh_ca: None,
    })
}

/// Opens the cluster's bootstrap data in `store` (at `cluster`, for messages), or
/// creates it when this is the cluster's first agent. Writes nothing locally: see
/// [`Obtained::save`].
pub async fn obtain(
    store: &dyn Store,
    cluster: &str,
    membership: &Membership,
    state_dir: &Path,
) -> Result<Obtained, ClusterSecretsError> {
    let stored_token = read_join_token(&state_dir.join(JOIN_TOKEN_FILE))?;
    let token = membership.token.clone().or(stored_token);
    if membership.join && token.is_none() {
        return Err(ClusterSecretsError::NoToken);
    }
    let store_error = |source| ClusterSecretsError::Store {
        cluster: cluster.to_owned(),
        source,
    };
    let (existing, _) = store.get(BOOTSTRAP_KEY).await.map_err(store_error)?;
    if let Some(existing) = existing {
        let token = token.ok_or_else(|| ClusterSecretsError::AlreadyExists {
            cluster: cluster.to_owned(),
        })?;
        let mut secrets = open(&existing.value, &token, cluster)?;
        if secrets.mesh_ca.is_none() {
            secrets = add_mesh_ca(store, cluster, &token, secrets, existing.mod_revision).await?;
        }
        return Ok(Obtained {
            secrets,
            token,
            created: false,
        });
    }
    if membership.join {
        return Err(ClusterSecretsError::NoCluster {
            cluster: cluster.to_owned(),
        });
    }
    let generated = token.is_none();
    let token = token.unwrap_or_else(JoinToken::generate);
    let secrets = first_secrets(state_dir)?;
    let sealed = seal(&secrets, &token, KDF_ITERATIONS)?;
    let created = store
        .txn(Txn::new().when(BOOTSTRAP_KEY, 0).put(BOOTSTRAP_KEY, sealed))
        .await;
    match created {
        Ok(_) => Ok(Obtained {
            secrets,
            token,
            created: true,
        }),
        // Another first agent won: with the same token (both given it), this one
        // joins what that one created.
        Err(StoreError::Conflict { .. }) => {
            let (winner, _) = store.get(BOOTSTRAP_KEY).await.map_err(store_error)?;
            let raced = || ClusterSecretsError::Raced {
                cluster: cluster.to_owned(),
            };
            let winner = winner.ok_or_else(raced)?;
            match open(&winner.value, &token, cluster) {
                Ok(secrets) if !generated => Ok(Obtained {
                    secrets,
                    token,
                    created: false,
                }),
                Ok(_) | Err(ClusterSecretsError::WrongToken { .. }) => Err(raced()),
                Err(other) => Err(other),
            }
        }
        Err(source) => Err(store_error(source)),
    }
}

/// The first agent's secrets: those its state directory already holds (an agent
/// that ran on this etcd before clusters had bootstrap data keeps its Secrets
/// readable and its token valid), else new ones.
fn first_secrets(state_dir: &Path) -> Result<ClusterSecrets, ClusterSecretsError> {
    let key_path = state_dir.join(ENCRYPTION_KEY_FILE);
    let encryption_key = match credentials::read_private(&key_path)? {
        Some(key) if key.len() != encryption::KEY_LEN => {
            return Err(CredentialError::WrongLength {
                path: key_path,
                expected: encryption::KEY_LEN,
                found: key.len(),
            }
            .into());
        }
        Some(key) => key,
        None => credentials::random_key(encryption::KEY_LEN),
    };
    let api_token = match credentials::read_private(&state_dir.join(TOKEN_FILE))? {
        Some(bytes) if !String::from_utf8_lossy(&bytes).trim().is_empty() => {
            String::from_utf8_lossy(&bytes).trim().to_owned()
        }
        _ => credentials::random_token(),
    };
    Ok(ClusterSecrets {
        encryption_key,
        api_token,
        mesh_ca: Some(CaMaterial::generate(std::time::SystemTime::now())?),
    })
}

/// Adds a new mesh CA to bootstrap data written before the mesh existed, if the
/// data is still at `revision`; when another agent changed it first (adding its
/// own CA), that agent's is used.
async fn add_mesh_ca(
    store: &dyn Store,
    cluster: &str,
    token: &JoinToken,
    secrets: ClusterSecrets,
    revision: crate::store::Revision,
) -> Result<ClusterSecrets, ClusterSecretsError> {
    let store_error = |source| ClusterSecretsError::Store {
        cluster: cluster.to_owned(),
        source,
    };
    let with_ca = ClusterSecrets {
        mesh_ca: Some(CaMaterial::generate(std::time::SystemTime::now())?),
        ..secrets
    };
    let sealed = seal(&with_ca, token, KDF_ITERATIONS)?;
    let swapped = store
        .txn(
            Txn::new()
                .when(BOOTSTRAP_KEY, revision)
                .put(BOOTSTRAP_KEY, sealed),
        )
        .await;
    match swapped {
        Ok(_) => Ok(with_ca),
        Err(StoreError::Conflict { .. }) => {
            let (current, _) = store.get(BOOTSTRAP_KEY).await.map_err(store_error)?;
            let gone = || ClusterSecretsError::NoCluster {
                cluster: cluster.to_owned(),
            };
            let current = open(&current.ok_or_else(gone)?.value, token, cluster)?;
            match current.mesh_ca {
                Some(_) => Ok(current),
                None => Err(ClusterSecretsError::Unreadable {
                    cluster: cluster.to_owned(),
                    reason: "it changed while the mesh CA was being added, and has none".into(),
                }),
            }
        }
        Err(source) => Err(store_error(source)),
    }
}

/// The join token kept in `path`, if any.
fn read_join_token(path: &Path) -> Result<Option<JoinToken>, ClusterSecretsError> {
    match credentials::read_private(path)? {
        None => Ok(None),
        Some(bytes) => JoinToken::parse(&String::from_utf8_lossy(&bytes))
            .map(Some)
            .map_err(|_| ClusterSecretsError::BadTokenFile {
                path: path.to_owned(),
            }),
    }
}

/// The bootstrap data as stored: how the key was derived, and the sealed secrets.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SealedSecrets {
    version: u32,
    kdf: String,
    iterations: u32,
    #[serde(with = "base64_bytes")]
    salt: Vec<u8>,
    /// [`ClusterSecrets`] as JSON, sealed by [`SecretBox`].
    #[serde(with = "base64_bytes")]
    sealed: Vec<u8>,
}

/// The AES-256 key `token` and `salt` derive.
fn derive_key(token: &JoinToken, salt: &[u8], iterations: u32) -> Option<Vec<u8>> {
    let rounds = std::num::NonZeroU32::new(iterations)?;
    let mut key = vec![0u8; encryption::KEY_LEN];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        token.expose().as_bytes(),
        &mut key,
    );
    Some(key)
}

/// `secrets` sealed with `token`, as stored at [`BOOTSTRAP_KEY`].
fn seal(
    secrets: &ClusterSecrets,
    token: &JoinToken,
    iterations: u32,
) -> Result<Vec<u8>, ClusterSecretsError> {
    let salt = credentials::random_key(SALT_LEN);
    let seal_error = |e: &dyn std::fmt::Display| ClusterSecretsError::Seal(e.to_string());
    let key = derive_key(token, &salt, iterations)
        .ok_or_else(|| seal_error(&"zero key derivation rounds"))?;
    let plain = serde_json::to_vec(secrets).map_err(|e| seal_error(&e))?;
    let sealed = SecretBox::new(&key)
        .and_then(|secret_box| secret_box.seal(&plain))
        .map_err(|e| seal_error(&e))?;
    let stored = SealedSecrets {
        version: FORMAT_VERSION,
        kdf: KDF_NAME.to_owned(),
        iterations,
        salt,
        sealed,
    };
    serde_json::to_vec(&stored).map_err(|e| seal_error(&e))
}

/// The secrets in `stored`, opened with `token`.
fn open(
    stored: &[u8],
    token: &JoinToken,
    cluster: &str,
) -> Result<ClusterSecrets, ClusterSecretsError> {
    let unreadable = |reason: String| ClusterSecretsError::Unreadable {
        cluster: cluster.to_owned(),
        reason,
    };
    let stored: SealedSecrets =
        serde_json::from_slice(stored).map_err(|e| unreadable(e.to_string()))?;
    if stored.version != FORMAT_VERSION || stored.kdf != KDF_NAME {
        return Err(unreadable(format!(
            "version {} with key derivation {:?} (this agent reads version {FORMAT_VERSION}, {KDF_NAME})",
            stored.version, stored.kdf
        )));
    }
    let key = derive_key(token, &stored.salt, stored.iterations)
        .ok_or_else(|| unreadable("zero key derivation rounds".into()))?;
    let plain = SecretBox::new(&key)
        .and_then(|secret_box| secret_box.open(&stored.sealed))
        .map_err(|_| ClusterSecretsError::WrongToken {
            cluster: cluster.to_owned(),
        })?;
    let secrets: ClusterSecrets =
        serde_json::from_slice(&plain).map_err(|e| unreadable(e.to_string()))?;
    if secrets.encryption_key.len() != encryption::KEY_LEN || secrets.api_token.is_empty() {
        return Err(unreadable(
            "a key of the wrong length or an empty token".into(),
        ));
    }
    Ok(secrets)
}

/// Bytes as base64 strings in JSON.
mod base64_bytes {
    use super::{BASE64, Engine};

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
