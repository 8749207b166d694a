//! The jail's DNS server on arbitrary datagrams: no panic, answers echo the query id.
#![no_main]

use boundary_jail::dns::{NameTable, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let table = NameTable::default();
    if let Some((reply, _, _)) = answer(data, &table) {
        assert_eq!(&reply[..2], &data[..2], "the id is echoed");
        assert!(reply[2] & 0x80 != 0, "it is a response");
    }
});
