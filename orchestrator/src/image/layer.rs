//! Unpacking one layer (a tar stream, plain or gzipped) into a directory that
//! overlayfs can use as a lower layer.
//!
//! - OCI whiteouts become what overlayfs reads in a lower layer: `.wh.<name>` a
//!   character device 0:0 named `<name>`, `.wh..wh..opq` the xattr
//!   `trusted.overlay.opaque=y` on its directory (so unpacking needs root).
//! - File modes (set-id bits too), owners, symlinks, hard links, device nodes and
//!   fifos are kept; extended attributes from the tar are not.
//! - Entries that would land outside the directory are refused: absolute paths,
//!   `..`, hard links out of the layer, and any entry whose parent path goes
//!   through a symlink (the layer's own symlinks point into the container's root,
//!   not the host's; no image tool writes an entry through one).

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use rustix::fs::{FileType, Mode, XattrFlags};
use tar::EntryType;

use super::digest::{Digest, Digesting};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("the layer is zstd-compressed, which skiff does not unpack (re-export it gzipped)")]
    Zstd,
    #[error(
        "its uncompressed content hashes to {actual}, not to this diff id from the image config"
    )]
    DiffId { actual: Digest },
    #[error("entry {entry:?} {reason}; refusing to unpack it")]
    Unsafe { entry: PathBuf, reason: String },
    #[error("entry {entry:?} is a {kind:?}, which is not a file type a layer can hold")]
    UnsupportedType { entry: PathBuf, kind: EntryType },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Unpacks the layer blob `blob` into `dir` (an empty directory), and checks that
/// the uncompressed stream hashes to `diff_id`.
pub fn unpack(blob: impl Read, diff_id: &Digest, dir: &Path) -> Result<(), LayerError> {
    let mut blob = BufReader::new(blob);
    let head = blob.fill_buf().map_err(LayerError::Read)?;
    if head.starts_with(ZSTD_MAGIC) {
        Err(LayerError::Zstd)
    } else if head.starts_with(GZIP_MAGIC) {
        unpack_uncompressed(MultiGzDecoder::new(blob), diff_id, dir)
    } else {
        unpack_uncompressed(blob, diff_id, dir)
    }
}

fn unpack_uncompressed(tar: impl Read, diff_id: &Digest, dir: &Path) -> Result<(), LayerError> {
    let mut tar = Digesting::new(tar);
    unpack_tar(&mut tar, dir)?;
    let (_, actual, _) = tar.finish().map_err(LayerError::Read)?;
    if &actual != diff_id {
        return Err(LayerError::DiffId { actual });
    }
    Ok(())
}

