//! The node's image store: images imported from tarballs or pulled from registries
//! (see `pull`), kept content-addressed, their layers unpacked once for overlayfs.
//!
//! On disk, under the store's root (e.g. /var/lib/skiff/images):
//!
//! ```text
//! index.json            reference -> manifest, config (the image id), layers; see `index`
//! lock                  flock'd by import, remove and collect_garbage: they serialise
//! blobs/sha256/<hex>    manifests and configs, named by their digest
//! layers/<hex>/         one unpacked layer per diff id (digest of its uncompressed tar),
//!                       shared by every image that has it; an overlayfs lowerdir
//! tmp/                  imports and pulls in progress; cleared by the next one,
//!                       except a pull's downloads while it holds their lock
//! ```
//!
//! Compressed layer blobs are not kept: once verified and unpacked, the tree is
//! all a container needs.
//!
//! References are stored in Docker's full form, `docker.io/library/busybox:1.36`;
//! every lookup accepts any spelling of it (`busybox:1.36`, and `busybox` for
//! `:latest`). See [`normalize`].
//!
//! Crash safety: an import verifies every blob and unpacks every new layer under
//! `tmp/`, syncs the file system, and only then renames layers and blobs into
//! place and rewrites the index, so a killed import leaves nothing a later one
//! trusts (a layer under `layers/` is always complete). Removal renames a layer
//! out of `layers/` before deleting it, for the same reason.
//!
//! Removing an image keeps the layers that overlay mounts still use (see
//! `mounts`): a running container's root file system stays whole.

mod archive;
pub mod build;
mod digest;
mod index;
mod layer;
mod mounts;
mod pull;
mod reference;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;

use archive::Archive;
pub use digest::Digest;
use index::{ImageRecord, Index, sync_dir};
pub use layer::LayerError;
pub use pull::{PullError, PullOptions, Pulled};
pub use reference::{Reference, normalize};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{archive}: not a tar archive: {source}")]
    NotATar { archive: PathBuf, source: io::Error },
    #[error(
        "{origin}: neither an OCI image layout (no index.json) nor a docker-archive (no manifest.json)"
    )]
    UnknownFormat { origin: Origin },
    #[error("{origin}: {member} is missing from the archive")]
    MissingMember { origin: Origin, member: String },
    #[error("{origin}: reading {member}: {source}")]
    ReadMember {
        origin: Origin,
        member: String,
        source: io::Error,
    },
    #[error("{origin}: {member}: {reason}")]
    Malformed {
        origin: Origin,
        member: String,
        reason: String,
    },
    #[error("{origin}: blob {digest} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        origin: Origin,
        digest: Digest,
        actual: Digest,
    },
    #[error("{origin}: blob {digest} is {size} bytes where its descriptor says {expected}")]
    SizeMismatch {
        origin: Origin,
        digest: Digest,
        size: u64,
        expected: u64,
    },
    #[error("{origin}: digest {digest:?} is not sha256, the only algorithm skiff reads")]
    UnsupportedDigest { origin: Origin, digest: String },
    #[error("{origin}: manifest {manifest} is not a container image (its config is {media_type})")]
    NotAnImage {
        origin: Origin,
        manifest: Digest,
        media_type: String,
    },
    #[error("{origin}: image index {index} has no manifest for {platform}")]
    NoPlatform {
        origin: Origin,
        index: Digest,
        platform: String,
    },
    #[error(
        "{origin}: image {id} has no repository name{}; name it when saving (docker save NAME:TAG, skopeo ... oci-archive:FILE:NAME:TAG)",
        .tag.as_ref().map(|tag| format!(" (only the tag {tag:?})")).unwrap_or_default()
    )]
    Unnamed {
        origin: Origin,
        id: Digest,
        tag: Option<String>,
    },
    #[error("{origin}: layer {layer}: {source}")]
    Layer {
        origin: Origin,
        layer: Digest,
        source: LayerError,
    },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },
    #[error("no image {reference:?} ({normalized}) in the store")]
    NotFound {
        reference: String,
        normalized: String,
    },
    #[error("{path}: the image index is corrupt: {source}")]
    CorruptIndex {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: blob {digest} of image {reference}: {reason}")]
    CorruptBlob {
        path: PathBuf,
        digest: Digest,
        reference: String,
        reason: String,
    },
    #[error("image {reference}: layer {layer} is missing from the store ({path})")]
    MissingLayer {
        reference: String,
        layer: Digest,
        path: PathBuf,
    },
    #[error("building an image: {what}: {source}")]
    Build { what: String, source: io::Error },
    #[error("running {busybox} --list: {reason}")]
    Busybox { busybox: PathBuf, reason: String },
}

