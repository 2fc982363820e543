//! The mesh benchmark's HTTP traffic, run as child processes of skiff-bench placed
//! in pods' network namespaces (hidden subcommands `mesh-server`, `mesh-client`),
//! as fortio or nighthawk pods would be in Istio's figures.
//!
//! - The server answers every `GET` with `200 ok` (3 bytes) over HTTP/1.1.
//! - The client is an open-loop load generator: a scheduler thread fixes each
//!   request's send time at a constant rate, the requests go over a few kept-alive
//!   HTTP/1.1 connections (one request at a time on each), and each latency runs
//!   from the scheduled send time to the whole response read, so a request that
//!   waits for a free connection counts its wait (no coordinated omission).
//!
//! Each runs on a single-threaded runtime (the client's schedule on a thread of
//! its own): no hand-offs between worker threads in the measured path, on a
//! machine of 2 cores that also runs the agent.
//!
//! The client tells its parent on stdout when the measured window begins
//! ([`MEASURING`]) and ends ([`MEASURED`]), then prints its [`ClientReport`] as one
//! JSON line.

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

/// The server's line on stdout once it listens.
pub const LISTENING: &str = "listening";
/// The client's line on stdout when the first measured request is due.
pub const MEASURING: &str = "measuring";
/// The client's line on stdout when the last measured response has arrived.
pub const MEASURED: &str = "measured";

const BODY: &[u8] = b"ok\n";

#[derive(clap::Args)]
pub struct ServerOptions {
    /// The port to listen on, on every address of the namespace (IPv4 and IPv6).
    #[arg(long)]
    pub port: u16,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientOptions {
    /// Where the requests go (a pod IP or a service VIP, with the port).
    #[arg(long)]
    pub target: SocketAddr,
    /// Requests per second, sent on schedule whatever the latency.
    #[arg(long)]
    pub rate: u32,
    /// Kept-alive HTTP/1.1 connections the requests share.
    #[arg(long)]
    pub connections: usize,
    /// Seconds of requests before the measured window (not recorded).
    #[arg(long)]
    pub warmup: f64,
    /// Seconds of measured requests.
    #[arg(long)]
    pub seconds: f64,
    /// How long the first connection may be refused or time out (a service's
    /// backends reach the dataplane shortly after the pod is Ready).
    #[arg(long, default_value_t = 10.0)]
    pub connect_within: f64,
}

/// What the client measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientReport {
    /// Each measured request's latency, in microseconds, in the order sent.
    pub latencies_us: Vec<f64>,
    /// The local address of each connection: a captured one is connected to the
    /// node proxy's listener on loopback, inside the pod.
    pub local_addrs: Vec<SocketAddr>,
    /// From the first measured request's scheduled time to the last response.
    pub measured_seconds: f64,
}

/// Serves until killed.
pub fn serve(options: ServerOptions) -> Result<()> {
    single_threaded()?.block_on(serve_on(options))
}

/// Runs the load, prints [`MEASURING`], [`MEASURED`] and the report.
pub fn load(options: ClientOptions) -> Result<()> {
    single_threaded()?.block_on(load_on(options))
}

fn single_threaded() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn serve_on(options: ServerOptions) -> Result<()> {
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, options.port));
    // A dual-stack socket: IPv4 clients arrive as IPv4-mapped addresses.
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    announce(LISTENING)?;
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        // Responses go out at once, not after Nagle's delay.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            // A client that goes away ends its connection; nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One scheduled request: when it is due and whether it is measured.
#[derive(Clone, Copy)]
struct Due {
    at: Instant,
    measured: bool,
}

