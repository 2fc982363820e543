//! One request in, one answer out: decoding, the checks a server owes bad input,
//! answers from the current [`Records`], and truncation to the client's size.
//! No sockets: [`Handler::handle`] takes and returns wire bytes, so tests (and a
//! fuzz target) drive it directly. Names outside the zone come back as
//! [`Outcome::Forward`] for the server to resolve upstream.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::records::{Found, Records};

/// The largest UDP answer this server sends, whatever the client offers (the
/// DNS flag day 2020 value, which avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The size of a DNS header; shorter input cannot be answered at all.
const HEADER_LEN: usize = 12;

/// How the request arrived, which bounds the answer's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Reply),
    /// A name outside the zone, from a client allowed recursion: resolve it upstream.
    Forward(Box<Message>),
    /// Say nothing (not a query, or too broken to answer).
    Drop,
}

/// An answer and what the metrics count of it.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub query_type: Option<RecordType>,
    pub code: ResponseCode,
}

/// Who may have names outside the zone resolved (the rest get REFUSED), so the
/// server is not an open resolver.
pub trait RecursionPolicy: Send + Sync {
    fn allows(&self, client: IpAddr) -> bool;
}

impl<F: Fn(IpAddr) -> bool + Send + Sync> RecursionPolicy for F {
    fn allows(&self, client: IpAddr) -> bool {
        self(client)
    }
}

/// Answers from the current build of the zone.
pub struct Handler {
    records: Arc<RwLock<Arc<Records>>>,
    recursion: Box<dyn RecursionPolicy>,
}

impl Handler {
    pub fn new(records: Arc<RwLock<Arc<Records>>>, recursion: Box<dyn RecursionPolicy>) -> Self {
        Self { records, recursion }
    }

    fn current(&self) -> Arc<Records> {
        // A poisoned lock still holds a complete build: builds are swapped whole.
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Answers the request in `bytes` from `client`.
    pub fn handle(&self, bytes: &[u8], client: IpAddr, transport: Transport) -> Outcome {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Outcome::Drop;
        };
        // Never answer a response: two servers would bounce errors forever.
        if header[2] & 0x80 != 0 {
            return Outcome::Drop;
        }
        let id = u16::from_be_bytes([header[0], header[1]]);
        let op_code = OpCode::from_u8((header[2] >> 3) & 0x0f);
        let request = match Message::from_vec(bytes) {
            Ok(message) => message,
            Err(_) => return Outcome::Reply(error(id, op_code, ResponseCode::FormErr, None)),
        };
        if request.metadata.op_code != OpCode::Query {
            return Outcome::Reply(error(id, op_code, ResponseCode::NotImp, None));
        }
        let [query] = request.queries.as_slice() else {
            return Outcome::Reply(error(id, op_code, ResponseCode::FormErr, None));
        };
        if query.query_class() != DNSClass::IN {
            let code = ResponseCode::NotImp;
            return Outcome::Reply(error(id, op_code, code, Some(query)));
        }
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return Outcome::Reply(respond(&request, ResponseCode::NotImp, transport));
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Outcome::Reply(respond(&request, ResponseCode::BADVERS, transport));
        }
        let records = self.current();
        let recursion = self.recursion.allows(client);
        let mut response = response_to(&request, recursion);
        let code = match records.find(query.name()) {
            Found::Elsewhere if recursion => return Outcome::Forward(Box::new(request)),
            Found::Elsewhere => ResponseCode::Refused,
            Found::NoSuchName => {
                response.metadata.authoritative = true;
                response.add_authority(soa(&records));
                ResponseCode::NXDomain
            }
            Found::Name(found) => {
                response.metadata.authoritative = records.in_zone(query.name());
                answer(&records, query, found, &mut response);
                ResponseCode::NoError
            }
        };
        response.metadata.response_code = code;
        Outcome::Reply(finish(response, &request, transport))
    }
}

/// The answer records for `query` at a name holding `found`, with SRV targets'
/// addresses as additional records; NODATA (the SOA in authority) when none fit.
fn answer(records: &Records, query: &Query, found: &[RData], response: &mut Message) {
    let owner = query.name().clone();
    let wanted = query.query_type();
    let record = |data: &RData| Record::from_rdata(owner.clone(), records.ttl, data.clone());
    // An alias answers every type (the client follows it).
    let alias = found.iter().find(|d| d.record_type() == RecordType::CNAME);
    let matching: Vec<&RData> = match alias {
        Some(cname) if wanted != RecordType::CNAME => vec![cname],
        _ => found
            .iter()
            .filter(|d| wanted == RecordType::ANY || d.record_type() == wanted)
            .collect(),
    };
    if matching.is_empty() {
        response.add_authority(soa(records));
        return;
    }
    for data in matching {
        response.add_answer(record(data));
        if let RData::SRV(srv) = data
            && let Found::Name(targets) = records.find(&srv.target)
        {
            for address in targets
                .iter()
                .filter(|t| matches!(t, RData::A(_) | RData::AAAA(_)))
            {
                let extra = Record::from_rdata(srv.target.clone(), records.ttl, address.clone());
                if !response.additionals.contains(&extra) {
                    response.add_additional(extra);
                }
            }
        }
    }
}

fn soa(records: &Records) -> Record {
    Record::from_rdata(
        records.zone.clone(),
        records.ttl,
        RData::SOA(records.soa.clone()),
    )
}

