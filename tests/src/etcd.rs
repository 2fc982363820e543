//! A real single-member etcd (Debian's etcd-server) on free loopback ports (or on
//! an address inside a network namespace the test made) with a data directory of its own, killed and removed when the test lets go of it (also
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
    place: Place,
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

/// Where etcd listens.
#[derive(Clone)]
struct Place {
    /// The network namespace it runs in; None: the test's own.
    netns: Option<PathBuf>,
    /// The address of its client and peer URLs.
    host: String,
    client: u16,
    peer: u16,
    /// Plain HTTP `/health` on the namespace's loopback, whatever the client port speaks.
    metrics: u16,
}

impl Place {
    fn on_loopback() -> Place {
        Place {
            netns: None,
            host: "127.0.0.1".into(),
            client: free_port(),
            peer: free_port(),
            metrics: free_port(),
        }
    }
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

    /// Starts etcd inside `netns` (one the test made, so etcd's usual ports are
    /// free there), serving clients on `host`, e.g. a bridge address other
    /// namespaces reach.
    pub fn start_in(netns: &crate::netns::NetNs, host: &str) -> EtcdServer {
        let place = || Place {
            netns: Some(netns.path()),
            host: host.to_string(),
            client: 2379,
            peer: 2380,
            metrics: 2381,
        };
        Self::start_at(place, None)
    }

    fn start_with(tls: Option<ServerTls>) -> EtcdServer {
        Self::start_at(Place::on_loopback, tls)
    }

    fn start_at(place: impl Fn() -> Place, tls: Option<ServerTls>) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("skiff-test-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let place = place();
            let mut child = spawn(dir.path(), &place, tls.as_ref());
            match wait_until_healthy(&mut child, &place, dir.path()) {
                Ok(()) => {
                    return EtcdServer {
                        child,
                        place,
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
        format!("{}:{}", self.place.host, self.place.client)
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

    /// Freezes etcd (SIGSTOP): its connections stay open and nothing answers, as
    /// when a host hangs or a link silently drops everything.
    pub fn pause(&self) {
        self.send(libc::SIGSTOP);
    }

    /// Lets a paused etcd go on (SIGCONT).
    pub fn resume(&self) {
        self.send(libc::SIGCONT);
    }

    fn send(&self, signal: i32) {
        // SAFETY: kill() on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Starts a killed etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.child = spawn(self.dir.path(), &self.place, self.tls.as_ref());
        if let Err(failure) = wait_until_healthy(&mut self.child, &self.place, self.dir.path()) {
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
fn wait_until_healthy(child: &mut Child, place: &Place, dir: &Path) -> Result<(), String> {
    let log = || std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("etcd exited ({status}): {}", log()));
        }
        if health(place).is_ok_and(|body| body.contains(r#""health":"true""#)) {
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

fn spawn(dir: &Path, place: &Place, tls: Option<&ServerTls>) -> Child {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://{}:{}", place.host, place.client);
    let peer_url = format!("http://{}:{}", place.host, place.peer);
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .expect("etcd log file");
    let mut command = match &place.netns {
        Some(netns) => crate::netns::command_at(netns, ETCD),
        None => Command::new(ETCD),
    };
    command
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .arg("--listen-metrics-urls")
        .arg(format!("http://127.0.0.1:{}", place.metrics))
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
fn health(place: &Place) -> std::io::Result<String> {
    let connect = || TcpStream::connect(("127.0.0.1", place.metrics));
    let mut stream = match &place.netns {
        Some(netns) => crate::netns::run_at(netns, connect),
        None => connect(),
    }?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
