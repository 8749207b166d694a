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
import sys
import tarfile
import uuid
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
        sys.exit(f"release_tools: expected one SBOM of the binary {binary} under {src}, found {found}")
    return found[0]


def binary_sboms(src: Path, out: Path, binaries: list) -> None:
    for binary in binaries:
        # cargo cyclonedx names workspace crates by their source path (path+file:///...): the
        # build directory is replaced, as --remap-path-prefix does in the binaries.
        text = find_binary_sbom(src, binary).read_text().replace(str(src.resolve()), SOURCE_PREFIX)
        bom = json.loads(text)
        component = bom.setdefault("metadata", {}).setdefault("component", {})
        component["hashes"] = [{"alg": "SHA-256", "content": sha256((out / binary).read_bytes())}]
        (out / f"{binary}.cdx.json").write_bytes(finish_sbom(bom))


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
    }
    (out / f"image-{name}.cdx.json").write_bytes(finish_sbom(bom))


def main(argv: list) -> None:
    if len(argv) >= 4 and argv[1] == "binary-sboms":
        binary_sboms(Path(argv[2]), Path(argv[3]), argv[4:])
    elif len(argv) == 6 and argv[1] == "images":
        for name in IMAGES:
            image(Path(argv[2]), name, argv[3], argv[4], Path(argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
