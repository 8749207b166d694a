#!/usr/bin/env python3
"""Reproducible release artifacts that need more than a shell line (tests/scripts/release.sh).

  release_tools.py binary-sboms SRC OUT BINARY...
      Each binary's CycloneDX SBOM (from `cargo cyclonedx --describe binaries` in SRC) as
      OUT/<binary>.cdx.json, made reproducible: the timestamp is SOURCE_DATE_EPOCH, the serial
      number a UUID derived from the content, the binary's SHA-256 added.
  release_tools.py images OUT VERSION CA_VERSION CA_BUNDLE
      The images of tests/scripts/build-images.sh (FROM scratch + the static binaries in OUT,
      the webhook with the CA bundle), each as OUT/image-<image>.oci.tar (an OCI image layout,
      also loadable by `docker load`: it carries docker's manifest.json) and its SBOM
      OUT/image-<image>.cdx.json (each binary with its crates, each other file).

Every archive has sorted entries, owner 0:0, fixed modes and mtime = SOURCE_DATE_EPOCH.
"""

import copy
import datetime
import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import uuid
import zlib
from pathlib import Path

# image -> (entrypoint binary, further binaries); as tests/scripts/build-images.sh builds them.
IMAGES = {
    "jail-runtime": ("boundary", ["boundary-node-agent"]),
    "boundary-webhook": ("boundary-webhook", []),
    "boundary-operator": ("boundary-operator", []),
}
# The webhook's extra file (build-images.sh: oci-client's default client needs a trust store).
CA_BUNDLE_PATH = "etc/ssl/certs/ca-certificates.crt"
REPOSITORY = "agent-boundary"
# What docker build puts into every image's config.
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER = "65532:65532"
# What release.sh remaps the source directory to (--remap-path-prefix).
SOURCE_PREFIX = "/build/agent-boundary"
# A fixed namespace for the content-derived serial numbers.
SERIAL_NAMESPACE = uuid.UUID("5b4e0f3c-2d1a-4c36-9a52-7c0a7f0c1e01")


def epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        sys.exit("release_tools: SOURCE_DATE_EPOCH is not set")
    return int(value)


