"""Issue 14 items 1, 2 and 5 through the real `llmtpu` command: offline means offline, the
container fix settles, and `doctor --fix --json` prints one document.

dfss is a stand-in package (never Sophgo's) on PYTHONPATH that records every call and serves
test-built debs from a folder; HOME is private, so the download cache is the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmtpu.provision.mirror import create_manifest
from tests.provision.conftest import fingerprint
from tests.provision.http_server import FileServer

STANDIN = '''\
"""Stand-in for Sophgo's dfss: records argv, copies the named file from DFSS_FILES."""
import json, os, shutil, sys
with open(os.environ["DFSS_RECORD"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
name = sys.argv[1].rsplit("/", 1)[-1]
source = os.path.join(os.environ["DFSS_FILES"], name)
if not os.path.exists(source):
    print("Cannot download " + name + " from open@sophgo.com", file=sys.stderr)
    sys.exit(255)
shutil.copy(source, name)
print("Download completed.")
'''

SAMPLES = ("pcie-docker-no-libsophon", "pcie-host-ok", "pcie-host-old-driver", "soc-board-downclocked",
           "soc-board-ok", "soc-board-old-kernel")


class Llmtpu:
    """`llmtpu ...` in a subprocess with the stand-in dfss, a private HOME and no terminal."""

    def __init__(self, tmp_path: Path, files: Path) -> None:
        package = tmp_path / "standin" / "dfss"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(STANDIN)
        self.record = tmp_path / "dfss-calls.jsonl"
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = {**os.environ, "PYTHONPATH": str(tmp_path / "standin"), "DFSS_RECORD": str(self.record),
                    "DFSS_FILES": str(files), "HOME": str(self.home), "COLUMNS": "200"}
        self.env.pop("XDG_STATE_HOME", None)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmtpu", *args], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL, env=self.env)

    def dfss_calls(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def downloads(self) -> list[str]:
        cache = self.home / ".cache" / "llmtpu" / "downloads"
        return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


@pytest.fixture
def files(tmp_path: Path, release) -> Path:
    """Both releases' test-built debs in one folder: what the stand-in dfss and the mirror serve."""
    folder = tmp_path / "served"
    folder.mkdir()
    for version in ("0.5.0", "0.5.1"):
        for deb in release(version).iterdir():
            shutil.copy(deb, folder / deb.name)
    return folder


@pytest.fixture
def llmtpu(tmp_path: Path, files: Path) -> Llmtpu:
    return Llmtpu(tmp_path, files)


@pytest.fixture
def mirror(files: Path):
    create_manifest(str(files))
    server = FileServer(files).start()
    try:
        yield server
    finally:
        server.stop()


def test_fix_without_a_terminal_refuses_before_downloading(sysroot, llmtpu: Llmtpu) -> None:
    root = sysroot("pcie-host-old-driver")
    before = fingerprint(root)
    result = llmtpu("doctor", "--root", str(root), "--fix")
    assert result.returncode == 64, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "pass --yes" in result.stderr
    assert "download sophon-driver_0.5.1_amd64.deb" in result.stdout  # the plan said so first
    assert llmtpu.dfss_calls() == [] and llmtpu.downloads() == []
    assert fingerprint(root) == before


def test_play_dry_run_plans_the_download_and_downloads_nothing(sysroot, llmtpu: Llmtpu) -> None:
    root = sysroot("pcie-host-old-driver")
    before = fingerprint(root)
    result = llmtpu("play", "fresh-pcie-host", "--root", str(root), "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "planned" in result.stdout and "dfss" in result.stdout
    assert llmtpu.dfss_calls() == [] and llmtpu.downloads() == []
    assert fingerprint(root) == before


def test_play_with_debs_folder_never_calls_dfss(debroot, llmtpu: Llmtpu, release) -> None:
    root = debroot("pcie-host-old-driver")
    result = llmtpu("play", "fresh-pcie-host", "--root", str(root), "--debs", str(release("0.5.1")), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert llmtpu.dfss_calls() == [] and llmtpu.downloads() == []
    doctor = json.loads(llmtpu("doctor", "--root", str(root), "--json").stdout)
    assert {c["id"]: c["status"] for c in doctor["checks"]}["driver.date"] == "ok"


def test_play_with_a_loopback_mirror_never_calls_dfss(debroot, llmtpu: Llmtpu, mirror: FileServer) -> None:
    root = debroot("pcie-host-old-driver")
    result = llmtpu("play", "fresh-pcie-host", "--root", str(root), "--mirror", mirror.url, "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert llmtpu.dfss_calls() == []
    assert any(r.startswith("/sophon-driver_0.5.1_amd64.deb") for r in mirror.requests), mirror.requests


def test_debs_and_mirror_together_is_a_usage_error(sysroot, llmtpu: Llmtpu, tmp_path: Path) -> None:
    result = llmtpu("doctor", "--root", str(sysroot("pcie-host-ok")), "--fix", "--debs", str(tmp_path),
                    "--mirror", "http://127.0.0.1:9/")
    assert result.returncode == 64 and "give one" in result.stderr


@pytest.mark.parametrize("source", ["dfss", "mirror"])
def test_container_gets_the_libsophon_of_the_host_driver_and_settles(debroot, llmtpu: Llmtpu, mirror: FileServer,
                                                                     source: str) -> None:
    """FAQ Q2: the host's loaded driver is 0.5.0, so the container gets libsophon 0.5.0 (not the
    default 0.5.1) and no driver deb; a second --fix has nothing to do and the check is ok. (The
    host's 0.5.0 driver itself is older than sdk.version wants: a manual step outside the container.)"""
    root = debroot("pcie-docker-no-libsophon")
    where = ["--mirror", mirror.url, "--only", "libsophon.install"] if source == "mirror" else [
        "--only", "libsophon.install"]
    first = llmtpu("doctor", "--root", str(root), "--fix", "--yes", *where)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "re-check libsophon.install: ok: libsophon 0.5.0" in first.stdout
    wanted = ["sophon-libsophon_0.5.0_amd64.deb", "sophon-libsophon-dev_0.5.0_amd64.deb"]
    called = [c[0].rsplit("/", 1)[-1] for c in llmtpu.dfss_calls()]
    assert called == (wanted if source == "dfss" else [])
    second = llmtpu("doctor", "--root", str(root), "--fix", "--yes", *where)
    assert second.returncode == 0 and "nothing to do" in second.stdout, second.stdout
    assert len(llmtpu.dfss_calls()) == len(called)  # nothing fetched again
    doctor = json.loads(llmtpu("doctor", "--root", str(root), "--json", "--only", "libsophon.install").stdout)
    assert doctor["verdict"] == "ok", [c for c in doctor["checks"] if c["status"] != "ok"]


def test_container_with_a_folder_of_the_wrong_release_is_refused(sysroot, llmtpu: Llmtpu, release) -> None:
    root = sysroot("pcie-docker-no-libsophon")
    before = fingerprint(root)
    result = llmtpu("doctor", "--root", str(root), "--fix", "--yes", "--debs", str(release("0.5.1")))
    assert result.returncode == 2
    assert "holds libsophon 0.5.1 but the host's driver is 0.5.0" in result.stdout
    assert fingerprint(root) == before


@pytest.mark.parametrize("sample", SAMPLES)
def test_fix_twice_changes_nothing_the_second_time(sysroot, llmtpu: Llmtpu, sample: str) -> None:
    root = sysroot(sample)
    llmtpu("doctor", "--root", str(root), "--fix", "--yes")
    calls = len(llmtpu.dfss_calls())
    after_first = fingerprint(root)
    second = llmtpu("doctor", "--root", str(root), "--fix", "--yes", "--json")
    document = json.loads(second.stdout)
    assert all(p["nothing_to_do"] for p in document["plan"]), document["plan"]
    assert document["result"]["status"] in ("nothing to do", "manual steps left"), document["result"]
    assert fingerprint(root) == after_first and len(llmtpu.dfss_calls()) == calls


def test_fix_json_is_one_document_with_plan_result_and_verification(debroot, llmtpu: Llmtpu, release) -> None:
    root = debroot("pcie-host-old-driver")
    result = llmtpu("doctor", "--root", str(root), "--fix", "--yes", "--json", "--debs", str(release("0.5.1")))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert document["schema"] == "llmtpu.doctor.fix/1"
    assert [p["operation"] for p in document["plan"]] == ["debs.install"]
    assert any(c["what"] == "dpkg -i sophon-driver_0.5.1_amd64.deb" for c in document["plan"][0]["changes"])
    assert document["result"]["status"] == "applied" and document["exit_code"] == 0
    assert {v["id"]: v["status"] for v in document["verification"]}["driver.date"] == "ok"
    assert "debs.install on vm" in result.stderr  # the human plan went to stderr
