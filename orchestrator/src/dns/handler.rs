//! The request path behind hickory-server: [`Handler`] is its
//! [`RequestHandler`]. hickory-server reads the sockets, splits TCP frames,
//! decodes the request (answering FORMERR to what does not decode, and nothing
//! to what is shorter than a header or is itself a response) and sends what the
//! handler builds. The handler does the rest: the checks a server owes odd
//! requests, answers from the current [`Records`] (references into the build,
//! nothing copied unless the question's case must be echoed), forwarding of
//! names outside the zone to the upstream resolver, truncation to the client's
//! size, and the metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, LowerQuery, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use log::debug;

use super::metrics::DnsMetrics;
use super::records::{Found, Node, Records};

/// The largest UDP answer this server sends, whatever the client offers (the
/// DNS flag day 2020 value, which avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The size of a DNS header.
const HEADER_LEN: usize = 12;
/// The size of an OPT record without options.
const OPT_LEN: usize = 11;

/// Who may have names outside the zone resolved (the rest get REFUSED), so the
/// server is not an open resolver.
pub trait RecursionPolicy: Send + Sync + Unpin {
    fn allows(&self, client: IpAddr) -> bool;
}

impl<F: Fn(IpAddr) -> bool + Send + Sync + Unpin> RecursionPolicy for F {
    fn allows(&self, client: IpAddr) -> bool {
        self(client)
    }
}

/// Answers from the current build of the zone, and forwards the rest.
pub struct Handler {
    records: Arc<ArcSwap<Records>>,
    recursion: Box<dyn RecursionPolicy>,
    /// None: names outside the zone get SERVFAIL.
    upstream: Option<TokioResolver>,
    metrics: DnsMetrics,
    /// The OPT record of every answer to a request that had one.
    edns: Edns,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let info = self.answer(request, response_handle).await;
        self.metrics.count(request, &info, started.elapsed());
        info
    }
}

impl Handler {
    pub fn new(
        records: Arc<ArcSwap<Records>>,
        recursion: Box<dyn RecursionPolicy>,
        upstream: Option<TokioResolver>,
        metrics: DnsMetrics,
    ) -> Self {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        Self {
            records,
            recursion,
            upstream,
            metrics,
            edns,
        }
    }

    async fn answer<R: ResponseHandler>(&self, request: &Request, handle: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|_| &self.edns);
        // Not a query, or not one question: the answer echoes no question, so
        // it stays small whatever the request held.
        let code = match request.queries.queries() {
            _ if request.metadata.op_code != OpCode::Query => Some(ResponseCode::NotImp),
            [_] => None,
            _ => Some(ResponseCode::FormErr),
        };
        if let Some(code) = code {
            let none = no_question();
            let reply = Reply::new(request, &none, edns);
            return reply.error(handle, code).await;
        }
        let mut reply = Reply::new(request, &request.queries, edns);
        let [query] = request.queries.queries() else {
            return reply.error(handle, ResponseCode::FormErr).await;
        };
        if query.query_class() != DNSClass::IN
            || matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return reply.error(handle, ResponseCode::NotImp).await;
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return reply.error(handle, ResponseCode::BADVERS).await;
        }
        let records = self.records.load_full();
        let recursion = self.recursion.allows(request.src().ip());
        reply.metadata.recursion_available = recursion;
        match records.find(query.name()) {
            Found::Elsewhere if recursion => self.forward(reply, query, handle).await,
            Found::Elsewhere => reply.error(handle, ResponseCode::Refused).await,
            Found::NoSuchName => {
                reply.metadata.authoritative = true;
                reply.metadata.response_code = ResponseCode::NXDomain;
                let bound = records.soa_len;
                reply
                    .send(handle, [], Some(&records.soa), [], Some(bound))
                    .await
            }
            Found::Name(node) => {
                reply.metadata.authoritative = records.in_zone(query.name());
                from_zone(reply, query, &records, node, handle).await
            }
        }
    }

    /// The upstream resolver's answer to `query`.
    async fn forward<R: ResponseHandler>(
        &self,
        mut reply: Reply<'_>,
        query: &LowerQuery,
        handle: R,
    ) -> ResponseInfo {
        let Some(resolver) = &self.upstream else {
            return reply.error(handle, ResponseCode::ServFail).await;
        };
        let question = query.original();
        match resolver
            .lookup(question.name().clone(), question.query_type())
            .await
        {
            Ok(lookup) => reply.send(handle, lookup.answers(), [], [], None).await,
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                reply.metadata.response_code = none.response_code;
                let soa = none.soa.map(|soa| soa.into_record_of_rdata());
                reply.send(handle, [], soa.as_ref(), [], None).await
            }
            Err(e) => {
                debug!("cluster DNS: forwarding {}: {e}", question.name());
                reply.error(handle, ResponseCode::ServFail).await
            }
        }
    }
}

