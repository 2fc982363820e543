//! HBONE, the tunnel between node proxies (Istio ambient's framing): TCP
//! connections carried as HTTP/2 CONNECT streams inside one mutually
//! authenticated TLS 1.3 connection per pair of proxies, on port 15008.
//!
//! The framing, as on the wire:
//!
//! ```text
//! TCP to peer:15008
//!   TLS 1.3, ALPN "h2"; both sides present workload certificates (see `tls`)
//!     HTTP/2; one stream per proxied connection:
//!       HEADERS  :method = CONNECT, :authority = <original destination>
//!                ("10.244.1.7:8080", "[fd00:10:244:1::7]:8080")
//!       HEADERS  :status = 200 once the server connected to the destination,
//!                403 when authorization denies it, 503 when the destination
//!                refuses, 400 for an authority that is not an address
//!       DATA ... the connection's bytes, both ways; END_STREAM is the half-close
//!                (a FIN on the destination side, and back)
//! ```
//!
//! The source identity is the one in the client's certificate, which the server
//! verified in the handshake; no header can claim another.
//!
//! [`HboneServer`] accepts tunnels, asks an [`Authorize`] callback about each
//! (identity, destination) and connects to the destination. Both sides open
//! their TCP connections through a [`Dialer`], so the node proxy can make them
//! inside a pod's network namespace. [`HboneClient`] opens
//! streams, keeping one HTTP/2 connection per (source identity, peer, peer
//! identity): a connection authenticates one source to one peer, so only streams of
//! that pair can share it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use log::{debug, warn};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ca::Certificates;
use super::identity::Identity;
use super::tls::{self, TlsError};

/// The port node proxies accept tunnels on (Istio's).
pub const HBONE_PORT: u16 = 15008;

/// Whether a source identity may reach a destination; false answers 403.
pub type Authorize = Arc<dyn Fn(&Identity, SocketAddr) -> bool + Send + Sync>;

/// A tunnelled connection: bytes in and out, as a tokio stream.
pub type Tunnel = TokioIo<Upgraded>;

/// Opens a TCP connection to an address; where its socket lives (the host's
/// network namespace, a pod's) is the dialer's choice.
pub type Dialer =
    Arc<dyn Fn(SocketAddr) -> BoxFuture<'static, std::io::Result<TcpStream>> + Send + Sync>;

/// Connects from the caller's own network namespace.
pub fn host_dialer() -> Dialer {
    Arc::new(|addr| Box::pin(TcpStream::connect(addr)))
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("binding the HBONE listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to the peer proxy {peer}: {source}")]
    Connect {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("TLS with the peer proxy {peer}: {source}")]
    Handshake {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 with the peer proxy {peer}: {source}")]
    Http {
        peer: SocketAddr,
        source: hyper::Error,
    },
    #[error("CONNECT {destination}: {reason}")]
    Authority {
        destination: SocketAddr,
        reason: String,
    },
    #[error("the peer proxy {peer} answered {status} to CONNECT {destination}")]
    Refused {
        peer: SocketAddr,
        destination: SocketAddr,
        status: StatusCode,
    },
}

impl HboneError {
    /// The status the peer answered, when it refused the stream.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HboneError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What the server has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TLS connections from peer proxies that passed the handshake.
    pub connections: AtomicU64,
    /// Streams connected to their destination.
    pub connected: AtomicU64,
    /// Streams refused by the authorization callback (403).
    pub denied: AtomicU64,
}

/// The inbound side: accepts tunnels from other node proxies.
pub struct HboneServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    authorize: Authorize,
    dialer: Dialer,
    stats: Arc<ServerStats>,
}

impl HboneServer {
    /// Listens on `addr`, presenting `identity`'s certificate, and connects to
    /// destinations from the host's network namespace.
    pub async fn bind(
        addr: SocketAddr,
        certificates: Arc<Certificates>,
        identity: Identity,
        authorize: Authorize,
    ) -> Result<Self, HboneError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HboneError::Bind { addr, source })?;
        Self::new(listener, certificates, identity, authorize, host_dialer())
    }

    /// Serves tunnels on `listener`, presenting `identity`'s certificate, and
    /// connects to destinations through `dialer`.
    pub fn new(
        listener: TcpListener,
        certificates: Arc<Certificates>,
        identity: Identity,
        authorize: Authorize,
        dialer: Dialer,
    ) -> Result<Self, HboneError> {
        let config = tls::server_config(certificates, identity)?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(config),
            authorize,
            dialer,
            stats: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Accepts tunnels until the future is dropped (which drops every connection
    /// it serves too).
    pub async fn serve(self) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, from)) => {
                        let acceptor = self.acceptor.clone();
                        let authorize = self.authorize.clone();
                        let dialer = self.dialer.clone();
                        let stats = self.stats.clone();
                        connections.spawn(serve_connection(tcp, from, acceptor, authorize, dialer, stats));
                    }
                    Err(error) => warn!("mesh: accepting an HBONE connection: {error}"),
                },
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

