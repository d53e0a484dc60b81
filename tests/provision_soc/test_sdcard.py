"""sdcard stage against real FAT32 images made with mkfs.fat and read with mtools (no mounting)."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.provision.sdcard import (
    BOARD_STEPS,
    CardWriter,
    SdcardError,
    locate_filesystem,
    prepare,
    refuse_in_use,
)
from tests.conftest import require

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _tools() -> None:
    require(bool(shutil.which("mcopy") and shutil.which("mkfs.fat")),
            "mtools and dosfstools are not installed (apt-get install mtools dosfstools)")


def make_image(path: Path, mib: int = 40, partitioned: bool = True, fat: str = "32") -> Path:
    """A card image: MBR + one FAT partition at 1 MiB (as Sophgo's), or a FAT on the whole image."""
    with open(path, "wb") as handle:
        handle.truncate(mib * MIB)
    if not partitioned:
        subprocess.run(["mkfs.fat", "-F", fat, "-n", "SDCARD", str(path)], check=True, capture_output=True)
        return path
    subprocess.run(["mkfs.fat", "-F", fat, "-n", "SDCARD", "--offset", "2048", str(path), str(mib * 1024 - 1024)],
                   check=True, capture_output=True)
    entry = bytes([0, 0xFE, 0xFF, 0xFF, 0x0C, 0xFE, 0xFF, 0xFF]) + (2048).to_bytes(4, "little") \
        + (mib * 2048 - 2048).to_bytes(4, "little")
    with open(path, "r+b") as handle:
        handle.seek(446)
        handle.write(entry + bytes(48) + b"\x55\xaa")
    return path


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    return name, data, kind, link


def make_tgz(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def package_files() -> dict[str, bytes]:
    files = {
        "BOOT": b"",
        "boot.scr": b"'V\x05\x19 u-boot script: flash emmc\n" * 10,
        "spi_flash.bin": hashlib.sha256(b"spi").digest() * 4096,
        "rootfs.1-of-2.gz": bytes(range(256)) * 2000,
        "rootfs.2-of-2.gz": b"second chunk" * 999,
    }
    files["md5.txt"] = "".join(f"{hashlib.md5(d).hexdigest()}  ./{n}\n" for n, d in sorted(files.items())).encode()
    return files


def package(tmp: Path, files: dict[str, bytes] | None = None, extra: list[tuple] | None = None) -> Path:
    files = package_files() if files is None else files
    members = [member("sdcard", kind=tarfile.DIRTYPE)]
    members += [member(f"sdcard/{n}", d) for n, d in files.items()]
    return make_tgz(tmp / "sdcard.tgz", members + (extra or []))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_card(image: Path, dest: Path, partitioned: bool = True) -> dict[str, bytes]:
    """An independent read of the card: mcopy everything out, as a person would check it."""
    spec = f"{image}@@1M" if partitioned else str(image)
    dest.mkdir()
    subprocess.run(["mcopy", "-i", spec, "-s", "-n", "::/*", str(dest)], check=True, capture_output=True)
    return {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip_on_a_partitioned_card(tmp_path: Path, capsys) -> None:
    image = make_image(tmp_path / "card.img")
    archive = package(tmp_path)
    code, out, err = cli(["sdcard", "stage", str(archive), "--image", str(image), "--yes"], capsys)
    assert code == 0, err
    assert "md5.txt: 5 file(s) match" in out and "all match the archive" in out
    assert BOARD_STEPS[1] in out and "llmtpu doctor" in out and "Please remove the installation medium" in out
    assert read_card(image, tmp_path / "back") == package_files()
    assert image.read_bytes()[510:512] == b"\x55\xaa" and image.read_bytes()[446 + 4] == 0x0C


def test_whole_card_fat_links_folders_and_boot_scr_last(tmp_path: Path) -> None:
    image = make_image(tmp_path / "card.img", partitioned=False)
    old = tmp_path / "old.scr"
    old.write_bytes(b"old script")
    subprocess.run(["mcopy", "-i", str(image), str(old), "::/boot.scr"], check=True)
    files = {"boot.scr": b"new script\n", "data/part.1-of-1.gz": b"x" * 70000}
    archive = make_tgz(tmp_path / "p.tgz", [
        member("data", kind=tarfile.DIRTYPE),
        *(member(n, d) for n, d in files.items()),
        member("data/alias.gz", kind=tarfile.SYMTYPE, link="part.1-of-1.gz"),
        member("hard.scr", kind=tarfile.LNKTYPE, link="boot.scr"),
    ])
    card, staged, plan = prepare(archive, str(image), False)
    text = "\n".join(plan.lines())
    assert "no MBR" in text and "no md5.txt" in text
    assert plan.changes[0].what.startswith("delete /boot.scr first")
    assert plan.changes[-1].what.startswith("copy /boot.scr")
    order: list[str] = []
    writer = CardWriter(card, staged, progress=lambda phase, done, total: order.append(phase))
    assert writer.write_and_verify() == []
    assert order[-2:] == ["write boot.scr", "verify"]
    back = read_card(image, tmp_path / "back", partitioned=False)
    assert back == {**files, "data/alias.gz": files["data/part.1-of-1.gz"], "hard.scr": files["boot.scr"]}
    # A file changed on the card after the copy is caught by the read-back.
    other = tmp_path / "other"
    other.write_bytes(b"y" * 70000)
    subprocess.run(["mcopy", "-i", str(image), "-D", "o", str(other), "::/data/part.1-of-1.gz"], check=True)
    [problem] = writer.verify()
    assert problem.startswith("/data/part.1-of-1.gz: sha256 on the card")


BAD_ARCHIVES = {
    "dotdot": ([member("sdcard/../../evil.sh", b"rm -rf /")], "'..'"),
    "absolute-name": ([member("/etc/cron.d/evil", b"x")], "absolute path"),
    "absolute-link": ([member("sdcard/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")], "absolute path"),
    "escaping-link": ([member("sdcard/up", kind=tarfile.SYMTYPE, link="../../etc/shadow")], "'..'"),
    "link-out-of-folder": ([member("sdcard/up", kind=tarfile.SYMTYPE, link="../sdcard2/x")], "outside the package"),
    "hardlink-out": ([member("sdcard/h", kind=tarfile.LNKTYPE, link="../etc/passwd")], "'..'"),
    "under-a-link": ([member("sdcard/d", kind=tarfile.SYMTYPE, link="boot.scr"),
                      member("sdcard/d/x", b"1")], "not a folder"),
    "device": ([member("sdcard/sda", kind=tarfile.BLKTYPE)], "device"),
    "fat-name": ([member("sdcard/a:b", b"1")], "FAT cannot store"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_unsafe_archives_are_refused_and_nothing_is_written(tmp_path: Path, capsys, case: str) -> None:
    image = make_image(tmp_path / "card.img")
    before = digest(image)
    extra, reason = BAD_ARCHIVES[case]
    archive = package(tmp_path, extra=extra)
    code, _, err = cli(["sdcard", "stage", str(archive), "--image", str(image), "--yes"], capsys)
    assert code == 64 and reason in err and "nothing was written" in err
    assert digest(image) == before


def test_md5_mismatch_is_refused(tmp_path: Path, capsys) -> None:
    image = make_image(tmp_path / "card.img")
    before = digest(image)
    files = package_files()
    files["spi_flash.bin"] = files["spi_flash.bin"][:-1] + b"!"  # md5.txt still lists the old bytes
    code, _, err = cli(["sdcard", "stage", str(package(tmp_path, files)), "--image", str(image), "--yes"], capsys)
    assert code == 64 and "md5.txt: ./spi_flash.bin has md5" in err
    assert digest(image) == before


def test_too_small_cards_are_refused(tmp_path: Path, capsys) -> None:
    image = make_image(tmp_path / "card.img")
    filler = tmp_path / "filler"
    filler.write_bytes(bytes(30 * MIB))
    subprocess.run(["mcopy", "-i", f"{image}@@1M", str(filler), "::/old.bin"], check=True)
    before = digest(image)
    big = package(tmp_path, {"rootfs.1-of-1.gz": bytes(12 * MIB)})
    code, _, err = cli(["sdcard", "stage", str(big), "--image", str(image), "--yes"], capsys)
    assert code == 64 and "use a bigger card" in err and "needs 12 MiB" in err
    huge = make_tgz(tmp_path / "huge.tgz", [member("rootfs.gz", bytes(45 * MIB))])
    code, _, err = cli(["sdcard", "stage", str(huge), "--image", str(image), "--yes"], capsys)
    assert code == 64 and "more than the card's" in err
    assert digest(image) == before


def test_no_confirmation_or_dry_run_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    image = make_image(tmp_path / "card.img")
    before = digest(image)
    archive = package(tmp_path)
    code, out, _ = cli(["sdcard", "stage", str(archive), "--image", str(image), "--dry-run"], capsys)
    assert code == 0 and "copy /boot.scr" in out and out.index("copy /BOOT") > out.index("copy /spi_flash.bin")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = cli(["sdcard", "stage", str(archive), "--image", str(image)], capsys)
    assert code == 64 and "--yes" in err
    assert digest(image) == before


def test_cards_the_board_cannot_use(tmp_path: Path, capsys) -> None:
    fat16 = make_image(tmp_path / "fat16.img", 40, partitioned=False, fat="16")
    code, _, err = cli(["sdcard", "stage", str(package(tmp_path)), "--image", str(fat16), "--yes"], capsys)
    assert code == 64 and "FAT16" in err
    code, _, err = cli(["sdcard", "stage", str(package(tmp_path)), "--device", str(fat16), "--yes"], capsys)
    assert code == 64 and "not a block device" in err
    sector = bytearray(512)
    sector[510:512] = b"\x55\xaa"
    for i, kind in enumerate((0x0C, 0x83)):
        sector[446 + 16 * i + 4] = kind
        sector[446 + 16 * i + 8] = 8
    with pytest.raises(SdcardError, match="2 partitions"):
        locate_filesystem("card", bytes(sector))
    sector[446 + 16 + 4] = 0
    sector[446 + 4] = 0x83
    with pytest.raises(SdcardError, match="0x83 is not FAT32"):
        locate_filesystem("card", bytes(sector))
    sector[446 + 4] = 0xEE
    with pytest.raises(SdcardError, match="GPT"):
        locate_filesystem("card", bytes(sector))
    with pytest.raises(SdcardError, match="no partition table"):
        locate_filesystem("card", bytes(512))


def test_a_mounted_card_is_refused(monkeypatch) -> None:
    from collections import namedtuple

    import psutil

    Part = namedtuple("Part", "device mountpoint fstype opts")
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: [Part("/dev/sdz1", "/media/card", "vfat", "")])
    with pytest.raises(SdcardError, match="mounted at /media/card"):
        refuse_in_use("/dev/sdz")
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: [Part("/dev/sdz12", "/x", "vfat", "")])
    with pytest.raises(SdcardError, match="mounted"):
        refuse_in_use("/dev/sdz")
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: [Part("/dev/sdzz1", "/x", "vfat", "")])
    refuse_in_use("/dev/sdz")
