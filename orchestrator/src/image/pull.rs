//! Pulling images from registries over the OCI distribution API (with
//! oci-client), anonymously: HTTPS checked against the system's roots, or plain
//! HTTP for the registries the agent was told are insecure.
//!
//! A pull resolves the reference to a manifest (from an image index or Docker
//! manifest list it takes this machine's platform), reads the config (from the
//! store when it is there), downloads into tmp/ the layers the store lacks, each
//! checked against its digest and size, and then stores the image the way an
//! import does ([`ImageStore::store_images`]), under the store's lock.
//!
//! Downloads run without the store's lock, so a long pull holds up no import or
//! removal; their directory carries a lock of its own, which tells `clear_tmp`
//! to leave it. A layer that was present when the pull began but was removed
//! before the pull stored its image is downloaded in another round.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::archive::{DOCKER_MANIFEST_LIST, MAX_METADATA_SIZE, is_image_config, this_platform};
use super::digest::{Digest, Hasher};
use super::reference::Reference;
use super::{
    Blob, FoundImage, ImageError, ImageStore, ImageSummary, LayerBlobs, LayerSource, Origin,
    config_layers, io_error,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// What a pull asks the registry for; anything else it answers is refused.
const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];
/// The lock file in a pull's download directory.
const DOWNLOAD_LOCK: &str = "lock";
/// Layers downloaded at once, as Docker does by default.
const CONCURRENT_DOWNLOADS: usize = 3;
/// Rounds of downloads when layers vanish from the store meanwhile (see above).
const MAX_ROUNDS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the next bytes of a response, so a stalled registry fails the
/// pull rather than holding it forever.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("skiff/", env!("CARGO_PKG_VERSION"));

/// How pulls reach registries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PullOptions {
    /// Registries (`HOST:PORT`, as references name them) spoken to over plain
    /// HTTP, as Docker's insecure-registries; every other one over HTTPS.
    pub insecure_registries: Vec<String>,
}

/// A pull that stored its image.
#[derive(Clone, Debug, PartialEq)]
pub struct Pulled {
    pub image: ImageSummary,
    /// The digest of what the reference names at the registry (the index of a
    /// multi-platform image), as `docker pull` prints it.
    pub digest: String,
    /// Layers of the image.
    pub layers: usize,
    /// Layers downloaded; the others were in the store already.
    pub layers_downloaded: usize,
    pub bytes_downloaded: u64,
}

/// Why a pull failed; every message names the reference.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },
    #[error("pulling {reference}: unknown host: {registry} does not resolve ({detail})")]
    UnknownHost {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("pulling {reference}: cannot reach the registry {registry}: {detail}")]
    Unreachable {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("pulling {reference}: manifest unknown: {registry} has no such repository or tag")]
    ManifestUnknown { reference: String, registry: String },
    #[error(
        "pulling {reference}: unauthorized: {registry} refused an anonymous pull (the repository \
         may not exist, or may need credentials, which skiff does not send): {detail}"
    )]
    Unauthorized {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error(
        "pulling {reference}: digest mismatch: the {what} hashes to {actual}, not to its digest {expected}"
    )]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error(
        "pulling {reference}: the {what} is not the {expected} bytes its descriptor says \
         (the registry sent {received})"
    )]
    SizeMismatch {
        reference: String,
        what: String,
        expected: u64,
        received: u64,
    },
    #[error("pulling {reference}: unsupported media type {media_type:?} of the {what}")]
    UnsupportedMediaType {
        reference: String,
        what: String,
        media_type: String,
    },
    #[error(
        "pulling {reference}: no matching platform: the image index has no manifest for {platform} (it has {})",
        list_or_none(.available)
    )]
    NoPlatform {
        reference: String,
        platform: String,
        available: Vec<String>,
    },
    #[error("pulling {reference}: registry {registry}: {detail}")]
    Registry {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("pulling {reference}: {source}")]
    Image {
        reference: String,
        source: Box<ImageError>,
    },
}

impl PullError {
    /// The waiting reason a container shows when its image fails to pull, as the
    /// kubelet reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::InvalidReference { .. } => "InvalidImageName",
            _ => "ErrImagePull",
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    match items.is_empty() {
        true => "none with a platform".to_owned(),
        false => items.join(", "),
    }
}

