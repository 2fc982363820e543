//! The traffic: backends that answer one small request with a small response, and
//! the client process that opens connections to them as fast as it can (connect,
//! one request/response, close), from inside a namespace and a cgroup.
//!
//! The client closes with SO_LINGER 0, so the connection ends with a reset and no
//! socket (client or backend) is left in TIME_WAIT: at tens of thousands of
//! connections a second the ephemeral ports would otherwise run out within seconds,
//! and leftover TIME_WAIT sockets would slow later rounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::lab::{Cgroup, Netns};

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";

/// Backends listening in one namespace, one thread each, counting the connections
/// they answer. Stopped (listeners shut down, threads joined) on drop.
pub struct Backends {
    addrs: Vec<SocketAddrV4>,
    listeners: Vec<Arc<TcpListener>>,
    answered: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backends {
    pub fn start(netns: &Netns, addrs: &[SocketAddrV4]) -> Result<Self> {
        let listeners = netns.run(|| {
            addrs
                .iter()
                .map(|a| TcpListener::bind(a).with_context(|| format!("binding {a}")))
                .collect::<Result<Vec<_>>>()
        })??;
        let mut backends = Self {
            addrs: addrs.to_vec(),
            listeners: Vec::new(),
            answered: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for listener in listeners {
            let listener = Arc::new(listener);
            let answered = Arc::new(AtomicU64::new(0));
            let stop = backends.stop.clone();
            let (l, a) = (listener.clone(), answered.clone());
            let thread = std::thread::Builder::new()
                .name("backend".into())
                .spawn(move || serve(&l, &a, &stop))
                .context("starting a backend thread")?;
            backends.listeners.push(listener);
            backends.answered.push(answered);
            backends.threads.push(thread);
        }
        Ok(backends)
    }

    pub fn addrs(&self) -> &[SocketAddrV4] {
        &self.addrs
    }

    /// Connections answered so far, by backend.
    pub fn answered(&self) -> Vec<u64> {
        self.answered
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for listener in &self.listeners {
            // Wakes the thread blocked in accept() (it then fails with EINVAL).
            // SAFETY: shutdown on a socket this struct keeps open.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, answered: &AtomicU64, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut request = [0u8; REQUEST.len()];
        if conn.read_exact(&mut request).is_ok() && conn.write_all(RESPONSE).is_ok() {
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one client run reports.
#[derive(Debug, Clone, Copy)]
pub struct ClientRun {
    /// Connections completed in the measured window.
    pub measured: u64,
    pub seconds: f64,
    /// Connections completed in all, warm-up included.
    pub total: u64,
}

impl ClientRun {
    pub fn per_second(&self) -> f64 {
        self.measured as f64 / self.seconds
    }
}

/// What the client process is told.
pub struct ClientSpec<'a> {
    pub targets: &'a [SocketAddr],
    pub threads: usize,
    pub warmup: Duration,
    pub seconds: Duration,
}

/// Starts this benchmark's own binary as the client, inside `netns` and `cgroup`,
/// and waits for its figures.
pub fn run_client(netns: &Netns, cgroup: &Cgroup, spec: &ClientSpec) -> Result<ClientRun> {
    let exe = std::env::current_exe().context("finding skiff-bench's own path")?;
    let targets: Vec<String> = spec.targets.iter().map(|t| t.to_string()).collect();
    let out = netns
        .command(&exe, Some(cgroup))?
        .args([
            "dataplane",
            "--client-targets",
            &targets.join(","),
            "--clients",
            &spec.threads.to_string(),
            "--warmup",
            &spec.warmup.as_secs_f64().to_string(),
            "--seconds",
            &spec.seconds.as_secs_f64().to_string(),
        ])
        .output()
        .context("running the client")?;
    if !out.status.success() {
        bail!(
            "the client ({} in {}) failed ({}): {}",
            targets.join(","),
            netns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    match fields.as_slice() {
        [measured, seconds, total] => Ok(ClientRun {
            measured: measured.parse()?,
            seconds: seconds.parse()?,
            total: total.parse()?,
        }),
        _ => bail!("the client printed {stdout:?}"),
    }
}

/// The client process: `spec.threads` threads, each connecting again and again
/// (to a target picked at random each time); prints `measured seconds total`.
pub fn client_main(spec: &ClientSpec) -> Result<()> {
    if spec.targets.is_empty() || spec.threads == 0 {
        bail!("the client needs targets and threads");
    }
    let start = Barrier::new(spec.threads + 1);
    let window = std::thread::scope(|s| {
        let workers: Vec<_> = (0..spec.threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let begins = Instant::now() + spec.warmup;
                    let ends = begins + spec.seconds;
                    let (mut total, mut measured) = (0u64, 0u64);
                    // Several targets (direct connections) are picked at random, as
                    // the load balancers pick backends: a fixed rotation would keep
                    // the two client threads off each other's backends, which the
                    // balanced modes do not.
                    let mut random = Xorshift::seeded(t);
                    loop {
                        let now = Instant::now();
                        if now >= ends {
                            return Ok::<_, anyhow::Error>((measured, total));
                        }
                        let target = spec.targets[random.below(spec.targets.len())];
                        exchange(target).with_context(|| format!("connection to {target}"))?;
                        total += 1;
                        if now >= begins {
                            measured += 1;
                        }
                    }
                })
            })
            .collect();
        start.wait();
        let mut sums = (0u64, 0u64);
        for worker in workers {
            let (measured, total) = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            sums.0 += measured;
            sums.1 += total;
        }
        Ok::<_, anyhow::Error>(sums)
    })?;
    println!("{} {} {}", window.0, spec.seconds.as_secs_f64(), window.1);
    Ok(())
}

/// A small, fast pseudo-random generator (xorshift64*): the pick must cost
/// next to nothing beside a connection.
struct Xorshift(u64);

impl Xorshift {
    fn seeded(thread: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self((u64::from(nanos) << 8) | thread as u64 | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

/// One connection: connect, send the request, read the whole response, close with
/// a reset (SO_LINGER 0).
fn exchange(target: SocketAddr) -> Result<()> {
    let mut conn = TcpStream::connect(target)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid pointer to a linger of the size given.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_LINGER");
    }
    conn.write_all(REQUEST)?;
    let mut response = [0u8; RESPONSE.len()];
    conn.read_exact(&mut response)?;
    if response != RESPONSE {
        bail!(
            "unexpected response {:?}",
            String::from_utf8_lossy(&response)
        );
    }
    Ok(())
}
