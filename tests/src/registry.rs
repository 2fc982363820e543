//! A real image registry for a test: Debian's `docker-registry` (the CNCF
//! distribution registry) on the loopback of a network namespace the test made,
//! storing into a temporary directory; images are pushed to it with `skopeo`.
//! Killed, and its storage removed, when the guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::NetNs;

const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Registry {
    // Killed before its directory goes.
    _child: KillOnDrop,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, as references name it.
    pub host: String,
}

impl Registry {
    /// A registry in `netns` on 127.0.0.1:`port`, over plain HTTP.
    pub fn start(netns: &NetNs, port: u16) -> Registry {
        Self::start_with(netns, port, "")
    }

    /// A registry that answers every request without a token with 401 and a
    /// Bearer challenge whose token service refuses to give one (distribution's
    /// "silly" auth, pointed at nothing that issues tokens).
    pub fn start_requiring_auth(netns: &NetNs, port: u16) -> Registry {
        let auth = format!(
            "auth:\n  silly:\n    realm: http://127.0.0.1:{port}/no-token-service\n    service: skiff-test\n"
        );
        Self::start_with(netns, port, &auth)
    }

    fn start_with(netns: &NetNs, port: u16, extra_config: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("skiff-test-registry-")
            .tempdir()
            .expect("registry dir");
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {host}\n{extra_config}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = netns
            .command("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        let registry = Registry {
            _child: KillOnDrop(child),
            dir,
            host,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !registry.log().contains("listening on") {
            assert!(
                Instant::now() < deadline,
                "the registry did not start: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// Pushes the OCI archive `archive` as `repository:tag` with skopeo, run in
    /// `netns` (where the registry listens).
    pub fn push(&self, netns: &NetNs, archive: &Path, name: &str) {
        self.copy(
            netns,
            &format!("oci-archive:{}", archive.display()),
            name,
            false,
        );
    }

    /// Pushes the OCI layout directory `layout` (an image index and all it
    /// lists, see [`multi_platform_layout`]) as `repository:tag`.
    pub fn push_index(&self, netns: &NetNs, layout: &Path, name: &str) {
        self.copy(netns, &format!("oci:{}", layout.display()), name, true);
    }

    fn copy(&self, netns: &NetNs, source: &str, name: &str, all: bool) {
        let out = netns
            .command("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(all.then_some("--all"))
            .arg(source)
            .arg(format!("docker://{}/{name}", self.host))
            .output()
            .expect("run skopeo (Debian package skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy {source} to {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The manifest `name` points at, as the registry serves it.
    pub fn manifest(&self, netns: &NetNs, name: &str) -> serde_json::Value {
        serde_json::from_slice(&self.raw_manifest(netns, name)).expect("manifest JSON")
    }

    /// The digest of what `name` points at (`sha256:<hex>`).
    pub fn manifest_digest(&self, netns: &NetNs, name: &str) -> String {
        skiff::image::Digest::of(&self.raw_manifest(netns, name)).to_string()
    }

    fn raw_manifest(&self, netns: &NetNs, name: &str) -> Vec<u8> {
        let out = netns
            .command("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{name}", self.host))
            .output()
            .expect("run skopeo inspect");
        assert!(
            out.status.success(),
            "skopeo inspect {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Where the registry keeps the blob `digest` (`sha256:<hex>`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Blob downloads by skiff so far, from the access log.
    pub fn blob_downloads(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("\"GET /v2/") && line.contains("/blobs/sha256:"))
            .filter(|line| line.contains("\"skiff/"))
            .count()
    }

    /// GET requests by skiff so far for paths starting with `path`.
    pub fn gets(&self, path: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(&format!("\"GET {path}")) && line.contains("\"skiff/"))
            .count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny tar stream (one layer) holding `files` (path, contents), owned by root.
pub fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut layer = skiff::image::build::LayerTar::new(0);
    for (path, contents) in files {
        if let Some((dir, _)) = path.rsplit_once('/') {
            layer.dir(dir).expect("layer dir");
        }
        layer
            .file(path, 0o644, contents.as_bytes())
            .expect("layer file");
    }
    layer.finish().expect("layer")
}

/// The busybox test image with `extra` layers above it, as an OCI archive in `dir`.
pub fn busybox_with(dir: &Path, name: &str, extra: &[Vec<u8>]) -> PathBuf {
    let path = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    skiff::image::build::build_busybox_oci_archive_with_layers(
        Path::new("/bin/busybox"),
        name,
        extra,
        &path,
    )
    .expect("build the test image (busybox-static is installed by setup)");
    path
}

/// This machine's architecture as OCI platforms name it (`amd64`, `arm64`).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI layout directory in `dir` whose index.json names one image index
/// listing, for each (architecture, OCI archive of one image), that image's
/// manifest as linux/architecture.
pub fn multi_platform_layout(dir: &Path, name: &str, platforms: &[(&str, &Path)]) -> PathBuf {
    let layout = dir.join(name);
    std::fs::create_dir_all(&layout).expect("layout dir");
    let mut entries = Vec::new();
    for (arch, archive) in platforms {
        let status = std::process::Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&layout)
            .status()
            .expect("run tar");
        assert!(status.success(), "unpacking {}", archive.display());
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(layout.join("index.json")).expect("the archive's index.json"),
        )
        .expect("index JSON");
        let mut manifest = index["manifests"][0].clone();
        if let Some(entry) = manifest.as_object_mut() {
            entry.remove("annotations");
        }
        manifest["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        entries.push(manifest);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string()
    .into_bytes();
    let digest = skiff::image::Digest::of(&index);
    std::fs::write(layout.join("blobs/sha256").join(digest.hex()), &index).expect("index blob");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest.to_string(),
            "size": index.len(),
        }],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).expect("index.json");
    layout
}
