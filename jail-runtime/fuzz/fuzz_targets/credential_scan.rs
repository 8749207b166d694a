//! The request body scanner of the credentials (`proxy/credentials/scan.rs`) over arbitrary
//! needles, streams and chunkings: no panic; a stream holding a needle is stopped before that
//! needle has been passed on whole; a stream without one is passed on byte for byte.
//!
//! Input: byte 0 picks the needle's length (1 to 32), then the needle, then one byte that seeds
//! the chunk sizes, then the stream.
#![no_main]

use std::sync::Arc;

use boundary_proxy::credentials::scan::{Needles, Scanner};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = usize::from(len % 32) + 1;
    if rest.len() < len + 1 {
        return;
    }
    let (needle, rest) = rest.split_at(len);
    let (&seed, stream) = rest.split_first().expect("checked above");
    let Some(needles) = Needles::new(vec![("c".to_owned(), needle.to_vec())], Vec::new()) else {
        return;
    };
    let mut scanner = Scanner::new(Arc::new(needles));
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut passed = Vec::new();
    let mut at = 0;
    let mut size = usize::from(seed % 17) + 1;
    let mut found = false;
    while at < stream.len() {
        let end = (at + size).min(stream.len());
        let chunk = Bytes::copy_from_slice(&stream[at..end]);
        match scanner.push(&chunk) {
            Ok(pieces) => {
                for piece in pieces {
                    passed.extend_from_slice(&piece);
                }
                assert!(!contains(&passed), "a whole needle was passed on");
            }
            Err(_) => {
                found = true;
                break;
            }
        }
        at = end;
        size = (size * 7 + usize::from(seed)) % 23 + 1;
    }
    if found {
        assert!(contains(stream), "a needle was found that is not there");
        return;
    }
    passed.extend_from_slice(&scanner.finish());
    assert_eq!(
        passed, stream,
        "without a needle the stream passes unchanged"
    );
    assert!(!contains(stream), "a needle in the stream was not found");
});
