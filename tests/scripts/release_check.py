#!/usr/bin/env python3
"""Checks what a release folder (tests/scripts/release.sh) claims, after
tests/scripts/release-repro-test.sh proved two builds identical:

  release_check.py OUT VERSION [--chart-only]     (HELM=helm: also render the chart)

- SHA256SUMS lists every other file, with the right sums;
- each binary is static and carries its dependency list (cargo auditable's .dep-v0 section);
- each binary's SBOM names it and its crates, with a dependency graph over exactly those crates;
  the crates are those of the binary's embedded list (cargo auditable's runtime crates), less
  only crates that cargo auditable adds from the workspace's feature resolution (which must
  then be Kubernetes crates of `boundary`, see below); `boundary`'s SBOM has no Kubernetes crate
  (the rule of ARCHITECTURE.md) and its code no kube path, the webhook's and operator's have kube;
- each image archive's layer holds exactly its binaries (byte for byte the released ones) and,
  for the webhook, the CA bundle; its config runs the entrypoint as 65532; its SBOM's hash is
  the manifest's digest and it lists the binaries and files;
- the chart is VERSION with VERSION as appVersion and every image tag.
"""

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_tools import auditable_packages  # noqa: E402

BINARIES = ["boundary", "boundary-node-agent", "boundary-webhook", "boundary-operator"]
IMAGES = {
    "jail-runtime": ["boundary", "boundary-node-agent"],
    "boundary-webhook": ["boundary-webhook"],
    "boundary-operator": ["boundary-operator"],
}
# /cargo/registry/src/index.crates.io-<hash>/<name>-<version>/: release.sh remaps CARGO_HOME to /cargo.
CRATE_SOURCE = re.compile(rb"/cargo/registry/src/[^/\x00]+/([A-Za-z0-9_.+-]+)/")
problems = []


def check(condition: bool, message: str) -> None:
    if not condition:
        problems.append(message)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def crate_names(bom: dict) -> set:
    names = set()

    def walk(components):
        for component in components:
            names.add(component.get("name"))
            walk(component.get("components", []))

    walk(bom.get("components", []))
    return names


def check_graph(bom: dict, what: str) -> None:
    """Every component has a unique bom-ref, and the dependency graph names only those (and the
    described component) and covers each of them."""
    refs = []

    def collect(components):
        for c in components:
            refs.append(c.get("bom-ref"))
            collect(c.get("components", []))

    collect(bom.get("components", []))
    check(len(refs) == len(set(refs)), f"{what} has duplicate bom-refs")
    known = set(refs) | {bom["metadata"]["component"]["bom-ref"]}
    graph = bom.get("dependencies", [])
    named = {entry["ref"] for entry in graph} | {d for entry in graph for d in entry["dependsOn"]}
    check(named <= known, f"{what}: the dependency graph names unknown refs {sorted(named - known)[:5]}")
    check(known <= named, f"{what}: the dependency graph leaves out {sorted(known - named)[:5]}")


