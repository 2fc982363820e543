//! The pure part of volumes: what the node makes of each volume of a pod, which
//! files a ConfigMap or Secret projects and with which modes, and which relative
//! paths (items, subPaths) are acceptable. Nothing here touches the disk.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::model::{HostPathType, KeyToPath, Kind, StorageMedium, Volume};

use super::VolumeError;

/// Kubernetes' file mode when a projection gives none.
pub const DEFAULT_MODE: u32 = 0o644;

/// One file of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub content: Vec<u8>,
    pub mode: u32,
}

/// The files of a projected volume, by path relative to the volume.
pub type Payload = BTreeMap<PathBuf, File>;

/// A ConfigMap or Secret as a projected volume sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub resource_version: String,
    /// Every key with its bytes (a ConfigMap's data and binaryData together).
    pub data: BTreeMap<String, Vec<u8>>,
}

/// The object a ConfigMap or Secret volume names.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub items: &'a [KeyToPath],
    pub default_mode: Option<i32>,
    pub optional: bool,
}

/// What the node makes of one volume; `dir` is the volume's own directory under
/// the pod's volumes directory.
#[derive(Debug)]
pub enum Plan {
    /// A directory of the pod; a tmpfs when `tmpfs` is set (its size limit, if any).
    EmptyDir {
        dir: PathBuf,
        tmpfs: Option<Option<u64>>,
    },
    /// A path of the host, checked (or created) per its type.
    HostPath {
        path: PathBuf,
        expect: Option<HostPathType>,
    },
    /// An object's keys as files, written anew only when `version` (the object's
    /// resourceVersion, empty when it does not exist) differs from `previous`, the
    /// one written last.
    Projected {
        dir: PathBuf,
        on_tmpfs: bool,
        version: String,
        previous: Option<String>,
        files: Result<Payload, VolumeError>,
    },
}

/// The object a volume projects, if it is a ConfigMap or Secret volume.
pub fn projection(volume: &Volume) -> Option<Projection<'_>> {
    if let Some(source) = &volume.config_map {
        return Some(Projection {
            kind: Kind::ConfigMap,
            name: &source.name,
            items: &source.items,
            default_mode: source.default_mode,
            optional: source.optional == Some(true),
        });
    }
    volume.secret.as_ref().map(|source| Projection {
        kind: Kind::Secret,
        name: &source.secret_name,
        items: &source.items,
        default_mode: source.default_mode,
        optional: source.optional == Some(true),
    })
}

/// The plan for `volume`. `object` is what its projection names (None: absent),
/// `previous` the resourceVersion last written for it.
pub fn plan(
    volume: &Volume,
    volumes_dir: &Path,
    object: Option<&Fetched>,
    previous: Option<&String>,
) -> Result<Plan, VolumeError> {
    // The API admits only DNS labels; refused here too, as it becomes a path.
    if volume.name.is_empty() || volume.name.contains('/') || volume.name.starts_with('.') {
        return Err(VolumeError::Invalid {
            volume: volume.name.clone(),
            problem: "its name cannot be a directory name".into(),
        });
    }
    let dir = volumes_dir.join(&volume.name);
    if let Some(empty_dir) = &volume.empty_dir {
        let tmpfs = match empty_dir.medium {
            Some(StorageMedium::Memory) => Some(
                empty_dir
                    .size_limit
                    .as_ref()
                    .map(|q| size_limit(&volume.name, q))
                    .transpose()?,
            ),
            _ => None,
        };
        return Ok(Plan::EmptyDir { dir, tmpfs });
    }
    if let Some(host_path) = &volume.host_path {
        return Ok(Plan::HostPath {
            path: PathBuf::from(&host_path.path),
            expect: host_path.r#type,
        });
    }
    let Some(projection) = projection(volume) else {
        return Err(VolumeError::Invalid {
            volume: volume.name.clone(),
            problem: "no source (emptyDir, hostPath, configMap or secret) is set".into(),
        });
    };
    Ok(Plan::Projected {
        dir,
        on_tmpfs: projection.kind == Kind::Secret,
        version: object
            .map(|o| o.resource_version.clone())
            .unwrap_or_default(),
        previous: previous.cloned(),
        files: payload(&volume.name, &projection, object.map(|o| &o.data)),
    })
}

