//! A real single-member etcd (Debian's etcd-server) on free loopback ports with a
//! data directory of its own, killed and removed when the test lets go of it (also
//! when the test panics); clients over plain HTTP or TLS with client certificates.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's etcd-server, installed by `cargo xtask setup`.
pub const ETCD: &str = "/usr/bin/etcd";
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at starting, each on new ports: another process may take a free port
/// between the probe that found it and etcd's bind.
const START_ATTEMPTS: usize = 3;

pub struct EtcdServer {
    child: Child,
    ports: Ports,
    tls: Option<ServerTls>,
    /// Holds the data directory and etcd's log; removed after the process is gone.
    dir: tempfile::TempDir,
}

/// TLS on etcd's client port, with client certificates checked against the CA.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy)]
struct Ports {
    client: u16,
    peer: u16,
    /// Plain HTTP `/health`, whatever the client port speaks.
    metrics: u16,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves requests.
    pub fn start() -> EtcdServer {
        Self::start_with(None)
    }

    /// The same, serving clients over TLS only.
    pub fn start_tls(tls: ServerTls) -> EtcdServer {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls>) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("skiff-test-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let ports = Ports {
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
            };
            let mut child = spawn(dir.path(), ports, tls.as_ref());
            match wait_until_healthy(&mut child, ports, dir.path()) {
                Ok(()) => {
                    return EtcdServer {
                        child,
                        ports,
                        tls,
                        dir,
                    };
                }
                Err(failure) => {
                    failures.push(failure);
                    let _ = child.kill();
                    let _ = child.wait();
                    // A member half made on other ports would not start on new ones.
                    let _ = std::fs::remove_dir_all(dir.path().join("data"));
                }
            }
        }
        panic!("etcd did not start: {failures:#?}");
    }

    /// `host:port` of the client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }

    /// The agent's `--store` for this server.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// The configuration of a store client for this server, without TLS.
    pub fn config(&self) -> skiff::store::etcd::EtcdConfig {
        skiff::store::etcd::EtcdConfig {
            endpoints: vec![self.endpoint()],
            tls: None,
        }
    }

    /// Kills etcd (SIGKILL); [`EtcdServer::restart`] brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a killed etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.child = spawn(self.dir.path(), self.ports, self.tls.as_ref());
        if let Err(failure) = wait_until_healthy(&mut self.child, self.ports, self.dir.path()) {
            panic!("etcd did not come back: {failure}");
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls etcd's `/health` until it reports healthy, or says why it did not.
fn wait_until_healthy(child: &mut Child, ports: Ports, dir: &Path) -> Result<(), String> {
    let log = || std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("etcd exited ({status}): {}", log()));
        }
        if health(ports.metrics).is_ok_and(|body| body.contains(r#""health":"true""#)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "etcd was not healthy within {START_TIMEOUT:?}: {}",
        log()
    ))
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("etcd.log")
}

fn spawn(dir: &Path, ports: Ports, tls: Option<&ServerTls>) -> Child {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{}", ports.client);
    let peer_url = format!("http://127.0.0.1:{}", ports.peer);
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .expect("etcd log file");
    let mut command = Command::new(ETCD);
    command
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .arg("--listen-metrics-urls")
        .arg(format!("http://127.0.0.1:{}", ports.metrics))
        // A single member elects itself in tens of milliseconds with these.
        .args(["--heartbeat-interval", "10", "--election-timeout", "50"])
        .args(["--log-level", "warn", "--logger", "zap"]);
    if let Some(tls) = tls {
        command
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&tls.ca)
            .arg("--cert-file")
            .arg(&tls.cert)
            .arg("--key-file")
            .arg(&tls.key);
    }
    command
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {ETCD} (cargo xtask setup installs it): {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The body of `GET /health` on etcd's metrics port.
fn health(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