/// One TLS connection from a peer proxy, and its streams.
async fn serve_connection(
    tcp: TcpStream,
    from: SocketAddr,
    acceptor: TlsAcceptor,
    authorize: Authorize,
    dialer: Dialer,
    stats: Arc<ServerStats>,
) {
    // Small writes (handshakes, interactive traffic) go out at once.
    let _ = tcp.set_nodelay(true);
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(error) => {
            warn!("mesh: TLS from {from} refused: {error}");
            return;
        }
    };
    let source = match tls::peer_identity(tls.get_ref().1.peer_certificates()) {
        Ok(identity) => identity,
        Err(error) => {
            warn!("mesh: TLS from {from}: {error}");
            return;
        }
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let service = hyper::service::service_fn(move |request| {
        let source = source.clone();
        let authorize = authorize.clone();
        let dialer = dialer.clone();
        let stats = stats.clone();
        async move {
            Ok::<_, Infallible>(open_stream(request, &source, &authorize, &dialer, &stats).await)
        }
    });
    if let Err(error) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        debug!("mesh: HBONE connection from {from} ended: {error}");
    }
}

/// Answers one CONNECT: authorize, connect to the destination, then copy both ways
/// once the stream is upgraded.
async fn open_stream(
    request: Request<hyper::body::Incoming>,
    source: &Identity,
    authorize: &Authorize,
    dialer: &Dialer,
    stats: &ServerStats,
) -> Response<Empty<Bytes>> {
    if request.method() != Method::CONNECT {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(destination) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return status(StatusCode::BAD_REQUEST);
    };
    if !authorize(source, destination) {
        stats.denied.fetch_add(1, Ordering::Relaxed);
        warn!("mesh: denied {source} -> {destination}");
        return status(StatusCode::FORBIDDEN);
    }
    let mut upstream = match dialer(destination).await {
        Ok(upstream) => upstream,
        Err(error) => {
            debug!("mesh: {source} -> {destination}: {error}");
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let mut tunnel = TokioIo::new(upgraded);
                if let Err(error) = tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await
                {
                    debug!("mesh: stream to {destination} ended: {error}");
                }
            }
            Err(error) => debug!("mesh: stream to {destination} never opened: {error}"),
        }
    });
    status(StatusCode::OK)
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

/// Which connection a stream may share: one source authenticated to one peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    source: Identity,
    peer: SocketAddr,
    peer_identity: Identity,
}

/// The outbound side: opens tunnels to other node proxies.
pub struct HboneClient {
    certificates: Arc<Certificates>,
    dialer: Dialer,
    connections: Mutex<HashMap<PoolKey, SendRequest<Empty<Bytes>>>>,
}

impl HboneClient {
    /// A client that dials peers from the host's network namespace.
    pub fn new(certificates: Arc<Certificates>) -> Self {
        Self::with_dialer(certificates, host_dialer())
    }

    /// A client that dials peers through `dialer`.
    pub fn with_dialer(certificates: Arc<Certificates>, dialer: Dialer) -> Self {
        Self {
            certificates,
            dialer,
            connections: Mutex::default(),
        }
    }

    /// A tunnel from `source` to `destination` through the proxy at `peer`, which
    /// must prove it is `peer_identity`.
    pub async fn connect(
        &self,
        source: &Identity,
        peer: SocketAddr,
        peer_identity: &Identity,
        destination: SocketAddr,
    ) -> Result<Tunnel, HboneError> {
        let key = PoolKey {
            source: source.clone(),
            peer,
            peer_identity: peer_identity.clone(),
        };
        let mut sender = self.sender(key).await?;
        let http = |source| HboneError::Http { peer, source };
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(destination.to_string())
            .body(Empty::new())
            .map_err(|error| HboneError::Authority {
                destination,
                reason: error.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Refused {
                peer,
                destination,
                status: response.status(),
            });
        }
        let upgraded = hyper::upgrade::on(response).await.map_err(http)?;
        Ok(TokioIo::new(upgraded))
    }

    /// A ready sender on the pooled connection for `key`, dialled when there is
    /// none or it closed.
    async fn sender(&self, key: PoolKey) -> Result<SendRequest<Empty<Bytes>>, HboneError> {
        let peer = key.peer;
        // Held while dialling, so that concurrent first streams to a peer share
        // one connection.
        let mut connections = self.connections.lock().await;
        if let Some(sender) = connections.get_mut(&key) {
            if sender.ready().await.is_ok() {
                return Ok(sender.clone());
            }
            connections.remove(&key);
        }
        let config = tls::client_config(
            self.certificates.clone(),
            key.source.clone(),
            key.peer_identity.clone(),
        )?;
        let tcp = (self.dialer)(peer)
            .await
            .map_err(|source| HboneError::Connect { peer, source })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(peer.ip().into()), tcp)
            .await
            .map_err(|source| HboneError::Handshake { peer, source })?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|source| HboneError::Http { peer, source })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!("mesh: HBONE connection to {peer} ended: {error}");
            }
        });
        sender
            .ready()
            .await
            .map_err(|source| HboneError::Http { peer, source })?;
        connections.insert(key, sender.clone());
        Ok(sender)
    }
}
