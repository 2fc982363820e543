//! The sockets: UDP and TCP on each listen address, each request answered by the
//! [`Handler`]; names outside the zone resolved through hickory-resolver (with
//! its cache) against the nameservers of the host's resolv.conf.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use log::{debug, warn};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::Error;
use super::handler::{Handler, Outcome, Reply, Transport, finish, response_to};
use super::metrics::{DnsMetrics, QueryLabels};

/// How long an idle TCP connection is kept (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// A UDP request larger than this is not a query worth reading whole.
const UDP_BUFFER: usize = 4096;
/// How often a port-0 address is retried when TCP finds UDP's port taken.
const PORT_ATTEMPTS: usize = 16;

/// Binds UDP and TCP on `addr`, on the same port. Binding works before the
/// address is on an interface (IP_FREEBIND), as the pods' gateway addresses are
/// until the first pod starts.
pub fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let fail = |source| Error::Bind { addr, source };
    for _ in 0..PORT_ATTEMPTS {
        let udp = socket(addr, Type::DGRAM, Protocol::UDP).map_err(fail)?;
        let bound = udp
            .local_addr()
            .map_err(fail)?
            .as_socket()
            .ok_or_else(|| fail(std::io::Error::other("not an IP socket")))?;
        match socket(bound, Type::STREAM, Protocol::TCP) {
            Ok(tcp) => {
                tcp.listen(1024).map_err(fail)?;
                let udp = UdpSocket::from_std(udp.into()).map_err(fail)?;
                let tcp = TcpListener::from_std(tcp.into()).map_err(fail)?;
                return Ok((udp, tcp));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() == 0 => continue,
            Err(e) => return Err(fail(e)),
        }
    }
    Err(fail(std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

fn socket(addr: SocketAddr, kind: Type, protocol: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    match addr.ip() {
        IpAddr::V4(_) => socket.set_freebind_v4(true)?,
        IpAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    if kind == Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The forwarding resolver for names outside the zone.
pub fn upstream(resolv_conf: &Path) -> Result<TokioResolver, Error> {
    let fail = |reason: String| Error::Upstream {
        path: resolv_conf.to_path_buf(),
        reason,
    };
    let text = std::fs::read(resolv_conf).map_err(|e| fail(e.to_string()))?;
    let (config, mut options) =
        hickory_resolver::system_conf::parse_resolv_conf(text).map_err(|e| fail(e.to_string()))?;
    // Questions arrive fully qualified: the host's search list must not apply.
    options.ndots = 0;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| fail(e.to_string()))
}

/// What every socket task shares.
pub struct Shared {
    pub handler: Handler,
    pub upstream: Option<TokioResolver>,
    pub metrics: DnsMetrics,
}

impl Shared {
    /// The answer to `bytes` (None: say nothing), counted in the metrics.
    async fn answer(&self, bytes: &[u8], client: IpAddr, transport: Transport) -> Option<Vec<u8>> {
        let started = Instant::now();
        match self.handler.handle(bytes, client, transport) {
            Outcome::Drop => None,
            Outcome::Reply(reply) => Some(self.counted(reply, transport, started)),
            Outcome::Forward(request) => Some(self.forwarded(&request, transport, started).await),
        }
    }

    /// The upstream's answer to `request`, counted in the metrics.
    async fn forwarded(
        &self,
        request: &Message,
        transport: Transport,
        started: Instant,
    ) -> Vec<u8> {
        let reply = self.forward(request, transport).await;
        self.counted(reply, transport, started)
    }

    /// Counts `reply` (asked at `started`) and returns its bytes.
    fn counted(&self, reply: Reply, transport: Transport, started: Instant) -> Vec<u8> {
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                r#type: reply
                    .query_type
                    .map_or_else(|| "none".to_string(), |t| t.to_string()),
                rcode: rcode_name(reply.code),
                protocol: match transport {
                    Transport::Udp => "udp",
                    Transport::Tcp => "tcp",
                },
            })
            .inc();
        reply.bytes
    }

    async fn forward(&self, request: &Message, transport: Transport) -> Reply {
        let mut response = response_to(request, true);
        let code = match (&self.upstream, request.queries.first()) {
            (Some(resolver), Some(query)) => {
                match resolver
                    .lookup(query.name().clone(), query.query_type())
                    .await
                {
                    Ok(lookup) => {
                        response.add_answers(lookup.answers().iter().cloned());
                        ResponseCode::NoError
                    }
                    Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                        if let Some(soa) = none.soa {
                            response.add_authority(soa.into_record_of_rdata());
                        }
                        none.response_code
                    }
                    Err(e) => {
                        debug!("cluster DNS: forwarding {}: {e}", query.name());
                        ResponseCode::ServFail
                    }
                }
            }
            _ => ResponseCode::ServFail,
        };
        response.metadata.response_code = code;
        finish(response, request, transport)
    }
}

/// The mnemonic of a response code, as dig prints it (hickory's Display is prose).
fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

/// Answers UDP requests until the task is dropped.
pub async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; UDP_BUFFER];
    loop {
        let (len, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                // ICMP errors from earlier replies surface here; the socket is fine.
                debug!("cluster DNS: receiving: {e}");
                continue;
            }
        };
        let started = Instant::now();
        // Zone answers inline (no task per query); a forwarded question gets a
        // task of its own so it does not hold up the rest.
        let reply = match shared
            .handler
            .handle(&buffer[..len], client.ip(), Transport::Udp)
        {
            Outcome::Drop => continue,
            Outcome::Reply(reply) => shared.counted(reply, Transport::Udp, started),
            Outcome::Forward(request) => {
                let (socket, shared) = (socket.clone(), shared.clone());
                tokio::spawn(async move {
                    let reply = shared.forwarded(&request, Transport::Udp, started).await;
                    send(&socket, &reply, client).await;
                });
                continue;
            }
        };
        send(&socket, &reply, client).await;
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(e) = socket.send_to(reply, client).await {
        debug!("cluster DNS: answering {client}: {e}");
    }
}

/// Answers TCP connections until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                tokio::spawn(connection(stream, client, shared.clone()));
            }
            Err(e) => {
                warn!("cluster DNS: accepting a TCP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Length-prefixed requests on one connection, answered in order, until the
/// client closes it, sends something unanswerable, or idles.
async fn connection(mut stream: TcpStream, client: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut request = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut request)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = shared.answer(&request, client.ip(), Transport::Tcp).await else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
