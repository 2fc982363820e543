//! The etcd store: the [`Store`] trait over a real etcd cluster (the v3 API through
//! the etcd-client crate), for several nodes sharing one state.
//!
//! Revisions are etcd's own, shifted by one: etcd numbers its empty store 1 and its
//! first change 2, skiff numbers them 0 and 1, so every revision crosses the boundary
//! as `etcd - 1` (a key's revision 0, "absent", stays 0 both ways). Create and mod
//! revisions, versions, compaction points and the revision a write lands at are
//! otherwise exactly etcd's, and a cluster shared with `etcdctl` shows the same
//! history one apart.
//!
//! - A transaction is one etcd Txn: its compares are etcd's mod-revision compares;
//!   when one fails, the same Txn's failure branch reads the compared keys, so the
//!   conflict reported is the one etcd saw, at the same revision.
//! - A watch is an etcd watch with `prev_kv`. When its gRPC stream breaks (etcd
//!   restarts, a member loses its leader, the connection is cut), it is opened again
//!   from the revision after the last one received: etcd sends a revision's events in
//!   one response, so nothing is lost or repeated. Only compaction ends it.
//! - etcd has no call that reports the compaction point. A watch opened below it is
//!   cancelled with the point in `compact_revision`, so that is how it is read, after a
//!   read at the revision in question says the history is gone.
//!
//! Every call is bounded by [`REQUEST_TIMEOUT`]: etcd-client's balanced channel waits
//! for an endpoint to come up rather than failing, and a write to an unreachable
//! cluster must fail with an error that names it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KvClient,
    TlsOptions, TxnOp, TxnOpResponse, WatchClient, WatchOptions, Watcher,
};
use futures::StreamExt;
use log::warn;

use crate::store::{
    Compare, Event, EventKind, KeyValue, Op, Revision, Store, StoreError, Txn, WatchStream,
};

/// The longest any one request to etcd may take before it counts as unreachable:
/// a user's `skiff apply` or `skiff get` against an agent whose etcd is down must
/// fail in a few seconds, not hang; a healthy etcd answers in milliseconds, and a
/// member that lost its leader answers at once (`require_leader`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings while requests or watches are open, so a cut link breaks watches
/// (which then resume) instead of leaving them silent. etcd refuses pings more
/// often than every 5 s.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before opening a broken watch again, doubled up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The key that revision and compaction probes read; any key works, none is written.
const PROBE_KEY: &str = "/";
/// Responses are as large as the data (a list of every key, a watch batch of up to
/// 1000 revisions of up to 1.5 MiB each); the cluster is trusted, so no limit.
const MAX_MESSAGE: usize = usize::MAX;

/// etcd's messages for the two revision errors it answers with (gRPC OutOfRange).
const COMPACTED_MESSAGE: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_MESSAGE: &str = "etcdserver: mvcc: required revision is a future revision";
/// etcd's messages for a transaction over its limits (gRPC InvalidArgument); a
/// request far over `--max-request-bytes` is refused by gRPC (ResourceExhausted).
const TOO_MANY_OPS_MESSAGE: &str = "etcdserver: too many operations in txn request";
const TOO_LARGE_MESSAGE: &str = "etcdserver: request is too large";

/// Where the cluster is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member's client URL (IPv6 hosts in brackets).
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
}