/// Where the blobs of an import come from, as its errors name them.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// An archive file, as given.
    Archive(PathBuf),
    /// A registry, by host (and port).
    Registry(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Archive(path) => write!(f, "{}", path.display()),
            Origin::Registry(host) => write!(f, "registry {host}"),
        }
    }
}

/// One image about to be stored, its manifest and config read and verified.
struct FoundImage {
    /// Its names as the source gives them, not yet normalised.
    names: Vec<String>,
    /// The manifest; a docker-archive has none.
    manifest: Option<Blob>,
    config: Blob,
    created: Option<String>,
    /// Lowest first.
    layers: Vec<LayerSource>,
}

impl FoundImage {
    /// The bytes of all its blobs, as the source has them (layers compressed or not).
    fn size(&self) -> u64 {
        let metadata = self.manifest.iter().chain([&self.config]);
        metadata.map(|blob| blob.bytes.len() as u64).sum::<u64>()
            + self.layers.iter().map(|layer| layer.size).sum::<u64>()
    }
}

struct Blob {
    digest: Digest,
    bytes: Vec<u8>,
}

struct LayerSource {
    /// Where the source keeps the layer's blob: an archive member, or for a pull
    /// the blob's digest.
    blob: String,
    /// The digest of its uncompressed tar, from the image config.
    diff_id: Digest,
    size: u64,
}

/// What the layers of images being stored are read from: an archive, or the
/// blobs a pull downloaded.
trait LayerBlobs {
    /// What errors about the layers name.
    fn origin(&self) -> &Origin;
    /// The layer's blob as the source has it (compressed or not).
    fn open(&self, layer: &LayerSource) -> Result<Box<dyn Read>, ImageError>;
}

/// An image as `list` and `import` report it (one per reference).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSummary {
    /// Normalised: `docker.io/library/busybox:1.36`.
    pub reference: String,
    /// The config's digest, `sha256:<hex>`, as Docker shows image ids.
    pub id: String,
    /// Bytes of the image's blobs as imported (manifest, config, layers
    /// compressed as they came).
    pub size: u64,
    /// The config's creation time (RFC 3339), when it has one.
    pub created: Option<String>,
}

/// What a container needs from its image.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedImage {
    pub id: String,
    /// Normalised.
    pub reference: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first; overlayfs wants them the other
    /// way round in `lowerdir=` (topmost first).
    pub layers: Vec<PathBuf>,
}

/// The runtime part of an image config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `80/tcp`, `53/udp`.
    pub exposed_ports: Vec<String>,
}

impl From<&oci_spec::image::Config> for ImageConfig {
    fn from(config: &oci_spec::image::Config) -> ImageConfig {
        let list = |value: &Option<Vec<String>>| value.clone().unwrap_or_default();
        // Docker writes "" for unset strings.
        let text = |value: &Option<String>| value.clone().filter(|text| !text.is_empty());
        ImageConfig {
            entrypoint: list(config.entrypoint()),
            cmd: list(config.cmd()),
            env: list(config.env()),
            working_dir: text(config.working_dir()),
            user: text(config.user()),
            exposed_ports: list(config.exposed_ports()),
        }
    }
}