def timestamp() -> str:
    return datetime.datetime.fromtimestamp(epoch(), datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def finish_sbom(bom: dict) -> bytes:
    """Timestamp from SOURCE_DATE_EPOCH, serial number derived from the rest of the content."""
    bom.setdefault("metadata", {})["timestamp"] = timestamp()
    bom.pop("serialNumber", None)
    bom["serialNumber"] = "urn:uuid:" + str(uuid.uuid5(SERIAL_NAMESPACE, dump(bom).decode()))
    return dump(bom)


def find_binary_sbom(src: Path, binary: str) -> Path:
    """cargo cyclonedx writes <package>_bin_<binary>.cdx.json (or <binary>_bin.cdx.json)
    beside the package's Cargo.toml."""
    found = sorted(
        p
        for p in src.rglob("*.cdx.json")
        if "target" not in p.relative_to(src).parts
        and (p.name.endswith(f"_bin_{binary}.cdx.json") or p.name == f"{binary}_bin.cdx.json")
    )
    if len(found) != 1:
        fail(f"expected one SBOM of the binary {binary} under {src}, found {found}")
    return found[0]


def fail(message: str):
    sys.exit(f"release_tools: {message}")


def linked_units(units_file: Path, target_dir: Path, target: str, binary: str):
    """From one `cargo build --message-format=json` of the binary's package alone: the binary's
    package id and the package ids of every library built for the target (linked into it).
    Build scripts, proc macros and their dependencies are built for the host (target_dir/release,
    not target_dir/<target>) and run at build time only."""
    target_root = f"{target_dir.resolve()}/{target}/"
    own = None
    libraries = set()
    for line in units_file.read_text().splitlines():
        message = json.loads(line) if line.startswith("{") else {}
        if message.get("reason") != "compiler-artifact":
            continue
        if not all(f.startswith(target_root) for f in message["filenames"]):
            continue
        kinds = message["target"]["kind"]
        if kinds == ["bin"]:
            if message["target"]["name"] == binary:
                own = message["package_id"]
        elif "custom-build" not in kinds and "proc-macro" not in kinds:
            libraries.add(message["package_id"])
    if own is None:
        fail(f"{units_file} has no build of the binary {binary} for {target}")
    return own, libraries - {own}


def tree_graph(src: Path, package: str, target: str):
    """`cargo tree` of the package alone (its own feature resolution), linked edges only
    (normal dependencies, not through proc macros): {(name, version): {(name, version), ...}}."""
    lines = subprocess.run(
        ["cargo", "tree", "--locked", "--offline", "-p", package, "--target", target,
         "-e", "normal,no-proc-macro", "--prefix", "depth", "-f", "{p}"],
        cwd=src, check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    graph = {}
    stack = []
    for line in lines:
        depth = len(line) - len(line.lstrip("0123456789"))
        level, words = int(line[:depth]), line[depth:].split()
        node = (words[0], words[1].lstrip("v"))
        graph.setdefault(node, set())
        del stack[level:]
        if stack:
            graph[stack[-1]].add(node)
        stack.append(node)
    return graph


def name_version(package_id: str):
    """("tokio", "1.47.0") of a package id such as registry+https://...#tokio@1.47.0 or
    path+file:///src/crds#boundary-api@0.2.0 (cargo's and cargo cyclonedx's bom-refs alike)."""
    fragment = package_id.rsplit("#", 1)[1]
    name, _, version = fragment.rpartition("@")
    if not name:  # path+file:///src/crds/boundary-api#0.2.0: the name is the folder's
        name = package_id.rsplit("#", 1)[0].rstrip("/").rsplit("/", 1)[1]
    return name, version


def binary_sbom(bom: dict, own: str, linked: set, graph: dict) -> dict:
    """cargo cyclonedx's SBOM of the binary cut down to the crates really linked into it: cargo
    cyclonedx resolves features for the whole workspace (so `boundary`'s would list kube, which
    boundary-api only uses with the webhook's feature), the build of the package alone does not.
    The dependency graph is cargo tree's of the package alone, which must name the same crates
    as the build."""
    keys = {name_version(p): p for p in linked | {own}}
    if len(keys) != len(linked) + 1:
        fail(f"{own}: two linked crates share a name and version")
    if set(graph) != set(keys):
        fail(
            f"{own}: cargo tree and the build disagree: only in the tree "
            f"{sorted(set(graph) - set(keys))}, only in the build {sorted(set(keys) - set(graph))}"
        )
    listed = {c["bom-ref"]: c for c in bom.get("components", [])}
    missing = sorted(linked - set(listed))
    if missing:
        fail(f"{own}: cargo cyclonedx lists no component for the linked crates {missing}")
    bom["components"] = [listed[p] for p in sorted(linked)]
    bom["dependencies"] = [
        {"ref": keys[node], "dependsOn": sorted(keys[child] for child in children)}
        for node, children in sorted(graph.items())
    ]
    return bom


def binary_sboms(src: Path, out: Path, target_dir: Path, target: str, binaries: list) -> None:
    """binary=package pairs: each binary's SBOM from its package's units-<package>.json (in the
    folder above src, written by release.sh), cargo cyclonedx and cargo tree."""
    rustc = subprocess.run(["rustc", "-V"], check=True, capture_output=True, text=True).stdout.strip()
    for pair in binaries:
        binary, _, package = pair.partition("=")
        own, linked = linked_units(src.parent / f"units-{package}.json", target_dir, target, binary)
        bom = binary_sbom(json.loads(find_binary_sbom(src, binary).read_text()), own, linked,
                          tree_graph(src, package, target))
        # cargo cyclonedx names workspace crates by their source path (path+file:///...): the
        # build directory is replaced, as --remap-path-prefix does in the binaries.
        bom = json.loads(json.dumps(bom).replace(str(src.resolve()), SOURCE_PREFIX))
        metadata = bom.setdefault("metadata", {})
        component = metadata.setdefault("component", {})
        component["hashes"] = [{"alg": "SHA-256", "content": sha256((out / binary).read_bytes())}]
        metadata.setdefault("properties", []).append({"name": "agent-boundary:rustc", "value": rustc})
        (out / f"{binary}.cdx.json").write_bytes(finish_sbom(bom))


def elf_section(data: bytes, wanted: str):
    """The bytes of a 64-bit little-endian ELF file's section, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        fail("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = sections[shstrndx]
    for name, _, _, _, offset, size in sections:
        start = names[4] + name
        if data[start:data.index(b"\0", start)].decode() == wanted:
            return data[offset:offset + size]
    return None


def auditable_packages(binary: Path) -> list:
    """cargo auditable's dependency list embedded in a binary (.dep-v0: zlib-compressed JSON
    {"packages": [{"name", "version", "source", "kind", "dependencies", "root"}]})."""
    section = elf_section(binary.read_bytes(), ".dep-v0")
    if section is None:
        fail(f"{binary} carries no .dep-v0 section (not built with cargo auditable)")
    return json.loads(zlib.decompress(section))["packages"]


def tar_bytes(files: list, gnu: bool = True) -> bytes:
    """An archive of (path, mode, bytes-or-None for a directory), sorted, owner 0, fixed time."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT if gnu else tarfile.PAX_FORMAT) as tar:
        for path, mode, data in sorted(files, key=lambda f: f[0]):
            info = tarfile.TarInfo(path)
            info.mode = mode
            info.mtime = epoch()
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def with_parents(files: list) -> list:
    """The files plus a directory entry for each of their parent directories."""
    dirs = set()
    for path, _, _ in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]) + "/")
    return files + [(d, 0o755, None) for d in dirs]


