"""Fetch from a stand-in dfss and from real mirrors (HTTP on 127.0.0.1, file://, sftp via sshd)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from llmtpu.provision import fetch
from llmtpu.provision.fetch import DfssSource, FetchError, MirrorSource, SftpTransport
from llmtpu.provision.mirror import MANIFEST_NAME, MirrorError, create_manifest, parse_manifest
from tests.provision.http_server import FileServer

STANDIN = '''\
"""Stand-in for Sophgo's dfss (never the real one): records argv, then acts per DFSS_MODE."""
import json, os, sys
with open(os.environ["DFSS_RECORD"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
mode = os.environ.get("DFSS_MODE", "ok")
url = sys.argv[1].split("=", 1)[1]
name = url.rsplit("/", 1)[-1]
if mode == "ok":
    with open(name, "wb") as f:
        f.write(b"deb bytes for " + name.encode())
    print("Download completed.")
    sys.exit(0)
if mode == "noserver":
    print("12:00:00 ERROR main.cpp:99: No available server found", file=sys.stderr)
    print("Binary for architecture linux-amd64 ret: 65280")
    sys.exit(1)
if mode == "exit255":
    print("Cannot download " + url.split(":", 1)[1] + " from open@sophgo.com", file=sys.stderr)
    sys.exit(255)
if mode == "nofile":
    print("Download completed.")
    sys.exit(0)
'''


@pytest.fixture
def dfss(tmp_path: Path):
    """A dfss package on a private PYTHONPATH ahead of site-packages, and the file it records to."""
    pkg = tmp_path / "standin" / "dfss"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(STANDIN)
    record = tmp_path / "dfss-argv.jsonl"

    def source(mode: str) -> DfssSource:
        env = {"PYTHONPATH": str(tmp_path / "standin"), "DFSS_RECORD": str(record), "DFSS_MODE": mode}
        return DfssSource(interpreter=sys.executable, env=env, timeout=60)

    source.record = record  # type: ignore[attr-defined]
    return source


def test_dfss_is_run_with_an_argument_list_in_a_private_folder(dfss, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    placed = fetch.fetch(fetch.artifacts("debs", "0.5.1"), dfss("ok"), str(dest))
    names = [Path(p).name for p in placed]
    assert names == ["sophon-driver_0.5.1_amd64.deb", "sophon-libsophon_0.5.1_amd64.deb",
                     "sophon-libsophon-dev_0.5.1_amd64.deb"]
    calls = [json.loads(line) for line in dfss.record.read_text().splitlines()]
    assert calls[0]["argv"] == [
        "--url=open@sophgo.com:/ext_model_information/LLM/libsophon_club/20240717/sophon-driver_0.5.1_amd64.deb"]
    assert all(Path(c["cwd"]).parent == dest and Path(c["cwd"]).name.startswith(".llmtpu-dfss-") for c in calls)
    assert sorted(os.listdir(dest)) == sorted(names)  # private folders removed, nothing else left
    assert (dest / names[0]).read_bytes() == b"deb bytes for " + names[0].encode()


@pytest.mark.parametrize(("mode", "words"), [
    ("noserver", "no Sophgo download server answered"),
    ("exit255", "could not deliver"),
    ("nofile", "never appeared"),
])
def test_dfss_failures_are_one_clear_line_and_nothing_placed(dfss, tmp_path: Path, mode: str, words: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(FetchError, match=words) as caught:
        fetch.fetch(fetch.artifacts("driver"), dfss(mode), str(dest))
    assert "\n" not in str(caught.value)
    assert os.listdir(dest) == []


def test_dfss_exit_status_without_known_words() -> None:
    assert "exited 255" in (fetch.dfss_problem(255, "weird\n", "open@sophgo.com:/x") or "")
    assert "exited 1" in (fetch.dfss_problem(1, "", "open@sophgo.com:/x") or "")
    assert fetch.dfss_problem(0, "Download completed.", "u") is None


def test_dfss_known_checksum_is_enforced(dfss, tmp_path: Path) -> None:
    art = fetch.artifacts("driver")[0]
    bad = fetch.Artifact(art.part, art.name, art.dfss_path, sha256="0" * 64)
    with pytest.raises(FetchError, match="sha256"):
        fetch.fetch([bad], dfss("ok"), str(tmp_path / "d"))
    assert os.listdir(tmp_path / "d") == []


@pytest.fixture
def mirror_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "sophon-driver_0.5.1_amd64.deb").write_bytes(os.urandom(3 << 20) + b"driver")
    (folder / "sdcard.tgz").write_bytes(os.urandom(1 << 20))
    create_manifest(str(folder))
    return folder


def test_manifest_lists_name_size_sha256(mirror_dir: Path) -> None:
    doc = json.loads((mirror_dir / MANIFEST_NAME).read_text())
    assert doc["schema"] == "llmtpu.mirror/1"
    row = {r["name"]: r for r in doc["files"]}["sdcard.tgz"]
    data = (mirror_dir / "sdcard.tgz").read_bytes()
    assert row == {"name": "sdcard.tgz", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_manifest_names_escaping_the_folder_are_refused() -> None:
    doc = {"schema": "llmtpu.mirror/1", "files": [{"name": "../etc/passwd", "size": 1, "sha256": "a" * 64}]}
    with pytest.raises(MirrorError, match="outside the mirror"):
        parse_manifest(json.dumps(doc).encode(), "m")


def test_http_mirror_download_verified_and_placed(mirror_dir: Path, tmp_path: Path) -> None:
    server = FileServer(mirror_dir).start()
    try:
        placed = fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(tmp_path / "d"))
    finally:
        server.stop()
    assert Path(placed[0]).read_bytes() == (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()
    assert os.listdir(tmp_path / "d") == ["sophon-driver_0.5.1_amd64.deb"]


def test_http_cut_halfway_resumes_with_range(mirror_dir: Path, tmp_path: Path) -> None:
    size = (mirror_dir / "sophon-driver_0.5.1_amd64.deb").stat().st_size
    server = FileServer(mirror_dir, cut_at=size // 2).start()
    try:
        placed = fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(tmp_path / "d"))
    finally:
        server.stop()
    assert Path(placed[0]).read_bytes() == (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()
    assert server.cuts_done == 1
    assert any(f"bytes={size // 2}-" in r for r in server.requests), server.requests
    manifest_size = (mirror_dir / MANIFEST_NAME).stat().st_size
    assert server.bytes_sent - manifest_size - size <= size * 0.05


def test_partial_file_from_an_earlier_run_is_resumed(mirror_dir: Path, tmp_path: Path) -> None:
    data = (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".sophon-driver_0.5.1_amd64.deb.part").write_bytes(data[: len(data) - 1000])
    server = FileServer(mirror_dir).start()
    try:
        fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(dest))
    finally:
        server.stop()
    assert (dest / "sophon-driver_0.5.1_amd64.deb").read_bytes() == data
    assert server.requests[-1].endswith(f"bytes={len(data) - 1000}-")


def test_corrupted_file_is_refused_and_nothing_placed(mirror_dir: Path, tmp_path: Path) -> None:
    server = FileServer(mirror_dir, corrupt=True).start()
    try:
        with pytest.raises(FetchError, match="corrupt.*nothing placed"):
            fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(tmp_path / "d"))
    finally:
        server.stop()
    assert os.listdir(tmp_path / "d") == []


def test_file_mirror_and_missing_entry(mirror_dir: Path, tmp_path: Path) -> None:
    source = MirrorSource(mirror_dir.as_uri())
    placed = fetch.fetch(fetch.artifacts("sdcard"), source, str(tmp_path / "d"))
    assert Path(placed[0]).read_bytes() == (mirror_dir / "sdcard.tgz").read_bytes()
    with pytest.raises(FetchError, match="lists no sophon-libsophon_0.5.1"):
        fetch.fetch(fetch.artifacts("libsophon"), source, str(tmp_path / "d"))


def test_unknown_version_and_scheme() -> None:
    with pytest.raises(FetchError, match="--version 9.9"):
        fetch.artifacts("debs", "9.9")
    with pytest.raises(FetchError, match="http://, https://, file:// or sftp://"):
        MirrorSource("ftp://example.invalid/x")


def test_sftp_mirror_checks_host_key_and_resumes(sshd_farm, mirror_dir: Path, tmp_path: Path) -> None:
    board = sshd_farm.add("mirror")
    url = f"sftp://{board.user}@127.0.0.1:{board.port}{mirror_dir}"
    data = (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".sophon-driver_0.5.1_amd64.deb.part").write_bytes(data[:12345])
    transport = SftpTransport(url, known_hosts=str(sshd_farm.known_hosts), key_filename=str(sshd_farm.client_key))
    fetch.fetch(fetch.artifacts("driver"), MirrorSource(url, transport), str(dest))
    assert (dest / "sophon-driver_0.5.1_amd64.deb").read_bytes() == data

    stranger = sshd_farm.add("stranger", trusted=False)
    bad = SftpTransport(f"sftp://{stranger.user}@127.0.0.1:{stranger.port}{mirror_dir}",
                        known_hosts=str(sshd_farm.known_hosts), key_filename=str(sshd_farm.client_key))
    with pytest.raises(FetchError, match="not found in known_hosts"):
        fetch.fetch(fetch.artifacts("driver"), MirrorSource(url, bad), str(tmp_path / "e"))


def test_cli_mirror_create_then_fetch_from_it(tmp_path: Path, capsys) -> None:
    from tests.provision.conftest import cli

    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "sdcard.tgz").write_bytes(b"card")
    assert cli(["mirror", "create", str(folder)]) == 0
    assert "1 file(s), 4 bytes" in capsys.readouterr().out
    assert cli(["fetch", "sdcard", "--mirror", folder.as_uri(), "--dest", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "d" / "sdcard.tgz")
    assert cli(["fetch", "driver", "--mirror", folder.as_uri(), "--dest", str(tmp_path / "d")]) == 2  # Exit.FAILED
    assert "lists no sophon-driver" in capsys.readouterr().err
    assert cli(["mirror", "create", str(tmp_path / "absent")]) == 2  # Exit.FAILED


def test_files_present_and_verified_in_dest_are_not_downloaded_again(mirror_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    server = FileServer(mirror_dir).start()
    try:
        fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(dest))
        served = len(server.requests)
        placed = fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(dest))
        assert len(server.requests) == served + 1  # the manifest only
        assert Path(placed[0]).read_bytes() == (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()
        (dest / "sophon-driver_0.5.1_amd64.deb").write_bytes(b"changed since")  # no longer verifies: fetched again
        fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(dest))
        assert server.requests[-1].startswith("/sophon-driver_0.5.1_amd64.deb")
    finally:
        server.stop()
    assert Path(placed[0]).read_bytes() == (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()


def test_dfss_file_already_in_dest_is_kept(dfss, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    fetch.fetch(fetch.artifacts("debs", "0.5.1"), dfss("ok"), str(dest))
    calls = len(dfss.record.read_text().splitlines())
    fetch.fetch(fetch.artifacts("debs", "0.5.1"), dfss("ok"), str(dest))
    assert len(dfss.record.read_text().splitlines()) == calls


def test_a_corrupt_partial_file_is_blamed_on_itself_and_replaced(mirror_dir: Path, tmp_path: Path) -> None:
    data = (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".sophon-driver_0.5.1_amd64.deb.part").write_bytes(b"\0" * 5000)  # not the file's first bytes
    server = FileServer(mirror_dir).start()
    try:
        placed = fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(dest))
    finally:
        server.stop()
    assert Path(placed[0]).read_bytes() == data
    assert sorted(os.listdir(dest)) == ["sophon-driver_0.5.1_amd64.deb"]


def test_corrupt_mirror_with_a_partial_file_still_blames_the_mirror(mirror_dir: Path, tmp_path: Path) -> None:
    data = (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".sophon-driver_0.5.1_amd64.deb.part").write_bytes(data[:5000])
    server = FileServer(mirror_dir, corrupt=True).start()
    try:
        with pytest.raises(FetchError, match="mirror's copy is corrupt"):
            fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(dest))
    finally:
        server.stop()
    assert os.listdir(dest) == []


def test_a_link_planted_as_the_partial_file_is_not_written_through(mirror_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".sophon-driver_0.5.1_amd64.deb.part").symlink_to(victim)
    fetch.fetch(fetch.artifacts("driver"), MirrorSource(mirror_dir.as_uri()), str(dest))
    assert victim.read_bytes() == b"keep me"
    name = "sophon-driver_0.5.1_amd64.deb"
    assert (dest / name).read_bytes() == (mirror_dir / name).read_bytes()


def test_a_mirror_download_reads_the_file_once(mirror_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """17.5: hashed while downloading; the placed file is never read back to hash it again."""
    monkeypatch.setattr(fetch, "_sha256_of", lambda path: pytest.fail(f"{path} hashed a second time"))
    placed = fetch.fetch(fetch.artifacts("driver"), MirrorSource(mirror_dir.as_uri()), str(tmp_path / "d"))
    assert Path(placed[0]).read_bytes() == (mirror_dir / "sophon-driver_0.5.1_amd64.deb").read_bytes()


def test_two_fetches_into_one_folder_at_once_do_not_share_a_partial_file(mirror_dir: Path, tmp_path: Path) -> None:
    """Two hosts of one playbook fetch into the same cache: one downloads, the other finds it placed."""
    import threading

    dest = tmp_path / "d"
    server = FileServer(mirror_dir).start()
    errors: list[BaseException] = []

    def one() -> None:
        try:
            fetch.fetch(fetch.artifacts("driver"), MirrorSource(server.url), str(dest))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=one) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    assert errors == []
    assert sum(r.startswith("/sophon-driver") for r in server.requests) == 1
    name = "sophon-driver_0.5.1_amd64.deb"
    assert (dest / name).read_bytes() == (mirror_dir / name).read_bytes()
