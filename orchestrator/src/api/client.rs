//! Connecting to the API: over the agent's unix socket, or over TCP with TLS, with
//! the bearer token on every request.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};
use tonic::{Request, Status};

use super::proto::api_client;

pub type ApiClient = api_client::ApiClient<InterceptedService<Channel, BearerToken>>;

/// Where the API is and how to prove who we are.
#[derive(Clone, Debug)]
pub struct Connection {
    /// `unix:///path/to/skiff.sock` (or a bare path), or `https://host:port`.
    pub server: String,
    pub token: String,
    /// CA certificate (PEM) that signed an https server's certificate.
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server {server:?}: {reason}")]
    Server { server: String, reason: String },
    #[error("reading the CA certificate {}: {source}", path.display())]
    CaCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token is not a valid header value")]
    Token,
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: String,
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerToken(AsciiMetadataValue);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub async fn connect(connection: &Connection) -> Result<ApiClient, ClientError> {
    let token: AsciiMetadataValue = format!("Bearer {}", connection.token)
        .parse()
        .map_err(|_| ClientError::Token)?;
    let server = connection.server.as_str();
    let connect_error = |source| ClientError::Connect {
        server: server.to_string(),
        source,
    };
    let channel = if let Some(rest) = server.strip_prefix("https://") {
        let ca_path = connection.ca_cert.clone().ok_or_else(|| ClientError::Server {
            server: server.to_string(),
            reason: "an https server needs --certificate-authority (the CA that signed its certificate)"
                .into(),
        })?;
        let ca = std::fs::read(&ca_path).map_err(|source| ClientError::CaCert {
            path: ca_path,
            source,
        })?;
        let host = rest
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .to_string();
        Endpoint::from_shared(server.to_string())
            .map_err(connect_error)?
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name(host),
            )
            .map_err(connect_error)?
            .connect()
            .await
            .map_err(connect_error)?
    } else {
        let path = PathBuf::from(server.strip_prefix("unix://").unwrap_or(server));
        if !path.is_absolute() {
            return Err(ClientError::Server {
                server: server.to_string(),
                reason: "expected unix:///absolute/path or https://host:port".into(),
            });
        }
        // The URI is required by the API but unused: the connector dials the socket.
        Endpoint::from_static("http://skiff.local")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(connect_error)?
    };
    Ok(api_client::ApiClient::with_interceptor(
        channel,
        BearerToken(token),
    ))
}