def prefix_refs(value, prefix: str):
    """A copy of an SBOM fragment whose bom-refs are prefixed (crates shared by two binaries of
    one image must not share a bom-ref)."""
    value = copy.deepcopy(value)

    def walk(node):
        if isinstance(node, dict):
            if "bom-ref" in node:
                node["bom-ref"] = prefix + node["bom-ref"]
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(value)
    return value


def image(out: Path, name: str, version: str, ca_version: str, ca_bundle: Path) -> None:
    entrypoint, extra = IMAGES[name]
    files = []
    components = []
    # The image's graph: the image holds its files; each binary depends on what its own SBOM
    # says (refs prefixed like the components).
    dependencies = []
    for binary in [entrypoint] + extra:
        data = (out / binary).read_bytes()
        path = f"usr/local/bin/{binary}"
        files.append((path, 0o755, data))
        sbom = json.loads((out / f"{binary}.cdx.json").read_text())
        components.append(
            {
                "type": "application",
                "bom-ref": f"{binary}:/{path}",
                "name": binary,
                "version": version,
                "hashes": [{"alg": "SHA-256", "content": sha256(data)}],
                "properties": [{"name": "agent-boundary:path", "value": "/" + path}],
                "components": prefix_refs(sbom.get("components", []), f"{binary}:"),
            }
        )
        own = sbom["metadata"]["component"]["bom-ref"]
        for entry in sbom.get("dependencies", []):
            ref = f"{binary}:/{path}" if entry["ref"] == own else f"{binary}:{entry['ref']}"
            dependencies.append({"ref": ref, "dependsOn": [f"{binary}:{d}" for d in entry["dependsOn"]]})
    if name == "boundary-webhook":
        data = ca_bundle.read_bytes()
        files.append((CA_BUNDLE_PATH, 0o644, data))
        components.append(
            {
                "type": "data",
                "bom-ref": "ca-certificates:/" + CA_BUNDLE_PATH,
                "name": "ca-certificates",
                "version": ca_version,
                "description": "Debian's CA bundle (Mozilla's roots), read by oci-client's default client",
                "purl": f"pkg:deb/debian/ca-certificates@{ca_version}?arch=all",
                "licenses": [{"license": {"id": "MPL-2.0"}}],
                "hashes": [{"alg": "SHA-256", "content": sha256(data)}],
                "properties": [{"name": "agent-boundary:path", "value": "/" + CA_BUNDLE_PATH}],
            }
        )

    layer = tar_bytes(with_parents(files))
    layer_gz = gzip.compress(layer, compresslevel=9, mtime=0)
    created = timestamp()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"User": USER, "Entrypoint": [f"/usr/local/bin/{entrypoint}"], "Env": [DEFAULT_PATH]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256(layer)]},
        "history": [{"created": created, "created_by": "tests/scripts/release.sh (FROM scratch)"}],
    }
    config_bytes = dump(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + sha256(layer_gz),
                "size": len(layer_gz),
            }
        ],
    }
    manifest_bytes = dump(manifest)
    reference = f"{REPOSITORY}/{name}:{version}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + sha256(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": version,
                },
            }
        ],
    }
    blob = lambda data: (f"blobs/sha256/{sha256(data)}", 0o644, data)  # noqa: E731
    docker_manifest = [
        {
            "Config": f"blobs/sha256/{sha256(config_bytes)}",
            "RepoTags": [reference],
            "Layers": [f"blobs/sha256/{sha256(layer_gz)}"],
        }
    ]
    archive = tar_bytes(
        with_parents(
            [
                ("oci-layout", 0o644, dump({"imageLayoutVersion": "1.0.0"})),
                ("index.json", 0o644, dump(index)),
                ("manifest.json", 0o644, dump(docker_manifest)),
                blob(config_bytes),
                blob(layer_gz),
                blob(manifest_bytes),
            ]
        )
    )
    (out / f"image-{name}.oci.tar").write_bytes(archive)

    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {
                "type": "container",
                "bom-ref": reference,
                "name": f"{REPOSITORY}/{name}",
                "version": version,
                "hashes": [{"alg": "SHA-256", "content": sha256(manifest_bytes)}],
                "description": "FROM scratch image; hash: the image manifest's digest",
            },
        },
        "components": components,
        "dependencies": [{"ref": reference, "dependsOn": [c["bom-ref"] for c in components]}] + dependencies,
    }
    (out / f"image-{name}.cdx.json").write_bytes(finish_sbom(bom))


def main(argv: list) -> None:
    if len(argv) >= 6 and argv[1] == "binary-sboms":
        binary_sboms(Path(argv[2]), Path(argv[3]), Path(argv[4]), argv[5], argv[6:])
    elif len(argv) == 6 and argv[1] == "images":
        for name in IMAGES:
            image(Path(argv[2]), name, argv[3], argv[4], Path(argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