impl ImageStore {
    /// Pulls `reference` from its registry into the store, downloading only the
    /// layers the store lacks, and names the image by the reference's full form.
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<Pulled, PullError> {
        let parsed = Reference::parse(reference).map_err(|error| match error {
            ImageError::InvalidReference { reference, reason } => {
                PullError::InvalidReference { reference, reason }
            }
            source => PullError::Image {
                reference: reference.to_owned(),
                source: Box::new(source),
            },
        })?;
        let session = Session::new(&parsed, options)?;
        let (digest, manifest_blob, manifest) = session.manifest().await?;
        let config = self.config(&session, &manifest).await?;
        let mut image = session.image(manifest_blob, &manifest, config)?;
        let layers = image.layers.len();
        let mut downloads = self.downloads(&session).await?;
        let mut bytes_downloaded = 0;
        for _ in 0..MAX_ROUNDS {
            bytes_downloaded += self
                .download_missing(&session, &image, &mut downloads)
                .await?;
            let store = self.clone();
            let (returned_downloads, returned_image, stored) = blocking(move || {
                let stored = store.store_pulled(&downloads, &image);
                Ok((downloads, image, stored))
            })
            .await
            .map_err(|error| session.image_error(error))?;
            (downloads, image) = (returned_downloads, returned_image);
            let Some(summaries) = stored.map_err(|error| session.image_error(error))? else {
                continue;
            };
            let summary = summaries
                .into_iter()
                .next()
                .ok_or_else(|| session.registry_failure("the image was stored under no name"))?;
            return Ok(Pulled {
                image: summary,
                digest: digest.to_string(),
                layers,
                layers_downloaded: downloads.files.len(),
                bytes_downloaded,
            });
        }
        Err(session.registry_failure(
            "layers of the image kept disappearing from the store while it was pulled",
        ))
    }

    /// The image's config: the store's copy when it has one, else the registry's.
    async fn config(&self, session: &Session, manifest: &ImageManifest) -> Result<Blob, PullError> {
        let descriptor = manifest.config();
        if !is_image_config(descriptor.media_type()) {
            return Err(session.unsupported("config (this is not a container image)", descriptor));
        }
        let digest = session.digest_of(descriptor)?;
        let local = self.blob_path(&digest);
        if let Ok(bytes) = tokio::fs::read(&local).await
            && Digest::of(&bytes) == digest
        {
            return Ok(Blob { digest, bytes });
        }
        if descriptor.size() > MAX_METADATA_SIZE {
            return Err(session.registry_failure(&format!(
                "its config is {} bytes, too large for an image config",
                descriptor.size()
            )));
        }
        let mut bytes = Vec::new();
        let what = format!("config {digest}");
        session
            .fetch_blob(&what, &digest, descriptor.size(), &mut bytes)
            .await?;
        Ok(Blob { digest, bytes })
    }

    /// A directory under tmp/ for this pull's downloads, locked so that no
    /// import or pull clears it while this one runs.
    async fn downloads(&self, session: &Session) -> Result<Downloads, PullError> {
        let store = self.clone();
        let origin = session.origin();
        blocking(move || {
            // The store's lock keeps `clear_tmp` away until ours is taken.
            let _store_lock = store.lock()?;
            let tmp = store.tmp_dir();
            let dir = tempfile::Builder::new()
                .prefix("pull-")
                .tempdir_in(&tmp)
                .map_err(io_error(&tmp))?;
            let lock_path = dir.path().join(DOWNLOAD_LOCK);
            let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
            lock.lock().map_err(io_error(&lock_path))?;
            Ok(Downloads {
                dir,
                _lock: lock,
                origin,
                files: HashSet::new(),
            })
        })
        .await
        .map_err(|error| session.image_error(error))
    }