/// The image store rooted at one directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating) the store under `root` (e.g. /var/lib/skiff/images).
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            root: root.to_owned(),
        };
        for dir in [store.blobs_dir(), store.layers_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        Ok(store)
    }

    /// Imports an OCI image layout tarball or a docker-archive tarball (plain or
    /// gzipped, with plain or gzipped layers). Every image in it is stored under
    /// each of its names; a name that was already stored now names the new image.
    /// Returns the references imported. On error nothing of the import is kept.
    pub fn import(&self, tarball: &Path) -> Result<Vec<ImageSummary>, ImageError> {
        let _lock = self.lock()?;
        self.clear_tmp()?;
        let staging = self.temp_dir()?;
        let archive = Archive::open(tarball, staging.path())?;
        let images = archive.images()?;
        self.store_images(&archive, &images, staging.path())
    }

    /// Stores every image of `images` under each of its names, its blobs and new
    /// layers (read from `source`) staged in `staging` (an empty directory under
    /// tmp/) first. Call with the lock held.
    fn store_images(
        &self,
        source: &dyn LayerBlobs,
        images: &[FoundImage],
        staging: &Path,
    ) -> Result<Vec<ImageSummary>, ImageError> {
        let named = images
            .iter()
            .flat_map(|image| image.names.iter().map(move |name| (name, image)))
            .map(|(name, image)| Ok((normalize(name)?, record(image))))
            .collect::<Result<BTreeMap<_, _>, ImageError>>()?;

        // Stage everything new, verified and durable, before anything is moved
        // into place or named.
        let staged = self.stage(source, images, staging)?;
        for (staged, dest) in &staged {
            for entry in fs::read_dir(staged).map_err(io_error(staged))? {
                let entry = entry.map_err(io_error(staged))?;
                let target = dest.join(entry.file_name());
                fs::rename(entry.path(), &target).map_err(io_error(&target))?;
            }
            sync_dir(dest)?;
        }
        let mut index = Index::load(&self.index_path())?;
        index.images.extend(named.clone());
        index.save(&self.index_path())?;
        // A reference that moved to the new image may have left the old one unused.
        self.sweep(&index)?;
        Ok(named
            .iter()
            .map(|(reference, record)| summary(reference, record))
            .collect())
    }

    /// Writes under `staging` the blobs and unpacked layers of `images` that the
    /// store lacks, verified and synced to disk. Returns each staging directory
    /// with the store directory its entries go to.
    fn stage(
        &self,
        source: &dyn LayerBlobs,
        images: &[FoundImage],
        staging: &Path,
    ) -> Result<[(PathBuf, PathBuf); 2], ImageError> {
        let blobs = staging.join("blobs");
        let layers = staging.join("layers");
        for dir in [&blobs, &layers] {
            fs::create_dir(dir).map_err(io_error(dir))?;
        }
        for blob in images
            .iter()
            .flat_map(|image| image.manifest.iter().chain([&image.config]))
        {
            let path = blobs.join(blob.digest.hex());
            if !self.blob_path(&blob.digest).exists() {
                fs::write(&path, &blob.bytes).map_err(io_error(&path))?;
            }
        }
        for layer in images.iter().flat_map(|image| &image.layers) {
            let dir = layers.join(layer.diff_id.hex());
            if self.layer_dir(&layer.diff_id).exists() || dir.exists() {
                continue;
            }
            fs::create_dir(&dir).map_err(io_error(&dir))?;
            layer::unpack(source.open(layer)?, &layer.diff_id, &dir).map_err(|error| {
                ImageError::Layer {
                    origin: source.origin().clone(),
                    layer: layer.diff_id.clone(),
                    source: error,
                }
            })?;
        }
        File::open(staging)
            .and_then(|dir| rustix::fs::syncfs(dir).map_err(io::Error::from))
            .map_err(io_error(staging))?;
        Ok([(blobs, self.blobs_dir()), (layers, self.layers_dir())])
    }

    /// Every reference in the store, sorted.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let index = Index::load(&self.index_path())?;
        Ok(index
            .images
            .iter()
            .map(|(reference, record)| summary(reference, record))
            .collect())
    }

    /// Drops the reference; blobs and layers no remaining image uses are deleted.
    /// A layer that an overlay mount of this mount namespace still uses (a running
    /// container's root) is kept until a later collection finds it unmounted.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let normalized = normalize(reference)?;
        let _lock = self.lock()?;
        let mut index = Index::load(&self.index_path())?;
        if index.images.remove(&normalized).is_none() {
            return Err(ImageError::NotFound {
                reference: reference.to_owned(),
                normalized,
            });
        }
        index.save(&self.index_path())?;
        self.sweep(&index)
    }

    /// The config and layer directories of the image `reference` names.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let normalized = normalize(reference)?;
        let index = Index::load(&self.index_path())?;
        let record = index
            .images
            .get(&normalized)
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_owned(),
                normalized: normalized.clone(),
            })?;
        let config_path = self.blob_path(&record.config);
        let corrupt = |reason: String| ImageError::CorruptBlob {
            path: config_path.clone(),
            digest: record.config.clone(),
            reference: normalized.clone(),
            reason,
        };
        let bytes = fs::read(&config_path).map_err(|error| corrupt(error.to_string()))?;
        let config: ImageConfiguration =
            serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
        let layers = record
            .layers
            .iter()
            .map(|diff_id| {
                let path = self.layer_dir(diff_id);
                match path.is_dir() {
                    true => Ok(path),
                    false => Err(ImageError::MissingLayer {
                        reference: normalized.clone(),
                        layer: diff_id.clone(),
                        path,
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(ResolvedImage {
            id: record.config.to_string(),
            reference: normalized.clone(),
            config: config
                .config()
                .as_ref()
                .map(ImageConfig::from)
                .unwrap_or_default(),
            layers,
        })
    }

    /// Deletes the blobs and layers no image uses, except layers still mounted
    /// (see [`ImageStore::remove`]). Import and remove do this themselves; the
    /// agent calls it to reclaim layers whose containers have since stopped.
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        self.sweep(&Index::load(&self.index_path())?)
    }

    /// Deletes the blobs and layers that no image in `index` uses and no overlay
    /// mounts (call with the lock held).
    fn sweep(&self, index: &Index) -> Result<(), ImageError> {
        let live_blobs = index.live_blobs();
        let live_layers = index.live_layers();
        let mounted = mounts::mounted_layers(&self.layers_dir())?;
        let digest = |name: &OsStr| name.to_str().and_then(Digest::from_hex);
        let blobs = self.blobs_dir();
        for entry in fs::read_dir(&blobs).map_err(io_error(&blobs))? {
            let entry = entry.map_err(io_error(&blobs))?;
            if digest(&entry.file_name()).is_none_or(|blob| !live_blobs.contains(&blob)) {
                fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
            }
        }
        // Out of layers/ first, so a crash mid-delete leaves no partial layer there.
        let trash = self.temp_dir()?;
        let layers = self.layers_dir();
        for entry in fs::read_dir(&layers).map_err(io_error(&layers))? {
            let entry = entry.map_err(io_error(&layers))?;
            let dead = digest(&entry.file_name())
                .is_none_or(|layer| !live_layers.contains(&layer) && !mounted.contains(&layer));
            if dead {
                let target = trash.path().join(entry.file_name());
                fs::rename(entry.path(), &target).map_err(io_error(&entry.path()))?;
            }
        }
        sync_dir(&blobs)?;
        sync_dir(&layers)?;
        let trash_path = trash.path().to_owned();
        trash.close().map_err(io_error(&trash_path))
    }

    /// Takes the store's exclusive lock, held until the returned file is dropped.
    fn lock(&self) -> Result<File, ImageError> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.lock().map_err(io_error(&path))?;
        Ok(file)
    }

    /// Removes what killed imports and pulls left in tmp/ (call with the lock
    /// held). A pull downloads without the store's lock, holding a lock of its own
    /// in its directory (see `pull`): that directory stays.
    fn clear_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_error(&tmp))? {
            let entry = entry.map_err(io_error(&tmp))?;
            let path = entry.path();
            if pull::in_use(&path) {
                continue;
            }
            let removed = match entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                true => fs::remove_dir_all(&path),
                false => fs::remove_file(&path),
            };
            removed.map_err(io_error(&path))?;
        }
        Ok(())
    }

    fn temp_dir(&self) -> Result<tempfile::TempDir, ImageError> {
        let tmp = self.tmp_dir();
        tempfile::tempdir_in(&tmp).map_err(io_error(&tmp))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

fn record(image: &FoundImage) -> ImageRecord {
    ImageRecord {
        manifest: image.manifest.as_ref().map(|blob| blob.digest.clone()),
        config: image.config.digest.clone(),
        layers: image
            .layers
            .iter()
            .map(|layer| layer.diff_id.clone())
            .collect(),
        size: image.size(),
        created: image.created.clone(),
    }
}

fn summary(reference: &str, record: &ImageRecord) -> ImageSummary {
    ImageSummary {
        reference: reference.to_owned(),
        id: record.config.to_string(),
        size: record.size,
        created: record.created.clone(),
    }
}

/// The creation time and diff ids of an image config, `member` naming it in errors.
fn config_layers(
    origin: &Origin,
    member: &str,
    config: &Blob,
) -> Result<(Option<String>, Vec<Digest>), ImageError> {
    let malformed = |reason: String| ImageError::Malformed {
        origin: origin.clone(),
        member: member.to_owned(),
        reason,
    };
    let parsed: ImageConfiguration =
        serde_json::from_slice(&config.bytes).map_err(|error| malformed(error.to_string()))?;
    let diff_ids = parsed
        .rootfs()
        .diff_ids()
        .iter()
        .map(|text| {
            Digest::parse(text)
                .ok_or_else(|| malformed(format!("diff id {text:?} is not a sha256 digest")))
        })
        .collect::<Result<_, _>>()?;
    Ok((parsed.created().clone(), diff_ids))
}

/// Maps an I/O error to one naming `path`.
fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ImageError + use<> {
    let path = path.to_owned();
    move |source| ImageError::Io { path, source }
}
