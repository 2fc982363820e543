//! Container probes as the kubelet runs them: startup, liveness and readiness,
//! each an exec, an HTTP GET or a TCP connect, on its own schedule (initial delay,
//! period, timeout) with success and failure thresholds.
//!
//! [`Tracker`] is the plain-data count of consecutive results; [`check`] runs one
//! probe (blocking: call it off the async runtime).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::model::{Container, IntOrString, Probe};

use super::oci::Oci;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What a run of probes decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough results in a row yet to change anything.
    Undecided,
    /// successThreshold successes in a row.
    Passed,
    /// failureThreshold failures in a row; the last failure's reason.
    Failed(String),
}

/// Consecutive results of one probe of one container attempt.
#[derive(Clone, Debug)]
pub struct Tracker {
    /// The container attempt the counts belong to (reset on restart).
    pub container_id: String,
    pub successes: u32,
    pub failures: u32,
    pub next_run: Instant,
}

impl Tracker {
    /// A tracker for a container that started at `started`: the first run comes
    /// after the probe's initial delay.
    pub fn new(container_id: &str, probe: &Probe, started: Instant) -> Self {
        Self {
            container_id: container_id.to_string(),
            successes: 0,
            failures: 0,
            next_run: started + seconds(probe.initial_delay_seconds, 0),
        }
    }

    /// Counts a result and schedules the next run.
    pub fn record(&mut self, probe: &Probe, result: Result<(), String>, now: Instant) -> Verdict {
        self.next_run = now + seconds(probe.period_seconds, 10);
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= threshold(probe.success_threshold) {
                    Verdict::Passed
                } else {
                    Verdict::Undecided
                }
            }
            Err(reason) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures >= threshold(probe.failure_threshold.or(Some(3))) {
                    Verdict::Failed(reason)
                } else {
                    Verdict::Undecided
                }
            }
        }
    }
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

fn threshold(value: Option<i32>) -> u32 {
    value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(1)
}

/// Runs `probe` once against a container whose runc ID is `container_id` and whose
/// pod has `pod_ip`.
pub fn check(
    probe: &Probe,
    container: &Container,
    container_id: &str,
    pod_ip: IpAddr,
    oci: &Oci,
) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(exec) = &probe.exec {
        let output = oci
            .exec(container_id, &exec.command, timeout)
            .map_err(|e| e.to_string())?;
        return match output.code {
            _ if output.timed_out => Err(format!("command timed out after {}s", timeout.as_secs())),
            Some(0) => Ok(()),
            code => Err(format!(
                "command {:?} exited with {}: {}",
                exec.command,
                code.map_or("a signal".to_string(), |c| c.to_string()),
                output.output.trim()
            )),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = port(&http.port, container)?;
        let host = http
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(pod_ip);
        return http_get(
            SocketAddr::new(host, port),
            http.path.as_deref().unwrap_or("/"),
            timeout,
        );
    }
    if let Some(tcp) = &probe.tcp_socket {
        let addr = SocketAddr::new(pod_ip, port(&tcp.port, container)?);
        return TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|e| format!("dial tcp {addr}: {e}"));
    }
    Err("the probe has no handler".into())
}

/// A port number, or the name of one of the container's ports.
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("the container has no port named {name:?}"))?,
    };
    u16::try_from(number).map_err(|_| format!("{number} is not a port"))
}

/// HTTP GET: a status from 200 to 399 passes, as Kubernetes has it.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("Get \"http://{addr}{path}\": {e}");
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream.set_read_timeout(Some(left)).map_err(fail)?;
    stream.set_write_timeout(Some(left)).map_err(fail)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: skiff-probe/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(request.as_bytes()).map_err(fail)?;
    // The status line is all that is needed.
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).map_err(fail)?;
    let line = String::from_utf8_lossy(&head[..read]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("Get \"http://{addr}{path}\": not an HTTP response"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerPort, TcpSocketAction};

    fn probe(success: Option<i32>, failure: Option<i32>) -> Probe {
        Probe {
            period_seconds: Some(2),
            initial_delay_seconds: Some(5),
            success_threshold: success,
            failure_threshold: failure,
            ..Probe::default()
        }
    }

    #[test]
    fn thresholds_count_results_in_a_row() {
        let p = probe(Some(2), Some(3));
        let start = Instant::now();
        let mut tracker = Tracker::new("c-1", &p, start);
        assert_eq!(tracker.next_run, start + Duration::from_secs(5));
        assert_eq!(tracker.record(&p, Ok(()), start), Verdict::Undecided);
        assert_eq!(tracker.record(&p, Ok(()), start), Verdict::Passed);
        assert_eq!(
            tracker.record(&p, Err("x".into()), start),
            Verdict::Undecided
        );
        assert_eq!(
            tracker.record(&p, Err("y".into()), start),
            Verdict::Undecided
        );
        // A success in between starts the failures over.
        assert_eq!(tracker.record(&p, Ok(()), start), Verdict::Undecided);
        for _ in 0..2 {
            assert_eq!(
                tracker.record(&p, Err("z".into()), start),
                Verdict::Undecided
            );
        }
        assert_eq!(
            tracker.record(&p, Err("last".into()), start),
            Verdict::Failed("last".into())
        );
        assert_eq!(tracker.next_run, start + Duration::from_secs(2));
    }

    #[test]
    fn defaults_are_kubernetes_ones() {
        let p = Probe::default();
        let start = Instant::now();
        let mut tracker = Tracker::new("c-1", &p, start);
        assert_eq!(tracker.next_run, start);
        assert_eq!(tracker.record(&p, Ok(()), start), Verdict::Passed);
        assert_eq!(tracker.next_run, start + Duration::from_secs(10));
        tracker.record(&p, Err("1".into()), start);
        tracker.record(&p, Err("2".into()), start);
        assert_eq!(
            tracker.record(&p, Err("3".into()), start),
            Verdict::Failed("3".into())
        );
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let container = Container {
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }],
            ..Container::default()
        };
        assert_eq!(
            port(&IntOrString::String("http".into()), &container),
            Ok(8080)
        );
        assert_eq!(port(&IntOrString::Int(81), &container), Ok(81));
        assert!(port(&IntOrString::String("grpc".into()), &container).is_err());
    }

    #[test]
    fn tcp_and_http_probes_against_real_sockets() {
        let oci = Oci::new(std::path::Path::new("/nonexistent"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        let http = |path: &str| Probe {
            http_get: Some(crate::model::HttpGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            ..Probe::default()
        };
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let container = Container::default();
        assert_eq!(
            check(&http("/ok"), &container, "c", localhost, &oci),
            Ok(())
        );
        let failed = check(&http("/bad"), &container, "c", localhost, &oci).unwrap_err();
        assert_eq!(failed, "HTTP probe failed with statuscode: 503");
        server.join().unwrap();
        // Nothing listens there any more.
        let tcp = Probe {
            tcp_socket: Some(TcpSocketAction {
                port: IntOrString::Int(i32::from(port)),
            }),
            ..Probe::default()
        };
        let refused = check(&tcp, &container, "c", localhost, &oci).unwrap_err();
        assert!(
            refused.starts_with(&format!("dial tcp 127.0.0.1:{port}: ")),
            "{refused}"
        );
    }
}
