"""`llmtpu report`: the archive holds the issue template's fields, and no secret planted here."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from llmtpu.doctor.support_report import NOT_INSTALLED, package_versions, read_git_commit
from llmtpu.target import LocalTarget
from tests.conftest import require
from tests.explain.cli import run_cli

SECRETS = [b"hunter2", b"SECRETKEYMATERIAL", b"HOSTKEYMATERIAL", b"ghp_TOKEN123", b"LLMTPU_TEST_PASSWORD",
           b"bashhistorysecret"]
COMMIT_TIME = 1715086207  # 2024-05-07 20:50:07 +0800


def loose_commit(git_dir: Path, message: str = "run bmodel in pcie") -> str:
    """Write a commit object the way git stores it: zlib("commit <len>\\0<text>") under its sha1."""
    body = (f"tree {'4b825dc642cb6eb9a060e54bf8d69288fbee4904'}\n"
            f"author Someone <someone@example.com> {COMMIT_TIME} +0800\n"
            f"committer Someone <someone@example.com> {COMMIT_TIME} +0800\n\n{message}\n").encode()
    data = b"commit %d\0" % len(body) + body
    sha = hashlib.sha1(data).hexdigest()  # noqa: S324 - git's object id, not security
    path = git_dir / "objects" / sha[:2] / sha[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zlib.compress(data))
    return sha


def make_checkout(root: Path, machine_path: str) -> str:
    git_dir = root / machine_path.lstrip("/") / ".git"
    (git_dir / "refs" / "heads").mkdir(parents=True)
    sha = loose_commit(git_dir)
    (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
    (git_dir / "refs" / "heads" / "main").write_text(sha + "\n")
    (git_dir / "config").write_text('[remote "origin"]\n\turl = https://bob:ghp_TOKEN123@github.com/sophgo/LLM-TPU\n')
    return sha


def plant_secrets(root: Path) -> None:
    ssh = root / "root" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETKEYMATERIAL\n"
                                    "-----END OPENSSH PRIVATE KEY-----\n")
    (root / "etc" / "ssh").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n"
                                                               "HOSTKEYMATERIAL\n-----END OPENSSH PRIVATE KEY-----\n")
    home = root / "home" / "linaro"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".bash_history").write_text("sshpass -p bashhistorysecret ssh linaro@board\n")


ENGINE_LOG = """\
Device [ 0 ] loading ....
mysql -u llm --password hunter2 -e 'select 1'
export DB_PASSWORD=hunter2
fetching https://bob:hunter2@example.com/model.bmodel
-----BEGIN OPENSSH PRIVATE KEY-----
SECRETKEYMATERIAL
-----END OPENSSH PRIVATE KEY-----
[bmlib_memory][error] bm_alloc_gmem failed, dev_id = 0, size = 0x25180000
"""

DMESG = """\
[    9.100000] bmtpu: loading out-of-tree module taints kernel.
[    9.200000] bm-tpu0: bmdrv: probe start token=hunter2
[   10.000000] usb 1-1: new high-speed USB device number 2 using xhci-hcd
[ 8812.000001] bm-tpu0 tpu api [5:GEMM] timeout
"""


@pytest.fixture
def board(sysroot, tmp_path, monkeypatch):
    """An old-kernel SoC board with a hung chip in its kernel log, an LLM-TPU checkout, and secrets."""
    root = sysroot("soc-board-old-kernel")
    (root / "_cmd").mkdir(exist_ok=True)
    (root / "_cmd" / "dmesg.txt").write_text(DMESG)
    sha = make_checkout(root, "/home/linaro/LLM-TPU")
    plant_secrets(root)
    log = tmp_path / "engine.log"
    log.write_text(ENGINE_LOG)
    monkeypatch.setenv("LLMTPU_TEST_PASSWORD", "hunter2")
    return root, log, sha


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for info in tar.getmembers():
            assert info.uid == 0 and info.gid == 0 and info.uname == "" and info.gname == ""
            if info.isfile():
                handle = tar.extractfile(info)
                assert handle is not None
                out[info.name] = handle.read()
        return out


def report(monkeypatch, board, out: Path, *extra: str) -> int:
    root, log, _ = board
    return run_cli(monkeypatch, ["report", "--root", str(root), "-o", str(out), "--log", str(log),
                                 "--llm-tpu", "/home/linaro/LLM-TPU", *extra])


def test_archive_holds_the_issue_template_fields(board, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report.tar.gz"
    assert report(monkeypatch, board, out) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")
    files = members(out)
    folder = next(iter(files)).split("/")[0]
    assert folder.startswith("llmtpu-report-")
    assert sorted(name.split("/", 1)[1] for name in files) == [
        "doctor.json", "engine-log.txt", "kernel-log.txt", "signatures.json", "summary.md", "versions.json"]
    summary = files[f"{folder}/summary.md"].decode()
    sha = board[2]
    for row in ("| soc or pcie | soc |", "| transformers version | ", "| torch version | ",
                f"| LLM-TPU commit (date) | {sha} (2024-05-07 20:50:07 +0800) |", "| tpu-mlir version | ",
                "| driver version | libsophon 0.5.0 (SoC: no separate driver) |",
                "| `uname -v` | #2 SMP Sat Nov 18 10:07:36 HKT 2023 |"):
        assert row in summary, row
    assert "- `kernel.date` fail: kernel build date 20231118 is older than 20240110" in summary
    assert "`kernel.api-timeout` (kernel log line 4)" in summary
    assert "`bmlib.alloc-gmem` (engine log line 8)" in summary and "Fix (heaps.resize)" in summary
    signatures = files[f"{folder}/signatures.json"].decode()
    assert '"id": "kernel.api-timeout"' in signatures and '"id": "bmlib.alloc-gmem"' in signatures
    kernel = files[f"{folder}/kernel-log.txt"].decode()
    assert "1: [    9.100000] bmtpu: loading" in kernel and "usb 1-1" not in kernel
    assert b'"schema": "llmtpu.doctor/1"' in files[f"{folder}/doctor.json"]


def test_no_planted_secret_reaches_the_archive(board, tmp_path, monkeypatch):
    out = tmp_path / "report.tar.gz"
    assert report(monkeypatch, board, out) == 0
    files = members(out)
    for name, data in files.items():
        for secret in SECRETS:
            assert secret not in data, f"{secret!r} leaked into {name}"
    engine = next(v for k, v in files.items() if k.endswith("engine-log.txt")).decode()
    assert "--password [redacted]" in engine and "DB_PASSWORD=[redacted]" in engine
    assert "https://[redacted]@example.com" in engine
    assert "bm_alloc_gmem failed" in engine  # the useful lines stay


def test_existing_archive_is_kept_unless_forced(board, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report.tar.gz"
    out.write_bytes(b"precious")
    assert report(monkeypatch, board, out) == 64
    assert "exists; add --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert report(monkeypatch, board, out, "--force") == 0
    assert tarfile.is_tarfile(out)
    assert not list(tmp_path.glob(".llmtpu-report-*")), "a temporary file was left behind"


@pytest.mark.parametrize("argv, message", [
    (["-o", "{tmp}/report.zip"], "must end in .tar.gz"),
    (["-o", "{tmp}/missing/report.tar.gz"], "does not exist"),
    (["-o", "{tmp}/r.tar.gz", "--log", "{tmp}/absent.log"], "--log: "),
    (["-o", "{tmp}/r.tar.gz", "--llm-tpu", "LLM-TPU"], "must be an absolute path"),
    (["-o", "{tmp}/r.tar.gz", "--llm-tpu", "/nowhere"], "does not exist on the machine"),
])
def test_bad_input_is_one_usage_line(board, tmp_path, monkeypatch, capsys, argv, message):
    args = [a.format(tmp=tmp_path) for a in argv]
    assert run_cli(monkeypatch, ["report", "--root", str(board[0]), *args]) == 64
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.tar.gz"))


def test_git_commit_from_packed_refs_and_packed_objects(tmp_path):
    git_dir = tmp_path / "LLM-TPU" / ".git"
    git_dir.mkdir(parents=True)
    sha = "db277759119a67d8e44778f8fd5ab6560487250a"
    (git_dir / "HEAD").write_text("ref: refs/heads/main\n")
    (git_dir / "packed-refs").write_text(f"# pack-refs with: peeled fully-peeled sorted\n{sha} refs/heads/main\n")
    commit = read_git_commit(LocalTarget(str(tmp_path)), "/LLM-TPU")
    assert commit.sha == sha and commit.date is None and "packed" in (commit.problem or "")
    missing = read_git_commit(LocalTarget(str(tmp_path)), "/elsewhere")
    assert missing.problem == "/elsewhere/.git missing: not a git checkout"


def test_git_agrees_with_our_reading_of_the_checkout(board):
    require(shutil.which("git") is not None, "git is not installed")
    root, _, sha = board
    checkout = root / "home" / "linaro" / "LLM-TPU"
    shown = subprocess.run(["git", "--git-dir", str(checkout / ".git"), "cat-file", "-p", sha],
                           capture_output=True, text=True, check=True).stdout
    assert f"committer Someone <someone@example.com> {COMMIT_TIME} +0800" in shown
    assert read_git_commit(LocalTarget(str(root)), "/home/linaro/LLM-TPU").sha == sha


def test_package_versions_name_each_package_or_say_not_installed():
    from importlib import metadata

    versions = package_versions()
    assert set(versions) == {"transformers", "torch", "tpu-mlir"}
    for name in ("transformers", "torch"):
        try:
            assert versions[name] == metadata.version(name)
        except metadata.PackageNotFoundError:
            assert versions[name] == NOT_INSTALLED


def test_soc_libsophon_comes_from_bm_version_when_dpkg_has_no_entry(sysroot, tmp_path, monkeypatch):
    """A flashed image without libsophon in dpkg's database: the report names bm_version's, not "?"."""
    root = sysroot("soc-board-ok")
    status = root / "var" / "lib" / "dpkg" / "status"
    paragraphs = status.read_text().split("\n\n")
    status.write_text("\n\n".join(p for p in paragraphs if "Package: sophon-soc-libsophon" not in p))
    link = root / "opt" / "sophon" / "libsophon-current"
    link.unlink()
    shutil.rmtree(root / "opt" / "sophon" / "libsophon-0.5.1")
    out = tmp_path / "report.tar.gz"
    assert run_cli(monkeypatch, ["report", "--root", str(root), "-o", str(out)]) in (0, 1, 2)
    files = members(out)
    folder = next(iter(files)).split("/")[0]
    summary = files[f"{folder}/summary.md"].decode()
    assert "| driver version | libsophon 0.5.1 (SoC: no separate driver) |" in summary
    assert "libsophon ?" not in summary
