"""Stage Sophgo's ``sdcard.tgz`` on a FAT32 SD card (or a card image) for a SoC board to reflash from.

The card is in this machine's reader, not on the board; the board is never touched. Procedure
and layout: sophgo.md §5. The order of work keeps the card safe:

1. everything is checked before the card is written: the archive, in one streaming pass that
   unpacks nothing (every member stays inside its folder, a name FAT can hold, no device
   nodes or sparse files, sizes from the headers against the card, ``md5.txt``), then the card
   (one FAT32 partition, space, not mounted, not the system disk); a refusal leaves the card
   byte for byte as it was;
2. the payload is streamed member by member from the archive into mtools (no mount: works
   without root on an image; no temp copy, the bytes are checked against the first pass), then read
   back from the device after a sync and a page-cache drop (a verify that reads the cache
   proves nothing: etcher#1523), and compared by sha256 with the archive;
3. only then the u-boot trigger (``boot.scr``) is written and verified, the way Raspberry Pi
   Imager writes the first sector last: a card cut short never starts a flash of the eMMC.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import stat
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from llmtpu.provision.operation import Change, Plan
from llmtpu.target import LocalTarget, Target, TargetError

#: FAT32 stores a file size in 32 bits.
FAT32_MAX_FILE = (1 << 32) - 1
#: MBR partition types of FAT32 (CHS and LBA).
FAT32_TYPES = frozenset({0x0B, 0x0C})
#: u-boot starts the reflash from boot.scr (sophgo.md §5); BOOT is its marker. Written last.
TRIGGER_FILES = ("boot.scr", "BOOT")
#: Characters FAT long names cannot hold; mtools would mangle them and the verify would fail.
FAT_FORBIDDEN = frozenset('"*:<>?\\|')
FAT_MAX_NAME = 255
#: Files at most SMALL_LIMIT bytes: the md5 list (read whole) and the trigger (held in memory to go last).
SMALL_FILES = ("md5.txt", "boot.scr", "boot")
SMALL_LIMIT = 1 << 20
MAX_LINK_HOPS = 40
CHUNK = 1 << 20
#: What to do on the board once the card is ready (sophgo.md §5).
BOARD_STEPS = (
    "Power the board off, insert the card, power it on. u-boot runs boot.scr from the card and "
    "rewrites the SPI flash and the whole eMMC: ALL DATA ON THE eMMC IS LOST (about 3 minutes per GB).",
    "Watch the serial console (115200 baud; the type-C UART on SE7): the flash is done when it repeats "
    "'Please remove the installation medium, then reboot', and the status LED blinks (SE7: green, steady blink).",
    "Power off, remove the card, power on. The first boot sets up the filesystems: do not cut the power.",
    "Log in and check: `bm_version` (SophonSDK, libsophon and KernelVersion lines) and `uname -v` "
    "(build date on or after 20240110).",
    "Then run `llmtpu doctor` on the board.",
)

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes in phase)


class SdcardError(Exception):
    """The archive or the card was refused, or the copy failed; one line a user can act on."""


# ---------------------------------------------------------------------------------------
# The archive


@dataclass(frozen=True)
class StagedFile:
    card_path: str  # "/boot.scr", as it will be on the card
    member: str  # the archive member whose bytes it gets (a link's target for a link)
    size: int
    sha256: str
    md5: str


@dataclass
class StagedArchive:
    archive: Path
    files: list[StagedFile]
    top_folder: str | None  # the folder the archive wraps its files in, stripped on the card
    md5_checked: int = 0
    md5_unlisted: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def folders(self) -> list[str]:
        """Card folders the files need, parents first."""
        found = {posixpath.dirname(f.card_path) for f in self.files} - {"/"}
        for folder in list(found):
            while folder not in ("/", ""):
                found.add(folder)
                folder = posixpath.dirname(folder)
        return sorted(found, key=lambda p: (p.count("/"), p))


def fat_name_problem(part: str) -> str | None:
    """Why FAT cannot hold this one path component as named, or None.

    A trailing dot or space is dropped by FAT (and by mtools), so the file would land under
    another name and fail the read-back after the card was written; refused up front instead."""
    if any(c in FAT_FORBIDDEN or ord(c) < 32 for c in part):
        return "has a character FAT cannot store"
    if part.endswith((".", " ")):
        return "ends with a dot or a space, which FAT drops from names"
    if len(part) > FAT_MAX_NAME:
        return f"has a name longer than FAT's {FAT_MAX_NAME} characters"
    return None


def _clean_name(raw: str, what: str) -> str:
    """An archive name as a relative path, or a refusal when it could land outside its folder."""
    if raw.startswith("/") or raw.startswith("\\"):
        raise SdcardError(f"archive {what} {raw!r} is an absolute path; refusing the archive")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SdcardError(f"archive {what} {raw!r} climbs out of its folder with '..'; refusing the archive")
    for part in parts:
        problem = fat_name_problem(part)
        if problem:
            raise SdcardError(f"archive {what} {raw!r} {problem}; refusing the archive")
    return "/".join(parts)


def _resolve_link(name: str, links: dict[str, str], files: dict[str, tuple[int, str, str]]) -> str:
    """Follow archive links to a regular file inside the archive (FAT has no links)."""
    seen = name
    for _ in range(MAX_LINK_HOPS):
        target = links[seen]
        if target in files:
            return target
        if target not in links:
            raise SdcardError(f"archive link {name!r} points to {target!r}, which is not a file in the archive")
        seen = target
    raise SdcardError(f"archive link {name!r}: too many levels of links")


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo, keep: int = 0) -> tuple[str, str, bytes]:
    """sha256 and md5 of a member's bytes, read as a stream (never written anywhere), and its
    first ``keep`` bytes; the header's size is not trusted alone."""
    source = tar.extractfile(member)
    if source is None:
        raise SdcardError(f"archive member {member.name!r} cannot be read")
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    kept = bytearray()
    count = 0
    with source:
        while chunk := source.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            if len(kept) < keep:
                kept += chunk[:keep - len(kept)]
            count += len(chunk)
    if count != member.size:
        raise SdcardError(f"archive member {member.name!r} is truncated ({count} of {member.size} bytes)")
    return sha.hexdigest(), md5.hexdigest(), bytes(kept)