def main(out: Path, version: str, chart_only: bool) -> None:
    listed = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    files = {p.name for p in out.iterdir() if p.name != "SHA256SUMS"}
    check(set(listed) == files, f"SHA256SUMS lists {sorted(listed)}, the folder has {sorted(files)}")
    for name, digest in listed.items():
        check(sha256((out / name).read_bytes()) == digest, f"{name}: SHA-256 differs from SHA256SUMS")

    if not chart_only:
        check_binaries(out)
        check_images(out, version)
    check_chart(out / f"agent-boundary-{version}.tgz", version)
    for problem in problems:
        print(f"release_check: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"release_check: {len(listed)} artifacts of {version} checked", file=sys.stderr)


def check_binaries(out: Path) -> None:
    for binary in BINARIES:
        headers = subprocess.run(["readelf", "-lS", str(out / binary)], capture_output=True, text=True, check=True).stdout
        check("INTERP" not in headers, f"{binary} is dynamically linked")
        check(".dep-v0" in headers, f"{binary} has no embedded dependency list (.dep-v0)")
        bom = json.loads((out / f"{binary}.cdx.json").read_text())
        check(bom.get("bomFormat") == "CycloneDX", f"{binary}.cdx.json is not CycloneDX")
        component = bom.get("metadata", {}).get("component", {})
        check(binary in json.dumps(component), f"{binary}.cdx.json does not describe {binary}")
        check(
            {"alg": "SHA-256", "content": sha256((out / binary).read_bytes())} in component.get("hashes", []),
            f"{binary}.cdx.json lacks the binary's SHA-256",
        )
        crates = crate_names(bom)
        check({"tokio", "serde", "rustls"} <= crates, f"{binary}.cdx.json lacks common crates: {sorted(crates)[:20]}...")
        check_graph(bom, f"{binary}.cdx.json")
        listed = {(c["name"], c["version"]) for c in bom.get("components", [])}
        embedded = {
            (p["name"], p["version"])
            for p in auditable_packages(out / binary)
            if p.get("kind", "runtime") == "runtime" and not p.get("root")
        }
        check(listed <= embedded, f"{binary}.cdx.json lists crates its embedded list lacks: {sorted(listed - embedded)}")
        # The code's own evidence: the crates whose sources (remapped to /cargo) the binary names
        # in panic locations must all be in the SBOM; those only cargo auditable's list names
        # (its workspace-wide feature resolution) must have no code in it.
        data = (out / binary).read_bytes()
        named = {m.decode() for m in CRATE_SOURCE.findall(data)}
        dirs = {f"{n}-{v}" for n, v in listed}
        check(named <= dirs, f"{binary} holds code of crates its SBOM lacks: {sorted(named - dirs)}")
        check(len(named) > 50, f"{binary} names only {len(named)} crate sources: are the paths remapped to /cargo?")
        only_embedded = {f"{n}-{v}" for n, v in embedded - listed}
        check(not only_embedded & named, f"{binary} holds code of {sorted(only_embedded & named)}, left out of its SBOM")
        kube = {"kube-client", "k8s-openapi"} & crates
        if binary == "boundary":
            check(not kube, f"boundary's SBOM has Kubernetes crates {sorted(kube)}: it must link none")
            check(not any(d.startswith(("kube-", "k8s-openapi-")) for d in named), "boundary holds code of kube")
        else:
            check(bool(kube), f"{binary}'s SBOM has no kube crates")



def check_images(out: Path, version: str) -> None:
    for image, binaries in IMAGES.items():
        with tarfile.open(out / f"image-{image}.oci.tar") as archive:
            blobs = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
        index = json.loads(blobs["index.json"])
        manifest_digest = index["manifests"][0]["digest"]
        manifest_bytes = blobs["blobs/sha256/" + manifest_digest.split(":")[1]]
        check(sha256(manifest_bytes) == manifest_digest.split(":")[1], f"{image}: manifest digest mismatch")
        manifest = json.loads(manifest_bytes)
        config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
        layer = gzip.decompress(blobs["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]])
        check(sha256(layer) == config["rootfs"]["diff_ids"][0].split(":")[1], f"{image}: diff_id mismatch")
        with tarfile.open(fileobj=io.BytesIO(layer)) as layer_tar:
            contents = {m.name: layer_tar.extractfile(m).read() for m in layer_tar.getmembers() if m.isfile()}
        expected = {f"usr/local/bin/{b}" for b in binaries}
        if image == "boundary-webhook":
            expected.add("etc/ssl/certs/ca-certificates.crt")
        check(set(contents) == expected, f"{image}: layer holds {sorted(contents)}, expected {sorted(expected)}")
        for b in binaries:
            check(contents.get(f"usr/local/bin/{b}") == (out / b).read_bytes(), f"{image}: {b} is not the released binary")
        check(config["config"]["Entrypoint"] == [f"/usr/local/bin/{binaries[0]}"], f"{image}: entrypoint")
        check(config["config"]["User"] == "65532:65532", f"{image}: user")
        check(json.loads(blobs["manifest.json"])[0]["RepoTags"] == [f"agent-boundary/{image}:{version}"], f"{image}: docker tag")
        bom = json.loads((out / f"image-{image}.cdx.json").read_text())
        component = bom["metadata"]["component"]
        check(component["hashes"][0]["content"] == manifest_digest.split(":")[1], f"{image}: SBOM hash is not the manifest digest")
        names = [c["name"] for c in bom["components"]]
        check(names[: len(binaries)] == binaries, f"{image}: SBOM components {names}")
        check_graph(bom, f"image-{image}.cdx.json")
        for b in binaries:
            inner = next(c for c in bom["components"] if c["name"] == b)["components"]
            released = json.loads((out / f"{b}.cdx.json").read_text())["components"]
            check(len(inner) == len(released), f"{image}: {b}'s crates differ from {b}.cdx.json's")
        if image == "boundary-webhook":
            check("ca-certificates" in names, "the webhook image's SBOM lacks the CA bundle")



def check_chart(chart: Path, version: str) -> None:
    """The chart is VERSION, its appVersion VERSION, and its images (the values' tags, or the
    appVersion when they are empty) VERSION: `helm template` (HELM, when given) renders them."""
    if not chart.is_file():
        check(False, f"no chart {chart.name}")
        return
    with tarfile.open(chart) as archive:
        chart_yaml = archive.extractfile("agent-boundary/Chart.yaml").read().decode()
        values = archive.extractfile("agent-boundary/values.yaml").read().decode()
    check(f"\nversion: {version}\n" in chart_yaml, f"Chart.yaml version is not {version}")
    check(f"\nappVersion: {version}\n" in chart_yaml or f'\nappVersion: "{version}"\n' in chart_yaml, "appVersion")
    tags = [line.strip() for line in values.splitlines() if line.startswith("    tag: ")]
    check(
        tags in ([f'tag: "{version}"'] * 3, ['tag: ""'] * 3),
        f"values.yaml image tags {tags}: all the version or all empty (the appVersion)",
    )
    helm = os.environ.get("HELM")
    if helm:
        rendered = subprocess.run([helm, "template", "release-check", str(chart)], capture_output=True, text=True, check=True).stdout
        images = {line.split("image:", 1)[1].strip().strip('"') for line in rendered.splitlines() if line.strip().startswith("image:")}
        expected = {f"agent-boundary/{image}:{version}" for image in IMAGES}
        check(images == expected, f"the chart renders the images {sorted(images)}, expected {sorted(expected)}")


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--chart-only"]
    if len(arguments) != 2:
        sys.exit(__doc__)
    main(Path(arguments[0]), arguments[1], "--chart-only" in sys.argv)
