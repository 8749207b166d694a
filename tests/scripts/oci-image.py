#!/usr/bin/env python3
"""Writes a one-layer image archive from local files, without a container engine.

    oci-image.py OUT.tar NAME:TAG --entrypoint PATH [--user UID:GID] SRC=DEST...

The images of this project are `FROM scratch` plus static binaries (and a CA bundle), so one
layer is the whole image. The archive is both an OCI image layout (index.json, what
`ctr images import` reads) and a Docker archive (manifest.json, what `docker load` reads).
It is byte-for-byte reproducible: every entry has mtime SOURCE_DATE_EPOCH (default 0), owner 0:0,
and a fixed order, so the same files give the same image digest.
"""
import argparse
import hashlib
import io
import json
import os
import sys
import tarfile

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def entry(name, kind, mode, size=0):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer(files):
    """An uncompressed layer tar of (source, destination) pairs, parent directories first."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parents = set()
        for _, dest in files:
            parts = dest[1:].split("/")[:-1]
            parents.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        for d in sorted(parents):
            tar.addfile(entry(d + "/", tarfile.DIRTYPE, 0o755))
        for src, dest in sorted(files, key=lambda f: f[1]):
            data = open(src, "rb").read()
            mode = 0o755 if os.access(src, os.X_OK) else 0o644
            tar.addfile(entry(dest[1:], tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    return out.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("name", help="NAME:TAG, stored as given (use the fully qualified name)")
    ap.add_argument("--entrypoint", required=True)
    ap.add_argument("--user", default="")
    ap.add_argument("files", nargs="+", metavar="SRC=DEST")
    args = ap.parse_args()
    files = []
    for f in args.files:
        src, sep, dest = f.partition("=")
        if not sep or not dest.startswith("/"):
            sys.exit(f"oci-image: {f!r} is not SRC=/absolute/destination")
        files.append((src, dest))

    layer_digest, layer_data = blob(layer(files))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [args.entrypoint], "User": args.user,
                   "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_data = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_data)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer_data)}],
    }
    manifest_digest, manifest_data = blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest["mediaType"], "digest": manifest_digest,
                       "size": len(manifest_data),
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": args.name,
                                       "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[1]}}],
    }
    path = lambda d: "blobs/sha256/" + d.split(":", 1)[1]
    docker = [{"Config": path(config_digest), "RepoTags": [args.name],
               "Layers": [path(layer_digest)]}]
    members = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True).encode()),
        ("manifest.json", json.dumps(docker, sort_keys=True).encode()),
        (path(layer_digest), layer_data),
        (path(config_digest), config_data),
        (path(manifest_digest), manifest_data),
    ]
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs/", "blobs/sha256/"):
            tar.addfile(entry(d, tarfile.DIRTYPE, 0o755))
        for name, data in members:
            tar.addfile(entry(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    print(manifest_digest)


if __name__ == "__main__":
    main()
