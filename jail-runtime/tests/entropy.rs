//! aws-lc's CPU-jitter entropy source costs a process 20-50 ms of CPU the first time it needs
//! randomness: a jail's or a sidecar's first intercepted request would wait for it
//! (`proxy-bench --only first-request`). The workspace builds aws-lc without it, seeding from the
//! kernel as ring does (`.cargo/config.toml`); this fails if `boundary` links it again.

#[test]
fn boundary_links_no_cpu_jitter_entropy_source() {
    let path = env!("CARGO_BIN_EXE_boundary");
    let binary = std::fs::read(path).expect("reading the boundary binary");
    // Present in any build that has TLS: the check below is not vacuous.
    assert!(
        contains(&binary, b"aws_lc_"),
        "{path} has no aws-lc symbols to look through"
    );
    assert!(
        !contains(&binary, b"jent_read_entropy"),
        "{path} links aws-lc's CPU-jitter entropy source: build with AWS_LC_SYS_NO_JITTER_ENTROPY=1 \
         (.cargo/config.toml)"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
