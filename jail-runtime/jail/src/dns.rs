//! The jail's DNS server. Every query the jailed process sends, to whatever resolver, is
//! redirected here; none reaches a real resolver, so DNS cannot carry data out.
//!
//! `A` queries are answered with a *synthetic* address from 198.18.0.0/15 (the benchmarking
//! range, never routed), one per name and stable for the jail's life. A connection to such an
//! address tells the forwarder exactly which name the client meant, so TCP rules can be enforced
//! by name, and a shared CDN address cannot let one allowed name vouch for another. The proxy
//! resolves the real address itself, and only for names the policy allows.
//!
//! `AAAA` gets an empty answer (clients fall back to IPv4), `PTR` of a synthetic address its
//! name, `localhost` the loopback addresses, anything else an empty answer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use boundary_api::rules::Host;
use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// First synthetic address (198.18.0.1); the range holds 2^17 addresses.
const BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const RANGE: u32 = 1 << 17;
/// Names the table holds before it answers SERVFAIL (a hostile process can only hurt itself).
pub const MAX_NAMES: usize = 65_536;
/// TTL of synthetic answers: the mapping lives as long as the jail.
const TTL: u32 = 300;

/// Synthetic address ↔ name.
#[derive(Debug, Default)]
pub struct NameTable {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<String, u32>,
    names: Vec<String>,
}

impl NameTable {
    /// The synthetic address of `name` (normalised), allocating one; `None` when full.
    pub fn address_for(&self, name: &str) -> Option<Ipv4Addr> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(index) = inner.by_name.get(name) {
            return Some(Ipv4Addr::from(BASE + 1 + index));
        }
        if inner.names.len() >= MAX_NAMES {
            return None;
        }
        let index = u32::try_from(inner.names.len()).ok()?;
        inner.names.push(name.to_owned());
        inner.by_name.insert(name.to_owned(), index);
        Some(Ipv4Addr::from(BASE + 1 + index))
    }

    /// The name behind a synthetic address.
    pub fn name_for(&self, ip: Ipv4Addr) -> Option<String> {
        let offset = u32::from(ip).checked_sub(BASE + 1)?;
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.names.get(usize::try_from(offset).ok()?).cloned()
    }

    /// Whether `ip` is in the synthetic range.
    pub fn is_synthetic(ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(BASE) < RANGE
    }
}

/// One parsed question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name, lower-cased, without trailing dot.
    pub name: String,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// What a query was answered with (for the audit log and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A synthetic (or loopback) IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 loopback answer.
    V6(Ipv6Addr),
    /// The name of a synthetic address.
    Ptr(String),
    /// No records of that type.
    NoData,
    /// The name cannot exist.
    NxDomain,
    /// The table is full.
    ServFail,
    /// Not a standard query.
    NotImp,
    /// Malformed.
    FormErr,
}

/// The decision for one query, before it is encoded.
struct Reply {
    code: ResponseCode,
    /// The question to echo, parsed; absent when it could not be read.
    question: Option<(Query, Question)>,
    /// At most one record, owned by the question's name.
    record: Option<RData>,
    answer: Answer,
}

impl Reply {
    fn bare(code: ResponseCode, answer: Answer) -> Self {
        Reply {
            code,
            question: None,
            record: None,
            answer,
        }
    }

    fn answered(
        question: (Query, Question),
        code: ResponseCode,
        record: Option<RData>,
        answer: Answer,
    ) -> Self {
        Reply {
            code,
            question: Some(question),
            record,
            answer,
        }
    }
}

/// Answers one DNS message (UDP payload or TCP frame). `None` for garbage that does not even
/// carry a header, and for responses (dropped silently, as resolvers do).
pub fn answer(query: &[u8], table: &NameTable) -> Option<(Vec<u8>, Option<Question>, Answer)> {
    let mut decoder = BinDecoder::new(query);
    let header = Header::read(&mut decoder).ok()?;
    if header.message_type == MessageType::Response {
        return None;
    }
    let reply = decide(&header, &mut decoder, table);

    let mut response = Message::response(header.id, header.op_code);
    response.metadata.recursion_desired = header.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.response_code = reply.code;
    let question = reply.question.map(|(query, question)| {
        if let Some(rdata) = reply.record {
            response.add_answer(Record::from_rdata(query.name().clone(), TTL, rdata));
        }
        response.add_query(query);
        question
    });
    // Encoding a name hickory just decoded (or one the table validated) cannot fail; if it ever
    // did, the query goes unanswered rather than answered wrongly.
    let bytes = response.to_vec().ok()?;
    Some((bytes, question, reply.answer))
}

