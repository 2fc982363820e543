//! The sockets, served by hickory-server: on each listen address, one UDP
//! socket per core sharing the port (SO_REUSEPORT, so the kernel spreads
//! clients over them and hickory-server serves each from its own task) and a
//! TCP listener; and the upstream resolver (hickory-resolver, with its cache)
//! for names outside the zone, from the host's resolv.conf.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use super::Error;
use super::handler::Handler;

/// How long an idle TCP connection is kept (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Answers queued for sending on one TCP connection.
const TCP_RESPONSE_QUEUE: usize = 32;
/// How often a port-0 address is retried when TCP finds UDP's port taken.
const PORT_ATTEMPTS: usize = 16;

/// The sockets of one listen address.
pub struct Bound {
    /// Every UDP socket shares this address (the port chosen for port 0).
    pub address: SocketAddr,
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
}

/// Binds `udp_sockets` UDP sockets and a TCP listener on `addr`, on the same
/// port. Binding works before the address is on an interface (IP_FREEBIND), as
/// the pods' gateway addresses are until the first pod starts.
pub fn bind(addr: SocketAddr, udp_sockets: usize) -> Result<Bound, Error> {
    let fail = |source| Error::Bind { addr, source };
    for _ in 0..PORT_ATTEMPTS {
        let first = socket(addr, Type::DGRAM, IpProtocol::UDP).map_err(fail)?;
        let address = first
            .local_addr()
            .map_err(fail)?
            .as_socket()
            .ok_or_else(|| fail(std::io::Error::other("not an IP socket")))?;
        let tcp = match socket(address, Type::STREAM, IpProtocol::TCP) {
            Ok(tcp) => tcp,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() == 0 => continue,
            Err(e) => return Err(fail(e)),
        };
        tcp.listen(1024).map_err(fail)?;
        let mut udp = vec![first];
        for _ in 1..udp_sockets {
            udp.push(socket(address, Type::DGRAM, IpProtocol::UDP).map_err(fail)?);
        }
        return Ok(Bound {
            address,
            udp: udp
                .into_iter()
                .map(|s| UdpSocket::from_std(s.into()))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
            tcp: TcpListener::from_std(tcp.into()).map_err(fail)?,
        });
    }
    Err(fail(std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

fn socket(addr: SocketAddr, kind: Type, protocol: IpProtocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    match addr.ip() {
        IpAddr::V4(_) => socket.set_freebind_v4(true)?,
        IpAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    match kind {
        Type::STREAM => socket.set_reuse_address(true)?,
        _ => socket.set_reuse_port(true)?,
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// hickory-server answering every bound socket with `handler`; it serves
/// until dropped.
pub fn serve(handler: Handler, bound: Vec<Bound>) -> Server<Handler> {
    let mut server = Server::new(handler);
    for sockets in bound {
        for udp in sockets.udp {
            server.register_socket(udp);
        }
        server.register_listener(sockets.tcp, TCP_IDLE, TCP_RESPONSE_QUEUE);
    }
    server
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

/// What the server sends for the packet `bytes` from `client`, without a
/// socket (for tests and the fuzz target): the packet decoded as hickory-server
/// decodes it, answered by `handler`, and encoded as hickory-server encodes
/// for `protocol`. None for a packet hickory-server does not hand to the
/// handler: one it drops, or answers FORMERR itself because it does not decode.
/// Names outside the zone must not need an upstream resolver (which needs a
/// tokio runtime).
pub fn answer_bytes(
    handler: &Handler,
    bytes: &[u8],
    client: IpAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let request =
        Request::from_bytes(bytes.to_vec(), SocketAddr::new(client, 53), protocol).ok()?;
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let sent = Captured {
        protocol,
        bytes: Arc::default(),
    };
    futures::executor::block_on(handler.handle_request::<_, TokioTime>(&request, sent.clone()));
    let bytes = std::mem::take(&mut *sent.bytes.lock().unwrap_or_else(|p| p.into_inner()));
    Some(bytes)
}

/// Keeps the bytes of the response instead of sending them.
#[derive(Clone)]
struct Captured {
    protocol: Protocol,
    bytes: Arc<Mutex<Vec<u8>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Captured {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // hickory-server's limit: the response's EDNS size, else 512, over UDP.
        let limit = match self.protocol {
            Protocol::Udp => response.edns().map_or(512, |e| e.max_payload()),
            _ => u16::MAX,
        };
        let mut bytes = Vec::new();
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let id = response.metadata().id;
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(_) => {
                // hickory-server's fallback for what does not encode: a
                // SERVFAIL header.
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                bytes.clear();
                header.emit(&mut BinEncoder::new(&mut bytes))?;
                ResponseInfo::from(header)
            }
        };
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
        Ok(info)
    }
}
