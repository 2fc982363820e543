//! Reading an import tarball, as `docker save`, `skopeo copy ... oci-archive:` or
//! `podman save` write it (plain or gzipped):
//!
//! - an OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/<hex>`. Every
//!   blob an image uses is checked against its descriptor's digest and size.
//!   Newer Docker writes this layout, with a `manifest.json` beside it.
//! - a docker-archive: `manifest.json` listing each image's config (`<hex>.json`,
//!   whose name is its digest, checked) and layer tars (`<id>/layer.tar`, which
//!   carry no digest of their own: they are checked against the config's diff
//!   ids when unpacked).
//!
//! The tarball is indexed once and its members read in place by offset. What it
//! yields is plain data: the images found, with manifest and config read and
//! verified, and their layers as members still to unpack.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os};
use serde::Deserialize;

use super::digest::{Digest, Digesting};
use super::reference::is_bare_tag;
use super::{Blob, FoundImage, ImageError, LayerBlobs, LayerSource, Origin, io_error};

const OCI_INDEX: &str = "index.json";
const DOCKER_MANIFEST: &str = "manifest.json";
/// Manifests, indexes and configs are read whole; registries cap them at 4 MiB.
pub(super) const MAX_METADATA_SIZE: u64 = 16 << 20;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// Symlinks between members (newer `docker save` links `<id>/layer.tar` to the
/// blob) are followed this many times at most.
const MAX_LINK_DEPTH: usize = 16;

const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(super) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// An indexed import tarball.
pub struct Archive {
    /// What errors name.
    origin: Origin,
    /// The plain tar read (the tarball itself, or its decompressed copy).
    tar: PathBuf,
    members: HashMap<String, Member>,
}

enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// A symlink or hard link to another member.
    Link(String),
}