fn unpack_tar(stream: impl Read, dir: &Path) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_mask(0);
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        let name = entry.path().map_err(LayerError::Read)?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let Some(relative) = contained_path(&name)? else {
            // The layer's root directory itself: overlayfs takes the root's
            // attributes from the top layer, so there is nothing to write.
            continue;
        };
        let parent = relative.parent().unwrap_or(Path::new(""));
        make_parents(dir, parent, &name)?;
        let file_name = relative.file_name().map_or(&[][..], OsStr::as_bytes);
        let target = dir.join(&relative);
        if file_name == OPAQUE_MARKER.as_bytes() {
            set_opaque(&dir.join(parent))?;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..wh.*` names other than the opaque marker are AUFS bookkeeping.
            if !hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                write_whiteout(&dir.join(parent).join(OsStr::from_bytes(hidden)))?;
            }
            continue;
        }
        let write = |source| LayerError::Write {
            path: target.clone(),
            source,
        };
        // A later entry replaces an earlier one at the same path, except that a
        // directory entry over a directory only updates its metadata.
        let mut replaces_whiteout = false;
        if let Ok(existing) = fs::symlink_metadata(&target)
            && !(existing.is_dir() && kind.is_dir())
        {
            replaces_whiteout = is_whiteout(&existing);
            remove_any(&target, existing.is_dir()).map_err(write)?;
        }
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Symlink => {
                entry.unpack(&target).map_err(write)?;
            }
            EntryType::Directory => {
                entry.unpack(&target).map_err(write)?;
                // A directory deleted and made anew in one layer: the lower
                // one's contents must not show through.
                if replaces_whiteout {
                    set_opaque(&target)?;
                }
            }
            EntryType::Link => {
                let link = entry.link_name().map_err(LayerError::Read)?;
                let link = link.as_deref().unwrap_or(Path::new(""));
                let source = hard_link_source(dir, &name, link)?;
                fs::hard_link(&source, &target).map_err(write)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                make_node(&entry, kind, &target).map_err(write)?;
            }
            kind => {
                return Err(LayerError::UnsupportedType { entry: name, kind });
            }
        }
    }
    Ok(())
}

/// The entry's path relative to the layer root, refusing absolute paths and
/// `..`; None for the root itself (`./`).
fn contained_path(name: &Path) -> Result<Option<PathBuf>, LayerError> {
    let unsafe_entry = |reason: &str| LayerError::Unsafe {
        entry: name.to_owned(),
        reason: reason.to_owned(),
    };
    let mut relative = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry("is an absolute path"));
            }
            Component::ParentDir => return Err(unsafe_entry("climbs out of the layer with ..")),
        }
    }
    Ok((relative.components().next().is_some()).then_some(relative))
}

/// Creates the missing directories of `parent` (relative to `dir`), refusing to
/// go through a symlink or a non-directory.
fn make_parents(dir: &Path, parent: &Path, entry: &Path) -> Result<(), LayerError> {
    let mut path = dir.to_path_buf();
    for part in parent.components() {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) => {
                let what = if meta.is_symlink() {
                    "goes through the symlink"
                } else {
                    "goes through the non-directory"
                };
                let inside = path.strip_prefix(dir).unwrap_or(&path).display();
                return Err(LayerError::Unsafe {
                    entry: entry.to_owned(),
                    reason: format!("{what} {inside}"),
                });
            }
            Err(_) => fs::create_dir(&path).map_err(|source| LayerError::Write {
                path: path.clone(),
                source,
            })?,
        }
    }
    Ok(())
}

/// Where a hard link's target already is in the layer; it must be inside, and
/// not reached through a symlink.
fn hard_link_source(dir: &Path, entry: &Path, link: &Path) -> Result<PathBuf, LayerError> {
    let refuse = |reason: String| LayerError::Unsafe {
        entry: entry.to_owned(),
        reason,
    };
    let relative = contained_path(link)
        .map_err(|_| refuse(format!("hard-links to {link:?}, outside the layer")))?
        .ok_or_else(|| refuse("hard-links to the layer's root".to_owned()))?;
    make_parents(dir, relative.parent().unwrap_or(Path::new("")), entry)?;
    let source = dir.join(&relative);
    match fs::symlink_metadata(&source) {
        Ok(meta) if !meta.is_dir() => Ok(source),
        _ => Err(refuse(format!(
            "hard-links to {link:?}, which is not an earlier file of the layer"
        ))),
    }
}

/// Overlayfs's whiteout in a lower layer: a character device 0:0.
fn write_whiteout(path: &Path) -> Result<(), LayerError> {
    let write = |source| LayerError::Write {
        path: path.to_owned(),
        source,
    };
    // A file of this same layer is not hidden by its whiteout (OCI: whiteouts
    // apply to lower layers only), so an existing entry stays.
    if fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .map_err(|errno| write(errno.into()))
}

fn set_opaque(dir: &Path) -> Result<(), LayerError> {
    rustix::fs::setxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(|errno| {
        LayerError::Write {
            path: dir.to_owned(),
            source: errno.into(),
        }
    })
}

/// Device nodes and fifos, which the tar crate would write as plain files.
fn make_node(entry: &tar::Entry<impl Read>, kind: EntryType, path: &Path) -> io::Result<()> {
    let header = entry.header();
    let device = || -> io::Result<_> {
        let major = header.device_major()?.unwrap_or(0);
        let minor = header.device_minor()?.unwrap_or(0);
        Ok(rustix::fs::makedev(major, minor))
    };
    // A fifo has no device number (writers often leave the fields blank).
    let (file_type, device) = match kind {
        EntryType::Char => (FileType::CharacterDevice, device()?),
        EntryType::Block => (FileType::BlockDevice, device()?),
        _ => (FileType::Fifo, 0),
    };
    let mode = header.mode()?;
    rustix::fs::mknodat(rustix::fs::CWD, path, file_type, Mode::empty(), device)?;
    let uid = u32::try_from(header.uid()?).map_err(io::Error::other)?;
    let gid = u32::try_from(header.gid()?).map_err(io::Error::other)?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn remove_any(path: &Path, is_dir: bool) -> io::Result<()> {
    if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}
