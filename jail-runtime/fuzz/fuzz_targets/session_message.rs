//! The sidecar's socket protocol: header lines (`proxy/wire.rs`) and session messages
//! (`proxy/header.rs`), as any process that can reach the socket may send them. What parses must
//! survive a round trip.
#![no_main]

use boundary_proxy::session::parse_message;
use boundary_proxy::wire::{Header, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = parse_message(text) {
        let line = message.line();
        let again = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        assert_eq!(parse_message(again).unwrap(), message);
    }
    if let Ok(header) = parse_header(text) {
        let line = match &header {
            Header::Relay(dest) => dest.header(),
            Header::Session(hello) => hello.header(),
        };
        let again = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        assert_eq!(parse_header(again).unwrap(), header);
    }
});
