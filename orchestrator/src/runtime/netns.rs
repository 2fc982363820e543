//! Network namespaces for pods, kept alive by a bind mount of the namespace onto
//! a file (as `ip netns add` does), so they outlive the processes in them and the
//! CNI plugin and runc can enter them by path.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use socket2::{Domain, Socket, Type};

#[derive(Debug, thiserror::Error)]
#[error("network namespace {}: {what}: {source}", path.display())]
pub struct NetnsError {
    pub path: PathBuf,
    pub what: &'static str,
    pub source: io::Error,
}

/// Creates a new network namespace pinned at `path` (idempotent: an existing
/// namespace there is kept).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    let error = |what| {
        move |source| NetnsError {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if is_namespace(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error("creating its directory"))?;
    }
    File::create(path).map_err(error("creating the mount point"))?;
    let target = c_path(path).map_err(error("naming it"))?;
    // A thread of its own enters the new namespace, so the agent's threads stay where they are.
    let pinned = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only changes this thread's namespaces.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                loopback_up()?;
                // SAFETY: both paths are valid NUL-terminated strings.
                let rc = unsafe {
                    libc::mount(
                        c"/proc/thread-self/ns/net".as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if let Err(source) = pinned {
        let _ = std::fs::remove_file(path);
        return Err(NetnsError {
            path: path.to_path_buf(),
            what: "creating and pinning it",
            source,
        });
    }
    Ok(())
}

/// Brings up `lo` in the calling thread's network namespace: a pod's
/// containers talk over localhost, and the CNI plugin wires only the pod's link
/// (Kubernetes runtimes run the `loopback` plugin for this).
pub fn loopback_up() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: the request names an interface and has room for its flags; the fd
    // is open.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unpins and removes the namespace at `path`; absent is fine.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    if !path.exists() {
        return Ok(());
    }
    let target = c_path(path).map_err(|source| NetnsError {
        path: path.to_path_buf(),
        what: "naming it",
        source,
    })?;
    // SAFETY: a valid NUL-terminated path; MNT_DETACH lets it go once unused.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        // EINVAL: not a mount point (a half-made namespace); the file still goes.
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetnsError {
                path: path.to_path_buf(),
                what: "unmounting it",
                source: error,
            });
        }
    }
    std::fs::remove_file(path).map_err(|source| NetnsError {
        path: path.to_path_buf(),
        what: "removing its file",
        source,
    })
}

/// Whether `path` is a pinned network namespace (a bind mount of an nsfs inode).
pub fn is_namespace(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(target) = c_path(path) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and an owned out-parameter.
    let rc = unsafe { libc::statfs(target.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == NSFS_MAGIC
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_created_pinned_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        create(&path).unwrap();
        assert!(is_namespace(&path));
        // A new namespace, not ours.
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let pinned = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), pinned.ino());
        create(&path).unwrap(); // idempotent
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), pinned.ino());
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap(); // absent is fine
    }
}
