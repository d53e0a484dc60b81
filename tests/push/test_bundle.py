"""Bundles: built once with hashes, verified, and refused when they could escape or were changed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from llmtpu.provision.bundle import (
    MANIFEST,
    PAYLOAD,
    BundleError,
    collect,
    create_bundle,
    load_manifest,
    verify_bundle,
)
from tests.push.helpers import make_bundle, make_tree


def test_create_records_every_file_and_link_and_verify_passes(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    manifest = load_manifest(out)
    paths = {f.path: f for f in manifest.files}
    assert set(paths) == {"deploy/lib/libchat.so", "deploy/run.sh", "models/qwen/config.json",
                          "models/qwen/qwen.bmodel"}
    assert paths["deploy/run.sh"].mode == 0o755
    assert [(x.path, x.target) for x in manifest.links] == [("deploy/lib/libchat.so.1", "libchat.so")]
    assert (out / PAYLOAD / "deploy/lib/libchat.so.1").is_symlink()
    result = verify_bundle(out, rehash=True)
    assert result.ok and result.hashed_bytes == manifest.total_bytes
    assert verify_bundle(out).hashed_bytes == 0  # untouched since the last hash: stat is enough


def test_model_filter_and_extras(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    (tree / "models" / "llama").mkdir()
    (tree / "models" / "llama" / "x.bmodel").write_bytes(b"x")
    deb = tmp_path / "sophon-soc-libsophon_0.5.1_arm64.deb"
    deb.write_bytes(b"deb")
    sources = collect([tree], "qwen", [deb])
    paths = [s.path for s in sources]
    assert "extra/sophon-soc-libsophon_0.5.1_arm64.deb" in paths
    assert not any(p.startswith("models/llama") for p in paths)
    with pytest.raises(BundleError, match="--model nope"):
        collect([tree], "nope", [])


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../etc/passwd", "../../.."])
def test_links_pointing_outside_are_refused(tmp_path: Path, target: str) -> None:
    tree = make_tree(tmp_path / "src")
    os.symlink(target, tree / "deploy" / "evil")
    with pytest.raises(BundleError, match="outside the bundle"):
        create_bundle(tmp_path / "out", collect([tree], None, []))


def test_manifest_paths_escaping_the_bundle_are_refused(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    raw = json.loads((out / MANIFEST).read_text())
    raw["files"][0]["path"] = "../../outside"
    body = {k: v for k, v in raw.items() if k != "digest"}  # a matching digest: only the path check can refuse
    raw["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (out / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_manifest(out)


def test_edited_manifest_is_refused(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    raw = json.loads((out / MANIFEST).read_text())
    raw["files"][0]["sha256"] = "0" * 64
    (out / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="digest mismatch"):
        load_manifest(out)


def test_changed_payload_file_fails_verify_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    target = out / PAYLOAD / "models/qwen/qwen.bmodel"
    st = target.stat()
    with open(target, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\xff" * 8)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = verify_bundle(out)
    assert not result.ok and "sha256 differs" in result.problems[0]


def test_create_refuses_a_non_empty_out(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    with pytest.raises(BundleError, match="not empty"):
        create_bundle(out, collect([tmp_path / "bundle-src"], None, []))
