//! A container's root file system: an overlay of its image's unpacked layers
//! (shared, read-only) under a writable layer of its own, so containers of one
//! image share every byte of it and start without copying.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("root file system {}: {what}: {source}", target.display())]
pub struct RootfsError {
    pub target: PathBuf,
    pub what: &'static str,
    pub source: std::io::Error,
}

/// Mounts the overlay at `<attempt>/rootfs` with its upper and work dirs beside it;
/// `layers` lowest first. Returns the mount point.
pub fn mount(attempt: &Path, layers: &[PathBuf]) -> Result<PathBuf, RootfsError> {
    let target = attempt.join("rootfs");
    let error = |what| {
        let target = target.clone();
        move |source| RootfsError {
            target,
            what,
            source,
        }
    };
    for dir in ["rootfs", "upper", "work"] {
        std::fs::create_dir_all(attempt.join(dir)).map_err(error("creating its directories"))?;
    }
    if layers.is_empty() {
        return Err(error("an image without layers")(std::io::Error::other(
            "nothing to mount",
        )));
    }
    // overlayfs lists lower layers top-most first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        attempt.join("upper").display(),
        attempt.join("work").display()
    );
    let c =
        |text: &[u8]| CString::new(text).map_err(|_| std::io::Error::other("a path contains NUL"));
    let target_c = c(target.as_os_str().as_bytes()).map_err(error("naming it"))?;
    let options_c = c(options.as_bytes()).map_err(error("naming its layers"))?;
    // SAFETY: valid NUL-terminated strings; overlay takes its options as data.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target_c.as_ptr(),
            c"overlay".as_ptr(),
            0,
            options_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(error("mounting the overlay")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(target)
}

/// Unmounts `<attempt>/rootfs` if mounted.
pub fn unmount(attempt: &Path) -> Result<(), RootfsError> {
    let target = attempt.join("rootfs");
    let Ok(target_c) = CString::new(target.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let error = std::io::Error::last_os_error();
        // Not mounted (EINVAL) or already gone (ENOENT): nothing to do.
        if !matches!(
            error.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::ENOENT)
        ) {
            return Err(RootfsError {
                target,
                what: "unmounting it",
                source: error,
            });
        }
    }
    Ok(())
}