def scan_archive(archive: Path, limit_bytes: int) -> StagedArchive:
    """Check every member in one streaming pass; nothing is unpacked, nothing is written.

    Sizes come from the headers and are summed before a member's bytes are read, so an
    archive holding more than the card (a sparse or compressed giant) is refused at once;
    sparse members are refused (FAT has no sparse files). Links are refused when absolute or
    leaving the package folder, and otherwise become copies of the file they name.
    """
    hashes: dict[str, tuple[int, str, str]] = {}
    links: dict[str, str] = {}
    kinds: dict[str, str] = {}
    lowered: dict[str, str] = {}
    small: dict[str, bytes] = {}  # md5.txt, read whole; boot.scr and BOOT are size-checked (kept in memory later)
    total = 0
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                name = _clean_name(member.name, "member")
                if not name:
                    continue
                if name.lower() in lowered and not (member.isdir() and kinds.get(lowered[name.lower()]) == "dir"):
                    raise SdcardError(f"archive member {member.name!r} appears twice (FAT ignores case); "
                                      "refusing the archive")
                lowered[name.lower()] = name
                if member.isdir():
                    kinds[name] = "dir"
                elif member.isfile():
                    if member.issparse():
                        raise SdcardError(f"archive member {member.name!r} is a sparse file ({member.size} bytes); "
                                          "FAT has none and Sophgo's package holds none: refusing the archive")
                    if member.size > FAT32_MAX_FILE:
                        raise SdcardError(f"archive member {member.name!r} is {member.size} bytes; FAT32 holds "
                                          "at most 4 GiB per file")
                    total += member.size
                    if total > limit_bytes:
                        raise SdcardError(f"the archive holds more than the card's {limit_bytes >> 20} MiB "
                                          f"({member.name!r} alone is {member.size >> 20} MiB); use a bigger card")
                    whole = posixpath.basename(name).lower() in SMALL_FILES
                    if whole and member.size > SMALL_LIMIT:
                        raise SdcardError(f"archive member {member.name!r} is {member.size} bytes; a u-boot "
                                          f"script or list is at most {SMALL_LIMIT >> 10} KiB: refusing the archive")
                    is_list = posixpath.basename(name).lower() == "md5.txt"
                    sha, md5, head = _hash_member(tar, member, SMALL_LIMIT if is_list else 0)
                    if is_list:
                        small[name] = head
                    hashes[name] = (member.size, sha, md5)
                    kinds[name] = "file"
                elif member.issym():
                    if member.linkname.startswith("/"):
                        raise SdcardError(f"archive link {member.name!r} points to the absolute path "
                                          f"{member.linkname!r}; refusing the archive")
                    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                    links[name] = _clean_name(joined, f"link {member.name!r} -> target")
                    kinds[name] = "link"
                elif member.islnk():
                    links[name] = _clean_name(member.linkname, f"hard link {member.name!r} -> target")
                    kinds[name] = "link"
                else:
                    raise SdcardError(f"archive member {member.name!r} is a device or fifo; refusing the archive")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SdcardError(f"{archive}: not a readable tar archive ({exc}); download it again") from exc
    except OSError as exc:
        raise SdcardError(f"reading {archive}: {exc.strerror or exc}") from exc

    for name in kinds:  # nothing may lie below a file or a link (a link to a folder, unpacked, escapes)
        parent = posixpath.dirname(name)
        while parent:
            if kinds.get(parent, "dir") != "dir":
                raise SdcardError(f"archive member {name!r} lies under {parent!r}, which is not a folder; "
                                  "refusing the archive")
            parent = posixpath.dirname(parent)

    tops = {name.split("/", 1)[0] for name in kinds}
    top = next(iter(tops)) if len(tops) == 1 and kinds.get(next(iter(tops)), "dir") == "dir" else None
    sources = {name: name for name in hashes}
    for name in links:
        if top is not None and not links[name].startswith(top + "/"):
            raise SdcardError(f"archive link {name!r} points outside the package folder {top!r}; "
                              "refusing the archive")
        sources[name] = _resolve_link(name, links, hashes)
        total += hashes[sources[name]][0]
        if total > limit_bytes:
            raise SdcardError(f"the archive holds more than the card's {limit_bytes >> 20} MiB; use a bigger card")

    def card_path(name: str) -> str:
        return "/" + (name[len(top) + 1:] if top else name)

    staged = StagedArchive(archive, [StagedFile(card_path(n), sources[n], *hashes[sources[n]])
                                     for n in sorted(sources)], top)
    check_md5_list(staged, next((data for n, data in small.items() if card_path(n).lower() == "/md5.txt"), None))
    return staged