/// One image of a docker-archive's manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl Archive {
    /// Indexes `tarball`; a gzipped one is first decompressed into `scratch`.
    pub fn open(tarball: &Path, scratch: &Path) -> Result<Archive, ImageError> {
        let mut file = File::open(tarball).map_err(io_error(tarball))?;
        let mut magic = [0u8; 2];
        let gzipped = file.read_exact(&mut magic).is_ok() && magic == GZIP_MAGIC;
        let plain = if gzipped {
            let copy = scratch.join("archive.tar");
            let mut out = File::create(&copy).map_err(io_error(&copy))?;
            file.seek(SeekFrom::Start(0)).map_err(io_error(tarball))?;
            io::copy(&mut MultiGzDecoder::new(file), &mut out).map_err(io_error(tarball))?;
            copy
        } else {
            tarball.to_owned()
        };
        let not_a_tar = |source| ImageError::NotATar {
            archive: tarball.to_owned(),
            source,
        };
        let mut members = HashMap::new();
        let mut reader = tar::Archive::new(File::open(&plain).map_err(io_error(&plain))?);
        for entry in reader.entries().map_err(not_a_tar)? {
            let entry = entry.map_err(not_a_tar)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean_member_name("", &name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_default();
                // Symlinks are relative to their directory, hard links to the root.
                let base = match kind.is_symlink() {
                    true => name.rsplit_once('/').map_or("", |(dir, _)| dir),
                    false => "",
                };
                match clean_member_name(base, &target) {
                    Some(target) => Member::Link(target),
                    None => continue,
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(Archive {
            origin: Origin::Archive(tarball.to_owned()),
            tar: plain,
            members,
        })
    }

    /// The images the archive holds, with their manifests, configs and (for OCI)
    /// layer blobs verified.
    pub fn images(&self) -> Result<Vec<FoundImage>, ImageError> {
        if self.members.contains_key(OCI_INDEX) {
            self.oci_images()
        } else if self.members.contains_key(DOCKER_MANIFEST) {
            self.docker_images()
        } else {
            Err(ImageError::UnknownFormat {
                origin: self.origin.clone(),
            })
        }
    }

    fn oci_images(&self) -> Result<Vec<FoundImage>, ImageError> {
        let index: ImageIndex = self.read_json(OCI_INDEX, &self.read_member(OCI_INDEX)?)?;
        // Newer `docker save` names images in manifest.json; its index.json may only
        // carry the tag.
        let docker_names: HashMap<Digest, Vec<String>> =
            match self.members.contains_key(DOCKER_MANIFEST) {
                true => self
                    .docker_manifest()?
                    .into_iter()
                    .map(|image| {
                        let digest = Digest::of(&self.read_member(&image.config)?);
                        Ok((digest, image.repo_tags.unwrap_or_default()))
                    })
                    .collect::<Result<_, ImageError>>()?,
                false => HashMap::new(),
            };
        let mut images = Vec::new();
        for descriptor in index.manifests() {
            let annotation = |key: &str| {
                descriptor
                    .annotations()
                    .as_ref()
                    .and_then(|annotations| annotations.get(key))
                    .cloned()
            };
            let ref_name = annotation(OCI_REF_NAME);
            let name = annotation(CONTAINERD_NAME)
                .or_else(|| ref_name.clone().filter(|name| !is_bare_tag(name)));
            let manifest_descriptor = if is_index(descriptor.media_type()) {
                self.platform_manifest(descriptor)?
            } else {
                descriptor.clone()
            };
            let manifest = self.read_blob(&manifest_descriptor)?;
            let parsed: ImageManifest =
                self.read_json(&blob_member(&manifest.digest), &manifest.bytes)?;
            let config_descriptor = parsed.config();
            if !is_image_config(config_descriptor.media_type()) {
                return Err(ImageError::NotAnImage {
                    origin: self.origin.clone(),
                    manifest: manifest.digest,
                    media_type: config_descriptor.media_type().to_string(),
                });
            }
            let config = self.read_blob(config_descriptor)?;
            let (created, diff_ids) = self.config_layers(&config)?;
            if diff_ids.len() != parsed.layers().len() {
                return Err(self.layer_count_mismatch(
                    &config.digest,
                    parsed.layers().len(),
                    diff_ids.len(),
                ));
            }
            let layers = parsed
                .layers()
                .iter()
                .zip(diff_ids)
                .map(|(layer, diff_id)| {
                    let digest = self.descriptor_digest(layer)?;
                    self.verify_blob(&digest, layer.size())?;
                    Ok(LayerSource {
                        blob: blob_member(&digest),
                        diff_id,
                        size: layer.size(),
                    })
                })
                .collect::<Result<_, ImageError>>()?;
            let names = match name {
                Some(name) => vec![name],
                None => docker_names
                    .get(&config.digest)
                    .cloned()
                    .unwrap_or_default(),
            };
            if names.is_empty() {
                return Err(ImageError::Unnamed {
                    origin: self.origin.clone(),
                    id: config.digest,
                    tag: ref_name,
                });
            }
            images.push(FoundImage {
                names,
                manifest: Some(manifest),
                config,
                created,
                layers,
            });
        }
        Ok(images)
    }

    fn docker_images(&self) -> Result<Vec<FoundImage>, ImageError> {
        self.docker_manifest()?
            .into_iter()
            .map(|image| {
                let bytes = self.read_member(&image.config)?;
                let digest = Digest::of(&bytes);
                if let Some(named) = digest_in_member_name(&image.config)
                    && named != digest
                {
                    return Err(ImageError::DigestMismatch {
                        origin: self.origin.clone(),
                        digest: named,
                        actual: digest,
                    });
                }
                let config = Blob { digest, bytes };
                let (created, diff_ids) = self.config_layers(&config)?;
                if diff_ids.len() != image.layers.len() {
                    return Err(self.layer_count_mismatch(
                        &config.digest,
                        image.layers.len(),
                        diff_ids.len(),
                    ));
                }
                let layers = image
                    .layers
                    .iter()
                    .zip(diff_ids)
                    .map(|(member, diff_id)| {
                        let (_, size) = self.open_member(member)?;
                        Ok(LayerSource {
                            blob: member.clone(),
                            diff_id,
                            size,
                        })
                    })
                    .collect::<Result<_, ImageError>>()?;
                let names = image.repo_tags.unwrap_or_default();
                if names.is_empty() {
                    return Err(ImageError::Unnamed {
                        origin: self.origin.clone(),
                        id: config.digest,
                        tag: None,
                    });
                }
                Ok(FoundImage {
                    names,
                    manifest: None,
                    config,
                    created,
                    layers,
                })
            })
            .collect()
    }

    fn docker_manifest(&self) -> Result<Vec<DockerImage>, ImageError> {
        self.read_json(DOCKER_MANIFEST, &self.read_member(DOCKER_MANIFEST)?)
    }

    /// The manifest for this machine's platform from a multi-platform index.
    fn platform_manifest(&self, index_descriptor: &Descriptor) -> Result<Descriptor, ImageError> {
        let blob = self.read_blob(index_descriptor)?;
        let index: ImageIndex = self.read_json(&blob_member(&blob.digest), &blob.bytes)?;
        this_platform(index.manifests())
            .cloned()
            .ok_or_else(|| ImageError::NoPlatform {
                origin: self.origin.clone(),
                index: blob.digest,
                platform: format!("linux/{}", Arch::default()),
            })
    }

    /// The config's creation time and diff ids.
    fn config_layers(&self, config: &Blob) -> Result<(Option<String>, Vec<Digest>), ImageError> {
        super::config_layers(&self.origin, &blob_member(&config.digest), config)
    }

    fn layer_count_mismatch(&self, config: &Digest, layers: usize, diff_ids: usize) -> ImageError {
        ImageError::Malformed {
            origin: self.origin.clone(),
            member: blob_member(config),
            reason: format!("lists {diff_ids} diff ids for the image's {layers} layers"),
        }
    }

    fn descriptor_digest(&self, descriptor: &Descriptor) -> Result<Digest, ImageError> {
        Digest::parse(descriptor.digest().as_ref()).ok_or_else(|| ImageError::UnsupportedDigest {
            origin: self.origin.clone(),
            digest: descriptor.digest().to_string(),
        })
    }

    /// Reads a metadata blob whole, checked against its descriptor.
    fn read_blob(&self, descriptor: &Descriptor) -> Result<Blob, ImageError> {
        let digest = self.descriptor_digest(descriptor)?;
        let bytes = self.read_member(&blob_member(&digest))?;
        self.check_blob(
            &digest,
            descriptor.size(),
            &Digest::of(&bytes),
            bytes.len() as u64,
        )?;
        Ok(Blob { digest, bytes })
    }

    /// Hashes a (layer) blob without keeping it.
    fn verify_blob(&self, digest: &Digest, size: u64) -> Result<(), ImageError> {
        let member = blob_member(digest);
        let (reader, _) = self.open_member(&member)?;
        let (_, actual, len) = Digesting::new(reader)
            .finish()
            .map_err(|source| self.read_error(&member, source))?;
        self.check_blob(digest, size, &actual, len)
    }

    fn check_blob(
        &self,
        digest: &Digest,
        expected_size: u64,
        actual: &Digest,
        size: u64,
    ) -> Result<(), ImageError> {
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                origin: self.origin.clone(),
                digest: digest.clone(),
                actual: actual.clone(),
            });
        }
        if size != expected_size {
            return Err(ImageError::SizeMismatch {
                origin: self.origin.clone(),
                digest: digest.clone(),
                size,
                expected: expected_size,
            });
        }
        Ok(())
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        member: &str,
        bytes: &[u8],
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes).map_err(|error| ImageError::Malformed {
            origin: self.origin.clone(),
            member: member.to_owned(),
            reason: error.to_string(),
        })
    }

    /// Reads a small member whole.
    fn read_member(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let (mut reader, size) = self.open_member(name)?;
        if size > MAX_METADATA_SIZE {
            return Err(ImageError::Malformed {
                origin: self.origin.clone(),
                member: name.to_owned(),
                reason: format!("{size} bytes is too large for a manifest, index or config"),
            });
        }
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|source| self.read_error(name, source))?;
        Ok(bytes)
    }

    fn read_error(&self, member: &str, source: io::Error) -> ImageError {
        ImageError::ReadMember {
            origin: self.origin.clone(),
            member: member.to_owned(),
            source,
        }
    }

    fn open_member(&self, name: &str) -> Result<(io::Take<File>, u64), ImageError> {
        let missing = || ImageError::MissingMember {
            origin: self.origin.clone(),
            member: name.to_owned(),
        };
        let mut current = clean_member_name("", name).ok_or_else(missing)?;
        for _ in 0..MAX_LINK_DEPTH {
            match self.members.get(&current).ok_or_else(missing)? {
                Member::Link(target) => current = target.clone(),
                Member::File { offset, size } => {
                    let mut file = File::open(&self.tar).map_err(io_error(&self.tar))?;
                    file.seek(SeekFrom::Start(*offset))
                        .map_err(io_error(&self.tar))?;
                    return Ok((file.take(*size), *size));
                }
            }
        }
        Err(missing())
    }
}

