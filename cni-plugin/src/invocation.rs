//! The CNI_* environment of one call, checked as the spec requires.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::{CniError, code};

/// The verbs of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

/// The CNI_COMMAND of a call.
pub fn command(env: &HashMap<String, String>) -> Result<Command, CniError> {
    let value = env
        .get("CNI_COMMAND")
        .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set", ""))?;
    Ok(match value.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "STATUS" => Command::Status,
        "VERSION" => Command::Version,
        "GC" => Command::Gc,
        other => {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND {other:?} is not a CNI verb"),
                "expected ADD, DEL, CHECK, STATUS, VERSION or GC",
            ));
        }
    })
}

/// The per-container parameters of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    /// Required for ADD and CHECK; DEL may come without it (the netns is gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

impl Invocation {
    pub fn from_env(command: Command, env: &HashMap<String, String>) -> Result<Self, CniError> {
        let get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
        let missing =
            |name: &str| CniError::new(code::INVALID_ENVIRONMENT, format!("{name} is not set"), "");
        let container_id = get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
        check_container_id(&container_id)?;
        let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
        check_ifname(&ifname)?;
        let netns = get("CNI_NETNS").map(PathBuf::from);
        let netns = match (command, netns) {
            (Command::Add | Command::Check, None) => return Err(missing("CNI_NETNS")),
            (Command::Add | Command::Check, Some(path)) if !path.exists() => {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("CNI_NETNS {}: no such network namespace", path.display()),
                    "",
                ));
            }
            (_, netns) => netns,
        };
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
        })
    }
}

/// The spec: alphanumeric first, then alphanumerics, '_', '.' or '-'.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_CONTAINERID {id:?} is not a valid container ID"),
            "it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
        ))
    }
}

/// Linux interface names: 1 to 15 bytes, not "." or "..", no '/', ':' or whitespace.
fn check_ifname(name: &str) -> Result<(), CniError> {
    let reason = if name.len() > 15 {
        Some(format!(
            "{} bytes is longer than the 15 Linux allows",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not interface names".into())
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("'/', ':' and whitespace are not allowed".into())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_IFNAME {name:?} is not a valid interface name: {reason}"),
            "",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_env() -> HashMap<String, String> {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ])
    }

    #[test]
    fn every_missing_variable_is_named() {
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let mut e = add_env();
            e.remove(var);
            let err = Invocation::from_env(Command::Add, &e).unwrap_err();
            assert_eq!(
                (err.code, err.msg),
                (code::INVALID_ENVIRONMENT, format!("{var} is not set"))
            );
        }
        let mut e = add_env();
        e.remove("CNI_COMMAND");
        assert_eq!(command(&e).unwrap_err().msg, "CNI_COMMAND is not set");
    }

    #[test]
    fn del_does_not_need_the_netns() {
        let mut e = add_env();
        e.remove("CNI_NETNS");
        let call = Invocation::from_env(Command::Del, &e).unwrap();
        assert_eq!(call.netns, None);
    }

    #[test]
    fn a_netns_that_does_not_exist_is_an_unknown_container() {
        let mut e = add_env();
        e.insert("CNI_NETNS".into(), "/run/netns/skiff-no-such-ns".into());
        let err = Invocation::from_env(Command::Add, &e).unwrap_err();
        assert_eq!(err.code, code::UNKNOWN_CONTAINER);
        assert_eq!(
            err.msg,
            "CNI_NETNS /run/netns/skiff-no-such-ns: no such network namespace"
        );
    }

    #[test]
    fn bad_interface_names_and_container_ids_are_refused() {
        for (name, reason) in [
            (
                "averyveryverylongname",
                "21 bytes is longer than the 15 Linux allows",
            ),
            ("..", "\".\" and \"..\" are not interface names"),
            ("eth 0", "'/', ':' and whitespace are not allowed"),
        ] {
            let mut e = add_env();
            e.insert("CNI_IFNAME".into(), name.into());
            let err = Invocation::from_env(Command::Add, &e).unwrap_err();
            assert!(err.msg.ends_with(reason), "{}", err.msg);
        }
        let mut e = add_env();
        e.insert("CNI_CONTAINERID".into(), "-bad".into());
        let err = Invocation::from_env(Command::Add, &e).unwrap_err();
        assert_eq!(
            err.msg,
            "CNI_CONTAINERID \"-bad\" is not a valid container ID"
        );
    }

    #[test]
    fn unknown_commands_are_refused() {
        let err = command(&env(&[("CNI_COMMAND", "PLUG")])).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("\"PLUG\""));
    }
}