/// A response to `request` with its question, flags and EDNS.
pub fn response_to(request: &Message, recursion: bool) -> Message {
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = recursion;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

fn respond(request: &Message, code: ResponseCode, transport: Transport) -> Reply {
    let mut response = response_to(request, false);
    response.metadata.response_code = code;
    finish(response, request, transport)
}

/// Encodes `response`, truncated (TC set, records dropped) when it is over the
/// size a UDP client can take: 512 bytes, or what its EDNS offers up to ours.
pub fn finish(response: Message, request: &Message, transport: Transport) -> Reply {
    let query_type = request.queries.first().map(Query::query_type);
    let code = response.metadata.response_code;
    let limit = match transport {
        Transport::Udp => usize::from(request.max_payload().min(MAX_UDP_PAYLOAD)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    let bytes = match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => response.truncate().to_vec().unwrap_or_default(),
        Err(_) => Message::error_msg(request.metadata.id, OpCode::Query, ResponseCode::ServFail)
            .to_vec()
            .unwrap_or_default(),
    };
    Reply {
        bytes,
        query_type,
        code,
    }
}

/// An error answer for a request that could not be decoded (or is refused
/// before its question is looked at).
fn error(id: u16, op_code: OpCode, code: ResponseCode, query: Option<&Query>) -> Reply {
    let mut message = Message::error_msg(id, op_code, code);
    message.metadata.message_type = MessageType::Response;
    if let Some(query) = query {
        message.add_query(query.clone());
    }
    Reply {
        bytes: message.to_vec().unwrap_or_default(),
        query_type: query.map(Query::query_type),
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::records::Sources;
    use hickory_proto::rr::Name;

    fn handler() -> Handler {
        let zone = Name::from_ascii("cluster.local.").unwrap();
        let records = Records::build(&zone, 5, 1, &Sources::default());
        Handler::new(
            Arc::new(RwLock::new(Arc::new(records))),
            Box::new(|ip: IpAddr| ip.is_loopback()),
        )
    }

    fn reply(outcome: Outcome) -> Message {
        match outcome {
            Outcome::Reply(r) => Message::from_vec(&r.bytes).expect("a valid reply"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn short_input_and_responses_are_dropped() {
        let h = handler();
        for bytes in [&b""[..], b"\x12", &[0u8; 11]] {
            assert!(matches!(
                h.handle(bytes, LOCAL, Transport::Udp),
                Outcome::Drop
            ));
        }
        let mut response = query("a.cluster.local.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        let bytes = response.to_vec().unwrap();
        assert!(matches!(
            h.handle(&bytes, LOCAL, Transport::Udp),
            Outcome::Drop
        ));
    }

    #[test]
    fn undecodable_questions_are_formerr() {
        let h = handler();
        // A header announcing one question, and no question.
        let truncated = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let m = reply(h.handle(&truncated, LOCAL, Transport::Udp));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        // A name whose compression pointer points at itself.
        let mut looped = truncated.to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let m = reply(h.handle(&looped, LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Two pointers pointing at each other.
        let mut pair = truncated.to_vec();
        pair.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
        let m = reply(h.handle(&pair, LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // A name over 255 bytes (five labels of 63).
        let mut long = truncated.to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        let m = reply(h.handle(&long, LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn two_opt_records_are_formerr() {
        let h = handler();
        let mut bytes = query("a.cluster.local.", RecordType::A).to_vec().unwrap();
        // ARCOUNT 2, and two empty OPT records (root name, type 41, 512 bytes).
        bytes[11] = 2;
        for _ in 0..2 {
            bytes.extend_from_slice(&[0, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0]);
        }
        let m = reply(h.handle(&bytes, LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn many_questions_unknown_classes_and_opcodes_are_refused_plainly() {
        let h = handler();
        let mut two = query("a.cluster.local.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("b.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let m = reply(h.handle(&two.to_vec().unwrap(), LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let none = Message::query();
        let m = reply(h.handle(&none.to_vec().unwrap(), LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

        let mut chaos = query("version.bind.", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        let m = reply(h.handle(&chaos.to_vec().unwrap(), LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

        let mut update = query("cluster.local.", RecordType::SOA);
        update.metadata.op_code = OpCode::Update;
        let m = reply(h.handle(&update.to_vec().unwrap(), LOCAL, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

        let axfr = query("cluster.local.", RecordType::AXFR);
        let m = reply(h.handle(&axfr.to_vec().unwrap(), LOCAL, Transport::Tcp));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn recursion_is_for_local_clients_only() {
        let h = handler();
        let outside = query("example.com.", RecordType::A).to_vec().unwrap();
        assert!(matches!(
            h.handle(&outside, LOCAL, Transport::Udp),
            Outcome::Forward(_)
        ));
        let m = reply(h.handle(&outside, REMOTE, Transport::Udp));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // The zone itself answers anyone.
        let inside = query("dns-version.cluster.local.", RecordType::TXT);
        let m = reply(h.handle(&inside.to_vec().unwrap(), REMOTE, Transport::Udp));
        assert_eq!(m.answers.len(), 1);
        assert!(m.metadata.authoritative);
    }

    #[test]
    fn random_bytes_never_panic() {
        let h = handler();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = h.handle(&bytes, LOCAL, Transport::Udp);
        }
    }
}
