//! The `boundary` binary is copied into arbitrary agent images and runs next to untrusted code:
//! it must not link kube, k8s-openapi or their schema machinery (size and attack surface).

use std::process::Command;

#[test]
fn boundary_links_no_kubernetes_crates() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "-p", "boundary"])
        .args(["-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"boundary-api"),
        "the tree is not boundary's: {tree}"
    );
    for banned in [
        "kube",
        "kube-client",
        "kube-core",
        "k8s-openapi",
        "schemars",
    ] {
        assert!(
            !crates.contains(&banned),
            "boundary depends on {banned}:\n{tree}"
        );
    }
}