/// TLS to the members: the CA that signed their certificates, and a client
/// certificate when the cluster checks clients (`--client-cert-auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    /// The client certificate and its key (PEM files).
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("\"{url}\" is not an etcd store like etcd://10.0.0.1:2379,10.0.0.2:2379: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("reading {} for TLS to etcd: {source}", path.display())]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd at {endpoints}: {what}: {source}")]
    Request {
        endpoints: String,
        what: &'static str,
        source: etcd_client::Error,
    },
    /// No answer in time, or no connection at all.
    #[error("etcd at {endpoints} is unreachable: {what}: {why} (is etcd running and reachable?)")]
    Unreachable {
        endpoints: String,
        what: &'static str,
        why: String,
    },
    #[error(
        "etcd at {endpoints}: writing: a transaction of {writes} writes and {compares} compares \
         with {bytes} bytes of values is over etcd's limits (--max-txn-ops, 128 by default; \
         --max-request-bytes, 1.5 MiB by default; `skiff apply` writes all its objects in one \
         transaction: apply fewer at once): {source}"
    )]
    OverLimits {
        endpoints: String,
        writes: usize,
        compares: usize,
        bytes: usize,
        source: etcd_client::Error,
    },
    /// An answer skiff cannot use, e.g. a key written by another program that is not
    /// UTF-8.
    #[error("etcd at {endpoints}: {what}: {detail}")]
    Unexpected {
        endpoints: String,
        what: &'static str,
        detail: String,
    },
}

impl From<EtcdError> for StoreError {
    fn from(error: EtcdError) -> Self {
        match error {
            EtcdError::Unreachable { .. } => StoreError::Unreachable(error.to_string()),
            error => StoreError::Backend(error.to_string()),
        }
    }
}

/// Whether `error` says the connection failed rather than etcd refusing the request.
fn is_connection_failure(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            tonic::Code::Unavailable => true,
            // A request on a connection that broke under it ("connection was not
            // ready", a broken pipe) is failed by the transport, as Cancelled or
            // Unknown, not by etcd.
            _ => std::error::Error::source(status)
                .is_some_and(|source| source.is::<tonic::transport::Error>()),
        },
        _ => false,
    }
}

/// Parses `etcd://host:port[,host:port...]`, the agent's `--store` for etcd.
pub fn parse_url(url: &str) -> Result<Vec<String>, EtcdError> {
    let bad = |reason: String| EtcdError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let members = url
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("it must start with etcd://".into()))?;
    if members.is_empty() {
        return Err(bad("it names no member".into()));
    }
    members
        .split(',')
        .map(|member| parse_member(member).map_err(&bad))
        .collect()
}

/// One `host:port`: an IPv4 address, a bracketed IPv6 address or a DNS name, and a port.
fn parse_member(member: &str) -> Result<String, String> {
    if member.is_empty() {
        return Err("a member is empty (a stray comma?)".into());
    }
    let (host, port) = member
        .rsplit_once(':')
        .ok_or_else(|| format!("member \"{member}\" has no port (host:port)"))?;
    match port.parse::<u16>() {
        Ok(port) if port > 0 => {}
        _ => return Err(format!("member \"{member}\" has no valid port")),
    }
    let is_ipv6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    // DNS names; IPv4 addresses are names of digits.
    let is_name = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    match is_ipv6 || is_name {
        true => Ok(member.to_owned()),
        false => Err(format!(
            "member \"{member}\" has no valid host (an IP address, [IPv6] or DNS name)"
        )),
    }
}

/// A revision from etcd in skiff's numbering (0 stays 0: "none").
fn from_etcd(revision: i64) -> Revision {
    u64::try_from(revision).map_or(0, |r| r.saturating_sub(1))
}

/// A store revision in etcd's numbering; past etcd's range it is a future revision.
fn to_etcd(revision: Revision) -> i64 {
    i64::try_from(revision.saturating_add(1)).unwrap_or(i64::MAX)
}

/// A key's mod revision in etcd's numbering, where 0 (absent) stays 0.
fn key_revision_to_etcd(revision: Revision) -> i64 {
    match revision {
        0 => 0,
        revision => to_etcd(revision),
    }
}

/// Whether `error` is etcd's answer `message` (its revision errors are told apart by text).
fn is_etcd_error(error: &EtcdError, message: &str) -> bool {
    matches!(
        error,
        EtcdError::Request { source: etcd_client::Error::GRpcStatus(status), .. }
            if status.message() == message
    )
}

/// Whether etcd refused a transaction for its size.
fn is_over_limits(error: &etcd_client::Error) -> bool {
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status)
            if [TOO_MANY_OPS_MESSAGE, TOO_LARGE_MESSAGE].contains(&status.message())
                || status.code() == tonic::Code::ResourceExhausted
    )
}