    /// Downloads the layers of `image` that neither the store nor `downloads`
    /// has; returns the bytes downloaded.
    async fn download_missing(
        &self,
        session: &Session,
        image: &FoundImage,
        downloads: &mut Downloads,
    ) -> Result<u64, PullError> {
        // Owned, so that the download futures borrow nothing per item.
        let mut wanted: Vec<(String, u64)> = Vec::new();
        for layer in &image.layers {
            let needed = !self.layer_dir(&layer.diff_id).exists()
                && !downloads.files.contains(&layer.blob)
                && !wanted.iter().any(|(blob, _)| *blob == layer.blob);
            if needed {
                wanted.push((layer.blob.clone(), layer.size));
            }
        }
        let dir = downloads.dir.path().to_owned();
        let mut fetches = futures::stream::iter(wanted)
            .map(|(blob, size)| {
                let path = Digest::parse(&blob).map(|digest| (dir.join(digest.hex()), digest));
                async move {
                    let (path, digest) = path
                        .ok_or_else(|| session.registry_failure("a layer digest is not sha256"))?;
                    let mut file = tokio::fs::File::create(&path)
                        .await
                        .map_err(|error| session.image_error(io_error(&path)(error)))?;
                    let what = format!("layer {digest}");
                    session.fetch_blob(&what, &digest, size, &mut file).await?;
                    file.sync_all()
                        .await
                        .map_err(|error| session.image_error(io_error(&path)(error)))?;
                    Ok::<_, PullError>((blob, size))
                }
            })
            .buffer_unordered(CONCURRENT_DOWNLOADS);
        let mut bytes = 0;
        while let Some(fetched) = fetches.next().await {
            let (blob, size) = fetched?;
            downloads.files.insert(blob);
            bytes += size;
        }
        Ok(bytes)
    }

    /// Stores a pulled image, under the store's lock. None when a layer that was
    /// present when the pull began has since been removed (and not downloaded).
    fn store_pulled(
        &self,
        downloads: &Downloads,
        image: &FoundImage,
    ) -> Result<Option<Vec<ImageSummary>>, ImageError> {
        let _lock = self.lock()?;
        let gone = image.layers.iter().any(|layer| {
            !downloads.files.contains(&layer.blob) && !self.layer_dir(&layer.diff_id).exists()
        });
        if gone {
            return Ok(None);
        }
        self.clear_tmp()?;
        let staging = self.temp_dir()?;
        self.store_images(downloads, std::slice::from_ref(image), staging.path())
            .map(Some)
    }
}

/// Runs store work (locks, file systems) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| {
            Err(ImageError::Io {
                path: PathBuf::from("a blocking task of the image store"),
                source: io::Error::other(error.to_string()),
            })
        })
}

/// Whether `dir` (an entry of tmp/) is a running pull's download directory.
pub(super) fn in_use(dir: &Path) -> bool {
    File::open(dir.join(DOWNLOAD_LOCK))
        .is_ok_and(|file| matches!(file.try_lock(), Err(TryLockError::WouldBlock)))
}

/// A pull's downloaded layer blobs, each in a file named by its digest.
struct Downloads {
    dir: tempfile::TempDir,
    /// Held while the pull runs (see `in_use`).
    _lock: File,
    origin: Origin,
    /// The blobs (`sha256:<hex>`) downloaded.
    files: HashSet<String>,
}

impl LayerBlobs for Downloads {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn open(&self, layer: &LayerSource) -> Result<Box<dyn Read>, ImageError> {
        let path = Digest::parse(&layer.blob)
            .filter(|_| self.files.contains(&layer.blob))
            .map(|digest| self.dir.path().join(digest.hex()))
            .ok_or_else(|| ImageError::Io {
                path: self.dir.path().join(&layer.blob),
                source: io::ErrorKind::NotFound.into(),
            })?;
        let file = File::open(&path).map_err(io_error(&path))?;
        Ok(Box::new(file))
    }
}

/// What a manifest's JSON says it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestKind {
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

enum Kind {
    Manifest,
    Index,
}

/// One reference being pulled from its registry.
struct Session {
    client: oci_client::Client,
    remote: oci_client::Reference,
    /// The full form, as errors and the store name it.
    reference: String,
    registry: String,
    /// Whether the registry is spoken to over HTTPS.
    https: bool,
}

