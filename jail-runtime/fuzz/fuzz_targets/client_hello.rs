//! TLS ClientHello parsing of whatever a jailed client sends first.
#![no_main]

use boundary_proxy::client_hello::{Parse, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Parse::Hello(hello) = parse(data) {
        if let Some(name) = hello.server_name {
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
});
