//! Just enough of TLS to decide before the handshake: the ClientHello's server name (SNI) and
//! ALPN protocols. The bytes are read from the client and replayed to whoever handles the
//! connection next (the interceptor or a passthrough relay), so nothing is lost.
//!
//! Hostile input is expected: every length is checked, the hello may span several records, and
//! the total is capped.

/// What the proxy needs from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI host name, if sent.
    pub server_name: Option<String>,
    /// ALPN protocol ids offered.
    pub alpn: Vec<Vec<u8>>,
}

/// The outcome of looking at the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Need more bytes.
    Incomplete,
    /// A complete hello.
    Hello(ClientHello),
    /// Not a TLS ClientHello (or malformed).
    Invalid(&'static str),
}

/// Largest hello accepted (real ones are a few hundred bytes; post-quantum key shares ~1.5 KiB).
pub const MAX_HELLO: usize = 16 * 1024;

/// Whether the first byte starts a TLS handshake record.
pub fn is_tls_start(first: u8) -> bool {
    first == 0x16
}

/// Parses the ClientHello from the start of a connection.
pub fn parse(buf: &[u8]) -> Parse {
    // Reassemble the handshake message from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        if buf.len() < at + 5 {
            return Parse::Incomplete;
        }
        if buf[at] != 0x16 {
            return Parse::Invalid("not a TLS handshake record");
        }
        if buf[at + 1] != 3 {
            return Parse::Invalid("unsupported TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
        if len == 0 || len > 16_384 {
            return Parse::Invalid("bad TLS record length");
        }
        let Some(fragment) = buf.get(at + 5..at + 5 + len) else {
            return if at + 5 + len > MAX_HELLO {
                Parse::Invalid("ClientHello too large")
            } else {
                Parse::Incomplete
            };
        };
        handshake.extend_from_slice(fragment);
        at += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Parse::Invalid("first handshake message is not a ClientHello");
            }
            let body_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if body_len + 4 > MAX_HELLO {
                return Parse::Invalid("ClientHello too large");
            }
            if handshake.len() >= body_len + 4 {
                return match parse_body(&handshake[4..4 + body_len]) {
                    Some(hello) => Parse::Hello(hello),
                    None => Parse::Invalid("malformed ClientHello"),
                };
            }
        }
        if at >= MAX_HELLO {
            return Parse::Invalid("ClientHello too large");
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }

    fn done(&self) -> bool {
        self.at == self.buf.len()
    }
}

fn parse_body(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader { buf: body, at: 0 };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    if r.done() {
        return Some(hello);
    }
    let mut ext = Reader {
        buf: r.vec16()?,
        at: 0,
    };
    let mut seen = Vec::new();
    while !ext.done() {
        let ty = ext.u16()?;
        let data = ext.vec16()?;
        if seen.contains(&ty) {
            return None; // duplicate extensions are illegal and a smuggling vector
        }
        seen.push(ty);
        match ty {
            0 => hello.server_name = Some(parse_sni(data)?),
            16 => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Some(hello)
}

fn parse_sni(data: &[u8]) -> Option<String> {
    let mut r = Reader { buf: data, at: 0 };
    let mut list = Reader {
        buf: r.vec16()?,
        at: 0,
    };
    let mut name = None;
    while !list.done() {
        let kind = list.u8()?;
        let value = list.vec16()?;
        if kind == 0 {
            if name.is_some() {
                return None; // one host_name only
            }
            if value.is_empty() || !value.iter().all(u8::is_ascii_graphic) {
                return None;
            }
            name = Some(String::from_utf8(value.to_vec()).ok()?);
        }
    }
    name
}

fn parse_alpn(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut r = Reader { buf: data, at: 0 };
    let mut list = Reader {
        buf: r.vec16()?,
        at: 0,
    };
    let mut out = Vec::new();
    while !list.done() {
        let proto = list.vec8()?;
        if proto.is_empty() {
            return None;
        }
        out.push(proto.to_vec());
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ClientHello with the given SNI and ALPN, split into records of `chunk` bytes.
    pub(crate) fn hello(sni: Option<&str>, alpn: &[&str], chunk: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0u8];
            list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            list.extend_from_slice(name.as_bytes());
            let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
            data.extend(list);
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            ext.extend(data);
        }
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for p in alpn {
                list.push(u8::try_from(p.len()).unwrap());
                list.extend_from_slice(p.as_bytes());
            }
            let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
            data.extend(list);
            ext.extend_from_slice(&[0, 16]);
            ext.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            ext.extend(data);
        }
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        hs.extend(body);
        let mut out = Vec::new();
        for piece in hs.chunks(chunk) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&u16::try_from(piece.len()).unwrap().to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    #[test]
    fn sni_and_alpn_are_read() {
        let bytes = hello(Some("api.github.com"), &["h2", "http/1.1"], 4096);
        let Parse::Hello(h) = parse(&bytes) else {
            panic!()
        };
        assert_eq!(h.server_name.as_deref(), Some("api.github.com"));
        assert_eq!(h.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_hello_split_over_records_and_reads_is_reassembled() {
        let bytes = hello(Some("example.com"), &[], 7);
        for cut in 1..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Parse::Incomplete, "cut at {cut}");
        }
        assert!(
            matches!(parse(&bytes), Parse::Hello(h) if h.server_name.as_deref() == Some("example.com"))
        );
    }

    #[test]
    fn no_sni_is_fine_garbage_is_not() {
        let Parse::Hello(h) = parse(&hello(None, &[], 4096)) else {
            panic!()
        };
        assert_eq!(h.server_name, None);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parse::Invalid(_)));
        let mut bad = hello(Some("a.com"), &[], 4096);
        bad[5] = 2; // ServerHello
        assert!(matches!(parse(&bad), Parse::Invalid(_)));
        let mut lying = hello(Some("a.com"), &[], 4096);
        let n = lying.len();
        lying[n - 12] = 0xff; // corrupt an inner length
        assert!(matches!(parse(&lying), Parse::Invalid(_) | Parse::Hello(_)));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let base = hello(Some("x.example"), &["h2"], 4096);
        for i in 0..base.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = base.clone();
                m[i] = v;
                let _ = parse(&m);
                let _ = parse(&m[..i]);
            }
        }
    }
}