/// The answer from the zone at a name holding `node`: the records of the
/// question's type (an alias's CNAME for any type), the addresses of SRV and NS
/// targets as additional records, and NODATA (the SOA in authority) when none fit.
async fn from_zone<R: ResponseHandler>(
    reply: Reply<'_>,
    query: &LowerQuery,
    records: &Records,
    node: &Node,
    handle: R,
) -> ResponseInfo {
    let wanted = query.query_type();
    let alias = wanted != RecordType::CNAME && node.is_alias();
    let answers = Matching {
        records: node.records.iter(),
        wanted: match alias {
            true => RecordType::CNAME,
            false => wanted,
        },
    };
    let count = answers.clone().count();
    let additionals =
        match !alias && matches!(wanted, RecordType::SRV | RecordType::NS | RecordType::ANY) {
            true => node.targets.as_slice(),
            false => &[],
        };
    let nodata = (count == 0).then_some(&records.soa);
    let bound = (count + additionals.len()) * node.largest + nodata.map_or(0, |_| records.soa_len);
    // The owner is the question's name as the client wrote it (RFC 4343):
    // the records' own lower-case owner serves unless the client used capitals.
    let asked = query.original().name();
    if asked.iter().flatten().any(u8::is_ascii_uppercase) {
        let echoed: Vec<Record> = answers
            .map(|r| Record::from_rdata(asked.clone(), r.ttl, r.data.clone()))
            .collect();
        return reply
            .send(handle, &echoed, nodata, additionals, Some(bound))
            .await;
    }
    reply
        .send(handle, answers, nodata, additionals, Some(bound))
        .await
}

/// The records of one type (every record for ANY). A named type rather than a
/// closure's filter: the future that holds it must be Send for every lifetime.
#[derive(Clone)]
struct Matching<'a> {
    records: std::slice::Iter<'a, Record>,
    wanted: RecordType,
}

impl<'a> Iterator for Matching<'a> {
    type Item = &'a Record;

    fn next(&mut self) -> Option<&'a Record> {
        let wanted = self.wanted;
        self.records
            .find(|r| wanted == RecordType::ANY || r.record_type() == wanted)
    }
}

/// An empty question section.
fn no_question() -> Queries {
    // Reading no question from no bytes cannot fail.
    Queries::read(&mut BinDecoder::new(&[]), 0).unwrap_or_else(|_| unreachable!())
}

/// A response being built for one request.
struct Reply<'q> {
    request: &'q Request,
    /// The question section to echo.
    queries: &'q Queries,
    metadata: Metadata,
    /// Ours, when the request had an OPT record.
    edns: Option<&'q Edns>,
}

impl<'q> Reply<'q> {
    fn new(request: &'q Request, queries: &'q Queries, edns: Option<&'q Edns>) -> Self {
        Self {
            request,
            queries,
            metadata: Metadata::response_from_request(&request.metadata),
            edns,
        }
    }

    /// An answer with no records and `code`.
    async fn error<R: ResponseHandler>(self, handle: R, code: ResponseCode) -> ResponseInfo {
        let mut reply = self;
        reply.metadata.response_code = code;
        reply.send(handle, [], [], [], Some(0)).await
    }