/// A tmpfs size in bytes.
fn size_limit(volume: &str, quantity: &crate::model::Quantity) -> Result<u64, VolumeError> {
    let invalid = |problem: String| VolumeError::Invalid {
        volume: volume.to_string(),
        problem: format!("sizeLimit {quantity}: {problem}"),
    };
    let bytes = quantity.parse().map_err(invalid)?.value();
    // A tmpfs of size 0 would be unlimited: the opposite of what was asked.
    match u64::try_from(bytes) {
        Ok(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(invalid("must be a positive number of bytes".into())),
    }
}

/// The files a ConfigMap or Secret projects: every key, or only `items` (key to
/// path); modes from the item, else defaultMode, else 0644. A missing object or
/// key is an error unless the projection is optional.
pub fn payload(
    volume: &str,
    projection: &Projection,
    data: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<Payload, VolumeError> {
    let Some(data) = data else {
        return if projection.optional {
            Ok(Payload::new())
        } else {
            Err(VolumeError::MissingObject {
                volume: volume.to_string(),
                kind: projection.kind.name(),
                name: projection.name.to_string(),
            })
        };
    };
    let default_mode =
        mode(volume, "defaultMode", projection.default_mode)?.unwrap_or(DEFAULT_MODE);
    let file = |path: &str, content: &Vec<u8>, mode: u32| -> Result<(PathBuf, File), VolumeError> {
        let path = payload_path(path).map_err(|problem| VolumeError::BadPath {
            volume: volume.to_string(),
            path: path.to_string(),
            problem,
        })?;
        let content = content.clone();
        Ok((path, File { content, mode }))
    };
    if projection.items.is_empty() {
        return data
            .iter()
            .map(|(key, content)| file(key, content, default_mode))
            .collect();
    }
    let mut files = Payload::new();
    for item in projection.items {
        let Some(content) = data.get(&item.key) else {
            if projection.optional {
                continue;
            }
            return Err(VolumeError::MissingKey {
                volume: volume.to_string(),
                kind: projection.kind.name(),
                name: projection.name.to_string(),
                key: item.key.clone(),
            });
        };
        let mode = mode(volume, &format!("items[{}].mode", item.key), item.mode)?;
        let (path, file) = file(&item.path, content, mode.unwrap_or(default_mode))?;
        files.insert(path, file);
    }
    Ok(files)
}

/// A file mode, which must fit in the permission bits.
fn mode(volume: &str, field: &str, mode: Option<i32>) -> Result<Option<u32>, VolumeError> {
    mode.map(|m| {
        u32::try_from(m)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| VolumeError::Invalid {
                volume: volume.to_string(),
                problem: format!("{field} {m} is not a file mode (0 to 0777)"),
            })
    })
    .transpose()
}

/// A path inside a volume: relative, without `..`, normalised (`.` and repeated
/// slashes dropped).
pub fn relative_path(path: &str) -> Result<PathBuf, &'static str> {
    let mut normal = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => return Err("must be a relative path"),
        }
    }
    if normal.as_os_str().is_empty() {
        return Err("names nothing inside the volume");
    }
    Ok(normal)
}

/// A projected file's path: also kept apart from the writer's own `..` entries.
fn payload_path(path: &str) -> Result<PathBuf, &'static str> {
    let normal = relative_path(path)?;
    if normal.to_string_lossy().starts_with("..") {
        return Err("may not start with '..'");
    }
    Ok(normal)
}

/// What is at a host path (following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
    Other,
}

/// What to do about a host path of type `expect` where `found` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathAction {
    Use,
    CreateDirectory,
    CreateFile,
}

