//! The store's index: which reference names which image, and what that image is
//! made of. One small JSON file, read whole and rewritten whole (temporary file,
//! fsync, rename, fsync of the directory), so a reader sees the old or the new
//! index and never a mix; writers hold the store's lock.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::{ImageError, io_error};

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// By normalised reference.
    pub images: BTreeMap<String, ImageRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// The image manifest's digest; docker-archives carry none.
    pub manifest: Option<Digest>,
    /// The config's digest: the image id.
    pub config: Digest,
    /// Diff ids, lowest layer first.
    pub layers: Vec<Digest>,
    /// Bytes of its blobs as imported.
    pub size: u64,
    pub created: Option<String>,
}

impl Index {
    /// Reads the index at `path`; a store with none yet is empty.
    pub fn load(path: &Path) -> Result<Index, ImageError> {
        match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ImageError::CorruptIndex {
                    path: path.to_owned(),
                    source,
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(error) => Err(io_error(path)(error)),
        }
    }

    /// Replaces the index at `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let json = serde_json::to_vec_pretty(self).map_err(|error| io_error(path)(error.into()))?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io_error(path))?;
        file.write_all(&json).map_err(io_error(path))?;
        file.as_file().sync_all().map_err(io_error(path))?;
        file.persist(path)
            .map_err(|error| io_error(path)(error.error))?;
        sync_dir(dir)
    }

    /// The blobs (manifests and configs) some image still uses.
    pub fn live_blobs(&self) -> HashSet<&Digest> {
        let records = self.images.values();
        records
            .flat_map(|record| record.manifest.iter().chain([&record.config]))
            .collect()
    }

    /// The layers some image still uses.
    pub fn live_layers(&self) -> HashSet<&Digest> {
        self.images
            .values()
            .flat_map(|record| &record.layers)
            .collect()
    }
}

/// Makes the renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))
}