/// What to answer; the rest of the message (answer, authority, additional sections: EDNS, …)
/// is ignored, as a query carries nothing there this server needs.
fn decide(header: &Header, decoder: &mut BinDecoder<'_>, table: &NameTable) -> Reply {
    if header.op_code != OpCode::Query {
        return Reply::bare(ResponseCode::NotImp, Answer::NotImp);
    }
    if header.counts.queries != 1 {
        return Reply::bare(ResponseCode::FormErr, Answer::FormErr);
    }
    let Some(query) = read_question(decoder) else {
        return Reply::bare(ResponseCode::FormErr, Answer::FormErr);
    };
    let question = Question {
        name: plain_name(query.name()),
        qtype: query.query_type().into(),
        qclass: query.query_class().into(),
    };
    let name = question.name.clone();
    let (qtype, qclass) = (query.query_type(), query.query_class());
    let with_q = (query, question);
    if qclass != DNSClass::IN {
        return Reply::answered(with_q, ResponseCode::NotImp, None, Answer::NotImp);
    }
    if name == "localhost" || name.ends_with(".localhost") {
        return match qtype {
            RecordType::A => Reply::answered(
                with_q,
                ResponseCode::NoError,
                Some(RData::A(A(Ipv4Addr::LOCALHOST))),
                Answer::V4(Ipv4Addr::LOCALHOST),
            ),
            RecordType::AAAA => Reply::answered(
                with_q,
                ResponseCode::NoError,
                Some(RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))),
                Answer::V6(Ipv6Addr::LOCALHOST),
            ),
            _ => Reply::answered(with_q, ResponseCode::NoError, None, Answer::NoData),
        };
    }
    if qtype == RecordType::PTR {
        let Some(target) = ptr_address(&name).and_then(|ip| table.name_for(ip)) else {
            return Reply::answered(with_q, ResponseCode::NXDomain, None, Answer::NxDomain);
        };
        // Table names passed `Host::parse` (ASCII, labels of 1–63 bytes): this cannot fail.
        let Ok(wire_name) = Name::from_labels(target.split('.').map(str::as_bytes)) else {
            return Reply::answered(with_q, ResponseCode::ServFail, None, Answer::ServFail);
        };
        return Reply::answered(
            with_q,
            ResponseCode::NoError,
            Some(RData::PTR(PTR(wire_name))),
            Answer::Ptr(target),
        );
    }
    let Ok(Host::Name(normalised)) = Host::parse(&name) else {
        return Reply::answered(with_q, ResponseCode::NXDomain, None, Answer::NxDomain);
    };
    match qtype {
        RecordType::A => match table.address_for(&normalised) {
            Some(ip) => Reply::answered(
                with_q,
                ResponseCode::NoError,
                Some(RData::A(A(ip))),
                Answer::V4(ip),
            ),
            None => Reply::answered(with_q, ResponseCode::ServFail, None, Answer::ServFail),
        },
        _ => Reply::answered(with_q, ResponseCode::NoError, None, Answer::NoData),
    }
}

/// The single question after the header. hickory refuses labels over 63 bytes, names over 255,
/// pointers that do not point backwards (so no loops) and truncation. Names in questions are
/// never compressed, so a pointer, which here could only point into the header whose bytes the
/// sender picks freely, is refused too: the bytes read must be the name's uncompressed length.
fn read_question(decoder: &mut BinDecoder<'_>) -> Option<Query> {
    let start = decoder.index();
    let query = Query::read(decoder).ok()?;
    let uncompressed: usize = query
        .name()
        .iter()
        .map(|label| label.len() + 1)
        .sum::<usize>()
        + 1 // the root label
        + 4; // QTYPE, QCLASS
    (decoder.index() - start == uncompressed).then_some(query)
}