/// The hostPath type check, as the kubelet does it; `found` is None when nothing
/// is at the path.
pub fn check_host_path(
    expect: Option<HostPathType>,
    found: Option<Found>,
) -> Result<HostPathAction, &'static str> {
    use HostPathType as T;
    let Some(expect) = expect else {
        return Ok(HostPathAction::Use);
    };
    let (wanted, problem) = match expect {
        T::DirectoryOrCreate if found.is_none() => return Ok(HostPathAction::CreateDirectory),
        T::FileOrCreate if found.is_none() => return Ok(HostPathAction::CreateFile),
        T::Directory | T::DirectoryOrCreate => (Found::Directory, "is not a directory"),
        T::File | T::FileOrCreate => (Found::File, "is not a file"),
        T::Socket => (Found::Socket, "is not a socket"),
        T::CharDevice => (Found::CharDevice, "is not a character device"),
        T::BlockDevice => (Found::BlockDevice, "is not a block device"),
    };
    match found {
        Some(found) if found == wanted => Ok(HostPathAction::Use),
        Some(_) => Err(problem),
        None => Err("does not exist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    fn data(keys: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        keys.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn projection<'a>(items: &'a [KeyToPath], default_mode: Option<i32>) -> Projection<'a> {
        Projection {
            kind: Kind::ConfigMap,
            name: "settings",
            items,
            default_mode,
            optional: false,
        }
    }

    fn summary(payload: &Payload) -> Vec<(String, String, u32)> {
        payload
            .iter()
            .map(|(path, file)| {
                (
                    path.display().to_string(),
                    String::from_utf8_lossy(&file.content).into_owned(),
                    file.mode,
                )
            })
            .collect()
    }

    #[test]
    fn every_key_becomes_a_file_with_the_default_mode() {
        let files = payload(
            "config",
            &projection(&[], None),
            Some(&data(&[("a.conf", "A"), ("b", "B")])),
        )
        .unwrap();
        assert_eq!(
            summary(&files),
            [
                ("a.conf".into(), "A".into(), 0o644),
                ("b".into(), "B".into(), 0o644)
            ]
        );
        let files = payload(
            "config",
            &projection(&[], Some(0o400)),
            Some(&data(&[("b", "B")])),
        )
        .unwrap();
        assert_eq!(summary(&files), [("b".into(), "B".into(), 0o400)]);
    }

    #[test]
    fn items_pick_keys_map_them_to_paths_and_set_modes() {
        let items = [
            item("a", "conf/deep/a.txt", Some(0o600)),
            item("b", "./b.txt", None),
        ];
        let files = payload(
            "config",
            &projection(&items, Some(0o440)),
            Some(&data(&[("a", "A"), ("b", "B"), ("c", "C")])),
        )
        .unwrap();
        assert_eq!(
            summary(&files),
            [
                ("b.txt".into(), "B".into(), 0o440),
                ("conf/deep/a.txt".into(), "A".into(), 0o600),
            ]
        );
    }

    #[test]
    fn missing_objects_and_keys_are_errors_unless_optional() {
        let items = [item("nope", "x", None)];
        let err = payload("config", &projection(&items, None), Some(&data(&[]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume \"config\": ConfigMap \"settings\" has no key \"nope\""
        );
        let err = payload("config", &projection(&[], None), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume \"config\": ConfigMap \"settings\" not found"
        );
        let optional = Projection {
            optional: true,
            ..projection(&items, None)
        };
        assert_eq!(payload("config", &optional, None).unwrap(), Payload::new());
        assert_eq!(
            payload("config", &optional, Some(&data(&[]))).unwrap(),
            Payload::new()
        );
    }

    #[test]
    fn escaping_and_reserved_paths_and_bad_modes_are_refused() {
        for (path, problem) in [
            ("../x", "'..' is not allowed"),
            ("a/../../x", "'..' is not allowed"),
            ("/etc/passwd", "must be a relative path"),
            ("..data", "may not start with '..'"),
            ("./", "names nothing inside the volume"),
        ] {
            let items = [item("a", path, None)];
            let err = payload(
                "config",
                &projection(&items, None),
                Some(&data(&[("a", "A")])),
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("volume \"config\": path {path:?}: {problem}")
            );
        }
        // Keys are paths too when there are no items.
        assert!(
            payload(
                "config",
                &projection(&[], None),
                Some(&data(&[("..data", "x")]))
            )
            .is_err()
        );
        for bad in [-1, 0o1000] {
            let items = [item("a", "a", Some(bad))];
            let err = payload(
                "config",
                &projection(&items, None),
                Some(&data(&[("a", "A")])),
            )
            .unwrap_err();
            assert!(err.to_string().contains("is not a file mode"), "{err}");
        }
    }

    #[test]
    fn sub_paths_stay_inside_the_volume() {
        assert_eq!(relative_path("a/./b//c"), Ok(PathBuf::from("a/b/c")));
        assert_eq!(relative_path("..data/x"), Ok(PathBuf::from("..data/x")));
        assert_eq!(relative_path("a/../b"), Err("'..' is not allowed"));
        assert_eq!(relative_path("/abs"), Err("must be a relative path"));
        assert_eq!(relative_path(""), Err("names nothing inside the volume"));
    }

    #[test]
    fn host_path_types_are_checked_as_the_kubelet_does() {
        use HostPathAction::*;
        use HostPathType as T;
        let cases = [
            (None, None, Ok(Use)),
            (None, Some(Found::Other), Ok(Use)),
            (Some(T::DirectoryOrCreate), None, Ok(CreateDirectory)),
            (Some(T::DirectoryOrCreate), Some(Found::Directory), Ok(Use)),
            (
                Some(T::DirectoryOrCreate),
                Some(Found::File),
                Err("is not a directory"),
            ),
            (Some(T::Directory), None, Err("does not exist")),
            (
                Some(T::Directory),
                Some(Found::File),
                Err("is not a directory"),
            ),
            (Some(T::FileOrCreate), None, Ok(CreateFile)),
            (Some(T::FileOrCreate), Some(Found::File), Ok(Use)),
            (Some(T::File), Some(Found::Directory), Err("is not a file")),
            (Some(T::Socket), Some(Found::Socket), Ok(Use)),
            (Some(T::Socket), Some(Found::File), Err("is not a socket")),
            (Some(T::CharDevice), Some(Found::CharDevice), Ok(Use)),
            (
                Some(T::CharDevice),
                Some(Found::BlockDevice),
                Err("is not a character device"),
            ),
            (Some(T::BlockDevice), None, Err("does not exist")),
        ];
        for (expect, found, outcome) in cases {
            assert_eq!(
                check_host_path(expect, found),
                outcome,
                "{expect:?} with {found:?}"
            );
        }
    }

    #[test]
    fn memory_empty_dirs_get_a_tmpfs_of_their_size_limit() {
        let volume: Volume = serde_json::from_value(serde_json::json!(
            {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}
        ))
        .unwrap();
        let Plan::EmptyDir { dir, tmpfs } = plan(&volume, Path::new("/v"), None, None).unwrap()
        else {
            panic!("not an emptyDir plan");
        };
        assert_eq!(dir, Path::new("/v/cache"));
        assert_eq!(tmpfs, Some(Some(16 << 20)));
        let zero: Volume = serde_json::from_value(serde_json::json!(
            {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "0"}}
        ))
        .unwrap();
        assert!(plan(&zero, Path::new("/v"), None, None).is_err());
    }

    #[test]
    fn a_projection_carries_the_version_to_write_and_the_one_written() {
        let volume: Volume = serde_json::from_value(serde_json::json!(
            {"name": "creds", "secret": {"secretName": "db"}}
        ))
        .unwrap();
        let object = Fetched {
            resource_version: "7".into(),
            data: data(&[("password", "pw")]),
        };
        let planned = plan(&volume, Path::new("/v"), Some(&object), Some(&"6".into())).unwrap();
        let Plan::Projected {
            on_tmpfs,
            version,
            previous,
            files,
            ..
        } = planned
        else {
            panic!("not a projected plan");
        };
        assert!(on_tmpfs, "secrets live on a tmpfs");
        assert_eq!((version.as_str(), previous.as_deref()), ("7", Some("6")));
        assert_eq!(
            summary(&files.unwrap()),
            [("password".into(), "pw".into(), 0o644)]
        );
    }
}
