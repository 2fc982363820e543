//! The gRPC face of the [`Registry`]: a unix socket (mode 0600) by default and,
//! optionally, TCP with TLS; every request must carry the bearer token. Besides
//! the registry's verbs, the node's images, and its containers' logs and exec.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::metadata::MetadataMap;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use super::containers::{self, ContainerError, NodeContainer};
use super::proto::{self, api_server, exec_output::Output};
use super::registry::{ApiError, EventType, ObjectRef, Outcome, Propagation, Registry, Violation};
use crate::dataplane::Dataplane;
use crate::image::{ImageError, ImageStore, ImageSummary, PullError};
use crate::model::{FieldSelector, Kind, Selector};
use crate::runtime::logs;
use crate::runtime::node::NodeHandle;
use crate::store::StoreError;

/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Log lines are sent in messages of up to this size (gRPC's limit is 4 MiB).
const LOG_CHUNK_BYTES: usize = 1024 * 1024;
/// How long an exec'd command whose client went away gets after SIGTERM.
const EXEC_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: String },
    #[error("serving the API on {listener}: {source}")]
    Transport {
        listener: String,
        source: tonic::transport::Error,
    },
}

/// TCP with TLS, for clients on other hosts.
#[derive(Clone, Debug)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub socket: PathBuf,
    pub tls: Option<TlsListener>,
    pub token: String,
}

/// The API's listening sockets, bound before serving so that a client may connect
/// as soon as the agent says it is ready.
pub struct Listeners {
    socket: PathBuf,
    unix: UnixListener,
    tls: Option<(TcpListener, Identity)>,
    token: String,
}

/// Binds the unix socket (mode 0600) and the TLS listener, if any.
pub fn bind(config: &ServerConfig) -> Result<Listeners, ServerError> {
    let unix = bind_socket(&config.socket)?;
    let tls = match &config.tls {
        None => None,
        Some(tls) => {
            let read = |path: &Path| {
                std::fs::read(path).map_err(|source| ServerError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            };
            let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
            let listener = std::net::TcpListener::bind(tls.addr)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                })
                .map_err(|source| ServerError::Io {
                    path: PathBuf::from(tls.addr.to_string()),
                    source,
                })?;
            Some((listener, identity))
        }
    };
    Ok(Listeners {
        socket: config.socket.clone(),
        unix,
        tls,
        token: config.token.clone(),
    })
}

/// Serves until `shutdown` resolves, then removes the socket file.
pub async fn serve(
    registry: Registry,
    images: Arc<ImageStore>,
    node: Arc<NodeHandle>,
    dataplane: Arc<std::sync::Mutex<Dataplane>>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let auth = BearerAuth {
        expected: format!("Bearer {}", listeners.token),
    };
    let service = api_server::ApiServer::with_interceptor(
        ApiService {
            registry,
            images,
            node,
            dataplane,
        },
        auth,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(());
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let socket = listeners.socket.display().to_string();
    let unix = Server::builder()
        .add_service(service.clone())
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listeners.unix),
            stopped(stop_rx.clone()),
        );
    let tcp = async {
        let Some((listener, identity)) = listeners.tls else {
            return Ok(());
        };
        let addr = listener
            .local_addr()
            .map_or_else(|_| "tcp".to_string(), |a| a.to_string());
        let transport = |source| ServerError::Transport {
            listener: addr.clone(),
            source,
        };
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(transport)?
            .add_service(service.clone())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stopped(stop_rx.clone()),
            )
            .await
            .map_err(transport)
    };
    let (unix, tcp) = tokio::join!(unix, tcp);
    let _ = std::fs::remove_file(&listeners.socket);
    unix.map_err(|source| ServerError::Transport {
        listener: socket,
        source,
    })?;
    tcp
}

/// Binds the unix socket with mode 0600, replacing a stale socket left by a
/// crashed agent (but never another kind of file).
fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Refuses requests without the agent's bearer token.
#[derive(Clone)]
struct BearerAuth {
    expected: String,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        check_token(request.metadata(), &self.expected)?;
        Ok(request)
    }
}