fn value_len(op: &Op) -> usize {
    match op {
        Op::Put { value, .. } => value.len(),
        Op::Delete { .. } => 0,
    }
}

/// The store over one etcd cluster. Clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    /// For leases and elections.
    client: Client,
    kv: KvClient,
    watch: WatchClient,
    /// The members' URLs, for error messages.
    endpoints: String,
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers within [`REQUEST_TIMEOUT`].
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let scheme = match config.tls {
            Some(_) => "https",
            None => "http",
        };
        let urls: Vec<String> = config
            .endpoints
            .iter()
            .map(|endpoint| format!("{scheme}://{endpoint}"))
            .collect();
        let endpoints = urls.join(",");
        let mut options = ConnectOptions::new()
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            // etcd answers pings on a connection without streams with GOAWAY.
            .with_keep_alive_while_idle(false)
            .with_connect_timeout(REQUEST_TIMEOUT)
            // A member cut off from its leader answers "no leader" at once, so the
            // request or watch moves on, rather than waiting for a partition to heal.
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let client = Client::connect(&urls, Some(options))
            .await
            .map_err(|source| EtcdError::Request {
                endpoints: endpoints.clone(),
                what: "connecting",
                source,
            })?;
        let store = EtcdStore {
            client: client.clone(),
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            endpoints,
        };
        store.current_revision("checking that it answers").await?;
        Ok(store)
    }

    /// The cluster's revision, from the header of a read that returns nothing.
    async fn current_revision(&self, what: &'static str) -> Result<Revision, EtcdError> {
        let mut kv = self.kv.clone();
        let options = GetOptions::new().with_count_only();
        let response = self.call(what, kv.get(PROBE_KEY, Some(options))).await?;
        self.header_revision(what, response.header())
    }

    /// Runs one request under [`REQUEST_TIMEOUT`], naming the cluster in errors.
    async fn call<T>(
        &self,
        what: &'static str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Err(_) => Err(EtcdError::Unreachable {
                endpoints: self.endpoints.clone(),
                what,
                why: format!("no answer within {REQUEST_TIMEOUT:?}"),
            }),
            Ok(Err(source)) if is_connection_failure(&source) => Err(EtcdError::Unreachable {
                endpoints: self.endpoints.clone(),
                what,
                why: source.to_string(),
            }),
            Ok(Err(source)) => Err(EtcdError::Request {
                endpoints: self.endpoints.clone(),
                what,
                source,
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }

    fn unexpected(&self, what: &'static str, detail: impl Into<String>) -> EtcdError {
        EtcdError::Unexpected {
            endpoints: self.endpoints.clone(),
            what,
            detail: detail.into(),
        }
    }

    /// The revision in a response's header (etcd always sends one).
    fn header_revision(
        &self,
        what: &'static str,
        header: Option<&etcd_client::ResponseHeader>,
    ) -> Result<Revision, EtcdError> {
        header
            .map(|h| from_etcd(h.revision()))
            .ok_or_else(|| self.unexpected(what, "a response without a header"))
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, EtcdError> {
        let key = std::str::from_utf8(kv.key()).map_err(|_| {
            self.unexpected(
                "reading a key",
                format!("key {:?} is not UTF-8", String::from_utf8_lossy(kv.key())),
            )
        })?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: from_etcd(kv.create_revision()),
            mod_revision: from_etcd(kv.mod_revision()),
            version: u64::try_from(kv.version()).unwrap_or(0),
        })
    }

    /// etcd's compaction point (its numbering), known to be above `below`: a watch
    /// from `below` is cancelled with it.
    async fn compaction_point_above(&self, below: i64) -> Result<i64, EtcdError> {
        const WHAT: &str = "reading the compaction point";
        let mut client = self.watch.clone();
        let options = WatchOptions::new().with_start_revision(below);
        let probe = async {
            let (_watcher, mut stream) = client.watch(PROBE_KEY, Some(options)).await?;
            while let Some(response) = stream.message().await? {
                if response.compact_revision() > 0 {
                    return Ok(Some(response.compact_revision()));
                }
            }
            Ok::<_, etcd_client::Error>(None)
        };
        self.call(WHAT, probe)
            .await?
            .ok_or_else(|| self.unexpected(WHAT, "the watch ended without it"))
    }

    /// Fails with [`StoreError::Compacted`] when etcd has compacted `revision`
    /// (etcd's numbering) away; `requested` is the same in skiff's.
    async fn check_history(&self, revision: i64, requested: Revision) -> Result<(), StoreError> {
        let mut kv = self.kv.clone();
        let options = GetOptions::new().with_revision(revision).with_count_only();
        match self
            .call("reading history", kv.get(PROBE_KEY, Some(options)))
            .await
        {
            Ok(_) => Ok(()),
            // Not there yet is not compacted.
            Err(error) if is_etcd_error(&error, FUTURE_MESSAGE) => Ok(()),
            Err(error) if is_etcd_error(&error, COMPACTED_MESSAGE) => Err(StoreError::Compacted {
                requested,
                compacted: from_etcd(self.compaction_point_above(revision).await?),
            }),
            Err(error) => Err(error.into()),
        }
    }
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, EtcdError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