impl Session {
    fn new(parsed: &Reference, options: &PullOptions) -> Result<Session, PullError> {
        install_crypto_provider();
        let reference = parsed.to_string();
        let registry = parsed.domain().to_owned();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure_registries.clone()),
            // The platform is chosen here, against the store's own rules.
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|error| PullError::Registry {
            reference: reference.clone(),
            registry: registry.clone(),
            detail: format!("setting up the HTTP client: {error}"),
        })?;
        let (domain, path) = (registry.clone(), parsed.path().to_owned());
        let remote = match (&parsed.tag, &parsed.digest) {
            (_, Some(digest)) => {
                oci_client::Reference::with_digest(domain, path, digest.to_string())
            }
            (tag, None) => oci_client::Reference::with_tag(
                domain,
                path,
                tag.clone().unwrap_or_else(|| "latest".to_owned()),
            ),
        };
        let https = !options
            .insecure_registries
            .iter()
            .any(|insecure| insecure == remote.resolve_registry());
        Ok(Session {
            client,
            remote,
            reference,
            registry,
            https,
        })
    }

    fn origin(&self) -> Origin {
        Origin::Registry(self.registry.clone())
    }

    /// The image manifest for this machine, with the digest the reference
    /// resolved to (the index's, for a multi-platform image).
    async fn manifest(&self) -> Result<(Digest, Blob, ImageManifest), PullError> {
        let top = self.fetch_manifest(&self.remote, None).await?;
        match self.kind(&top)? {
            Kind::Manifest => {
                let manifest = self.parse(&top)?;
                Ok((top.digest.clone(), top, manifest))
            }
            Kind::Index => {
                let index: ImageIndex = self.parse(&top)?;
                let platform = format!("linux/{}", Arch::default());
                let chosen =
                    this_platform(index.manifests()).ok_or_else(|| PullError::NoPlatform {
                        reference: self.reference.clone(),
                        platform,
                        available: platforms(index.manifests()),
                    })?;
                let digest = self.digest_of(chosen)?;
                let remote = self.remote.clone_with_digest(digest.to_string());
                let blob = self
                    .fetch_manifest(&remote, Some((&digest, chosen.size())))
                    .await?;
                match self.kind(&blob)? {
                    Kind::Manifest => {
                        let manifest = self.parse(&blob)?;
                        Ok((top.digest, blob, manifest))
                    }
                    Kind::Index => Err(PullError::UnsupportedMediaType {
                        reference: self.reference.clone(),
                        what: format!("manifest {digest} (an index inside an index)"),
                        media_type: OCI_INDEX.to_owned(),
                    }),
                }
            }
        }
    }

    /// A manifest or index, checked against `expected` (digest and size) when a
    /// descriptor gave them.
    async fn fetch_manifest(
        &self,
        remote: &oci_client::Reference,
        expected: Option<(&Digest, u64)>,
    ) -> Result<Blob, PullError> {
        // oci-client checks the body against the reference's digest and the
        // registry's Docker-Content-Digest header.
        let (bytes, _) = self
            .client
            .pull_manifest_raw(remote, &RegistryAuth::Anonymous, &MANIFEST_TYPES)
            .await
            .map_err(|error| self.registry_error(error, true))?;
        let digest = Digest::of(&bytes);
        if let Some((expected, size)) = expected {
            let what = format!("manifest {expected}");
            if digest != *expected {
                return Err(PullError::DigestMismatch {
                    reference: self.reference.clone(),
                    what,
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                });
            }
            if bytes.len() as u64 != size {
                return Err(PullError::SizeMismatch {
                    reference: self.reference.clone(),
                    what,
                    expected: size,
                    received: bytes.len() as u64,
                });
            }
        }
        if bytes.len() as u64 > MAX_METADATA_SIZE {
            return Err(self.registry_failure(&format!(
                "its manifest is {} bytes, too large for a manifest",
                bytes.len()
            )));
        }
        Ok(Blob {
            digest,
            bytes: bytes.to_vec(),
        })
    }

    fn kind(&self, blob: &Blob) -> Result<Kind, PullError> {
        let probe: ManifestKind = self.parse(blob)?;
        match probe.media_type.as_deref() {
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => Ok(Kind::Manifest),
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => Ok(Kind::Index),
            Some(other) => Err(PullError::UnsupportedMediaType {
                reference: self.reference.clone(),
                what: format!("manifest {}", blob.digest),
                media_type: other.to_owned(),
            }),
            // The media type is optional in OCI; an index lists manifests.
            None if probe.manifests.is_some() => Ok(Kind::Index),
            None => Ok(Kind::Manifest),
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, blob: &Blob) -> Result<T, PullError> {
        serde_json::from_slice(&blob.bytes).map_err(|error| {
            self.image_error(ImageError::Malformed {
                origin: self.origin(),
                member: format!("manifest {}", blob.digest),
                reason: error.to_string(),
            })
        })
    }

    /// The image to store, once its layers' media types are known to be ones the
    /// store unpacks.
    fn image(
        &self,
        manifest_blob: Blob,
        manifest: &ImageManifest,
        config: Blob,
    ) -> Result<FoundImage, PullError> {
        let member = format!("config {}", config.digest);
        let (created, diff_ids) = config_layers(&self.origin(), &member, &config)
            .map_err(|error| self.image_error(error))?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(self.image_error(ImageError::Malformed {
                origin: self.origin(),
                member,
                reason: format!(
                    "lists {} diff ids for the image's {} layers",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            }));
        }
        let layers = manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(descriptor, diff_id)| {
                let digest = self.digest_of(descriptor)?;
                if !is_unpackable_layer(descriptor.media_type()) {
                    return Err(self.unsupported(&format!("layer {digest}"), descriptor));
                }
                Ok(LayerSource {
                    blob: digest.to_string(),
                    diff_id,
                    size: descriptor.size(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(FoundImage {
            names: vec![self.reference.clone()],
            manifest: Some(manifest_blob),
            config,
            created,
            layers,
        })
    }

    /// Streams a blob into `out`, refusing more bytes than `size` and checking
    /// the digest at the end.
    async fn fetch_blob(
        &self,
        what: &str,
        digest: &Digest,
        size: u64,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), PullError> {
        let digest_text = digest.to_string();
        let mut stream = self
            .client
            .pull_blob_stream(&self.remote, digest_text.as_str())
            .await
            .map_err(|error| self.registry_error(error, false))?;
        let mut hasher = Hasher::default();
        let mut received: u64 = 0;
        let mismatch = |actual: Digest| PullError::DigestMismatch {
            reference: self.reference.clone(),
            what: what.to_owned(),
            expected: digest_text.clone(),
            actual: actual.to_string(),
        };
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client fails the stream's end on a digest mismatch; say
                // which digests differ.
                Err(_) if received == size && hasher.clone().finish() != *digest => {
                    return Err(mismatch(hasher.finish()));
                }
                Err(error) => {
                    return Err(PullError::Unreachable {
                        reference: self.reference.clone(),
                        registry: self.registry.clone(),
                        detail: format!("downloading the {what}: {}", innermost(&error)),
                    });
                }
            };
            received += chunk.len() as u64;
            if received > size {
                return Err(PullError::SizeMismatch {
                    reference: self.reference.clone(),
                    what: what.to_owned(),
                    expected: size,
                    received,
                });
            }
            hasher.update(&chunk);
            // Write errors name the blob: `out` may be a file or memory.
            out.write_all(&chunk).await.map_err(|error| {
                self.image_error(ImageError::Io {
                    path: PathBuf::from(what),
                    source: error,
                })
            })?;
        }
        if received != size {
            return Err(PullError::SizeMismatch {
                reference: self.reference.clone(),
                what: what.to_owned(),
                expected: size,
                received,
            });
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(mismatch(actual));
        }
        out.flush().await.map_err(|error| {
            self.image_error(ImageError::Io {
                path: PathBuf::from(what),
                source: error,
            })
        })
    }

    fn digest_of(&self, descriptor: &Descriptor) -> Result<Digest, PullError> {
        Digest::parse(descriptor.digest().as_ref()).ok_or_else(|| {
            self.image_error(ImageError::UnsupportedDigest {
                origin: self.origin(),
                digest: descriptor.digest().to_string(),
            })
        })
    }

    fn unsupported(&self, what: &str, descriptor: &Descriptor) -> PullError {
        PullError::UnsupportedMediaType {
            reference: self.reference.clone(),
            what: what.to_owned(),
            media_type: descriptor.media_type().to_string(),
        }
    }

    fn image_error(&self, source: ImageError) -> PullError {
        PullError::Image {
            reference: self.reference.clone(),
            source: Box::new(source),
        }
    }

    fn registry_failure(&self, detail: &str) -> PullError {
        PullError::Registry {
            reference: self.reference.clone(),
            registry: self.registry.clone(),
            detail: detail.to_owned(),
        }
    }

    /// What an oci-client error means for this pull. A 404 is "manifest unknown"
    /// only when fetching the manifest.
    fn registry_error(&self, error: OciDistributionError, manifest: bool) -> PullError {
        let reference = self.reference.clone();
        let registry = self.registry.clone();
        let unauthorized = |detail: String| PullError::Unauthorized {
            reference: reference.clone(),
            registry: registry.clone(),
            detail,
        };
        match error {
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let unknown = [
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                ];
                if manifest && codes.iter().any(|code| unknown.contains(code)) {
                    PullError::ManifestUnknown {
                        reference,
                        registry,
                    }
                } else if codes
                    .iter()
                    .any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized(detail)
                } else {
                    PullError::Registry {
                        reference,
                        registry,
                        detail,
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. } if manifest => {
                PullError::ManifestUnknown {
                    reference,
                    registry,
                }
            }
            OciDistributionError::ServerError {
                code: code @ (401 | 403),
                message,
                ..
            } => unauthorized(format!("HTTP {code}: {}", message.trim())),
            OciDistributionError::UnauthorizedError { .. } => {
                unauthorized("HTTP 401 Unauthorized".to_owned())
            }
            OciDistributionError::AuthenticationFailure(detail) => {
                unauthorized(format!("getting a token: {}", detail.trim()))
            }
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => PullError::DigestMismatch {
                reference,
                what: "manifest".to_owned(),
                expected,
                actual,
            },
            OciDistributionError::RequestError(error) => self.transport_error(&error),
            other => PullError::Registry {
                reference,
                registry,
                detail: other.to_string(),
            },
        }
    }

    /// A request that got no answer: the name did not resolve, the connection
    /// failed, or TLS did.
    fn transport_error(&self, error: &dyn std::error::Error) -> PullError {
        let detail = innermost(error);
        // hyper-util's resolver says so in its error; reqwest has no kind for it.
        let chain = chain(error);
        if chain.contains("dns error") {
            return PullError::UnknownHost {
                reference: self.reference.clone(),
                registry: self.registry.clone(),
                detail,
            };
        }
        let hint = match self.https && chain.contains("InvalidContentType") {
            true => format!(
                "; it may speak plain HTTP: start the agent with --insecure-registry {}",
                self.registry
            ),
            false => String::new(),
        };
        PullError::Unreachable {
            reference: self.reference.clone(),
            registry: self.registry.clone(),
            detail: format!("{detail}{hint}"),
        }
    }
}

/// Whether the layer's media type is one the store unpacks: tar, plain or gzipped.
fn is_unpackable_layer(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip => true,
        MediaType::Other(other) => other == DOCKER_LAYER,
        _ => false,
    }
}

/// `os/arch[/variant]` of each manifest of an index that names its platform.
fn platforms(manifests: &[Descriptor]) -> Vec<String> {
    manifests
        .iter()
        .filter_map(|manifest| manifest.platform().as_ref())
        .map(|platform| {
            let variant = platform
                .variant()
                .as_ref()
                .map(|variant| format!("/{variant}"))
                .unwrap_or_default();
            format!("{}/{}{variant}", platform.os(), platform.architecture())
        })
        .collect()
}

/// The error and its sources, joined.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The deepest source's message: what actually went wrong, without the layers
/// of "error sending request" around it.
fn innermost(error: &dyn std::error::Error) -> String {
    let mut deepest = error;
    while let Some(inner) = deepest.source() {
        deepest = inner;
    }
    deepest.to_string()
}

/// rustls needs a process-wide crypto provider when none is compiled in as the
/// default: ring, which the API's TLS uses too.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: one is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_listed_as_docker_names_them() {
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "a".repeat(64)),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "size": 1, "digest": format!("sha256:{}", "b".repeat(64)),
                 "platform": {"os": "windows", "architecture": "amd64"}},
            ]
        }))
        .unwrap();
        assert_eq!(
            platforms(index.manifests()),
            ["linux/arm64/v8", "windows/amd64"]
        );
        assert_eq!(list_or_none(&[]), "none with a platform");
    }

    #[test]
    fn only_tar_layers_plain_or_gzipped_are_unpackable() {
        assert!(is_unpackable_layer(&MediaType::ImageLayerGzip));
        assert!(is_unpackable_layer(&MediaType::ImageLayer));
        assert!(is_unpackable_layer(&MediaType::Other(DOCKER_LAYER.into())));
        assert!(!is_unpackable_layer(&MediaType::ImageLayerZstd));
        assert!(!is_unpackable_layer(&MediaType::Other(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into()
        )));
    }

    #[test]
    fn a_download_directory_is_in_use_while_its_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!in_use(dir.path()), "no lock file: a leftover");
        let lock = File::create(dir.path().join(DOWNLOAD_LOCK)).unwrap();
        assert!(!in_use(dir.path()), "unlocked: a killed pull's leftover");
        lock.lock().unwrap();
        assert!(in_use(dir.path()));
        drop(lock);
        assert!(!in_use(dir.path()));
    }
}
