//! The cgroup v2 hierarchy: where it is mounted. On hybrid hosts (cgroup v1
//! controllers plus v2) it is not at /sys/fs/cgroup, so it is read from the mount
//! table rather than assumed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    MountTable {
        path: &'static str,
        source: std::io::Error,
    },
    #[error(
        "cgroup v2 is not mounted (no cgroup2 file system in {0}); mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NotMounted(&'static str),
}

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The mount point of the cgroup v2 hierarchy, as this process sees it.
pub fn v2_mount_point() -> Result<PathBuf, Error> {
    let table = std::fs::read_to_string(MOUNTINFO).map_err(|source| Error::MountTable {
        path: MOUNTINFO,
        source,
    })?;
    find_cgroup2(&table).ok_or(Error::NotMounted(MOUNTINFO))
}

/// Every cgroup hierarchy this process sees: each v1 controller's and the v2 one.
pub fn hierarchies() -> Result<Vec<PathBuf>, Error> {
    let table = std::fs::read_to_string(MOUNTINFO).map_err(|source| Error::MountTable {
        path: MOUNTINFO,
        source,
    })?;
    Ok(cgroup_mounts(&table))
}

/// Removes the cgroup at `relative` (and the empty ones below it) from every
/// hierarchy; what is absent or still busy is left alone.
pub fn remove_everywhere(relative: &str) {
    let relative = relative.trim_start_matches('/');
    for root in hierarchies().unwrap_or_default() {
        remove_tree(&root.join(relative));
    }
}

/// What a cgroup used so far, in whichever hierarchy accounts for it (v1 cpuacct
/// and memory on hybrid hosts, the v2 files otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time since the cgroup was created.
    pub cpu_nanos: u64,
    /// Memory in use minus the page cache the kernel can drop at once (the
    /// working set, as the kubelet reports it).
    pub working_set_bytes: u64,
}

/// The usage of the cgroup at `relative` (e.g. /skiff/pod<uid>/<id>), None when no
/// hierarchy has it.
pub fn usage(relative: &str) -> Option<Usage> {
    let relative = relative.trim_start_matches('/');
    let dirs: Vec<PathBuf> = hierarchies()
        .unwrap_or_default()
        .into_iter()
        .map(|root| root.join(relative))
        .filter(|dir| dir.is_dir())
        .collect();
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
    };
    let cpu_nanos = read("cpuacct.usage")
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| {
            dirs.iter().find_map(|d| {
                let stat = std::fs::read_to_string(d.join("cpu.stat")).ok()?;
                stat_field(&stat, "usage_usec").map(|usec| usec * 1000)
            })
        })?;
    let (in_use, inactive) = match read("memory.usage_in_bytes") {
        Some(v1) => (
            v1.trim().parse().ok(),
            read("memory.stat").and_then(|s| stat_field(&s, "total_inactive_file")),
        ),
        None => (
            read("memory.current").and_then(|s| s.trim().parse().ok()),
            read("memory.stat").and_then(|s| stat_field(&s, "inactive_file")),
        ),
    };
    let in_use: u64 = in_use.unwrap_or(0);
    Some(Usage {
        cpu_nanos,
        working_set_bytes: in_use.saturating_sub(inactive.unwrap_or(0)),
    })
}

/// A `name value` line's value in a cgroup stat file.
fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Children first: rmdir only removes empty cgroups.
fn remove_tree(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2")
                .then(|| PathBuf::from(unescape_octal(mount_point)))
        })
        .collect()
}

/// The first cgroup2 mount point in a /proc/<pid>/mountinfo listing.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_octal(mount_point)))
    })
}

/// Undoes the kernel's octal escapes in mountinfo paths (`\040` for a space).
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match escape {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        assert_eq!(
            find_cgroup2(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn lists_every_hierarchy_of_a_hybrid_host() {
        assert_eq!(
            cgroup_mounts(HYBRID),
            [
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
    }

    #[test]
    fn finds_cgroup2_on_a_unified_host() {
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(unified), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn v1_only_host_has_none() {
        let v1 = "33 31 0:28 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n";
        assert_eq!(find_cgroup2(v1), None);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let odd = "40 24 0:30 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(find_cgroup2(odd), Some(PathBuf::from("/mnt/my cgroups")));
    }

    #[test]
    fn this_host_has_a_cgroup2_mount() {
        // The tests run on Linux with cgroup v2 mounted (a requirement of skiff).
        let path = v2_mount_point().expect("cgroup v2 mounted");
        assert!(path.join("cgroup.procs").exists(), "{}", path.display());
    }
}