    /// Sends the response with these sections, truncated (TC set, every record
    /// dropped, as RFC 2181 section 9 prefers to a partial set) when it is over
    /// the size the client takes: 512 bytes over UDP, or what its EDNS offers up
    /// to ours. `bound` is an upper bound of the records' encoded size, when
    /// known, which spares a trial encoding for the answers that fit.
    async fn send<'a, R: ResponseHandler>(
        mut self,
        mut handle: R,
        answers: impl IntoIterator<Item = &'a Record, IntoIter: Clone + Send + 'a> + Send + 'a,
        authorities: impl IntoIterator<Item = &'a Record, IntoIter: Clone + Send + 'a> + Send + 'a,
        additionals: impl IntoIterator<Item = &'a Record, IntoIter: Clone + Send + 'a> + Send + 'a,
        bound: Option<usize>,
    ) -> ResponseInfo {
        let (answers, authorities, additionals) = (
            answers.into_iter(),
            authorities.into_iter(),
            additionals.into_iter(),
        );
        let request = self.request;
        let builder = || MessageResponseBuilder::new(self.queries, self.edns);
        let limit = match request.protocol() {
            Protocol::Udp => request.max_payload().min(MAX_UDP_PAYLOAD),
            _ => u16::MAX,
        };
        let fixed = HEADER_LEN + self.queries.as_bytes().len() + OPT_LEN;
        let fits = match bound {
            Some(bound) if fixed + bound <= usize::from(limit) => true,
            _ => {
                let mut scratch = Vec::with_capacity(usize::from(limit));
                let mut encoder = BinEncoder::new(&mut scratch);
                encoder.set_max_size(limit);
                let trial = builder().build(
                    self.metadata,
                    answers.clone(),
                    authorities.clone(),
                    [],
                    additionals.clone(),
                );
                trial
                    .destructive_emit(&mut encoder)
                    .is_ok_and(|info| !info.truncation)
            }
        };
        let sent = if fits {
            let response = builder().build(self.metadata, answers, authorities, [], additionals);
            handle.send_response(response).await
        } else {
            self.metadata.truncation = true;
            let response = builder().build_no_records(self.metadata);
            handle.send_response(response).await
        };
        sent.unwrap_or_else(|e| {
            debug!("cluster DNS: answering {}: {e}", request.src());
            let mut metadata = self.metadata;
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::records::Sources;
    use hickory_server::proto::op::{Message, MessageType, Query};
    use hickory_server::proto::rr::Name;

    fn handler() -> Handler {
        let zone = Name::from_ascii("cluster.local.").unwrap();
        let records = Records::build(&zone, 5, 1, &Sources::default());
        Handler::new(
            Arc::new(ArcSwap::from_pointee(records)),
            Box::new(|ip: IpAddr| ip.is_loopback()),
            None,
            DnsMetrics::default(),
        )
    }

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn ask(h: &Handler, message: &Message, client: IpAddr, protocol: Protocol) -> Message {
        let bytes = message.to_vec().unwrap();
        let reply = super::super::server::answer_bytes(h, &bytes, client, protocol)
            .expect("a request that decodes");
        Message::from_vec(&reply).expect("a valid reply")
    }

    #[test]
    fn many_questions_unknown_classes_and_opcodes_are_refused_plainly() {
        let h = handler();
        let mut two = query("a.cluster.local.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("b.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let m = ask(&h, &two, LOCAL, Protocol::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let m = ask(&h, &Message::query(), LOCAL, Protocol::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // More questions than an answer can echo (found by the fuzz target).
        let mut many = Message::query();
        many.metadata.op_code = OpCode::Status;
        for _ in 0..300 {
            many.add_query(Query::query(Name::root(), RecordType::A));
        }
        let m = ask(&h, &many, LOCAL, Protocol::Udp);
        assert_eq!(
            (m.metadata.response_code, m.queries.len()),
            (ResponseCode::NotImp, 0)
        );

        let mut chaos = query("version.bind.", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        let m = ask(&h, &chaos, LOCAL, Protocol::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

        let mut update = query("cluster.local.", RecordType::SOA);
        update.metadata.op_code = OpCode::Update;
        let m = ask(&h, &update, LOCAL, Protocol::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

        let axfr = query("cluster.local.", RecordType::AXFR);
        let m = ask(&h, &axfr, LOCAL, Protocol::Tcp);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

        let mut future = query("cluster.local.", RecordType::SOA);
        let mut edns = Edns::new();
        edns.set_version(1);
        future.set_edns(edns);
        let m = ask(&h, &future, LOCAL, Protocol::Udp);
        // 16 decodes as BADSIG, its other name.
        assert_eq!(
            u16::from(m.metadata.response_code),
            u16::from(ResponseCode::BADVERS)
        );
    }

    #[test]
    fn recursion_is_for_local_clients_only() {
        let h = handler();
        let outside = query("example.com.", RecordType::A);
        // No upstream here: a local client's question is forwarded, and fails.
        let m = ask(&h, &outside, LOCAL, Protocol::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.metadata.recursion_available);
        let m = ask(&h, &outside, REMOTE, Protocol::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // The zone itself answers anyone.
        let inside = query("dns-version.cluster.local.", RecordType::TXT);
        let m = ask(&h, &inside, REMOTE, Protocol::Udp);
        assert_eq!(m.answers.len(), 1);
        assert!(m.metadata.authoritative);
        assert_eq!(m.metadata.message_type, MessageType::Response);
    }

    #[test]
    fn capitals_in_the_question_are_echoed_in_the_answer() {
        let h = handler();
        let m = ask(
            &h,
            &query("DNS-Version.cluster.LOCAL.", RecordType::TXT),
            LOCAL,
            Protocol::Udp,
        );
        assert_eq!(m.answers[0].name.to_ascii(), "DNS-Version.cluster.LOCAL.");
    }

    #[test]
    fn random_bytes_never_panic() {
        let h = handler();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..2000usize {
            let mut bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            // Mostly queries with one question, to get past the header.
            if let Some(header) = bytes.get_mut(..6) {
                header[2] &= 0x07;
                header[4..6].copy_from_slice(&[0, 1]);
            }
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                let _ = super::super::server::answer_bytes(&h, &bytes, LOCAL, protocol);
            }
        }
    }
}