fn check_token(metadata: &MetadataMap, expected: &str) -> Result<(), Status> {
    let Some(given) = metadata.get("authorization") else {
        return Err(Status::unauthenticated(
            "missing bearer token: pass --token or set the token in the skiff config",
        ));
    };
    let given = given.as_bytes();
    // Constant time over the expected length, so timing does not leak a prefix.
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Status::unauthenticated("invalid bearer token"))
    }
}

struct ApiService {
    registry: Registry,
    images: Arc<ImageStore>,
    node: Arc<NodeHandle>,
    dataplane: Arc<std::sync::Mutex<Dataplane>>,
}

impl ApiService {
    /// The container a logs or exec request names, on this node.
    async fn container(&self, key: Option<proto::ContainerKey>) -> Result<NodeContainer, Status> {
        let key = key.ok_or_else(|| Status::invalid_argument("key is required"))?;
        if key.pod.is_empty() {
            return Err(Status::invalid_argument("key.pod is required"));
        }
        containers::find(
            &self.registry,
            &self.node,
            &key.namespace,
            &key.pod,
            &key.container,
        )
        .await
        .map_err(container_status)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<proto::ExecOutput, Status>> + Send>>;

#[tonic::async_trait]
impl api_server::Api for ApiService {
    async fn apply(
        &self,
        request: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        let mut values = Vec::new();
        for (index, bytes) in request.into_inner().objects.iter().enumerate() {
            values.push(serde_json::from_slice::<Value>(bytes).map_err(|e| {
                status(ApiError::Invalid(vec![Violation {
                    index,
                    field: String::new(),
                    reason: format!("not a JSON object: {e}"),
                }]))
            })?);
        }
        let applied = self.registry.apply(values).await.map_err(status)?;
        Ok(Response::new(proto::ApplyResponse {
            objects: applied
                .into_iter()
                .map(|a| proto::AppliedObject {
                    object: json_bytes(&a.object),
                    outcome: match a.outcome {
                        Outcome::Created => proto::ApplyOutcome::Created,
                        Outcome::Configured => proto::ApplyOutcome::Configured,
                        Outcome::Unchanged => proto::ApplyOutcome::Unchanged,
                    } as i32,
                })
                .collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let reference = object_ref(request.into_inner().key)?;
        let object = self.registry.get(&reference).await.map_err(status)?;
        Ok(Response::new(proto::ObjectResponse {
            object: json_bytes(&object),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let request = request.into_inner();
        let kind = kind(&request.kind)?;
        let (labels, fields) = selectors(kind, &request.label_selector, &request.field_selector)?;
        let namespace = non_empty(&request.namespace);
        let (objects, revision) = self
            .registry
            .list(kind, namespace, &labels, &fields)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::ListResponse {
            objects: objects.iter().map(json_bytes).collect(),
            resource_version: revision.to_string(),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let request = request.into_inner();
        let propagation = match request.propagation() {
            proto::Propagation::Background => Propagation::Background,
            proto::Propagation::Foreground => Propagation::Foreground,
            proto::Propagation::Orphan => Propagation::Orphan,
        };
        let reference = object_ref(request.key)?;
        let deleted = self
            .registry
            .delete(&reference, request.grace_period_seconds, propagation)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteResponse {
            object: json_bytes(&deleted.object),
            terminating: deleted.terminating,
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let kind = kind(&request.kind)?;
        let (labels, fields) = selectors(kind, &request.label_selector, &request.field_selector)?;
        let events = self
            .registry
            .watch(
                kind,
                non_empty(&request.namespace),
                labels,
                fields,
                &request.resource_version,
            )
            .await
            .map_err(status)?;
        let events = events.map(|event| {
            let event = event.map_err(status)?;
            Ok(proto::WatchEvent {
                r#type: match event.event_type {
                    EventType::Added => proto::EventType::Added,
                    EventType::Modified => proto::EventType::Modified,
                    EventType::Deleted => proto::EventType::Deleted,
                } as i32,
                object: event.object.to_json_bytes(),
            })
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn import_image(
        &self,
        request: Request<tonic::Streaming<proto::ImageChunk>>,
    ) -> Result<Response<proto::ImportImageResponse>, Status> {
        // Spooled to a file: the store reads archive members by position.
        let spool = tempfile::NamedTempFile::new()
            .map_err(|e| Status::internal(format!("spooling the image: {e}")))?;
        let mut file = tokio::fs::File::from_std(
            spool
                .reopen()
                .map_err(|e| Status::internal(format!("spooling the image: {e}")))?,
        );
        let mut chunks = request.into_inner();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk.data)
                .await
                .map_err(|e| Status::internal(format!("spooling the image: {e}")))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| Status::internal(format!("spooling the image: {e}")))?;
        let images = self.images.clone();
        let imported = tokio::task::spawn_blocking(move || images.import(spool.path()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(image_status)?;
        Ok(Response::new(proto::ImportImageResponse {
            images: imported.into_iter().map(image_message).collect(),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<proto::PullImageResponse>, Status> {
        let reference = request.into_inner().reference;
        let pulled = self
            .images
            .pull(&reference, &self.node.pull)
            .await
            .map_err(pull_status)?;
        Ok(Response::new(proto::PullImageResponse {
            image: Some(image_message(pulled.image)),
            digest: pulled.digest,
            layers: u32::try_from(pulled.layers).unwrap_or(u32::MAX),
            layers_downloaded: u32::try_from(pulled.layers_downloaded).unwrap_or(u32::MAX),
            bytes_downloaded: pulled.bytes_downloaded,
        }))
    }

    async fn list_images(
        &self,
        _request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let images = self.images.clone();
        let listed = tokio::task::spawn_blocking(move || images.list())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(image_status)?;
        Ok(Response::new(proto::ListImagesResponse {
            images: listed.into_iter().map(image_message).collect(),
        }))
    }

    async fn remove_image(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let reference = request.into_inner().reference;
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.remove(&reference))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(image_status)?;
        Ok(Response::new(proto::RemoveImageResponse {}))
    }

    async fn list_frontends(
        &self,
        _request: Request<proto::ListFrontendsRequest>,
    ) -> Result<Response<proto::ListFrontendsResponse>, Status> {
        let (frontends, counts) = {
            let dataplane = self
                .dataplane
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let counts = dataplane
                .counters()
                .map_err(|e| Status::internal(e.to_string()))?;
            (dataplane.frontends(), counts)
        };
        let frontends = frontends
            .into_iter()
            .map(|(frontend, slots)| {
                let mut backends: Vec<proto::FrontendBackend> = Vec::new();
                for backend in slots {
                    let address = backend.to_string();
                    match backends.iter_mut().find(|b| b.address == address) {
                        Some(b) => b.slots += 1,
                        None => backends.push(proto::FrontendBackend {
                            address,
                            slots: 1,
                            connections: counts
                                .iter()
                                .find(|c| c.frontend == frontend && c.backend == backend)
                                .map_or(0, |c| c.connections),
                        }),
                    }
                }
                proto::Frontend {
                    address: frontend.addr.to_string(),
                    protocol: frontend.protocol.to_string(),
                    backends,
                }
            })
            .collect();
        Ok(Response::new(proto::ListFrontendsResponse { frontends }))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let request = request.into_inner();
        let target = self.container(request.key).await?;
        let attempt = target
            .log_attempt(request.previous)
            .map_err(container_status)?;
        let logs = target.logs(&self.node);
        // Opened here, so that a missing file fails the call rather than its stream.
        let file = logs.open(attempt).map_err(|e| {
            Status::not_found(format!(
                "the log of container \"{}\" in pod \"{}\" (attempt {attempt}): {e}",
                target.name, target.pod
            ))
        })?;
        let tail = request
            .tail_lines
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        // A previous attempt has ended: there is nothing to follow.
        let follow = request.follow && !request.previous;
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let send = |lines: Vec<Vec<u8>>| {
                log_chunks(lines)
                    .into_iter()
                    .all(|chunk| tx.blocking_send(Ok(chunk)).is_ok())
            };
            let read = if follow {
                logs.follow(attempt, file, tail, FOLLOW_POLL, |lines| {
                    // Called at every look: an empty one only asks whether the client is there.
                    if lines.is_empty() {
                        !tx.is_closed()
                    } else {
                        send(lines)
                    }
                })
            } else {
                logs::read(file, tail).map(|lines| {
                    send(lines);
                })
            };
            if let Err(e) = read {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading the log: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExecStream = ExecStream;

    async fn exec(
        &self,
        request: Request<proto::ExecRequest>,
    ) -> Result<Response<ExecStream>, Status> {
        let request = request.into_inner();
        if request.command.is_empty() {
            return Err(Status::invalid_argument("a command is required"));
        }
        let target = self.container(request.key).await?;
        let id = target.running_id().map_err(container_status)?;
        let child =
            tokio::process::Command::from(self.node.oci.exec_command(&id, &request.command))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Status::internal(format!("running runc exec: {e}")))?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(forward_exec(child, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn update_status(
        &self,
        request: Request<proto::UpdateStatusRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let value: Value = serde_json::from_slice(&request.into_inner().object)
            .map_err(|e| Status::invalid_argument(format!("object is not JSON: {e}")))?;
        let object = self.registry.update_status(value).await.map_err(status)?;
        Ok(Response::new(proto::ObjectResponse {
            object: json_bytes(&object),
        }))
    }
}

/// Lines packed into messages of up to [`LOG_CHUNK_BYTES`] (or one longer line).
fn log_chunks(lines: Vec<Vec<u8>>) -> Vec<proto::LogChunk> {
    let mut chunks: Vec<proto::LogChunk> = Vec::new();
    for line in lines {
        match chunks.last_mut() {
            Some(chunk) if chunk.data.len() + line.len() <= LOG_CHUNK_BYTES => {
                chunk.data.extend_from_slice(&line)
            }
            _ => chunks.push(proto::LogChunk { data: line }),
        }
    }
    chunks
}

type ExecSender = mpsc::Sender<Result<proto::ExecOutput, Status>>;

/// Sends a `runc exec`'s output as it comes, then its exit code. When the client
/// goes away first, the command gets SIGTERM (runc passes it on), and runc
/// SIGKILL after [`EXEC_GRACE`].
async fn forward_exec(mut child: tokio::process::Child, tx: ExecSender) {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::select! {
        status = async {
            tokio::join!(
                forward_output(stdout, Output::Stdout, &tx),
                forward_output(stderr, Output::Stderr, &tx),
            );
            child.wait().await
        } => Some(status),
        () = tx.closed() => None,
    };
    let output = match finished {
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .or_else(|| status.signal().map(|signal| 128 + signal))
                .unwrap_or(-1);
            Ok(proto::ExecOutput {
                output: Some(Output::ExitCode(code)),
            })
        }
        Some(Err(e)) => Err(Status::internal(format!("waiting for runc exec: {e}"))),
        None => {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                // SAFETY: signalling the runc process we started and have not reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            if tokio::time::timeout(EXEC_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            return;
        }
    };
    let _ = tx.send(output).await;
}

/// Sends what `pipe` gives, wrapped by `wrap`, until it ends or the client goes away.
async fn forward_output(
    pipe: Option<impl AsyncRead + Unpin>,
    wrap: fn(Vec<u8>) -> Output,
    tx: &ExecSender,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buffer = vec![0u8; 32 * 1024];
    while let Ok(read @ 1..) = pipe.read(&mut buffer).await {
        let output = Some(wrap(buffer[..read].to_vec()));
        if tx.send(Ok(proto::ExecOutput { output })).await.is_err() {
            return;
        }
    }
}

fn image_message(image: ImageSummary) -> proto::Image {
    proto::Image {
        reference: image.reference,
        id: image.id,
        size: image.size,
        created: image.created.unwrap_or_default(),
    }
}

fn image_status(error: ImageError) -> Status {
    match error {
        ImageError::NotFound { .. } => Status::not_found(error.to_string()),
        ImageError::Io { .. } | ImageError::CorruptIndex { .. } => {
            Status::internal(error.to_string())
        }
        _ => Status::invalid_argument(error.to_string()),
    }
}

fn pull_status(error: PullError) -> Status {
    let message = error.to_string();
    match error {
        PullError::InvalidReference { .. } => Status::invalid_argument(message),
        PullError::ManifestUnknown { .. } => Status::not_found(message),
        PullError::Unauthorized { .. } => Status::permission_denied(message),
        PullError::UnknownHost { .. }
        | PullError::Unreachable { .. }
        | PullError::Registry { .. } => Status::unavailable(message),
        PullError::DigestMismatch { .. }
        | PullError::SizeMismatch { .. }
        | PullError::UnsupportedMediaType { .. }
        | PullError::NoPlatform { .. } => Status::failed_precondition(message),
        PullError::Image { .. } => Status::internal(message),
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail: its keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

fn kind(name: &str) -> Result<Kind, Status> {
    Kind::from_cli_name(name)
        .ok_or_else(|| Status::invalid_argument(format!("unknown kind \"{name}\"")))
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn object_ref(key: Option<proto::ObjectKey>) -> Result<ObjectRef, Status> {
    let key = key.ok_or_else(|| Status::invalid_argument("key is required"))?;
    let kind = kind(&key.kind)?;
    if key.name.is_empty() {
        return Err(Status::invalid_argument("key.name is required"));
    }
    Ok(ObjectRef {
        kind,
        namespace: kind
            .namespaced()
            .then(|| non_empty(&key.namespace).unwrap_or("default").to_string()),
        name: key.name,
    })
}

fn selectors(kind: Kind, labels: &str, fields: &str) -> Result<(Selector, FieldSelector), Status> {
    let labels = Selector::parse(labels)
        .map_err(|e| Status::invalid_argument(format!("label selector: {e}")))?;
    let fields = FieldSelector::parse(fields)
        .and_then(|f| f.check_kind(kind).map(|()| f))
        .map_err(|e| Status::invalid_argument(format!("field selector: {e}")))?;
    Ok((labels, fields))
}

/// Kubernetes answers requests for a container it cannot serve with BadRequest.
fn container_status(error: ContainerError) -> Status {
    match error {
        ContainerError::Api(error) => status(error),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// The gRPC status of an API error; validation problems also travel as structured
/// details so the CLI can name the file and document of each.
fn status(error: ApiError) -> Status {
    let message = error.to_string();
    match error {
        ApiError::Invalid(violations) => {
            let details = proto::ValidationFailure {
                violations: violations
                    .into_iter()
                    .map(|v| proto::FieldViolation {
                        object_index: u32::try_from(v.index).unwrap_or(u32::MAX),
                        field: v.field,
                        reason: v.reason,
                    })
                    .collect(),
            };
            Status::with_details(
                Code::InvalidArgument,
                message,
                details.encode_to_vec().into(),
            )
        }
        ApiError::NotFound { .. } => Status::not_found(message),
        ApiError::Conflict { .. } | ApiError::AlreadyBound { .. } => Status::aborted(message),
        ApiError::Expired { .. } => Status::out_of_range(message),
        ApiError::BadRequest(_) => Status::invalid_argument(message),
        ApiError::Exhausted(_) => Status::resource_exhausted(message),
        ApiError::Store(StoreError::Unreachable(_)) => Status::unavailable(message),
        ApiError::Corrupt { .. } | ApiError::Store(_) => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(token) = token {
            map.insert("authorization", token.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let expected = "Bearer s3cret";
        assert!(check_token(&metadata(Some("Bearer s3cret")), expected).is_ok());
        for (given, message) in [
            (None, "missing bearer token"),
            (Some("Bearer s3cre"), "invalid bearer token"),
            (Some("Bearer s3creT"), "invalid bearer token"),
            (Some("s3cret"), "invalid bearer token"),
        ] {
            let err = check_token(&metadata(given), expected).unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
            assert!(
                err.message().contains(message),
                "{given:?}: {}",
                err.message()
            );
        }
    }
}
