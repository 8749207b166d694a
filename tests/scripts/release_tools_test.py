#!/usr/bin/env python3
"""Tests of release_tools.py, the parts of tests/scripts/release.sh that need no release build
(tests/scripts/release-quick-test.sh runs them in the test command):

- which crates a binary's SBOM lists: only the units its package's own build compiled for the
  target, never the whole workspace's resolution cargo cyclonedx starts from, and a refusal when
  cargo tree and the build disagree or cargo cyclonedx lacks a crate;
- cargo tree of the real workspace: `boundary` alone links no Kubernetes crate, the webhook does;
- cargo auditable's embedded list read back from a real binary (built here by cargo auditable
  when CARGO_AUDITABLE is given: the path of the pinned cargo-auditable);
- the image archives and their SBOMs: the same bytes whatever the inputs' times and modes, the
  layer holding exactly the files, a dependency graph over the SBOM's own refs.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import release_tools  # noqa: E402

TARGET = "x86_64-unknown-linux-gnu"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def registry(name: str, version: str) -> str:
    return f"{CRATES_IO}#{name}@{version}"


def artifact(package_id: str, name: str, kind: list, filename: str) -> str:
    return json.dumps(
        {
            "reason": "compiler-artifact",
            "package_id": package_id,
            "target": {"name": name, "kind": kind},
            "filenames": [filename],
            "fresh": True,
        }
    )


class PackageIds(unittest.TestCase):
    def test_registry_and_path_ids(self):
        self.assertEqual(release_tools.name_version(registry("tokio", "1.47.0")), ("tokio", "1.47.0"))
        self.assertEqual(
            release_tools.name_version("path+file:///src/crds#boundary-api@0.2.0"), ("boundary-api", "0.2.0")
        )
        # cargo leaves the name out when it is the folder's
        self.assertEqual(release_tools.name_version("path+file:///src/jail-runtime/boundary#0.2.0"), ("boundary", "0.2.0"))


class LinkedUnits(unittest.TestCase):
    def test_only_libraries_built_for_the_target(self):
        with tempfile.TemporaryDirectory() as tmp:
            target_dir = Path(tmp)
            own = "path+file:///src/jail-runtime#boundary@0.2.0"
            lines = [
                "not json: cargo's other output is skipped",
                json.dumps({"reason": "build-script-executed", "package_id": registry("libc", "0.2.191")}),
                artifact(registry("libc", "0.2.191"), "build_script_build", ["custom-build"], f"{tmp}/release/build/libc-1/build-script-build"),
                artifact(registry("serde_derive", "1.0.0"), "serde_derive", ["proc-macro"], f"{tmp}/release/deps/libserde_derive-1.so"),
                # a crate of a build script, built for the host only
                artifact(registry("cc", "1.2.0"), "cc", ["lib"], f"{tmp}/release/deps/libcc-1.rlib"),
                artifact(registry("libc", "0.2.191"), "libc", ["lib"], f"{tmp}/{TARGET}/release/deps/liblibc-2.rlib"),
                artifact(registry("tokio", "1.47.0"), "tokio", ["lib"], f"{tmp}/{TARGET}/release/deps/libtokio-2.rlib"),
                artifact("path+file:///src/crds#boundary-api@0.2.0", "boundary_api", ["lib"], f"{tmp}/{TARGET}/release/deps/libboundary_api-2.rlib"),
                artifact(own, "boundary", ["lib"], f"{tmp}/{TARGET}/release/deps/libboundary-2.rlib"),
                artifact(own, "boundary", ["bin"], f"{tmp}/{TARGET}/release/boundary"),
            ]
            units = target_dir / "units.json"
            units.write_text("\n".join(lines) + "\n")
            found_own, linked = release_tools.linked_units(units, target_dir, TARGET, "boundary")
            self.assertEqual(found_own, own)
            self.assertEqual(
                linked,
                {registry("libc", "0.2.191"), registry("tokio", "1.47.0"), "path+file:///src/crds#boundary-api@0.2.0"},
            )
            with self.assertRaisesRegex(SystemExit, "no build of the binary boundary-webhook"):
                release_tools.linked_units(units, target_dir, TARGET, "boundary-webhook")


class BinarySbom(unittest.TestCase):
    OWN = "path+file:///src/jail-runtime#boundary@0.2.0"

    def workspace_sbom(self):
        """What cargo cyclonedx gives `boundary` in a workspace whose webhook enables kube."""
        names = [("boundary-api", "0.2.0"), ("tokio", "1.47.0"), ("kube-client", "5.0.0"), ("serde", "1.0.229")]
        components = [
            {"type": "library", "bom-ref": "path+file:///src/crds#boundary-api@0.2.0" if n == "boundary-api" else registry(n, v),
             "name": n, "version": v, "licenses": [{"expression": "MIT"}]}
            for n, v in names
        ]
        return {
            "bomFormat": "CycloneDX",
            "metadata": {"component": {"bom-ref": self.OWN, "name": "boundary", "version": "0.2.0"}},
            "components": components,
            "dependencies": [{"ref": self.OWN, "dependsOn": [registry("kube-client", "5.0.0")]}],
        }

    def linked(self):
        return {"path+file:///src/crds#boundary-api@0.2.0", registry("tokio", "1.47.0"), registry("serde", "1.0.229")}

    def graph(self):
        return {
            ("boundary", "0.2.0"): {("boundary-api", "0.2.0"), ("tokio", "1.47.0")},
            ("boundary-api", "0.2.0"): {("serde", "1.0.229")},
            ("tokio", "1.47.0"): set(),
            ("serde", "1.0.229"): set(),
        }

    def test_lists_exactly_the_linked_crates_with_the_package_graph(self):
        bom = release_tools.binary_sbom(self.workspace_sbom(), self.OWN, self.linked(), self.graph())
        self.assertEqual({c["name"] for c in bom["components"]}, {"boundary-api", "tokio", "serde"})
        self.assertEqual(bom["components"][0]["licenses"], [{"expression": "MIT"}], "cargo cyclonedx's data is kept")
        graph = {d["ref"]: d["dependsOn"] for d in bom["dependencies"]}
        self.assertEqual(graph[self.OWN], sorted(["path+file:///src/crds#boundary-api@0.2.0", registry("tokio", "1.47.0")]))
        self.assertNotIn("kube-client", json.dumps(bom))

    def test_refuses_when_cargo_tree_and_the_build_disagree(self):
        graph = self.graph()
        graph[("kube-client", "5.0.0")] = set()
        with self.assertRaisesRegex(SystemExit, r"only in the tree \[\('kube-client', '5.0.0'\)\]"):
            release_tools.binary_sbom(self.workspace_sbom(), self.OWN, self.linked(), graph)

    def test_refuses_a_linked_crate_cargo_cyclonedx_does_not_know(self):
        linked = self.linked() | {registry("ring", "0.17.14")}
        graph = self.graph()
        graph[("ring", "0.17.14")] = set()
        with self.assertRaisesRegex(SystemExit, "no component for the linked crates .*ring@0.17.14"):
            release_tools.binary_sbom(self.workspace_sbom(), self.OWN, linked, graph)


class WorkspaceTree(unittest.TestCase):
    """cargo tree of the packages alone, as release.sh builds them (one invocation each)."""

    def test_boundary_links_no_kubernetes_crate_and_the_webhook_does(self):
        boundary = {name for name, _ in release_tools.tree_graph(ROOT, "boundary", TARGET)}
        webhook = {name for name, _ in release_tools.tree_graph(ROOT, "boundary-webhook", TARGET)}
        self.assertIn("boundary-api", boundary)
        self.assertIn("tokio", boundary)
        self.assertFalse({"kube", "kube-client", "k8s-openapi"} & boundary)
        self.assertTrue({"kube", "kube-client", "k8s-openapi"} <= webhook)
        # proc macros run in the compiler: not linked, not listed
        self.assertNotIn("serde_derive", boundary)


@unittest.skipUnless(os.environ.get("CARGO_AUDITABLE"), "CARGO_AUDITABLE (the pinned cargo-auditable) not given")
class EmbeddedList(unittest.TestCase):
    def test_reads_back_what_cargo_auditable_embedded(self):
        with tempfile.TemporaryDirectory() as tmp:
            crate = Path(tmp) / "embedded-list-probe"
            (crate / "src").mkdir(parents=True)
            (crate / "Cargo.toml").write_text(
                '[package]\nname = "embedded-list-probe"\nversion = "1.2.3"\nedition = "2021"\n\n[workspace]\n'
            )
            (crate / "src" / "main.rs").write_text("fn main() {}\n")
            env = dict(os.environ, CARGO_TARGET_DIR=f"{tmp}/target")
            env["PATH"] = f"{Path(os.environ['CARGO_AUDITABLE']).parent}:{env['PATH']}"
            subprocess.run(["cargo", "auditable", "build", "--quiet", "--offline"], cwd=crate, env=env, check=True)
            packages = release_tools.auditable_packages(Path(tmp) / "target" / "debug" / "embedded-list-probe")
            self.assertEqual(
                [(p["name"], p["version"], p.get("root")) for p in packages], [("embedded-list-probe", "1.2.3", True)]
            )
            with self.assertRaisesRegex(SystemExit, "no .dep-v0 section"):
                release_tools.auditable_packages(Path(shutil.which("true")))


class Images(unittest.TestCase):
    def release_folder(self, folder: Path, mode: int, mtime: int):
        """Stand-in binaries and SBOMs, as release.sh leaves them before the images step."""
        folder.mkdir()
        for binary in ["boundary", "boundary-node-agent", "boundary-webhook", "boundary-operator"]:
            path = folder / binary
            path.write_bytes(b"\x7fELF stand-in for " + binary.encode())
            path.chmod(mode)
            os.utime(path, (mtime, mtime))
            own = f"path+file:///build/agent-boundary/x#{binary}@0.2.0"
            tokio = registry("tokio", "1.47.0")
            bom = {
                "metadata": {"component": {"bom-ref": own, "name": binary}},
                "components": [{"bom-ref": tokio, "name": "tokio", "version": "1.47.0"}],
                "dependencies": [{"ref": own, "dependsOn": [tokio]}, {"ref": tokio, "dependsOn": []}],
            }
            (folder / f"{binary}.cdx.json").write_text(json.dumps(bom))
        ca = folder.parent / f"ca-{mode:o}.crt"
        ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
        return ca

    def test_same_bytes_whatever_the_inputs_times_and_modes(self):
        os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
        with tempfile.TemporaryDirectory() as tmp:
            made = []
            for side, (mode, mtime) in {"a": (0o755, 1), "b": (0o700, 2_000_000_000)}.items():
                folder = Path(tmp) / side
                ca = self.release_folder(folder, mode, mtime)
                for name in release_tools.IMAGES:
                    release_tools.image(folder, name, "0.2.0", "20230311", ca)
                made.append({p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("image-")})
            self.assertEqual(len(made[0]), 6)
            self.assertEqual(made[0], made[1])

            archive = tarfile.open(fileobj=io.BytesIO(made[0]["image-boundary-webhook.oci.tar"]))
            blobs = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
            manifest_digest = json.loads(blobs["index.json"])["manifests"][0]["digest"].split(":")[1]
            manifest = json.loads(blobs[f"blobs/sha256/{manifest_digest}"])
            layer = tarfile.open(fileobj=io.BytesIO(blobs["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]]))
            entries = {m.name: (m.mode, m.mtime, m.uid) for m in layer.getmembers() if m.isfile()}
            self.assertEqual(
                entries,
                {
                    "usr/local/bin/boundary-webhook": (0o755, 1700000000, 0),
                    "etc/ssl/certs/ca-certificates.crt": (0o644, 1700000000, 0),
                },
            )

            bom = json.loads(made[0]["image-jail-runtime.cdx.json"])
            self.assertEqual(bom["metadata"]["component"]["hashes"][0]["content"], json.loads(
                tarfile.open(fileobj=io.BytesIO(made[0]["image-jail-runtime.oci.tar"])).extractfile("index.json").read()
            )["manifests"][0]["digest"].split(":")[1])
            refs = {bom["metadata"]["component"]["bom-ref"]}
            stack = list(bom["components"])
            while stack:
                component = stack.pop()
                refs.add(component["bom-ref"])
                stack.extend(component.get("components", []))
            named = {d["ref"] for d in bom["dependencies"]} | {r for d in bom["dependencies"] for r in d["dependsOn"]}
            self.assertEqual(named, refs, "the graph covers exactly the SBOM's refs")
            graph = {d["ref"]: d["dependsOn"] for d in bom["dependencies"]}
            self.assertEqual(graph["boundary-node-agent:/usr/local/bin/boundary-node-agent"], [f"boundary-node-agent:{registry('tokio', '1.47.0')}"])


if __name__ == "__main__":
    unittest.main()
