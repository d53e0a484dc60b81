"""Bundles that would attack a board are refused by `bundle verify`, before push sends anything (issue 11).

Each case is a manifest with a correct digest, so only the new checks can refuse it: link targets
with control characters (3), chains of in-bundle links climbing out (4), modes beyond plain
permission bits (5), and a manifest nested deeper than the JSON parser's stack (10).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.clikit import EXIT_USAGE
from llmtpu.provision.bundle import (
    MANIFEST,
    PAYLOAD,
    BundleError,
    FileEntry,
    LinkEntry,
    Manifest,
    collect,
    create_bundle,
    load_manifest,
    verify_bundle,
)
from llmtpu.provision.push import push_fleet
from tests.push.helpers import DEST, board_of, make_bundle, make_tree


def rewrite(out: Path, files: list[FileEntry] | None = None, links: list[LinkEntry] | None = None) -> None:
    """Replace the bundle's manifest by one with these entries and a matching digest; links land in payload/."""
    original = out.parent / f"{out.name}.manifest.orig"
    if not original.exists():
        original.write_text((out / MANIFEST).read_text())
        old = load_manifest(out)
    else:
        raw = json.loads(original.read_text())
        old = Manifest(tuple(FileEntry(**f) for f in raw["files"]), (), raw["model"], raw["arch"])
    manifest = Manifest(tuple(files if files is not None else old.files),
                        tuple(links if links is not None else old.links), old.model, old.arch)
    for link in links or ():
        where = out / PAYLOAD / link.path
        if where.is_symlink():
            where.unlink()
        if link.target and not link.path.startswith("models/x/up/"):  # the kernel refuses an empty target
            where.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link.target, where)
    (out / MANIFEST).write_text(manifest.to_json())


@pytest.mark.parametrize("target", ["libchat.so\n/etc/motd", "libchat.so\t../../../../etc/motd", "lib\x1bchat", ""])
def test_link_targets_with_control_characters_are_refused(tmp_path: Path, target: str) -> None:
    out = make_bundle(tmp_path)
    rewrite(out, links=[LinkEntry("deploy/lib/libchat.so.1", target)])
    with pytest.raises(BundleError, match="control character"):
        verify_bundle(out)


def test_chains_of_in_bundle_links_that_climb_out_are_refused(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    chain = [LinkEntry("models/x/up", ".."), LinkEntry("models/x/up/x/up/esc", "../../../../..")]
    rewrite(out, links=chain)
    with pytest.raises(BundleError, match="sits under the link 'models/x/up'"):
        verify_bundle(out)
    # Without nesting, a link through another link that climbs out is refused too.
    rewrite(out, links=[LinkEntry("models/up", ".."), LinkEntry("deploy/esc", "../models/up/..")])
    with pytest.raises(BundleError, match="through the bundle's other links"):
        verify_bundle(out)
    rewrite(out, links=[LinkEntry("models/a", "b"), LinkEntry("models/b", "a/x")])
    with pytest.raises(BundleError, match="loops"):
        verify_bundle(out)


def test_links_that_stay_inside_through_other_links_are_kept(tmp_path: Path) -> None:
    out = make_bundle(tmp_path)
    links = [LinkEntry("deploy/lib/libchat.so.1", "libchat.so"), LinkEntry("deploy/libs", "lib"),
             LinkEntry("models/chat", "../deploy/libs/libchat.so.1")]
    rewrite(out, links=links)
    assert verify_bundle(out).ok


def test_a_tree_whose_links_chain_out_is_refused_at_create(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    os.symlink("..", tree / "deploy" / "up")
    os.symlink("up/../..", tree / "deploy" / "esc")
    with pytest.raises(BundleError, match="outside the bundle"):
        create_bundle(tmp_path / "out", collect([tree], None, []))


@pytest.mark.parametrize("mode", [0o6777, 0o4755, 0o1755, 0o666, -1, 10**30, "644", 420.0, True, None])
def test_modes_beyond_permission_bits_are_refused(tmp_path: Path, mode: object) -> None:
    out = make_bundle(tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][0]["mode"] = mode
    body = {k: v for k, v in manifest.items() if k != "digest"}
    manifest["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="mode|malformed"):
        load_manifest(out)


def test_setuid_or_world_writable_source_files_are_refused_at_create(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    (tree / "deploy" / "run.sh").chmod(0o4755)
    with pytest.raises(BundleError, match="no setuid"):
        create_bundle(tmp_path / "out", collect([tree], None, []))
    (tree / "deploy" / "run.sh").chmod(0o777)
    with pytest.raises(BundleError, match="world-writable"):
        create_bundle(tmp_path / "out2", collect([tree], None, []))


def test_bad_manifest_is_refused_before_a_board_is_contacted(sshd_farm, tmp_path: Path) -> None:
    board = sshd_farm.add("never")
    out = make_bundle(tmp_path)
    rewrite(out, links=[LinkEntry("deploy/lib/libchat.so.1", "x\n/etc/motd")])
    with pytest.raises(BundleError, match="control character"):
        push_fleet(out, [board_of(sshd_farm, board)], DEST)
    assert not (Path(str(board.root)) / "data").exists()


def test_deeply_nested_manifest_is_one_line_not_a_traceback(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = make_bundle(tmp_path)
    (out / MANIFEST).write_text("[" * 200_000 + "]" * 200_000)
    assert main(["bundle", "verify", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested too deeply" in err and "Traceback" not in err
