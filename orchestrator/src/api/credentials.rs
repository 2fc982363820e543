//! Secrets the agent creates at first start and keeps in its state directory: the API
//! bearer token and the key that encrypts Secrets at rest. Created with mode 0600 in
//! one step (O_EXCL), and refused later if anyone else can read them.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is accessible by group or others (mode {mode:o}): run `chmod 600 {}`", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{} holds {found} bytes where {expected} were expected", path.display())]
    WrongLength {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
}

/// Reads `path`, or creates it with `len` random bytes (mode 0600) when absent.
pub fn load_or_create_key(path: &Path, len: usize) -> Result<Vec<u8>, CredentialError> {
    let bytes = load_or_create(path, || random_key(len))?;
    if bytes.len() != len {
        return Err(CredentialError::WrongLength {
            path: path.to_path_buf(),
            expected: len,
            found: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Reads the bearer token in `path`, or creates one (64 hex digits, mode 0600).
pub fn load_or_create_token(path: &Path) -> Result<String, CredentialError> {
    let bytes = load_or_create(path, || format!("{}\n", random_token()).into_bytes())?;
    let token = String::from_utf8_lossy(&bytes).trim().to_string();
    if token.is_empty() {
        return Err(CredentialError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// `len` random bytes, for a key.
pub fn random_key(len: usize) -> Vec<u8> {
    let mut key = vec![0u8; len];
    rand::rng().fill_bytes(&mut key);
    key
}

/// A new bearer token: 32 random bytes as 64 hex digits.
pub fn random_token() -> String {
    random_key(32).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a token someone else created (the CLI side); no permission check, since a
/// user may keep a copy in their own config directory.
pub fn read_token(path: &Path) -> Result<String, CredentialError> {
    let token = std::fs::read_to_string(path).map_err(|source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(CredentialError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>, CredentialError> {
    let io = |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let bytes = generate();
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_private(path)?.ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))
        }
        Err(e) => Err(io(e)),
    }
}

/// The bytes of `path` (None when absent), refused if anyone else can read them.
pub fn read_private(path: &Path) -> Result<Option<Vec<u8>>, CredentialError> {
    let io = |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(Some(bytes))
}

/// Replaces `path` with `bytes` (mode 0600) in one step: a crash leaves the old
/// file or the new one, never a part.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CredentialError> {
    let io = |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile creates its files with mode 0600.
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), first);
        assert_eq!(read_token(&path).unwrap(), first);
    }

    #[test]
    fn private_files_are_replaced_whole_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert_eq!(read_private(&path).unwrap(), None);
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_private(&path).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        load_or_create_key(&path, 32).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_key(&path, 32).unwrap_err().to_string();
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        load_or_create_key(&path, 16).unwrap();
        let err = load_or_create_key(&path, 32).unwrap_err().to_string();
        assert!(
            err.contains("holds 16 bytes where 32 were expected"),
            "{err}"
        );
    }
}
