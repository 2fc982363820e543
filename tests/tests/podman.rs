//! A real CNI runtime on a skiff-cni network: podman 4.3 (CNI backend, runc,
//! cgroupfs) runs a busybox httpd on the network `skiff-cni install` wrote, the
//! node reaches it over IPv4 and IPv6, and removing the container makes podman call
//! the plugin's DEL.
//!
//! podman is confined as far as it allows: it runs inside a test "node" network
//! namespace (so the plugin's routes and sysctls land there), reads its own
//! containers.conf and storage.conf, keeps storage, state, locks and events in a
//! temporary directory, and finds the plugin and the network there too. What it
//! still shares with the host: each container's netns under /run/netns, its cgroups
//! under libpod_parent and libcni's result cache under /var/lib/cni/results, all
//! removed with the container (the libpod_parent directories stay, as with any
//! podman).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::netns::NetNs;
use skiff_tests::{cni, require_root, unique_name, workspace_bin};

const HTTP_PORT: u16 = 8080;

/// podman confined to a node namespace and a temporary directory; its containers
/// are removed on drop.
struct Podman {
    node: NetNs,
    dir: tempfile::TempDir,
    network: String,
}

impl Podman {
    fn new() -> Self {
        require_root();
        let podman = Podman {
            node: NetNs::new(),
            dir: tempfile::tempdir().expect("podman's directory"),
            network: unique_name("skiff-podman"),
        };
        let path = |name: &str| toml_string(&podman.path(name));
        let containers_conf = format!(
            "[engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             tmp_dir = {tmp}\n\
             lock_type = \"file\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = {events}\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{bin}, \"/usr/lib/cni\"]\n\
             network_config_dir = {conf}\n",
            tmp = path("tmp"),
            events = path("tmp/events.log"),
            bin = path("bin"),
            conf = path("net.d"),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            path("storage"),
            path("run"),
        );
        std::fs::write(podman.path("containers.conf"), containers_conf).unwrap();
        std::fs::write(podman.path("storage.conf"), storage_conf).unwrap();
        podman
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `podman ARGS` in the node namespace with this instance's configuration;
    /// returns stdout, failing the test with stderr when podman fails.
    fn podman(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("run podman (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("podman's output is UTF-8")
    }

    fn command(&self) -> Command {
        let mut cmd = self.node.command("podman");
        cmd.env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"));
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
    }
}

/// A path as a TOML basic string (Debug quoting escapes what TOML needs escaped).
fn toml_string(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A root filesystem of Debian's static busybox with a link per applet, serving
/// `page` as /www/index.html.
fn busybox_rootfs(root: &Path, page: &str) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    assert!(list.status.success());
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), page).unwrap();
}

/// GET / from `ip`, retrying while the server is still starting.
fn http_get(ip: IpAddr) -> String {
    let address = SocketAddr::new(ip, HTTP_PORT);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => panic!("connecting to {address}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn podman_runs_a_container_on_a_skiff_cni_network_reachable_on_both_families() {
    let podman = Podman::new();
    let data_dir = podman.path("data");
    let installed = Command::new(workspace_bin("skiff-cni"))
        .args(["install", "--name", &podman.network])
        .args([
            "--pod-cidr",
            "10.244.0.0/24",
            "--pod-cidr",
            "fd00:10:244::/64",
        ])
        .arg("--bin-dir")
        .arg(podman.path("bin"))
        .arg("--conf-dir")
        .arg(podman.path("net.d"))
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        installed.status.success(),
        "skiff-cni install: {}",
        String::from_utf8_lossy(&installed.stderr)
    );

    let rootfs = podman.path("rootfs");
    let page = format!("served by busybox on {}\n", podman.network);
    busybox_rootfs(&rootfs, &page);
    let port = HTTP_PORT.to_string();
    let id = podman.podman(&[
        "run",
        "--detach",
        "--network",
        &podman.network,
        // Within the hard limits: root here lacks CAP_SYS_RESOURCE.
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=32768:32768",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "/bin/httpd",
        "-f",
        "-p",
        &port,
        "-h",
        "/www",
    ]);
    let id = id.trim();

    // The addresses podman got from the plugin's result are the ones it allocated.
    let inspected: Value = serde_json::from_str(&podman.podman(&["inspect", id])).unwrap();
    let settings = &inspected[0]["NetworkSettings"];
    let network = &settings["Networks"][&podman.network];
    let ip = |field: &str| -> IpAddr {
        network[field]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("{field} in {network}"))
    };
    let (v4, v6) = (ip("IPAddress"), ip("GlobalIPv6Address"));
    assert!(v4.is_ipv4() && v6.is_ipv6(), "{v4} {v6}");
    let mut allocated: Vec<IpAddr> = cni::allocations(&data_dir, &podman.network)
        .iter()
        .filter(|a| a["containerID"] == id && a["ifname"] == "eth0")
        .map(|a| a["ip"].as_str().unwrap().parse().unwrap())
        .collect();
    allocated.sort();
    assert_eq!(allocated, vec![v4, v6]);
    assert_eq!(cni::veths(&podman.node).len(), 1);

    for ip in [v4, v6] {
        let reply = podman.node.run(|| http_get(ip));
        let status = reply.lines().next().unwrap_or_default();
        assert!(status.ends_with(" 200 OK"), "{ip}: {reply}");
        assert!(reply.ends_with(&page), "{ip}: {reply}");
    }

    let sandbox = settings["SandboxKey"]
        .as_str()
        .expect("SandboxKey")
        .to_string();
    assert!(Path::new(&sandbox).exists(), "{sandbox}");
    podman.podman(&["rm", "--force", "--time", "0", id]);
    // DEL ran: the addresses are back, the veth and the container's netns are gone.
    assert_eq!(
        cni::allocations(&data_dir, &podman.network),
        Vec::<Value>::new()
    );
    assert_eq!(cni::veths(&podman.node), Vec::<String>::new());
    assert!(!Path::new(&sandbox).exists(), "{sandbox} is left");
}