/// Labels joined by dots, lower-cased, without trailing dot. Bytes outside printable ASCII make
/// the name invalid for `Host::parse`; they stay visible in the audit log but harmless.
fn plain_name(name: &Name) -> String {
    name.iter()
        .map(|label| {
            label
                .iter()
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `5.0.18.198.in-addr.arpa` → 198.18.0.5.
fn ptr_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = rest
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE_A: u16 = 1;
    const TYPE_PTR: u16 = 12;
    const TYPE_AAAA: u16 = 28;
    const CLASS_IN: u16 = 1;

    /// A query built byte by byte (id 0x1234, RD set), so tests can also make ones no DNS
    /// library would: oversized names, odd bytes, edited headers.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        query_in_class(name, qtype, CLASS_IN)
    }

    fn query_in_class(name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(u8::try_from(label.len()).unwrap());
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&qclass.to_be_bytes());
        q
    }

    /// The reply as a DNS client library reads it.
    fn client_reads(reply: &[u8]) -> Message {
        Message::from_vec(reply).expect("the reply is a well-formed DNS message")
    }

    #[test]
    fn names_get_stable_synthetic_addresses() {
        let t = NameTable::default();
        let a = t.address_for("github.com").unwrap();
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(t.address_for("github.com"), Some(a));
        assert_eq!(
            t.address_for("example.com"),
            Some(Ipv4Addr::new(198, 18, 0, 2))
        );
        assert_eq!(t.name_for(a).as_deref(), Some("github.com"));
        assert_eq!(t.name_for(Ipv4Addr::new(198, 18, 9, 9)), None);
        assert!(NameTable::is_synthetic(a));
        assert!(NameTable::is_synthetic(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!NameTable::is_synthetic(Ipv4Addr::new(198, 20, 0, 0)));
        assert!(!NameTable::is_synthetic(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn a_queries_are_answered_synthetically_and_case_folded() {
        let t = NameTable::default();
        let (reply, q, ans) = answer(&query("GitHub.COM", TYPE_A), &t).unwrap();
        assert_eq!(q.unwrap().name, "github.com");
        assert_eq!(ans, Answer::V4(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(&reply[0..2], &[0x12, 0x34], "id echoed");
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&reply[6..8], &[0, 1], "one answer");
        assert_eq!(&reply[reply.len() - 4..], &[198, 18, 0, 1]);
    }

    #[test]
    fn other_types_and_names() {
        let t = NameTable::default();
        assert_eq!(
            answer(&query("github.com", TYPE_AAAA), &t).unwrap().2,
            Answer::NoData
        );
        assert_eq!(
            answer(&query("localhost", TYPE_A), &t).unwrap().2,
            Answer::V4(Ipv4Addr::LOCALHOST)
        );
        let ip = t.address_for("a.example").unwrap();
        let ptr = format!(
            "{}.{}.{}.{}.in-addr.arpa",
            ip.octets()[3],
            ip.octets()[2],
            ip.octets()[1],
            ip.octets()[0]
        );
        assert_eq!(
            answer(&query(&ptr, TYPE_PTR), &t).unwrap().2,
            Answer::Ptr("a.example".into())
        );
        assert_eq!(
            answer(&query("bad name!", TYPE_A), &t).unwrap().2,
            Answer::NxDomain
        );
        assert_eq!(
            answer(&query("x.com", 16), &t).unwrap().2,
            Answer::NoData,
            "TXT"
        );
    }

    #[test]
    fn hostile_messages_are_refused_not_trusted() {
        let t = NameTable::default();
        assert!(answer(&[1, 2, 3], &t).is_none(), "shorter than a header");
        let mut response = query("a.com", TYPE_A);
        response[2] |= 0x80;
        assert!(
            answer(&response, &t).is_none(),
            "responses are not answered"
        );
        let mut two = query("a.com", TYPE_A);
        two[5] = 2;
        assert_eq!(answer(&two, &t).unwrap().2, Answer::FormErr);
        let mut truncated = query("a.com", TYPE_A);
        truncated.truncate(15);
        assert_eq!(answer(&truncated, &t).unwrap().2, Answer::FormErr);
        let mut pointer = vec![
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
        ];
        assert_eq!(answer(&pointer, &t).unwrap().2, Answer::FormErr);
        pointer[2] = 0x28; // opcode 5 (UPDATE)
        assert_eq!(answer(&pointer, &t).unwrap().2, Answer::NotImp);
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(
            answer(&query(&long, TYPE_A), &t).unwrap().2,
            Answer::FormErr
        );
    }

    #[test]
    fn a_full_table_fails_soft() {
        let t = NameTable::default();
        for i in 0..MAX_NAMES {
            assert!(t.address_for(&format!("n{i}.example")).is_some());
        }
        assert_eq!(
            answer(&query("one-more.example", TYPE_A), &t).unwrap().2,
            Answer::ServFail
        );
        assert!(
            t.address_for("n1.example").is_some(),
            "known names still resolve"
        );
    }

    #[test]
    fn replies_are_byte_for_byte_what_resolvers_got_before() {
        let t = NameTable::default();
        let (reply, _, _) = answer(&query("GitHub.COM", TYPE_A), &t).unwrap();
        let mut expected = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x06GitHub\x03COM\x00\x00\x01\x00\x01");
        // The answer's name points at the question's; TTL 300; 198.18.0.1.
        expected.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4]);
        expected.extend_from_slice(&[198, 18, 0, 1]);
        assert_eq!(reply, expected);

        let mut no_recursion = query("x.example", 16);
        no_recursion[2] = 0;
        let (reply, _, _) = answer(&no_recursion, &t).unwrap();
        assert_eq!(
            &reply[2..4],
            &[0x80, 0x80],
            "QR and RA, RD not copied when unset, no AA"
        );
        assert_eq!(
            &reply[12..],
            &no_recursion[12..],
            "NODATA: the question alone"
        );
    }

    #[test]
    fn a_client_reads_every_kind_of_reply() {
        let t = NameTable::default();
        let (reply, _, _) = answer(&query("Api.Example.com", TYPE_A), &t).unwrap();
        let msg = client_reads(&reply);
        assert_eq!(msg.metadata.id, 0x1234);
        assert_eq!(msg.metadata.message_type, MessageType::Response);
        assert!(msg.metadata.recursion_desired && msg.metadata.recursion_available);
        assert!(!msg.metadata.authoritative && !msg.metadata.truncation);
        assert_eq!(msg.queries.len(), 1);
        assert_eq!(msg.queries[0].name().to_string(), "Api.Example.com.");
        assert_eq!(msg.answers.len(), 1);
        assert_eq!(msg.answers[0].ttl, TTL);
        assert_eq!(msg.answers[0].name.to_string(), "Api.Example.com.");
        assert_eq!(
            msg.answers[0].data,
            RData::A(A(Ipv4Addr::new(198, 18, 0, 1)))
        );

        let (reply, _, _) = answer(&query("db.localhost", TYPE_AAAA), &t).unwrap();
        assert_eq!(
            client_reads(&reply).answers[0].data,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))
        );

        let (reply, _, ans) = answer(&query("1.0.18.198.in-addr.arpa", TYPE_PTR), &t).unwrap();
        assert_eq!(ans, Answer::Ptr("api.example.com".into()));
        let msg = client_reads(&reply);
        let RData::PTR(PTR(target)) = &msg.answers[0].data else {
            panic!("not a PTR: {msg:?}");
        };
        assert_eq!(target.to_string(), "api.example.com.");

        let (reply, _, _) = answer(&query("9.9.18.198.in-addr.arpa", TYPE_PTR), &t).unwrap();
        let msg = client_reads(&reply);
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
        assert!(msg.answers.is_empty());

        let (reply, q, ans) = answer(&query_in_class("x.example", TYPE_A, 3), &t).unwrap();
        assert_eq!((q.unwrap().qclass, ans), (3, Answer::NotImp), "CHAOS");
        let msg = client_reads(&reply);
        assert_eq!(msg.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(
            msg.queries[0].query_class(),
            DNSClass::CH,
            "the question is echoed"
        );
    }

    #[test]
    fn the_question_is_echoed_byte_for_byte_whatever_its_type_and_class() {
        let t = NameTable::default();
        for value in 0..=u16::MAX {
            for sent in [
                query("MiXed.Example", value),
                query_in_class("MiXed.Example", TYPE_A, value),
            ] {
                let (reply, q, _) = answer(&sent, &t).unwrap();
                let q = q.unwrap();
                assert_eq!(&reply[4..6], &[0, 1]);
                assert_eq!(&reply[12..sent.len()], &sent[12..], "type/class {value}");
                assert_eq!(q.name, "mixed.example");
                assert!(q.qtype == value || q.qclass == value);
            }
        }
    }

    #[test]
    fn what_follows_the_question_is_ignored() {
        let t = NameTable::default();
        // An EDNS OPT record, as dig and glibc with `options edns0` send.
        let mut edns = query("a.example", TYPE_A);
        edns[11] = 1;
        edns.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        let (reply, _, ans) = answer(&edns, &t).unwrap();
        assert_eq!(ans, Answer::V4(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(
            &reply[10..12],
            &[0, 0],
            "no additional records in the reply"
        );
        // Junk claiming to be records.
        let mut junk = query("a.example", TYPE_A);
        junk[7] = 9;
        junk.extend_from_slice(&[0xff; 7]);
        assert_eq!(
            answer(&junk, &t).unwrap().2,
            Answer::V4(Ipv4Addr::new(198, 18, 0, 1))
        );
    }

    #[test]
    fn compressed_questions_and_overlong_names_are_refused() {
        let t = NameTable::default();
        // The header's own bytes spell `a.b` (id 0x01 'a', flags 0x01 'b', QDCOUNT high byte 0):
        // a pointer back to them is well-formed compression, but questions are never
        // compressed, so it is refused rather than answered for a name nobody wrote.
        let into_header = [
            0x01, b'a', 0x01, b'b', 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x00, 0, 1, 0, 1,
        ];
        let (reply, q, ans) = answer(&into_header, &t).unwrap();
        assert_eq!((q, ans), (None, Answer::FormErr));
        assert_eq!(&reply[..2], &[0x01, b'a'], "id echoed");
        assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
        assert_eq!(&reply[4..6], &[0, 0], "no question echoed");
        assert_eq!(
            t.address_for("a.b"),
            Some(Ipv4Addr::new(198, 18, 0, 1)),
            "not allocated"
        );
        // A label then a pointer.
        let mut suffix = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        suffix.extend_from_slice(&[1, b'x', 0xc0, 0x00, 0, 1, 0, 1]);
        assert_eq!(answer(&suffix, &t).unwrap().2, Answer::FormErr);
        // A pointer forwards.
        let mut forward = query("a.com", TYPE_A);
        forward.splice(12..12, [0xc0, 0x12]);
        assert_eq!(answer(&forward, &t).unwrap().2, Answer::FormErr);
        // Reserved label types (0b01 and 0b10 prefixes).
        for prefix in [0x40, 0x80] {
            let mut reserved = query("a.com", TYPE_A);
            reserved[12] = prefix | 1;
            assert_eq!(answer(&reserved, &t).unwrap().2, Answer::FormErr);
        }

        // RFC 1035: 255 octets at most on the wire, the final zero included.
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(query(&longest, TYPE_A).len() - 12 - 4, 255);
        assert!(matches!(
            answer(&query(&longest, TYPE_A), &t).unwrap().2,
            Answer::V4(_)
        ));
        let one_more = format!("{longest}d");
        assert_eq!(
            answer(&query(&one_more, TYPE_A), &t).unwrap().2,
            Answer::FormErr
        );
        let too_long_localhost = format!(
            "{}.{}.localhost",
            vec!["a".repeat(63); 3].join("."),
            "e".repeat(52)
        );
        assert_eq!(query(&too_long_localhost, TYPE_A).len() - 12 - 4, 256);
        assert_eq!(
            answer(&query(&too_long_localhost, TYPE_A), &t).unwrap().2,
            Answer::FormErr
        );
    }

    #[test]
    fn other_opcodes_are_not_implemented_and_echoed() {
        let t = NameTable::default();
        for opcode in 1..16u8 {
            let mut q = query("a.com", TYPE_A);
            q[2] = 0x01 | (opcode << 3);
            let (reply, question, ans) = answer(&q, &t).unwrap();
            assert_eq!((question, ans), (None, Answer::NotImp));
            assert_eq!(reply[2], 0x81 | (opcode << 3), "QR, opcode {opcode}, RD");
            assert_eq!(reply[3], 0x80 | 4, "RA, NOTIMP");
            assert_eq!(reply.len(), 12, "header only");
        }
    }
}