impl LayerBlobs for Archive {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn open(&self, layer: &LayerSource) -> Result<Box<dyn Read>, ImageError> {
        let (reader, _) = self.open_member(&layer.blob)?;
        Ok(Box::new(reader))
    }
}

/// Whether the media type is an OCI image index or a Docker manifest list.
fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(other) => other == DOCKER_MANIFEST_LIST,
        _ => false,
    }
}

/// Whether a manifest's config media type is a container image's (OCI or Docker).
pub(super) fn is_image_config(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageConfig => true,
        MediaType::Other(other) => other == DOCKER_CONFIG,
        _ => false,
    }
}

/// The first manifest of an index for this machine: linux and the architecture
/// skiff was built for.
pub(super) fn this_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = Arch::default();
    manifests.iter().find(|manifest| {
        manifest
            .platform()
            .as_ref()
            .is_some_and(|platform| *platform.os() == Os::Linux && *platform.architecture() == arch)
    })
}

fn blob_member(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The digest a docker-archive member's name states: `<hex>.json` or
/// `blobs/sha256/<hex>`.
fn digest_in_member_name(name: &str) -> Option<Digest> {
    let file = name.rsplit('/').next()?;
    Digest::from_hex(file.strip_suffix(".json").unwrap_or(file))
}

/// `name` (relative to the member directory `base`) as a canonical member path
/// (`a/b/c`, no `.`, `..` or leading `/`); None for the root or a path above it.
fn clean_member_name(base: &str, name: &str) -> Option<String> {
    let start = if name.starts_with('/') { "" } else { base };
    let mut parts: Vec<&str> = Vec::new();
    for part in start.split('/').chain(name.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_member_names() {
        assert_eq!(
            clean_member_name("", "./index.json").as_deref(),
            Some("index.json")
        );
        assert_eq!(clean_member_name("", "./").as_deref(), None);
        assert_eq!(
            clean_member_name("abc", "../blobs/sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(
            clean_member_name("abc", "/blobs/x").as_deref(),
            Some("blobs/x")
        );
        assert_eq!(clean_member_name("", "../x"), None);
    }

    #[test]
    fn reads_digests_from_docker_member_names() {
        let hex = "ab".repeat(32);
        assert_eq!(
            digest_in_member_name(&format!("{hex}.json")),
            Digest::from_hex(&hex)
        );
        assert_eq!(
            digest_in_member_name(&format!("blobs/sha256/{hex}")),
            Digest::from_hex(&hex)
        );
        assert_eq!(digest_in_member_name("config.json"), None);
    }
}