async fn load_on(options: ClientOptions) -> Result<()> {
    ensure!(options.rate > 0, "--rate must be above 0");
    ensure!(options.connections > 0, "--connections must be above 0");
    ensure!(
        options.warmup >= 0.0 && options.seconds > 0.0,
        "--warmup must be 0 or more and --seconds above 0"
    );
    let mut senders = Vec::with_capacity(options.connections);
    let mut local_addrs = Vec::with_capacity(options.connections);
    let connect_within = Duration::from_secs_f64(options.connect_within);
    for _ in 0..options.connections {
        let (sender, local) = connect(options.target, connect_within).await?;
        senders.push(sender);
        local_addrs.push(local);
    }

    let interval = Duration::from_secs_f64(1.0 / f64::from(options.rate));
    let warmup = (options.warmup * f64::from(options.rate)).round() as u64;
    let measured = (options.seconds * f64::from(options.rate)).round() as u64;
    let (due_sender, due) = mpsc::unbounded_channel();
    let due = Arc::new(Mutex::new(due));
    let scheduler = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || schedule(interval, warmup, measured, &due_sender))
        .context("starting the scheduler thread")?;

    let target = options.target;
    let workers: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::spawn(send_when_due(sender, target, due.clone())))
        .collect();
    let mut latencies = Vec::with_capacity(measured as usize);
    for worker in workers {
        latencies.extend(worker.await.context("a connection's task")??);
    }
    let last_response = Instant::now();
    let first_measured = scheduler
        .join()
        .map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))??;
    announce(MEASURED)?;
    ensure!(
        latencies.len() as u64 == measured,
        "{} measured responses for {measured} requests",
        latencies.len()
    );
    // Back in the order sent, which the tasks interleaved.
    latencies.sort_by_key(|(due, _)| *due);
    let report = ClientReport {
        latencies_us: latencies.into_iter().map(|(_, us)| us).collect(),
        local_addrs,
        measured_seconds: first_measured.map_or(0.0, |first| (last_response - first).as_secs_f64()),
    };
    announce(&serde_json::to_string(&report)?)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A kept-alive HTTP/1.1 connection to `target`, and its local address; tried
/// again while refused, for up to `within`.
async fn connect(target: SocketAddr, within: Duration) -> Result<(Sender, SocketAddr)> {
    let deadline = Instant::now() + within;
    let stream = loop {
        let attempt = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target));
        match attempt.await {
            Ok(Ok(stream)) => break stream,
            Ok(Err(error)) if Instant::now() >= deadline => {
                return Err(error).with_context(|| format!("connecting to {target}"));
            }
            Err(_) if Instant::now() >= deadline => bail!("connecting to {target}: timed out"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 to {target}"))?;
    tokio::spawn(connection);
    Ok((sender, local))
}

/// Sends a request on `sender` for each due time it takes from `due`, until the
/// schedule ends; the measured ones' (due time, latency in µs).
async fn send_when_due(
    mut sender: Sender,
    target: SocketAddr,
    due: Arc<Mutex<mpsc::UnboundedReceiver<Due>>>,
) -> Result<Vec<(Instant, f64)>> {
    let mut latencies = Vec::new();
    loop {
        // The lock is held only while waiting for the next due time: whichever
        // connection is free takes it.
        let Some(next) = due.lock().await.recv().await else {
            return Ok(latencies);
        };
        let request = Request::get("/")
            .header(hyper::header::HOST, target.to_string())
            .body(Empty::new())?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("GET http://{target}/"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        ensure!(
            status == StatusCode::OK && body.as_ref() == BODY,
            "GET http://{target}/: {status} {body:?}"
        );
        if next.measured {
            let latency = next.at.elapsed();
            latencies.push((next.at, latency.as_secs_f64() * 1e6));
        }
    }
}

/// Hands out `warmup` then `measured` due times, `interval` apart, each when it is
/// due; announces the measured window. The first measured request's due time.
fn schedule(
    interval: Duration,
    warmup: u64,
    measured: u64,
    due: &mpsc::UnboundedSender<Due>,
) -> Result<Option<Instant>> {
    // Sleeps end when asked, not up to the default 50 µs later.
    // SAFETY: a prctl on this thread with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let start = Instant::now();
    let mut first_measured = None;
    for i in 0..warmup + measured {
        let at = start + interval * u32::try_from(i).context("too many requests")?;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let measured = i >= warmup;
        if measured && first_measured.is_none() {
            first_measured = Some(at);
            announce(MEASURING)?;
        }
        due.send(Due { at, measured })
            .map_err(|_| anyhow::anyhow!("every connection failed"))?;
    }
    Ok(first_measured)
}

/// One line on stdout, at once (the parent acts on it).
fn announce(line: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}
