//! The request-head path: the framing check over arbitrary client bytes in arbitrary splits, then
//! the head checks on whatever httparse accepts. No panic, and a head the framing check refuses
//! never yields a target.
#![no_main]

use boundary_api::rules::Host;
use boundary_proxy::framing::Framing;
use boundary_proxy::head::{self, Connection, Scheme};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let mut framing = Framing::default();
    for piece in bytes.chunks(usize::from(split).max(1)) {
        framing.feed(piece);
    }
    while framing.next_verdict().is_err() {}

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(bytes) else {
        return;
    };
    let mut builder = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(if req.version == Some(0) {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let bound = Host::parse("example.com").ok();
    for (bound, sni) in [
        (None, None),
        (bound.as_ref(), None),
        (bound.as_ref(), bound.as_ref()),
    ] {
        let conn = Connection {
            scheme: if sni.is_some() {
                Scheme::Https
            } else {
                Scheme::Http
            },
            port: 443,
            bound,
            sni,
        };
        if let Ok(target) = head::check(&parts, conn) {
            if let Some(b) = bound {
                assert!(
                    *b == target.host || matches!(b, Host::Ip(_)),
                    "target {} escaped its connection {b}",
                    target.host
                );
            }
            let _ = target.authority(conn.scheme);
        }
    }
});