/// `ops` with only the last write to each key, in their order: etcd refuses a
/// transaction that writes a key twice, and applied in order only the last one counts.
fn last_write_per_key(ops: Vec<Op>) -> Vec<Op> {
    let mut seen = HashSet::new();
    let mut kept: Vec<Op> = ops
        .into_iter()
        .rev()
        .filter(|op| match op {
            Op::Put { key, .. } | Op::Delete { key } => seen.insert(key.clone()),
        })
        .collect();
    kept.reverse();
    kept
}

/// A leader's lease lives this long without renewal: etcd's smallest TTL with
/// default timings, so a dead leader is replaced within about this.
const LEADER_TTL_SECONDS: i64 = 2;
/// Renewals per TTL: one lost or late renewal does not cost the leadership.
const RENEWALS_PER_TTL: u32 = 4;

impl EtcdStore {
    /// Renews `lease` until the task is aborted; turns `lost` true when etcd says
    /// the lease is gone or no renewal has succeeded for a TTL (etcd may have
    /// let it expire and elected someone else meanwhile).
    async fn keep_leading(
        mut client: Client,
        lease: i64,
        lost: tokio::sync::watch::Sender<bool>,
        endpoints: String,
    ) {
        let ttl = Duration::from_secs(LEADER_TTL_SECONDS.unsigned_abs());
        let mut renewed = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(ttl / RENEWALS_PER_TTL);
        let mut channel = None;
        loop {
            ticker.tick().await;
            if renewed.elapsed() >= ttl {
                warn!("etcd at {endpoints}: leader lease {lease:x} not renewed for {ttl:?}");
                let _ = lost.send(true);
                return;
            }
            if channel.is_none() {
                channel = tokio::time::timeout(ttl, client.lease_keep_alive(lease))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            let Some((keeper, responses)) = channel.as_mut() else {
                continue;
            };
            let answer = tokio::time::timeout(ttl / RENEWALS_PER_TTL, async {
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {
                    renewed = tokio::time::Instant::now();
                }
                Ok(Ok(Some(_))) => {
                    warn!("etcd at {endpoints}: leader lease {lease:x} expired");
                    let _ = lost.send(true);
                    return;
                }
                // A broken stream is opened again on the next tick.
                Ok(Ok(None) | Err(_)) => channel = None,
                Err(_) => {}
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.current_revision("reading the revision").await?)
    }

    async fn campaign(
        &self,
        election: &str,
        candidate: &str,
    ) -> Result<crate::store::election::Term, StoreError> {
        let mut client = self.client.clone();
        let granted = self
            .call(
                "granting a leader lease",
                client.lease_grant(LEADER_TTL_SECONDS, None),
            )
            .await?;
        let lease = granted.id();
        let (lost_sender, lost) = tokio::sync::watch::channel(false);
        // Renewed while waiting, too: the candidate's place in line is the lease's.
        let keeper = tokio::spawn(Self::keep_leading(
            client.clone(),
            lease,
            lost_sender,
            self.endpoints.clone(),
        ));
        let mut waiting = lost.clone();
        let elected = tokio::select! {
            elected = client.campaign(election, candidate, lease) => elected,
            _ = waiting.wait_for(|lost| *lost) => {
                keeper.abort();
                return Err(StoreError::Backend(format!(
                    "etcd at {}: campaigning for {election}: the lease expired while waiting",
                    self.endpoints
                )));
            }
        };
        let leader = match elected {
            Ok(response) => response.leader().cloned(),
            Err(source) => {
                keeper.abort();
                let _ = client.lease_revoke(lease).await;
                return Err(EtcdError::Request {
                    endpoints: self.endpoints.clone(),
                    what: "campaigning",
                    source,
                }
                .into());
            }
        };
        let resign = async move {
            if let Some(leader) = leader {
                let options = etcd_client::ResignOptions::new().with_leader(leader);
                let _ = client.resign(Some(options)).await;
            }
            let _ = client.lease_revoke(lease).await;
        };
        Ok(crate::store::election::Term::new(
            lost,
            keeper,
            Box::pin(resign),
        ))
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        const WHAT: &str = "reading a key";
        let mut kv = self.kv.clone();
        let response = self.call(WHAT, kv.get(key, None)).await?;
        let found = response
            .kvs()
            .first()
            .map(|kv| self.key_value(kv))
            .transpose()?;
        Ok((found, self.header_revision(WHAT, response.header())?))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        const WHAT: &str = "listing keys";
        let mut kv = self.kv.clone();
        // etcd returns a range sorted by key bytes unless asked otherwise.
        let options = GetOptions::new().with_prefix();
        let response = self.call(WHAT, kv.get(prefix, Some(options))).await?;
        let kvs = response
            .kvs()
            .iter()
            .map(|kv| self.key_value(kv))
            .collect::<Result<_, _>>()?;
        Ok((kvs, self.header_revision(WHAT, response.header())?))
    }

    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError> {
        const WHAT: &str = "writing";
        let Txn { compares, ops } = txn;
        let mut compared = Vec::new();
        let conditions: Vec<etcd_client::Compare> = compares
            .iter()
            .map(|Compare::ModRevision { key, revision }| {
                if !compared.contains(key) {
                    compared.push(key.clone());
                }
                etcd_client::Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    key_revision_to_etcd(*revision),
                )
            })
            .collect();
        let ops = last_write_per_key(ops);
        let (write_count, bytes) = (ops.len(), ops.iter().map(value_len).sum::<usize>());
        let writes: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key, value, None),
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        // On failure, the compared keys as they are at that same revision.
        let reads: Vec<TxnOp> = compared
            .iter()
            .map(|key| TxnOp::get(key.as_str(), Some(GetOptions::new().with_keys_only())))
            .collect();
        let request = etcd_client::Txn::new()
            .when(conditions)
            .and_then(writes)
            .or_else(reads);
        let mut kv = self.kv.clone();
        let response = match self.call(WHAT, kv.txn(request)).await {
            Err(EtcdError::Request {
                endpoints, source, ..
            }) if is_over_limits(&source) => {
                let compares = compares.len();
                return Err(EtcdError::OverLimits {
                    endpoints,
                    writes: write_count,
                    compares,
                    bytes,
                    source,
                }
                .into());
            }
            response => response?,
        };
        if response.succeeded() {
            return Ok(self.header_revision(WHAT, response.header())?);
        }
        let mut now: HashMap<String, i64> = HashMap::new();
        for read in response.op_responses() {
            if let TxnOpResponse::Get(got) = read {
                for kv in got.kvs() {
                    now.insert(self.key_value(kv)?.key, kv.mod_revision());
                }
            }
        }
        for Compare::ModRevision { key, revision } in compares {
            let actual = now.get(&key).copied().unwrap_or(0);
            if actual != key_revision_to_etcd(revision) {
                return Err(StoreError::Conflict {
                    key,
                    expected: revision,
                    actual: from_etcd(actual),
                });
            }
        }
        Err(self
            .unexpected(
                WHAT,
                "a compare failed, yet every compared key is as expected",
            )
            .into())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let start = match from {
            0 => to_etcd(self.revision().await?) + 1,
            from => {
                let start = to_etcd(from);
                self.check_history(start, from).await?;
                start
            }
        };
        let follower = Follower {
            store: self.clone(),
            prefix: prefix.to_owned(),
            next: start,
            open: None,
            pending: VecDeque::new(),
            retry: RETRY_FIRST,
            ended: false,
        };
        Ok(futures::stream::unfold(follower, Follower::advance).boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut kv = self.kv.clone();
        match self
            .call("compacting", kv.compact(to_etcd(revision), None))
            .await
        {
            Ok(_) => Ok(()),
            // Already compacted to there or further: nothing to do.
            Err(error) if is_etcd_error(&error, COMPACTED_MESSAGE) => Ok(()),
            Err(error) if is_etcd_error(&error, FUTURE_MESSAGE) => {
                Err(StoreError::FutureRevision {
                    requested: revision,
                    current: self.revision().await?,
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn compacted(&self) -> Result<Revision, StoreError> {
        // etcd's revision 1 (skiff's 0) is readable unless something was compacted.
        match self.check_history(1, 0).await {
            Ok(()) => Ok(0),
            Err(StoreError::Compacted { compacted, .. }) => Ok(compacted),
            Err(error) => Err(error),
        }
    }
}

/// One watch on etcd, opened again where it broke until compaction ends it.
struct Follower {
    store: EtcdStore,
    prefix: String,
    /// The first etcd revision not yet received.
    next: i64,
    /// The etcd watch (its handle keeps it alive) and its responses.
    open: Option<(Watcher, etcd_client::WatchStream)>,
    /// Received but not yet handed to the consumer.
    pending: VecDeque<Event>,
    /// The wait before opening the watch again after it breaks.
    retry: Duration,
    /// Set after the stream yielded an error, its last item.
    ended: bool,
}

impl Follower {
    /// The next item of the stream, and the follower to take the one after from.
    async fn advance(mut self) -> Option<(Result<Event, StoreError>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ended {
                return None;
            }
            let Some((_, stream)) = &mut self.open else {
                self.reopen().await;
                continue;
            };
            match stream.message().await {
                Ok(Some(response)) if response.compact_revision() > 0 => {
                    self.ended = true;
                    let error = StoreError::Compacted {
                        requested: from_etcd(self.next),
                        compacted: from_etcd(response.compact_revision()),
                    };
                    return Some((Err(error), self));
                }
                Ok(Some(response)) if response.canceled() => {
                    let reason = format!("cancelled by etcd: {}", response.cancel_reason());
                    self.broke(reason).await;
                }
                Ok(Some(response)) => {
                    self.retry = RETRY_FIRST;
                    if let Err(error) = self.receive(response.events()) {
                        self.ended = true;
                        return Some((Err(error.into()), self));
                    }
                }
                Ok(None) => self.broke("ended by etcd").await,
                Err(error) => self.broke(error).await,
            }
        }
    }

    /// Queues a response's events; they are whole revisions (etcd does not split one
    /// unless asked to fragment), so the watch resumes after the last.
    fn receive(&mut self, events: &[etcd_client::Event]) -> Result<(), EtcdError> {
        for event in events {
            let kv = event.kv().ok_or_else(|| {
                self.store
                    .unexpected("watching", "an event without its key")
            })?;
            let prev_kv = event
                .prev_kv()
                .map(|prev| self.store.key_value(prev))
                .transpose()?;
            self.pending.push_back(Event {
                kind: match event.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                },
                kv: self.store.key_value(kv)?,
                prev_kv,
            });
            self.next = kv.mod_revision() + 1;
        }
        Ok(())
    }

    /// Drops the etcd watch and waits before it is opened again, longer each time
    /// in a row that it breaks before delivering anything.
    async fn broke(&mut self, why: impl std::fmt::Display) {
        warn!(
            "the etcd watch on {} broke ({why}); watching again from revision {} in {:?}",
            self.prefix,
            from_etcd(self.next),
            self.retry
        );
        self.open = None;
        tokio::time::sleep(self.retry).await;
        self.retry = (self.retry * 2).min(RETRY_MAX);
    }

    /// Opens the etcd watch from the next revision.
    async fn reopen(&mut self) {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(self.next);
        let mut client = self.store.watch.clone();
        let opened = self
            .store
            .call(
                "watching",
                client.watch(self.prefix.as_str(), Some(options)),
            )
            .await;
        match opened {
            Ok(open) => self.open = Some(open),
            Err(error) => self.broke(error).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members() {
        assert_eq!(
            parse_url("etcd://10.0.0.1:2379,[fd00::1]:2379,etcd-2.example:32379").unwrap(),
            ["10.0.0.1:2379", "[fd00::1]:2379", "etcd-2.example:32379"]
        );
        assert_eq!(
            parse_url("etcd://localhost:2379").unwrap(),
            ["localhost:2379"]
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let reason = |url: &str| match parse_url(url) {
            Err(EtcdError::BadUrl { url: named, reason }) => {
                assert_eq!(named, url);
                reason
            }
            other => panic!("{url}: expected a bad URL, got {other:?}"),
        };
        assert!(reason("http://10.0.0.1:2379").contains("etcd://"));
        assert!(reason("etcd://").contains("no member"));
        assert!(reason("etcd://10.0.0.1").contains("no port"));
        assert!(reason("etcd://10.0.0.1:0").contains("no valid port"));
        assert!(reason("etcd://10.0.0.1:99999").contains("no valid port"));
        assert!(reason("etcd://10.0.0.1:2379,").contains("empty"));
        assert!(reason("etcd://h/x:2379").contains("no valid host"));
        assert!(reason("etcd://fd00::1:2379").contains("no valid host"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connecting_names_what_failed() {
        let missing = PathBuf::from("/nonexistent/skiff-etcd-ca.pem");
        let tls = EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            tls: Some(EtcdTls {
                ca: missing.clone(),
                identity: None,
            }),
        };
        let Err(StoreError::Backend(message)) = EtcdStore::connect(&tls).await else {
            panic!("a missing CA file must fail the connection");
        };
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );

        // A port nothing listens on: bound, then let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let down = EtcdConfig {
            endpoints: vec![format!("127.0.0.1:{port}"), format!("[::1]:{port}")],
            tls: None,
        };
        let Err(StoreError::Unreachable(message)) = EtcdStore::connect(&down).await else {
            panic!("nothing listens on port {port}");
        };
        let named = format!("etcd at http://127.0.0.1:{port},http://[::1]:{port} is unreachable");
        assert!(message.starts_with(&named), "{message}");
    }

    #[test]
    fn revisions_shift_by_one() {
        assert_eq!((from_etcd(0), from_etcd(1), from_etcd(2)), (0, 0, 1));
        assert_eq!((to_etcd(0), to_etcd(1)), (1, 2));
        assert_eq!((key_revision_to_etcd(0), key_revision_to_etcd(1)), (0, 2));
        assert_eq!(to_etcd(u64::MAX), i64::MAX);
    }

    #[test]
    fn only_the_last_write_to_a_key_is_kept() {
        let ops = Txn::new()
            .put("/a", "1")
            .delete("/b")
            .put("/b", "2")
            .put("/c", "3")
            .delete("/a")
            .ops;
        assert_eq!(
            last_write_per_key(ops),
            Txn::new().put("/b", "2").put("/c", "3").delete("/a").ops
        );
    }
}
