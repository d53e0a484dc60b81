"""An inotify watch on folders outside a sysroot: the proof the --root fault tests rest on.

A canary's unchanged content says nothing was written; only the kernel can say nothing was
*opened*. ``OutsideWatch`` asks it (inotify, through libc): every open, read, write, create,
rename or delete in the watched folders is an event. The tests here show it sees each of them,
so an empty event list in a fault test means llmtpu really left the outside alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

from tests.conftest import require

_EVENTS = {
    0x001: "access", 0x002: "modify", 0x004: "attrib", 0x008: "close-write", 0x020: "open",
    0x040: "moved-from", 0x080: "moved-to", 0x100: "create", 0x200: "delete",
    0x400: "delete-self", 0x800: "move-self",
}
_MASK = sum(_EVENTS)
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "inotify_init1") else None


class OutsideWatch:
    """Everything done to the files in some folders (and their sub-folders) while it is open."""

    def __init__(self, *folders: Path) -> None:
        libc = _libc()
        require(libc is not None, "inotify is not available here")
        assert libc is not None
        self._libc = libc
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._folders: dict[int, Path] = {}
        for top in folders:
            for folder in [top, *(p for p in top.rglob("*") if p.is_dir() and not p.is_symlink())]:
                wd = libc.inotify_add_watch(self._fd, os.fsencode(folder), _MASK)
                if wd < 0:
                    raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
                self._folders[wd] = folder

    def events(self) -> list[str]:
        """``path: what`` for each event so far (read before the test itself looks at the files)."""
        found: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                name = data[offset + _HEADER.size:offset + _HEADER.size + length].rstrip(b"\0").decode()
                offset += _HEADER.size + length
                what = ",".join(label for bit, label in _EVENTS.items() if mask & bit)
                if what:
                    found.append(f"{self._folders.get(wd, '?')}/{name}: {what}")

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> OutsideWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_the_watch_sees_opens_reads_writes_and_creates(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret").write_text("canary\n")
    with OutsideWatch(outside) as watch:
        assert watch.events() == []
        (outside / "deep" / "secret").read_text()
        seen = watch.events()
        assert any("secret: open" in e for e in seen) and any("secret: access" in e for e in seen)
        (outside / "new").write_text("x")
        assert any("new: create" in e for e in watch.events())
        os.listdir(outside)
        assert any(e.endswith(": open") for e in watch.events())  # opening the folder itself


def test_the_watch_sees_nothing_when_nothing_happens(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    with OutsideWatch(tmp_path / "outside") as watch:
        os.stat(tmp_path / "outside")  # a stat is not an open: it touches no file content
        assert watch.events() == []

