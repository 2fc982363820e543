//! Which stored layers overlay mounts use, so that garbage collection keeps a
//! layer a container still runs on even after its image is removed.
//!
//! Only the mounts of this process's mount namespace are seen (/proc/self/mountinfo),
//! which is where the agent mounts container root file systems.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::digest::Digest;
use super::{ImageError, io_error};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The layers under `layers_dir` that some overlay mount lists as a lower dir.
pub fn mounted_layers(layers_dir: &Path) -> Result<HashSet<Digest>, ImageError> {
    let table = fs::read_to_string(MOUNTINFO).map_err(io_error(Path::new(MOUNTINFO)))?;
    Ok(layers_in(&table, layers_dir))
}

/// The layers of `layers_dir` named in the overlay lines of a mountinfo table.
/// The kernel escapes white space and backslashes in paths, so a store whose
/// root holds those is not matched; skiff's roots do not.
fn layers_in(mountinfo: &str, layers_dir: &Path) -> HashSet<Digest> {
    let prefix = format!("{}/", layers_dir.display());
    mountinfo
        .lines()
        .filter(|line| {
            // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
            line.split_once(" - ")
                .is_some_and(|(_, right)| right.split_whitespace().next() == Some("overlay"))
        })
        .flat_map(|line| {
            line.match_indices(&prefix)
                .map(|(at, _)| &line[at + prefix.len()..])
        })
        .filter_map(|rest| rest.get(..64).and_then(Digest::from_hex))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_layers_overlay_mounts_use() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let table = format!(
            "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /run/skiff/pod1/rootfs rw,relatime shared:40 - overlay overlay rw,lowerdir=/var/lib/skiff/images/layers/{a}:/var/lib/skiff/images/layers/{b},upperdir=/run/skiff/pod1/upper,workdir=/run/skiff/pod1/work
91 22 0:51 / /mnt rw,relatime shared:41 - ext4 /var/lib/skiff/images/layers/{c} rw
92 22 0:52 / /other rw,relatime shared:42 - overlay overlay rw,lowerdir=/elsewhere/layers/{c}:/x
"
        );
        let found = layers_in(&table, Path::new("/var/lib/skiff/images/layers"));
        let expected: HashSet<Digest> = [&a, &b]
            .iter()
            .filter_map(|hex| Digest::from_hex(hex))
            .collect();
        assert_eq!(found, expected);
    }
}
