//! `skiff-cni install`: puts the plugin where CNI runtimes look for plugins and
//! writes a network configuration list for it, named to sort before the others in
//! the directory (runtimes that read one file take the first).
//!
//! The list asks for CNI 1.0.0 unless told otherwise: runtimes built on libcni
//! before 1.2 (podman 4.3 and containerd 1.6, Debian bookworm's) refuse a 1.1.0
//! list outright ("unsupported CNI result version"), and 1.0.0 only gives up what
//! 1.1.0 runtimes add on top (GC and STATUS calls).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

/// Marks configuration files this command wrote (and may therefore replace).
const MANAGED_BY: &str = "skiff.io/managed-by";
const MANAGER: &str = "skiff-cni install";
const CONFLIST_NAME: &str = "05-skiff.conflist";
/// The newest version runtimes on libcni before 1.2 accept.
const DEFAULT_LIST_VERSION: &str = "1.0.0";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "skiff-cni install",
    about = "Install skiff-cni for CNI runtimes"
)]
pub struct Options {
    /// The node's pod CIDRs, at most one per family
    #[arg(long = "pod-cidr", required = true, value_name = "CIDR")]
    pub pod_cidrs: Vec<IpNet>,
    /// Where runtimes look for plugins
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where runtimes look for network configurations
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The network's name
    #[arg(long, default_value = "skiff")]
    pub name: String,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Where the plugin keeps its allocations (default /var/lib/cni/skiff)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The CNI version the list asks for (1.1.0 needs a runtime on libcni 1.2+)
    #[arg(long, default_value = DEFAULT_LIST_VERSION, value_parser = crate::SUPPORTED_VERSIONS)]
    pub cni_version: String,
    /// Nameservers pods get (the cluster DNS addresses)
    #[arg(long = "dns-server", value_name = "IP")]
    pub dns_servers: Vec<std::net::IpAddr>,
    /// DNS search domains pods get
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Replace a configuration file skiff-cni did not write
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} exists and was not written by skiff-cni; pass --force to replace it", .0.display())]
    Foreign(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub binary: PathBuf,
    pub conflist: PathBuf,
}

pub fn install(options: &Options, binary: &Path) -> Result<Installed, InstallError> {
    let conflist = conflist(options)?;
    let installed = Installed {
        binary: options.bin_dir.join("skiff-cni"),
        conflist: options.conf_dir.join(CONFLIST_NAME),
    };
    if let Ok(existing) = std::fs::read(&installed.conflist) {
        let ours = serde_json::from_slice::<serde_json::Value>(&existing)
            .is_ok_and(|v| v[MANAGED_BY] == MANAGER);
        if !ours && !options.force {
            return Err(InstallError::Foreign(installed.conflist));
        }
    }
    let bytes = std::fs::read(binary).map_err(io(binary))?;
    write_atomically(&installed.binary, &bytes, 0o755)?;
    write_atomically(&installed.conflist, conflist.as_bytes(), 0o644)?;
    Ok(installed)
}

/// The configuration list for the options (also what the agent uses itself).
pub fn conflist(options: &Options) -> Result<String, InstallError> {
    let families: Vec<bool> = options
        .pod_cidrs
        .iter()
        .map(|c| c.addr().is_ipv4())
        .collect();
    if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        return Err(InstallError::Invalid(
            "--pod-cidr: give at most one CIDR per IP family".into(),
        ));
    }
    let mut plugin = json!({
        "type": "skiff-cni",
        "ipam": {"podCIDRs": options.pod_cidrs.iter().map(|c| c.trunc().to_string()).collect::<Vec<_>>()},
    });
    if let Some(mtu) = options.mtu {
        plugin["mtu"] = json!(mtu);
    }
    if let Some(data_dir) = &options.data_dir {
        if !data_dir.is_absolute() {
            return Err(InstallError::Invalid(format!(
                "--data-dir {}: give an absolute path (the plugin runs from anywhere)",
                data_dir.display()
            )));
        }
        plugin["ipam"]["dataDir"] = json!(data_dir);
    }
    if !options.dns_servers.is_empty() || !options.dns_search.is_empty() {
        plugin["dns"] = json!({"nameservers": options.dns_servers, "search": options.dns_search});
    }
    let list = json!({
        "cniVersion": options.cni_version,
        "name": options.name,
        MANAGED_BY: MANAGER,
        "plugins": [plugin],
    });
    serde_json::to_string_pretty(&list)
        .map_err(|e| InstallError::Invalid(format!("encoding the configuration: {e}")))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes next to `path`, then renames over it: a runtime never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temporary = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("skiff")
    ));
    let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(&temporary))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
        .map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn options(dir: &Path, extra: &[&str]) -> Options {
        let bin = dir.join("bin");
        let conf = dir.join("net.d");
        let mut args = vec![
            "install".to_string(),
            "--pod-cidr".into(),
            "10.244.0.0/24".into(),
            "--pod-cidr".into(),
            "fd00:10:244::/64".into(),
            "--bin-dir".into(),
            bin.display().to_string(),
            "--conf-dir".into(),
            conf.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Options::parse_from(args)
    }

    #[test]
    fn installs_binary_and_a_conflist_the_plugin_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let fake_binary = dir.path().join("skiff-cni-build");
        std::fs::write(&fake_binary, b"#!binary").unwrap();
        let data_dir = dir.path().join("data").display().to_string();
        let installed = install(
            &options(
                dir.path(),
                &["--dns-server", "10.96.0.10", "--data-dir", &data_dir],
            ),
            &fake_binary,
        )
        .unwrap();
        assert_eq!(std::fs::read(&installed.binary).unwrap(), b"#!binary");
        let mode = std::fs::metadata(&installed.binary)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(installed.conflist.ends_with("05-skiff.conflist"));

        // The plugin entry, with what the runtime injects, is a valid configuration.
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&installed.conflist).unwrap()).unwrap();
        let mut plugin = list["plugins"][0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let conf = crate::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.pod_cidrs.len(), 2);
        assert_eq!(conf.data_dir, Path::new(&data_dir));
        // What podman 4.3 and containerd 1.6 accept, unless asked for more.
        assert_eq!(conf.cni_version, "1.0.0");
        let newer = conflist(&options(dir.path(), &["--cni-version", "1.1.0"])).unwrap();
        assert!(newer.contains(r#""cniVersion": "1.1.0""#), "{newer}");

        // Reinstalling over our own file is fine.
        install(&options(dir.path(), &[]), &fake_binary).unwrap();
    }

    #[test]
    fn a_foreign_file_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let fake_binary = dir.path().join("b");
        std::fs::write(&fake_binary, b"x").unwrap();
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::write(conf_dir.join(CONFLIST_NAME), b"{\"name\":\"theirs\"}").unwrap();
        let err = install(&options(dir.path(), &[]), &fake_binary).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("exists and was not written by skiff-cni; pass --force to replace it"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(conf_dir.join(CONFLIST_NAME)).unwrap(),
            b"{\"name\":\"theirs\"}"
        );
        install(&options(dir.path(), &["--force"]), &fake_binary).unwrap();
    }

    #[test]
    fn a_relative_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = conflist(&options(dir.path(), &["--data-dir", "data"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--data-dir data: give an absolute path (the plugin runs from anywhere)"
        );
    }

    #[test]
    fn two_cidrs_of_one_family_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), &[]);
        opts.pod_cidrs[1] = "10.245.0.0/24".parse().unwrap();
        assert!(
            conflist(&opts)
                .unwrap_err()
                .to_string()
                .contains("at most one CIDR per IP family")
        );
    }
}
