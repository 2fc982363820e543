//! Building small images without a registry or container tools: an OCI image
//! layout tarball (as `skopeo copy ... oci-archive:` writes it) around layers given
//! as tar streams. Tests and `cargo xtask` use it to make a busybox image from
//! Debian's busybox-static.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::UNIX_EPOCH;

use flate2::Compression;
use flate2::write::GzEncoder;
use oci_spec::image::{Arch, MediaType};
use serde_json::json;

use super::digest::Digest;
use super::reference::Reference;
use super::{ImageConfig, ImageError, io_error};

/// The PATH Docker's official images set.
const PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// Writes to `out` an OCI image layout tarball of a one-layer busybox image named
/// `reference`: `bin/busybox` (a copy of the static binary `busybox`), a symlink to
/// it in `bin/` for each applet `busybox --list` names, and `etc/passwd` and
/// `etc/group` with root and nobody. Its command is `sh`. The image is the same
/// for the same binary: every timestamp is the binary's mtime.
pub fn build_busybox_oci_archive(
    busybox: &Path,
    reference: &str,
    out: &Path,
) -> Result<(), ImageError> {
    build_busybox_oci_archive_with_layers(busybox, reference, &[], out)
}

/// The busybox image of [`build_busybox_oci_archive`] with the layers `extra`
/// (uncompressed tar streams, lowest first) above its own.
pub fn build_busybox_oci_archive_with_layers(
    busybox: &Path,
    reference: &str,
    extra: &[Vec<u8>],
    out: &Path,
) -> Result<(), ImageError> {
    let binary = fs::read(busybox).map_err(io_error(busybox))?;
    let modified = fs::metadata(busybox)
        .and_then(|meta| meta.modified())
        .map_err(io_error(busybox))?;
    let mtime = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut layer = LayerTar::new(mtime);
    layer.dir("bin")?;
    layer.dir("etc")?;
    layer.file("bin/busybox", 0o755, &binary)?;
    for applet in applets(busybox)? {
        layer.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    layer.file("etc/passwd", 0o644, PASSWD.as_bytes())?;
    layer.file("etc/group", 0o644, GROUP.as_bytes())?;
    let config = ImageConfig {
        cmd: vec!["sh".to_owned()],
        env: vec![PATH.to_owned()],
        ..ImageConfig::default()
    };
    let created = jiff::Timestamp::try_from(modified)
        .ok()
        .map(|time| time.to_string());
    let layers: Vec<Vec<u8>> = [layer.finish()?]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
    write_oci_archive(out, reference, &layers, &config, created.as_deref())
}

/// Writes to `out` an OCI image layout tarball holding one image named
/// `reference`, whose layers are the uncompressed tar streams `layers` (lowest
/// first), stored gzipped.
pub fn write_oci_archive(
    out: &Path,
    reference: &str,
    layers: &[Vec<u8>],
    config: &ImageConfig,
    created: Option<&str>,
) -> Result<(), ImageError> {
    let reference = Reference::parse(reference)?;
    let mut blobs = Vec::new();
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        let compressed = gzip
            .write_all(tar)
            .and_then(|()| gzip.finish())
            .map_err(io_error(out))?;
        diff_ids.push(Digest::of(tar));
        layer_descriptors.push(descriptor(MediaType::ImageLayerGzip, &compressed));
        blobs.push(compressed);
    }
    let config_blob = config_blob(config, created, &diff_ids);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MediaType::ImageManifest.to_string(),
        "config": descriptor(MediaType::ImageConfig, &config_blob),
        "layers": layer_descriptors,
    });
    let manifest_blob = manifest.to_string().into_bytes();
    let mut manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest_blob);
    // The full name as containerd and newer Docker write it, and the tag alone
    // as the OCI annotation usually holds.
    manifest_descriptor["annotations"] = json!({
        "io.containerd.image.name": reference.to_string(),
        "org.opencontainers.image.ref.name": reference.tag,
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MediaType::ImageIndex.to_string(),
        "manifests": [manifest_descriptor],
    });
    blobs.push(config_blob);
    blobs.push(manifest_blob);

    let file = File::create(out).map_err(io_error(out))?;
    let mut archive = tar::Builder::new(file);
    let mut add = |path: &str, bytes: &[u8]| {
        archive
            .append_data(
                &mut header(tar::EntryType::Regular, 0o644, bytes.len() as u64, 0),
                path,
                bytes,
            )
            .map_err(io_error(out))
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", index.to_string().as_bytes())?;
    for blob in &blobs {
        add(&format!("blobs/sha256/{}", Digest::of(blob).hex()), blob)?;
    }
    archive
        .into_inner()
        .and_then(|file| file.sync_all())
        .map_err(io_error(out))
}

/// The image config JSON, as Docker writes it, around `config`.
pub(super) fn config_blob(
    config: &ImageConfig,
    created: Option<&str>,
    diff_ids: &[Digest],
) -> Vec<u8> {
    let exposed_ports: serde_json::Map<_, _> = config
        .exposed_ports
        .iter()
        .map(|port| (port.clone(), json!({})))
        .collect();
    let diff_ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
    let config = json!({
        "created": created,
        "architecture": Arch::default().to_string(),
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "Env": config.env,
            "WorkingDir": config.working_dir.clone().unwrap_or_default(),
            "User": config.user.clone().unwrap_or_default(),
            "ExposedPorts": exposed_ports,
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    config.to_string().into_bytes()
}

/// A layer's tar stream being written, every entry owned by root.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl LayerTar {
    /// Entries get the modification time `mtime` (seconds since the epoch).
    pub fn new(mtime: u64) -> LayerTar {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    pub fn dir(&mut self, path: &str) -> Result<(), ImageError> {
        let mut header = header(tar::EntryType::Directory, 0o755, 0, self.mtime);
        self.append(path, |builder, path| {
            builder.append_data(&mut header, path, &[][..])
        })
    }

    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> Result<(), ImageError> {
        let mut header = header(
            tar::EntryType::Regular,
            mode,
            contents.len() as u64,
            self.mtime,
        );
        self.append(path, |builder, path| {
            builder.append_data(&mut header, path, contents)
        })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        let mut header = header(tar::EntryType::Symlink, 0o777, 0, self.mtime);
        self.append(path, |builder, path| {
            builder.append_link(&mut header, path, target)
        })
    }

    /// The finished tar stream.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        self.builder
            .into_inner()
            .map_err(|source| ImageError::Build {
                what: "finishing a layer".to_owned(),
                source,
            })
    }

    fn append(
        &mut self,
        path: &str,
        write: impl FnOnce(&mut tar::Builder<Vec<u8>>, &str) -> std::io::Result<()>,
    ) -> Result<(), ImageError> {
        write(&mut self.builder, path).map_err(|source| ImageError::Build {
            what: format!("adding {path} to a layer"),
            source,
        })
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header
}

fn descriptor(media_type: MediaType, blob: &[u8]) -> serde_json::Value {
    json!({
        "mediaType": media_type.to_string(),
        "digest": Digest::of(blob).to_string(),
        "size": blob.len(),
    })
}

/// The applet names `busybox --list` prints, but `busybox` itself.
fn applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let failed = |reason: String| ImageError::Busybox {
        busybox: busybox.to_owned(),
        reason,
    };
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|error| failed(error.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!("{}: {}", output.status, stderr.trim())));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/') && *name != "busybox")
        .map(str::to_owned)
        .collect();
    match applets.is_empty() {
        true => Err(failed("it listed no applets".to_owned())),
        false => Ok(applets),
    }
}
