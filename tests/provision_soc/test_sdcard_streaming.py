"""sdcard stage checks the archive as a stream and copies member by member: nothing is unpacked
to a temp folder, sparse or oversized members are refused from their headers, and names FAT
cannot hold are refused before the card is touched (issue 11 item 20). Real FAT32 images."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.provision.sdcard import CardWriter, SdcardError, prepare
from tests.conftest import require
from tests.provision_soc.test_sdcard import digest, make_image, member, package, package_files, read_card


@pytest.fixture(autouse=True)
def _tools() -> None:
    require(bool(shutil.which("mcopy") and shutil.which("mkfs.fat")),
            "mtools and dosfstools are not installed (apt-get install mtools dosfstools)")


@pytest.fixture
def no_temp_files(monkeypatch):
    """Any temp file or folder made while staging fails the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("sdcard stage made a temp file")

    for name in ("TemporaryDirectory", "mkdtemp", "mkstemp", "NamedTemporaryFile", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)


def big_card(path: Path, mib: int = 1024) -> Path:
    """A card image large enough that only the member's own nature can refuse it (sparse file)."""
    with open(path, "wb") as handle:
        handle.truncate(mib << 20)
    subprocess.run(["mkfs.fat", "-F", "32", "-n", "SDCARD", str(path)], check=True, capture_output=True)
    return path


def test_a_sparse_member_is_refused_from_its_header_without_unpacking(tmp_path: Path, capsys) -> None:
    require(shutil.which("tar") is not None, "GNU tar is not installed")
    folder = tmp_path / "src" / "sdcard"
    folder.mkdir(parents=True)
    (folder / "boot.scr").write_bytes(b"script\n")
    with open(folder / "rootfs.img", "wb") as handle:
        handle.truncate(300 << 20)  # 300 MiB of holes: a few hundred bytes once compressed
    archive = tmp_path / "sparse.tgz"
    subprocess.run(["tar", "--sparse", "-czf", str(archive), "-C", str(tmp_path / "src"), "sdcard"], check=True)
    assert archive.stat().st_size < 64 << 10
    with tarfile.open(archive) as tar:
        assert any(m.issparse() for m in tar.getmembers())
    image = big_card(tmp_path / "card.img")
    before = digest(image)
    started = time.monotonic()
    code = main(["sdcard", "stage", str(archive), "--image", str(image), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 64 and "is a sparse file" in err and "nothing was written" in err
    assert time.monotonic() - started < 60  # refused from the header, the 300 MiB never read
    assert digest(image) == before


@pytest.mark.parametrize("name", ["sdcard/name.", "sdcard/name ", "sdcard/dir./file", "sdcard/a*b"])
def test_names_fat_cannot_hold_are_refused_up_front(tmp_path: Path, capsys, name: str) -> None:
    image = make_image(tmp_path / "card.img")
    before = digest(image)
    archive = package(tmp_path, extra=[member(name, b"1")])
    code = main(["sdcard", "stage", str(archive), "--image", str(image), "--yes"])
    err = capsys.readouterr().err
    assert code == 64 and "nothing was written" in err and repr(name) in err
    assert "dot or a space" in err or "character FAT cannot store" in err
    assert digest(image) == before


def test_dry_run_and_stage_make_no_temp_copy_of_the_archive(tmp_path: Path, capsys, no_temp_files) -> None:
    image = make_image(tmp_path / "card.img")
    archive = package(tmp_path)
    assert main(["sdcard", "stage", str(archive), "--image", str(image), "--dry-run"]) == 0
    assert main(["sdcard", "stage", str(archive), "--image", str(image), "--yes"]) == 0
    assert "all match the archive" in capsys.readouterr().out
    assert read_card(image, tmp_path / "back") == package_files()


def test_an_archive_changed_after_the_check_stops_before_boot_scr(tmp_path: Path) -> None:
    image = make_image(tmp_path / "card.img")
    archive = package(tmp_path)
    card, staged, _ = prepare(archive, str(image), False)
    files = package_files()
    files["spi_flash.bin"] = b"replaced after the check"
    files.pop("md5.txt")
    package(tmp_path, files)  # same path, other bytes
    with pytest.raises(SdcardError, match="changed since it was checked"):
        CardWriter(card, staged).write_and_verify()
    assert "boot.scr" not in read_card(image, tmp_path / "back")
