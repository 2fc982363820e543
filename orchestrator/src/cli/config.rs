//! Where the CLI finds the API and its token: flags, then the config file
//! (`$SKIFF_CONFIG` or `~/.skiff/config.yaml`), then the agent's defaults on this
//! host (its socket and token file, readable by root).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::client::Connection;
use crate::api::credentials;

pub const DEFAULT_SOCKET: &str = "/run/skiff/skiff.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/skiff";
pub const TOKEN_FILE: &str = "token";

/// The config file, all fields optional.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub certificate_authority: Option<PathBuf>,
    pub namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("no API token: pass --token or --token-file, or set token/tokenFile in {}; on the agent's host the token is in {}/{TOKEN_FILE} ({reason})", config.display(), DEFAULT_STATE_DIR)]
    NoToken { config: PathBuf, reason: String },
}

/// What the user gave on the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub certificate_authority: Option<PathBuf>,
    pub namespace: Option<String>,
}

/// The resolved connection and default namespace.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connection: Connection,
    pub namespace: String,
}

pub fn config_path(overrides: &Overrides) -> PathBuf {
    overrides
        .config
        .clone()
        .or_else(|| std::env::var_os("SKIFF_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".skiff/config.yaml")
        })
}

/// Reads the config file; a missing file is an empty config.
pub fn read_config(path: &Path) -> Result<ConfigFile, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub fn resolve(overrides: &Overrides) -> Result<Settings, ConfigError> {
    let path = config_path(overrides);
    let file = read_config(&path)?;
    let server = overrides
        .server
        .clone()
        .or(file.server)
        .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
    let token = match (
        &overrides.token,
        &overrides.token_file,
        file.token,
        file.token_file,
    ) {
        (Some(token), _, _, _) => token.clone(),
        (None, Some(token_file), _, _) => read_token(token_file, &path)?,
        (None, None, Some(token), _) => token,
        (None, None, None, Some(token_file)) => read_token(&token_file, &path)?,
        (None, None, None, None) => {
            read_token(&Path::new(DEFAULT_STATE_DIR).join(TOKEN_FILE), &path)?
        }
    };
    Ok(Settings {
        connection: Connection {
            server,
            token,
            ca_cert: overrides
                .certificate_authority
                .clone()
                .or(file.certificate_authority),
        },
        namespace: namespace_of(overrides, file.namespace),
    })
}

/// The default namespace alone, for commands that do not talk to the API.
pub fn namespace(overrides: &Overrides) -> Result<String, ConfigError> {
    let file = read_config(&config_path(overrides))?;
    Ok(namespace_of(overrides, file.namespace))
}

/// The flag's namespace, else the config file's, else "default".
fn namespace_of(overrides: &Overrides, in_file: Option<String>) -> String {
    overrides
        .namespace
        .clone()
        .or(in_file)
        .unwrap_or_else(|| "default".into())
}

fn read_token(path: &Path, config: &Path) -> Result<String, ConfigError> {
    credentials::read_token(path).map_err(|e| ConfigError::NoToken {
        config: config.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "from-file\n").unwrap();
        std::fs::write(
            &config,
            format!(
                "server: unix:///tmp/x.sock\ntokenFile: {}\nnamespace: shop\n",
                token_file.display()
            ),
        )
        .unwrap();
        let mut overrides = Overrides {
            config: Some(config.clone()),
            ..Overrides::default()
        };
        let settings = resolve(&overrides).unwrap();
        assert_eq!(settings.connection.server, "unix:///tmp/x.sock");
        assert_eq!(settings.connection.token, "from-file");
        assert_eq!(settings.namespace, "shop");

        overrides.token = Some("flag".into());
        overrides.namespace = Some("other".into());
        let settings = resolve(&overrides).unwrap();
        assert_eq!(settings.connection.token, "flag");
        assert_eq!(settings.namespace, "other");
    }

    #[test]
    fn unknown_config_keys_and_missing_tokens_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "servr: x\n").unwrap();
        let overrides = Overrides {
            config: Some(config.clone()),
            ..Overrides::default()
        };
        let err = resolve(&overrides).unwrap_err().to_string();
        assert!(
            err.contains("config.yaml") && err.contains("servr"),
            "{err}"
        );

        std::fs::write(
            &config,
            format!("tokenFile: {}/absent\n", dir.path().display()),
        )
        .unwrap();
        let err = resolve(&overrides).unwrap_err().to_string();
        assert!(err.starts_with("no API token: pass --token"), "{err}");
        assert!(err.contains("absent"), "{err}");
    }
}
