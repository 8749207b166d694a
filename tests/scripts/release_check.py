#!/usr/bin/env python3
"""Checks what a release folder (tests/scripts/release.sh) claims, after
tests/scripts/release-repro-test.sh proved two builds identical:

  release_check.py OUT VERSION

- SHA256SUMS lists every other file, with the right sums;
- each binary is static and carries its dependency list (cargo auditable's .dep-v0 section);
- each binary's SBOM names it and its crates; `boundary`'s has no Kubernetes crate (the rule of
  ARCHITECTURE.md), the webhook's and operator's have kube;
- each image archive's layer holds exactly its binaries (byte for byte the released ones) and,
  for the webhook, the CA bundle; its config runs the entrypoint as 65532; its SBOM's hash is
  the manifest's digest and it lists the binaries and files;
- the chart is VERSION with VERSION as appVersion and every image tag.
"""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

BINARIES = ["boundary", "boundary-node-agent", "boundary-webhook", "boundary-operator"]
IMAGES = {
    "jail-runtime": ["boundary", "boundary-node-agent"],
    "boundary-webhook": ["boundary-webhook"],
    "boundary-operator": ["boundary-operator"],
}
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


def main(out: Path, version: str) -> None:
    listed = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    files = {p.name for p in out.iterdir() if p.name != "SHA256SUMS"}
    check(set(listed) == files, f"SHA256SUMS lists {sorted(listed)}, the folder has {sorted(files)}")
    for name, digest in listed.items():
        check(sha256((out / name).read_bytes()) == digest, f"{name}: SHA-256 differs from SHA256SUMS")

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
        kube = {"kube-client", "k8s-openapi"} & crates
        if binary == "boundary":
            check(not kube, f"boundary's SBOM has Kubernetes crates {sorted(kube)}: it must link none")
        elif binary in ("boundary-webhook", "boundary-operator"):
            check(bool(kube), f"{binary}'s SBOM has no kube crates")

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
        refs = []

        def collect(components):
            for c in components:
                refs.append(c.get("bom-ref"))
                collect(c.get("components", []))

        collect(bom["components"])
        check(len(refs) == len(set(refs)), f"image-{image}.cdx.json has duplicate bom-refs")
        if image == "boundary-webhook":
            check("ca-certificates" in names, "the webhook image's SBOM lacks the CA bundle")

    with tarfile.open(out / f"agent-boundary-{version}.tgz") as chart:
        chart_yaml = chart.extractfile("agent-boundary/Chart.yaml").read().decode()
        values = chart.extractfile("agent-boundary/values.yaml").read().decode()
    check(f"\nversion: {version}\n" in chart_yaml, f"Chart.yaml version is not {version}")
    check(f'\nappVersion: {version}\n' in chart_yaml or f'\nappVersion: "{version}"\n' in chart_yaml, "appVersion")
    check(values.count(f'    tag: "{version}"\n') == 3 and "tag: dev" not in values, "values.yaml image tags")

    if problems:
        for problem in problems:
            print(f"release_check: {problem}", file=sys.stderr)
        sys.exit(1)
    print(f"release_check: {len(listed)} artifacts of {version} checked", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2])
