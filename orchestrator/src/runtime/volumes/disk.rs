//! The disk side of volumes: directories, tmpfs mounts, host path checks, and
//! subPath directories made without following a container's symlinks.
//! Everything here is idempotent, as an adopted pod's volumes are already there.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use rustix::fs::{AtFlags, Mode, OFlags, StatxAttributes, StatxFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::model::HostPathType;

use super::plan::{Found, HostPathAction, check_host_path};

/// Makes `dir` with `mode` unless it exists: an existing one (an adopted pod's)
/// keeps its contents and the mode its containers may have given it.
pub fn make_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Mounts a tmpfs on `dir` unless one is already there.
pub fn mount_tmpfs(dir: &Path, mode: u32, size: Option<u64>) -> io::Result<()> {
    if is_mount_point(dir)? {
        return Ok(());
    }
    let mut options = format!("mode={mode:o}");
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    let options = std::ffi::CString::new(options).map_err(io::Error::other)?;
    rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        options.as_c_str(),
    )?;
    Ok(())
}

/// Unmounts whatever is mounted on `dir` (lazily, should something still use it).
pub fn unmount_all(dir: &Path) -> io::Result<()> {
    while is_mount_point(dir)? {
        rustix::mount::unmount(dir, UnmountFlags::DETACH)?;
    }
    Ok(())
}

/// Whether `path` is the root of a mount (false when it does not exist).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    match rustix::fs::statx(rustix::fs::CWD, path, flags, StatxFlags::empty()) {
        Ok(stat) => Ok(stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Checks a host path against its type, creating it where the type says so.
pub fn host_path(path: &Path, expect: Option<HostPathType>) -> Result<(), String> {
    let found = match std::fs::metadata(path) {
        Ok(metadata) => Some(found(metadata.file_type())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.to_string()),
    };
    match check_host_path(expect, found)? {
        HostPathAction::Use => Ok(()),
        HostPathAction::CreateDirectory => std::os::unix::fs::DirBuilderExt::mode(
            std::fs::DirBuilder::new().recursive(true),
            0o755,
        )
        .create(path)
        .map_err(|e| format!("creating it: {e}")),
        // As the kubelet: the file, not its parent directories.
        HostPathAction::CreateFile => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            // Made by someone else meanwhile: theirs is kept.
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(|e| format!("creating it: {e}")),
    }
}

fn found(file_type: std::fs::FileType) -> Found {
    if file_type.is_dir() {
        Found::Directory
    } else if file_type.is_file() {
        Found::File
    } else if file_type.is_socket() {
        Found::Socket
    } else if file_type.is_char_device() {
        Found::CharDevice
    } else if file_type.is_block_device() {
        Found::BlockDevice
    } else {
        Found::Other
    }
}

/// Makes the missing directories of `relative` under `root` with the mode of
/// `root`, as the kubelet does for subPaths. Each level is opened without
/// following symlinks, so a symlink a container planted cannot lead the
/// directories out of the volume; where one is met nothing more is made, and the
/// caller's check of the resolved path decides.
pub fn make_sub_dirs(root: &Path, relative: &Path) -> io::Result<()> {
    let open = |dir: &OwnedFd, name: &std::ffi::OsStr| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let cwd = rustix::fs::CWD;
    let mut dir = rustix::fs::openat(
        cwd,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mode = Mode::from_raw_mode(rustix::fs::fstat(&dir)?.st_mode) & Mode::from_raw_mode(0o7777);
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::other("not a plain relative path"));
        };
        dir = match open(&dir, name) {
            Ok(next) => next,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, name, mode) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let made = open(&dir, name)?;
                // The umask may have taken bits the volume has.
                rustix::fs::fchmod(&made, mode)?;
                made
            }
            // A file (a subPath may name one) or a symlink: nothing to make.
            Err(_) => return Ok(()),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn sub_dirs_take_the_volume_mode_and_do_not_follow_symlinks() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("volume");
        make_dir(&root, 0o777).unwrap();
        make_sub_dirs(&root, Path::new("a/b")).unwrap();
        assert_eq!(mode(&root.join("a/b")), 0o777);
        // A symlink out of the volume is not followed.
        let outside = scratch.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        make_sub_dirs(&root, Path::new("link/escaped")).unwrap();
        assert!(!outside.join("escaped").exists());
    }

    #[test]
    fn an_existing_dir_keeps_its_contents() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("v");
        make_dir(&dir, 0o777).unwrap();
        assert_eq!(mode(&dir), 0o777);
        std::fs::write(dir.join("kept"), "x").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        make_dir(&dir, 0o777).unwrap();
        assert!(dir.join("kept").exists());
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn host_paths_are_created_or_refused_per_type() {
        let scratch = tempfile::tempdir().unwrap();
        let check = Some;
        let dir = scratch.path().join("made/dir");
        host_path(&dir, check(HostPathType::DirectoryOrCreate)).unwrap();
        assert!(dir.is_dir());
        assert_eq!(mode(&dir), 0o755);
        let file = scratch.path().join("file");
        host_path(&file, check(HostPathType::FileOrCreate)).unwrap();
        assert!(file.is_file());
        assert_eq!(
            host_path(&file, check(HostPathType::Directory)),
            Err("is not a directory".to_string())
        );
        assert_eq!(
            host_path(&scratch.path().join("nope"), check(HostPathType::File)),
            Err("does not exist".to_string())
        );
        // FileOrCreate does not make parent directories.
        assert!(
            host_path(
                &scratch.path().join("no/parent"),
                check(HostPathType::FileOrCreate)
            )
            .is_err()
        );
        assert_eq!(
            host_path(Path::new("/dev/null"), check(HostPathType::CharDevice)),
            Ok(())
        );
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_point() {
        let scratch = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(scratch.path()).unwrap());
        assert!(!is_mount_point(&scratch.path().join("missing")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
    }
}
