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

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

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

/// Answers one DNS message (UDP payload or TCP frame). `None` for garbage that does not even
/// carry a header (dropped silently, as resolvers do).
pub fn answer(query: &[u8], table: &NameTable) -> Option<(Vec<u8>, Option<Question>, Answer)> {
    if query.len() < 12 {
        return None;
    }
    let id = [query[0], query[1]];
    let flags = u16::from_be_bytes([query[2], query[3]]);
    let is_response = flags & 0x8000 != 0;
    if is_response {
        return None;
    }
    let opcode = (flags >> 11) & 0xf;
    let rd = flags & 0x0100;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let reply =
        |rcode: u8, question: Option<(&[u8], Question)>, records: &[Vec<u8>], answer: Answer| {
            let mut out = Vec::with_capacity(128);
            out.extend_from_slice(&id);
            // QR, opcode, RD copied, RA set, rcode.
            let flags = 0x8000 | (opcode << 11) | rd | 0x0080 | u16::from(rcode);
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&u16::from(question.is_some()).to_be_bytes());
            out.extend_from_slice(&u16::try_from(records.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            let parsed = question.map(|(raw, q)| {
                out.extend_from_slice(raw);
                q
            });
            for r in records {
                out.extend_from_slice(r);
            }
            Some((out, parsed, answer))
        };
    if opcode != 0 {
        return reply(RCODE_NOTIMP, None, &[], Answer::NotImp);
    }
    if qdcount != 1 {
        return reply(RCODE_FORMERR, None, &[], Answer::FormErr);
    }
    let Some((question, end)) = parse_question(query) else {
        return reply(RCODE_FORMERR, None, &[], Answer::FormErr);
    };
    let raw_question = &query[12..end];
    let with_q = Some((raw_question, question.clone()));
    if question.qclass != CLASS_IN {
        return reply(RCODE_NOTIMP, with_q, &[], Answer::NotImp);
    }
    let record = |qtype: u16, rdata: &[u8]| {
        let mut r = vec![0xc0, 0x0c]; // the question's name
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&TTL.to_be_bytes());
        r.extend_from_slice(&u16::try_from(rdata.len()).unwrap_or(0).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    };
    if question.name == "localhost" || question.name.ends_with(".localhost") {
        return match question.qtype {
            TYPE_A => reply(
                0,
                with_q,
                &[record(TYPE_A, &Ipv4Addr::LOCALHOST.octets())],
                Answer::V4(Ipv4Addr::LOCALHOST),
            ),
            TYPE_AAAA => reply(
                0,
                with_q,
                &[record(TYPE_AAAA, &Ipv6Addr::LOCALHOST.octets())],
                Answer::V6(Ipv6Addr::LOCALHOST),
            ),
            _ => reply(0, with_q, &[], Answer::NoData),
        };
    }
    if question.qtype == TYPE_PTR {
        return match ptr_address(&question.name).and_then(|ip| table.name_for(ip)) {
            Some(name) => {
                let rdata = encode_name(&name);
                reply(0, with_q, &[record(TYPE_PTR, &rdata)], Answer::Ptr(name))
            }
            None => reply(RCODE_NXDOMAIN, with_q, &[], Answer::NxDomain),
        };
    }
    let Ok(Host::Name(name)) = Host::parse(&question.name) else {
        return reply(RCODE_NXDOMAIN, with_q, &[], Answer::NxDomain);
    };
    match question.qtype {
        TYPE_A => match table.address_for(&name) {
            Some(ip) => reply(0, with_q, &[record(TYPE_A, &ip.octets())], Answer::V4(ip)),
            None => reply(RCODE_SERVFAIL, with_q, &[], Answer::ServFail),
        },
        _ => reply(0, with_q, &[], Answer::NoData),
    }
}

/// Parses the single question after the header; returns it and the offset after it. Names in
/// questions are never compressed; pointers are refused.
fn parse_question(msg: &[u8]) -> Option<(Question, usize)> {
    let mut at = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        total += len + 1;
        if total > 255 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        // Bytes outside printable ASCII make the name invalid; keep them visible but harmless.
        labels.push(
            label
                .iter()
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect(),
        );
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(at + 2)?, *msg.get(at + 3)?]);
    Some((
        Question {
            name: labels.join("."),
            qtype,
            qclass,
        },
        at + 4,
    ))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
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

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(encode_name(name));
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
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
}