_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")


def check_md5_list(staged: StagedArchive, listing: bytes | None) -> None:
    """Compare every file named in ``md5.txt`` (``md5sum ./* > md5.txt``) with its archive bytes."""
    if listing is None:
        return
    by_path = {f.card_path.lower(): f for f in staged.files}
    listed = set()
    for number, line in enumerate(listing.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _MD5_LINE.match(line.strip())
        if match is None:
            raise SdcardError(f"md5.txt line {number} is not '<md5>  ./<name>'; the archive is damaged")
        path = "/" + _clean_name(match[2], "md5.txt entry")
        if path.lower() == "/md5.txt":
            continue
        entry = by_path.get(path.lower())
        if entry is None:
            raise SdcardError(f"md5.txt lists {match[2]!r}, which is not in the archive; download it again")
        if entry.md5 != match[1].lower():
            raise SdcardError(f"md5.txt: {match[2]} has md5 {entry.md5}, the list says {match[1].lower()}; "
                              "the archive is damaged, download it again")
        listed.add(path.lower())
    staged.md5_checked = len(listed)
    staged.md5_unlisted = [f.card_path for f in staged.files
                           if f.card_path.lower() not in listed and f.card_path.lower() != "/md5.txt"]


# ---------------------------------------------------------------------------------------
# The card


@dataclass(frozen=True)
class Card:
    path: str
    is_device: bool
    offset: int  # where the FAT32 filesystem starts, bytes
    partitioned: bool
    cluster_bytes: int
    total_bytes: int
    free_bytes: int
    existing: dict[str, int]  # lower-cased card path -> bytes allocated (files and folders)

    @property
    def spec(self) -> str:
        """The image argument of every mtools call: ``FILE@@OFFSET`` addresses the partition."""
        return f"{self.path}@@{self.offset}" if self.offset else self.path

    def allocated(self, size: int) -> int:
        return max(1, -(-size // self.cluster_bytes)) * self.cluster_bytes


def fat_type_in_boot_sector(sector: bytes) -> str | None:
    """"FAT32" / "FAT16" / "FAT12" when the sector is a FAT boot sector, else None."""
    if len(sector) < 512 or sector[0] not in (0xEB, 0xE9) or sector[510:512] != b"\x55\xaa":
        return None
    if sector[82:87] == b"FAT32":
        return "FAT32"
    if sector[54:59] in (b"FAT16", b"FAT12"):
        return sector[54:59].decode()
    return None


def locate_filesystem(path: str, sector: bytes) -> tuple[int, bool]:
    """(offset, partitioned): the one FAT32 partition of the MBR, or a FAT32 on the whole card."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        raise SdcardError(f"{path}: no partition table and no FAT boot sector; "
                          "give it one FAT32 partition (e.g. mkfs.fat -F 32 on the partition)")
    whole = fat_type_in_boot_sector(sector)
    if whole == "FAT32":
        return 0, False
    if whole is not None:
        raise SdcardError(f"{path}: the card is formatted {whole}; the board needs FAT32 (mkfs.fat -F 32)")
    entries = [sector[446 + 16 * i: 462 + 16 * i] for i in range(4)]
    used = [(e[4], int.from_bytes(e[8:12], "little")) for e in entries if e[4] != 0]
    if any(kind == 0xEE for kind, _ in used):
        raise SdcardError(f"{path}: the card has a GPT; the board's u-boot wants an MBR with one FAT32 partition")
    if len(used) != 1:
        raise SdcardError(f"{path}: the card has {len(used)} partitions; the board wants exactly one, FAT32")
    kind, start = used[0]
    if kind not in FAT32_TYPES:
        raise SdcardError(f"{path}: partition type 0x{kind:02x} is not FAT32 (0x0b/0x0c); "
                          "repartition the card with one FAT32 partition")
    return start * 512, True


def refuse_in_use(device: str) -> None:
    """A mounted card, or a disk under device-mapper/RAID (the system disk), is never written."""
    import psutil

    real = os.path.realpath(device)
    for part in psutil.disk_partitions(all=True):
        mounted = os.path.realpath(part.device) if part.device.startswith("/dev/") else part.device
        if mounted == real or (mounted.startswith(real) and re.fullmatch(r"p?\d+", mounted[len(real):])):
            raise SdcardError(f"{device}: {mounted} is mounted at {part.mountpoint}; "
                              f"unmount it (umount {mounted}) and run again")
    name = os.path.basename(real)
    block = Path("/sys/class/block") / name
    for node in [block, *block.glob(f"{name}*")]:
        holders = node / "holders"
        if holders.is_dir() and any(holders.iterdir()):
            raise SdcardError(f"{device}: {node.name} is in use by {', '.join(os.listdir(holders))} "
                              "(a system or RAID disk?); refusing to write it")


class Mtools:
    """mtools on the card, as argument lists; every failure is one SdcardError line."""

    def __init__(self, runner: Target, spec: str) -> None:
        self.runner = runner
        self.spec = spec

    def run(self, argv: list[str], timeout: float = 120.0, check: bool = True) -> str:
        try:
            result = self.runner.run([argv[0], "-i", self.spec, *argv[1:]], timeout=timeout)
        except TargetError as exc:
            raise SdcardError(f"{exc} (install mtools: apt-get install mtools)") from exc
        if check and not result.ok:
            detail = (result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}").splitlines()
            raise SdcardError(f"{argv[0]} on {self.spec} failed: {detail[-1] if detail else ''}")
        return result.text()

    @staticmethod
    def timeout_for(size: int) -> float:
        return 120.0 + size / (1 << 20)  # a slow reader writes ~1 MiB/s at worst

    def _stream(self, argv: list[str], size: int, feed: IO[bytes] | None) -> str:
        """Run an mtools copy with ``-`` as one side, streaming; sha256 of the bytes that passed.

        mtools runs on this machine (the card is in its reader); a deadline kills a stuck copy."""
        try:
            proc = subprocess.Popen([argv[0], "-i", self.spec, *argv[1:]], stdin=subprocess.PIPE if feed else
                                    subprocess.DEVNULL, stdout=None if feed else subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise SdcardError(f"{argv[0]}: not found (install mtools: apt-get install mtools)") from exc
        timer = threading.Timer(self.timeout_for(size), proc.kill)
        timer.start()
        digest = hashlib.sha256()
        try:
            pipe = proc.stdin if feed else proc.stdout
            assert pipe is not None
            with pipe:
                while True:
                    chunk = feed.read(CHUNK) if feed else pipe.read(CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    if feed:
                        pipe.write(chunk)
            error = proc.stderr.read() if proc.stderr else b""
            code = proc.wait()
        except BrokenPipeError:
            error, code = (proc.stderr.read() if proc.stderr else b""), proc.wait()
        finally:
            timer.cancel()
        if code != 0:
            detail = error.decode(errors="replace").strip().splitlines() or [f"exit {code}"]
            raise SdcardError(f"{argv[0]} on {self.spec} failed: {detail[-1]}")
        return digest.hexdigest()

    def pipe_in(self, source: IO[bytes], card_path: str, size: int) -> str:
        """Write a stream onto the card at ``card_path`` (replacing a file there)."""
        return self._stream(["mcopy", "-D", "o", "-", f"::{card_path}"], size, source)

    def pipe_out(self, card_path: str, size: int) -> str:
        """Read a file from the card as a stream."""
        return self._stream(["mcopy", "-n", f"::{card_path}", "-"], size, None)

    def info(self) -> dict[str, str]:
        out = self.run(["minfo", "::"])
        return {k.strip(): v.strip().strip('"') for k, _, v in
                (line.partition(":") if "=" not in line else line.partition("=") for line in out.splitlines())}

    def free_bytes(self) -> int:
        for line in reversed(self.run(["mdir", "::/"]).splitlines()):
            if line.strip().endswith("bytes free"):
                return int(re.sub(r"\D", "", line))
        raise SdcardError(f"mdir on {self.spec} did not say how much space is free")

    def usage(self) -> dict[str, int]:
        """Clusters per path from ``mdu -a``: the files and folders already on the card."""
        found = {}
        # mdu 4.0.32 exits 1 ("File "::" not found") on an empty card after printing its total.
        for line in self.run(["mdu", "-a", "::"], check=False).splitlines():
            path, _, clusters = line.rpartition(" ")
            if path.startswith("::/") and clusters.isdigit():
                found[path[2:].rstrip("/") or "/"] = int(clusters)
        if "/" not in found:
            raise SdcardError(f"mdu on {self.spec} could not list the card; is it a readable FAT32?")
        return found


def inspect_card(path: str, is_device: bool, runner: Target | None = None) -> Card:
    """Read what the card holds, change nothing."""
    runner = runner or LocalTarget("/")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SdcardError(f"{path}: {exc.strerror}") from exc
    if is_device:
        if not stat.S_ISBLK(st.st_mode):
            raise SdcardError(f"--device {path} is not a block device; give the card's /dev/sdX or /dev/mmcblkN")
        refuse_in_use(path)
    elif not stat.S_ISREG(st.st_mode):
        raise SdcardError(f"--image {path} is not a regular file; for a card reader use --device")
    with open(path, "rb") as handle:
        sector = handle.read(512)
    offset, partitioned = locate_filesystem(path, sector)
    tools = Mtools(runner, f"{path}@@{offset}" if offset else path)
    info = tools.info()
    if "FAT32" not in info.get("disk type", ""):
        raise SdcardError(f"{path}: the filesystem is not FAT32 (minfo says {info.get('disk type')!r})")
    sector_size = int(info.get("sector size", "512").split()[0])
    cluster = int(info.get("cluster size", "1").split()[0]) * sector_size
    total = int(info.get("big size", "0").split()[0]) * sector_size
    existing = {p.lower(): clusters * cluster for p, clusters in tools.usage().items()}
    return Card(path, is_device, offset, partitioned, cluster, total, tools.free_bytes(), existing)


# ---------------------------------------------------------------------------------------
# Plan, write, verify


def prepare(archive: Path, card_path: str, is_device: bool,
            runner: Target | None = None) -> tuple[Card, StagedArchive, Plan]:
    """Every check, and the plan; the card and the archive are only read, nothing is unpacked."""
    card = inspect_card(card_path, is_device, runner)
    staged = scan_archive(archive, card.total_bytes)
    return card, staged, plan_stage(card, staged)


def space_needed(card: Card, staged: StagedArchive) -> tuple[int, int]:
    """(bytes the new files take, bytes they free by replacing files of the same name)."""
    need = sum(card.allocated(f.size) for f in staged.files)
    need += sum(card.cluster_bytes for d in staged.folders() if d.lower() not in card.existing)
    reclaimed = sum(card.existing.get(f.card_path.lower(), 0) for f in staged.files)
    return need, reclaimed


def plan_stage(card: Card, staged: StagedArchive) -> Plan:
    """Refuse a card too small; otherwise say every file that will be written, trigger last."""
    need, reclaimed = space_needed(card, staged)
    if need > card.free_bytes + reclaimed:
        raise SdcardError(f"{card.path}: {(card.free_bytes + reclaimed) >> 20} MiB free for this package, it needs "
                          f"{need >> 20} MiB; use a bigger card (or delete files on it)")
    plan = Plan("sdcard.stage", card.path, needs_root=card.is_device)
    for name in TRIGGER_FILES:
        if f"/{name}".lower() in card.existing:
            plan.changes.append(Change(f"delete /{name} first, so a half-written card never starts a flash",
                                       "present", None))
    for folder in staged.folders():
        if folder.lower() not in card.existing:
            plan.changes.append(Change(f"create folder {folder}"))
    for entry in ordered(staged):
        before = card.existing.get(entry.card_path.lower())
        plan.changes.append(Change(f"copy {entry.card_path} ({entry.size} bytes)",
                                   None if before is None else f"a file of {before} bytes (replaced)",
                                   f"sha256 {entry.sha256[:16]}…"))
    where = f"FAT32 partition at byte {card.offset}" if card.partitioned else "FAT32 on the whole card, no MBR"
    plan.notes.append(f"{where}; {card.free_bytes / (1 << 20):.1f} MiB free, {need / (1 << 20):.1f} MiB needed")
    if not card.partitioned:
        plan.notes.append("Sophgo's card images use an MBR with one FAT32 partition; if the board does not "
                          "start the flash, repartition the card that way")
    if staged.md5_checked:
        plan.notes.append(f"md5.txt: {staged.md5_checked} file(s) match")
        if staged.md5_unlisted:
            plan.notes.append(f"not in md5.txt, checked by the read-back only: {', '.join(staged.md5_unlisted[:5])}")
    else:
        plan.notes.append("the archive has no md5.txt; only the read-back of the card is checked")
    left = sorted(set(card.existing) - {f.card_path.lower() for f in staged.files} - {"/"}
                  - {d.lower() for d in staged.folders()})
    if left:
        plan.notes.append(f"{len(left)} other file(s) on the card are left as they are: {', '.join(left[:5])}")
    plan.notes.append("every file is read back from the card and compared by sha256; boot.scr goes last")
    return plan


def is_trigger(entry: StagedFile) -> bool:
    return entry.card_path.lower() in {f"/{n}".lower() for n in TRIGGER_FILES}


def ordered(staged: StagedArchive) -> list[StagedFile]:
    return [f for f in staged.files if not is_trigger(f)] + [f for f in staged.files if is_trigger(f)]


def drop_cached_pages(path: str) -> None:
    """Flush the card and forget its cached pages, so the read-back comes from the card itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class CardWriter:
    """Carries out a stage plan on one card, streaming each member from the archive to the card."""

    def __init__(self, card: Card, staged: StagedArchive, runner: Target | None = None,
                 progress: Progress | None = None) -> None:
        self.card = card
        self.staged = staged
        self.tools = Mtools(runner or LocalTarget("/"), card.spec)
        self.progress = progress or (lambda phase, done, total: None)

    def write_and_verify(self) -> list[str]:
        """Payload, read-back, then the trigger and its read-back. Returns the mismatches."""
        payload = [f for f in self.staged.files if not is_trigger(f)]
        triggers = [f for f in self.staged.files if is_trigger(f)]
        for name in TRIGGER_FILES:
            if f"/{name}".lower() in self.card.existing:
                self.tools.run(["mdel", f"::/{name}"])
        for folder in self.staged.folders():
            if folder.lower() not in self.card.existing:
                self.tools.run(["mmd", f"::{folder}"])
        held = self._stream_payload(payload, {f.member for f in triggers})
        problems = self.verify(payload)
        if problems:
            return problems + ["boot.scr was not written: the board will not start a flash from this card"]
        done = 0
        for entry in triggers:
            self._send(io.BytesIO(held[entry.member]), entry)
            done += entry.size
            self.progress("write boot.scr", done, sum(f.size for f in triggers))
        return self.verify(triggers)

    def _stream_payload(self, payload: list[StagedFile], trigger_members: set[str]) -> dict[str, bytes]:
        """One pass over the archive: each member goes to every card path it fills (its links too);
        the trigger's bytes are held back (small, checked) to be written last."""
        by_member: dict[str, list[StagedFile]] = {}
        for entry in payload:
            by_member.setdefault(entry.member, []).append(entry)
        total = sum(f.size for f in payload)
        done = 0
        held: dict[str, bytes] = {}
        try:
            with tarfile.open(self.staged.archive, "r|*") as tar:
                for member in tar:
                    name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                    if not member.isfile() or (name not in by_member and name not in trigger_members):
                        continue
                    source = tar.extractfile(member)
                    if source is None:
                        raise SdcardError(f"archive member {member.name!r} cannot be read")
                    with source:
                        if name in trigger_members:
                            held[name] = source.read(SMALL_LIMIT + 1)
                            if name not in by_member:
                                continue
                            source = io.BytesIO(held[name])
                        first, *others = by_member.pop(name)
                        self._send(source, first)
                    for other in others:  # a link: the same bytes again, card to card
                        self.tools.run(["mcopy", "-D", "o", f"::{first.card_path}", f"::{other.card_path}"],
                                       timeout=Mtools.timeout_for(other.size))
                    done += first.size * (1 + len(others))
                    self.progress("write", done, total)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise SdcardError(f"{self.staged.archive}: reading it again for the copy failed ({exc})") from exc
        if by_member:
            raise SdcardError(f"{self.staged.archive} changed since it was checked: "
                              f"{next(iter(by_member))} is gone; nothing more was written")
        return held

    def _send(self, source: IO[bytes], entry: StagedFile) -> None:
        sha = self.tools.pipe_in(source, entry.card_path, entry.size)
        if sha != entry.sha256:
            raise SdcardError(f"{self.staged.archive} changed since it was checked: {entry.card_path} now has "
                              f"sha256 {sha[:16]}…, checked {entry.sha256[:16]}…")

    def verify(self, entries: list[StagedFile] | None = None) -> list[str]:
        """Read each file back from the card (cache dropped first) and compare sha256."""
        entries = self.staged.files if entries is None else entries
        drop_cached_pages(self.card.path)
        total = sum(f.size for f in entries)
        done = 0
        problems = []
        for entry in entries:
            try:
                got = self.tools.pipe_out(entry.card_path, entry.size)
            except SdcardError as exc:
                problems.append(f"{entry.card_path}: cannot be read back ({exc})")
                continue
            if got != entry.sha256:
                problems.append(f"{entry.card_path}: sha256 on the card {got[:16]}… differs from the archive's "
                                f"{entry.sha256[:16]}…")
            done += entry.size
            self.progress("verify", done, total)
        return problems
