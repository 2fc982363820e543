//! Writing a projected volume the way the kubelet's AtomicWriter does, so a
//! container sees all of an update or none of it: the files go into a new
//! timestamped directory (`..2024_05_01_12_00_00.Xy12Ab`), a `..data` symlink to
//! it is swapped in with one rename, and each top-level name is a symlink through
//! `..data` (`key -> ..data/key`), which therefore never changes.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use super::plan::Payload;

/// The symlink to the current data directory.
pub const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Whether `dir` holds a written projection.
pub fn is_written(dir: &Path) -> bool {
    dir.join(DATA).symlink_metadata().is_ok()
}

/// Replaces the projection in `dir` (which must exist) with `payload`.
pub fn write(dir: &Path, payload: &Payload) -> io::Result<()> {
    let stamp = jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S");
    let data_dir = tempfile::Builder::new()
        .prefix(&format!("..{stamp}."))
        .tempdir_in(dir)?
        .keep();
    let result = fill(&data_dir, payload).and_then(|()| swap(dir, &data_dir, payload));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

fn fill(data_dir: &Path, payload: &Payload) -> io::Result<()> {
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o755))?;
    for (path, file) in payload {
        let target = data_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file.mode)
                .open(&target)?,
            &file.content,
        )?;
        // The umask may have taken bits the projection asked for.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))?;
    }
    Ok(())
}

/// Points `..data` at the new directory, links the top-level names through it,
/// and removes what the previous projection had that this one has not.
fn swap(dir: &Path, data_dir: &Path, payload: &Payload) -> io::Result<()> {
    let Some(data_name) = data_dir.file_name() else {
        return Err(io::Error::other("the data directory has no name"));
    };
    let tmp = dir.join(DATA_TMP);
    remove_if_present(&tmp)?;
    std::os::unix::fs::symlink(data_name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    let top_level: Vec<&std::ffi::OsStr> = payload
        .keys()
        .filter_map(|path| match path.components().next() {
            Some(Component::Normal(name)) => Some(name),
            _ => None,
        })
        .collect();
    for name in &top_level {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(name), link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let ours = name.to_string_lossy().starts_with("..");
        if ours && name != DATA && name != data_name {
            // Earlier data directories, and any a crashed write left.
            std::fs::remove_dir_all(entry.path())?;
        } else if !ours && !top_level.contains(&name.as_os_str()) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::volumes::plan::File;
    use std::path::PathBuf;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(path, content, mode)| {
                (
                    PathBuf::from(path),
                    File {
                        content: content.as_bytes().to_vec(),
                        mode: *mode,
                    },
                )
            })
            .collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn files_appear_through_data_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &payload(&[("a", "A", 0o600), ("conf/b.txt", "B", 0o644)]),
        )
        .unwrap();
        assert!(is_written(dir.path()));
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "A");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("conf/b.txt")).unwrap(),
            "B"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("conf")).unwrap(),
            Path::new("..data/conf")
        );
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("a"), 0o600);
        assert_eq!(mode("conf/b.txt"), 0o644);
        let names = entries(dir.path());
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names[0].starts_with("..20"), "{names:?}");
        assert_eq!(names[1..], ["..data", "a", "conf"]);
    }

    #[test]
    fn an_update_swaps_everything_and_drops_what_went_away() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &payload(&[("a", "old", 0o644), ("gone", "x", 0o644)]),
        )
        .unwrap();
        let first = std::fs::read_link(dir.path().join(DATA)).unwrap();
        write(
            dir.path(),
            &payload(&[("a", "new", 0o644), ("b", "B", 0o644)]),
        )
        .unwrap();
        let second = std::fs::read_link(dir.path().join(DATA)).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a")).unwrap(),
            "new"
        );
        assert_eq!(std::fs::read_to_string(dir.path().join("b")).unwrap(), "B");
        let names = entries(dir.path());
        assert_eq!(names[1..], ["..data", "a", "b"], "{names:?}");
        assert_eq!(Path::new(&names[0]), second);
    }

    #[test]
    fn an_empty_projection_is_written_too() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &Payload::new()).unwrap();
        assert!(is_written(dir.path()));
        assert_eq!(entries(dir.path()).len(), 2);
    }
}
