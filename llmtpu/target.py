"""One abstraction for every read, write and command llmtpu does on a machine.

Every path given to a Target is a *machine path*: the absolute path as it is on the machine
being checked (``/proc/bmsophon/driver_version``). The target maps it under its ``root``
prefix, so the same code reads a real machine (root ``/``), a sysroot folder in the tests, or
a remote board over SSH. Nothing here may assume the machine is this one: the SSH target
implements the same abstract methods.

Sysroot conventions (see tests/samples/README.md): device nodes cannot live in a test tree, so
a sysroot lists them in ``/dev.list``; output of commands that have no file equivalent lives
in ``/_cmd/<name>.txt``. A copy of a sysroot made by a tool that does not keep symlinks holds a
link's target as the whole content of a small regular file, with no newline; such a file counts
as the symlink it stands for. All three are only consulted when the root is not ``/``.

Confinement: under a sysroot every path resolves inside the root, for reads and writes. The
local target walks each path one component at a time from a descriptor of the root folder
(``openat`` with ``O_NOFOLLOW``), so there is no check-then-use window through which a swapped
link could lead out. A link met on the way is read, never followed by the kernel: an absolute
target is a machine path, so the walk restarts at the root; ``..`` at the root stays at the root,
exactly as the kernel treats ``/..`` (and a chroot its root), so a relative link that climbs
above the root is clamped to it rather than refused: that is where it ends on the machine the
sysroot stands for. More than MAX_SYMLINK_HOPS links is a loop (ELOOP). Only regular files and
folders are opened under a sysroot: a pipe or device node there is refused before it is opened
(a sysroot holds copies; its ``/dev`` is ``dev.list``). Writes resolve their folders the same
way and never follow their last component: ``write_atomic`` and ``symlink`` replace a link,
``remove`` removes it, ``append`` refuses it (on ``/`` too). The real machine (root ``/``) is
read as the kernel resolves it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import signal
import stat as statmod
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

#: Reads are capped so a huge or endless file (a /dev node, a runaway log) cannot stall a check.
DEFAULT_READ_LIMIT = 1 << 20
#: Linux gives up after 40 symlink hops (ELOOP); so do we when resolving inside a root.
MAX_SYMLINK_HOPS = 40
#: Where replaced system files are kept before an atomic write overwrites them.
BACKUP_DIR = "/var/lib/llmtpu/backups"
#: A flattened symlink (see the module docstring) is a file smaller than this.
STAND_IN_MAX = 4096


class TargetError(Exception):
    """A machine operation failed; the message is one line a user can act on."""


class PathRefused(TargetError, OSError):
    """A path llmtpu will not use: a link loop, a pipe or device under a root, a write through a link.

    Both a TargetError and an OSError, so code that reports failed reads (which catches OSError)
    and commands (which catch TargetError) both turn it into one line instead of a traceback.
    """

    def __init__(self, code: int, path: str, reason: str) -> None:
        OSError.__init__(self, code, reason, path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


@dataclass(frozen=True)
class FileStat:
    """What lstat says about one machine path. ``mode`` is the permission bits or None."""

    path: str
    kind: str  # file, dir, link, char, block, fifo, socket, other
    size: int
    mode: int | None
    uid: int | None
    gid: int | None


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class DiskUsage:
    total: int
    free: int


_KIND_BY_FMT = {
    statmod.S_IFREG: "file",
    statmod.S_IFDIR: "dir",
    statmod.S_IFLNK: "link",
    statmod.S_IFCHR: "char",
    statmod.S_IFBLK: "block",
    statmod.S_IFIFO: "fifo",
    statmod.S_IFSOCK: "socket",
}


def kind_of_mode(st_mode: int) -> str:
    return _KIND_BY_FMT.get(statmod.S_IFMT(st_mode), "other")


def stand_in_text(data: bytes) -> str | None:
    """The link target a flattened symlink's content names, or None for ordinary content."""
    if 1 < len(data) < STAND_IN_MAX and data.startswith(b"/") and b"\n" not in data and b"\0" not in data:
        return data.decode("utf-8", errors="replace")
    return None


def normalize(path: str) -> str:
    """Make a machine path absolute and clean; refuse relative paths (a bug, not input)."""
    if not path.startswith("/"):
        raise ValueError(f"machine paths are absolute, got {path!r}")
    return posixpath.normpath(path).replace("//", "/")


@dataclass(frozen=True)
class DeviceEntry:
    path: str
    kind: str  # char or block
    mode: int | None = None


def parse_dev_list(text: str) -> dict[str, DeviceEntry]:
    """Parse a sysroot's dev.list: ``c /dev/bm-sophon0`` per line, optional octal mode after.

    The mode column is llmtpu's own extension for test cases about permissions; the shared
    samples leave it out, and then whether a node can be opened is unknown.
    """
    entries: dict[str, DeviceEntry] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] not in ("c", "b") or not fields[1].startswith("/"):
            continue
        mode = None
        if len(fields) >= 3:
            try:
                mode = int(fields[2], 8)
            except ValueError:
                mode = None
        path = normalize(fields[1])
        entries[path] = DeviceEntry(path, "char" if fields[0] == "c" else "block", mode)
    return entries


class Target(ABC):
    """A machine seen through a root prefix. Subclasses implement the raw operations."""

    def __init__(self, root: str = "/", name: str = "localhost") -> None:
        self.root = root
        self.name = name
        self._dev_list: dict[str, DeviceEntry] | None = None

    # -- raw operations every implementation provides -------------------------------------

    @abstractmethod
    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """Read at most ``limit`` bytes. Raises FileNotFoundError, PermissionError, OSError."""

    @abstractmethod
    def lstat_raw(self, path: str) -> FileStat | None:
        """lstat of the path under the root, None when it does not exist."""

    @abstractmethod
    def listdir_raw(self, path: str) -> list[str]:
        """Names in a folder. Raises FileNotFoundError / NotADirectoryError / PermissionError."""

    @abstractmethod
    def readlink_raw(self, path: str) -> str:
        """The link's text, unchanged (an absolute target is a machine path)."""

    @abstractmethod
    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run an argument list on the machine (never through a shell built from input)."""

    @abstractmethod
    def write_atomic(self, path: str, data: bytes, mode: int = 0o644, backup: bool = True) -> str | None:
        """Write via temp file + rename. Returns the machine path of the backup made, if any."""

    @abstractmethod
    def append(self, path: str, data: bytes) -> None:
        """Add ``data`` at the end of a file in one write() (a debugfs command file parses one
        command per write). The file must exist."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file or symlink; one that is already gone is fine."""

    @abstractmethod
    def symlink(self, link_text: str, path: str) -> None:
        """Make ``path`` a symlink whose text is ``link_text``, replacing what is there."""

    @abstractmethod
    def makedirs(self, path: str) -> None:
        """Create a folder and its parents; an existing one is fine."""

    @abstractmethod
    def access_raw(self, path: str, want_write: bool) -> bool:
        """Whether this user may open the path for reading (and writing when asked)."""

    @abstractmethod
    def disk_usage(self, path: str) -> DiskUsage:
        """Free and total bytes of the filesystem holding the path."""

    def prefetch(self, paths: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Hint that these paths (files, or folders read recursively) will be read soon.

        A remote target reads them all in one round trip; a local one has nothing to gain.
        """

    # -- derived operations, the same for every implementation ----------------------------

    @property
    def is_sysroot(self) -> bool:
        return self.root.rstrip("/") != ""

    def host_path(self, path: str) -> str:
        """Where a machine path lives under the root (for messages and local file access)."""
        path = normalize(path)
        if not self.is_sysroot:
            return path
        return self.root.rstrip("/") + path

    def read_text(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> str:
        return self.read_bytes(path, limit).decode("utf-8", errors="replace")

    def device_list(self) -> dict[str, DeviceEntry] | None:
        """The sysroot's dev.list, or None on a real machine (or a sysroot without one)."""
        if not self.is_sysroot:
            return None
        if self._dev_list is None:
            try:
                self._dev_list = parse_dev_list(self.read_text("/dev.list"))
            except OSError:
                self._dev_list = {}
        return self._dev_list or None

    def lstat(self, path: str) -> FileStat | None:
        path = normalize(path)
        devices = self.device_list()
        if devices is not None and (path == "/dev" or path.startswith("/dev/")):
            if path == "/dev":
                return FileStat("/dev", "dir", 0, 0o755, 0, 0)
            entry = devices.get(path)
            if entry is None:
                return None
            return FileStat(path, entry.kind, 0, entry.mode, None, None)
        st = self.lstat_raw(path)
        if st is not None and self._link_stand_in(st) is not None:
            return FileStat(path, "link", st.size, st.mode, st.uid, st.gid)
        return st

    def _link_stand_in(self, st: FileStat) -> str | None:
        """The target a sysroot's flattened symlink names, or None for an ordinary file."""
        if not self.is_sysroot or st.kind != "file" or not 1 < st.size < STAND_IN_MAX:
            return None
        try:
            return stand_in_text(self.read_bytes(st.path, STAND_IN_MAX))
        except OSError:
            return None

    def readlink(self, path: str) -> str:
        path = normalize(path)
        st = self.lstat_raw(path)
        if st is not None:
            stand_in = self._link_stand_in(st)
            if stand_in is not None:
                return stand_in
        return self.readlink_raw(path)

    def listdir(self, path: str) -> list[str]:
        path = normalize(path)
        devices = self.device_list()
        if devices is not None and path == "/dev":
            return sorted(p[len("/dev/"):] for p in devices if p.count("/") == 2)
        return sorted(self.listdir_raw(path))

    def resolve(self, path: str) -> str:
        """Follow symlinks *inside the root* (never out to this machine's own files).

        An absolute link text is a machine path; a relative one that climbs above the root is
        clamped at the root (``/..`` is ``/``), the rule LocalTarget's descriptor walk follows.
        """
        path = normalize(path)
        parts = [p for p in path.split("/") if p]
        resolved = "/"
        hops = 0
        while parts:
            part = parts.pop(0)
            candidate = posixpath.join(resolved, part)
            st = self.lstat(candidate)
            if st is None or st.kind != "link":
                resolved = candidate
                continue
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise TargetError(f"{path}: too many levels of symbolic links")
            target = self.readlink(candidate)
            base = "/" if target.startswith("/") else resolved
            parts = [p for p in posixpath.normpath(posixpath.join(base, target)).split("/") if p] + parts
            resolved = "/"
        return resolved

    def stat(self, path: str) -> FileStat | None:
        """Like lstat, but of what the path points to after in-root symlink resolution."""
        return self.lstat(self.resolve(path))

    def exists(self, path: str) -> bool:
        try:
            return self.stat(path) is not None
        except TargetError:
            return False

    def access(self, path: str, want_write: bool = True) -> bool | None:
        """May this user open the path? None when it cannot be known (a sysroot's dev.list)."""
        path = normalize(path)
        devices = self.device_list()
        if devices is not None and path.startswith("/dev/"):
            entry = devices.get(path)
            if entry is None or entry.mode is None:
                return None
            bits = 0o006 if want_write else 0o004
            return entry.mode & bits == bits
        return self.access_raw(path, want_write)

    def recorded_output(self, name: str) -> str | None:
        """A sysroot's recorded output of command ``name`` (``/_cmd/<name>.txt``)."""
        if not self.is_sysroot:
            return None
        try:
            return self.read_text(f"/_cmd/{name}.txt")
        except OSError:
            return None


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: A folder on the way is opened with these: a link fails (ELOOP, or ENOTDIR with O_PATH) instead of
#: being followed, and O_PATH needs only search permission, like the kernel's own path walk.
_WALK_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
#: A folder whose names are listed, or that is fsync'ed after a rename in it.
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
#: O_NONBLOCK and O_NOCTTY: a pipe or terminal that slips in between lstat and open cannot hang us.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | _CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
#: Opens a name only to ask about its filesystem; reads and writes nothing, follows no link.
_PATH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK) | os.O_NOFOLLOW | _CLOEXEC

T = TypeVar("T")


def _components(machine_path: str) -> list[str]:
    return [p for p in machine_path.split("/") if p]


def _split(machine_path: str) -> tuple[str, str]:
    """Folder and last name of a clean machine path; ``/`` itself is ``("/", ".")``."""
    folder, name = posixpath.split(machine_path)
    return folder, name or "."


def _follow_link(name: str) -> OSError:
    """What a walk's last step raises to say "this name is a link: follow it inside the root"."""
    return OSError(errno.ELOOP, "Too many levels of symbolic links", name)


def _unlink_quietly(name: str, folder_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=folder_fd)
    except FileNotFoundError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class LocalTarget(Target):
    """This machine, optionally seen through a sysroot folder (see "Confinement" above)."""

    def __init__(self, root: str = "/", name: str | None = None) -> None:
        import socket

        root = os.path.abspath(root)
        super().__init__(root=root, name=name or socket.gethostname())

    # -- confinement under a sysroot ------------------------------------------------------

    def _in_root(self, path: str, final: Callable[[int, str], T], create: bool = False) -> T:
        """``final(folder_fd, name)`` on what a machine path names, every link followed inside the root.

        Each folder is opened relative to its parent's descriptor with O_NOFOLLOW. A link on the
        way (or a ``final`` that raises ELOOP because its name is one) restarts the walk at the
        root with the link's text in its place, joined and normalized as a machine path, so
        ``..`` never climbs above the root. With ``create`` a missing folder is made where the
        resolved path needs it (``mkdir -p``). ``final`` gets ``.`` for the root itself.
        """
        machine = normalize(path)
        parts = _components(machine)
        hops = 0
        fds = [os.open(self.root, _WALK_FLAGS & ~os.O_NOFOLLOW)]
        try:
            while True:
                depth = len(fds) - 1
                if depth == len(parts):
                    return final(fds[-1], ".")
                part = parts[depth]
                try:
                    if depth == len(parts) - 1:
                        return final(fds[-1], part)
                    fds.append(os.open(part, _WALK_FLAGS, dir_fd=fds[-1]))
                    continue
                except OSError as exc:
                    if create and exc.errno == errno.ENOENT and depth < len(parts) - 1:
                        try:
                            os.mkdir(part, 0o777, dir_fd=fds[-1])
                        except FileExistsError:
                            pass
                        continue
                    link = self._link_at(fds[-1], part, exc)
                    if link is None:
                        exc.filename = self.host_path(machine)  # the path asked for, not one name of it
                        raise
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise PathRefused(errno.ELOOP, self.host_path(machine), "too many levels of symbolic links")
                here = "/" + "/".join(parts[:depth])
                parts = _components(posixpath.normpath(posixpath.join(here, link))) + parts[depth + 1:]
                while len(fds) > 1:
                    os.close(fds.pop())
        finally:
            for fd in fds:
                os.close(fd)

    def _link_at(self, folder_fd: int, name: str, exc: OSError) -> str | None:
        """The link text when ``exc`` came from meeting a link (or a flattened one), else None."""
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            return None
        try:
            return os.readlink(name, dir_fd=folder_fd)
        except OSError:
            pass
        if exc.errno != errno.ENOTDIR:
            return None
        try:
            st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            if not statmod.S_ISREG(st.st_mode) or not 1 < st.st_size < STAND_IN_MAX:
                return None
            fd = os.open(name, _READ_FLAGS, dir_fd=folder_fd)
            try:
                return stand_in_text(os.read(fd, STAND_IN_MAX))
            finally:
                os.close(fd)
        except OSError:
            return None

    def _open_folder(self, path: str, create: bool = False, readable: bool = False) -> int:
        """A descriptor of a machine folder, made with its parents when asked; the caller closes it.

        Only a ``readable`` one can be listed or fsync'ed; the others serve as ``dir_fd``.
        """
        machine = normalize(path)
        flags = _FOLDER_FLAGS if readable else _WALK_FLAGS
        if not self.is_sysroot:
            if create:
                os.makedirs(machine, exist_ok=True)
            return os.open(machine, flags & ~os.O_NOFOLLOW)

        def open_here(folder_fd: int, name: str) -> int:
            if create and name != ".":
                try:
                    os.mkdir(name, 0o777, dir_fd=folder_fd)
                except FileExistsError:
                    pass
            return os.open(name, flags, dir_fd=folder_fd)

        return self._in_root(machine, open_here, create=create)

    def _only_regular(self, machine: str, st: os.stat_result) -> None:
        """Under a sysroot only regular files are opened: a pipe could hang, a device has effects."""
        kind = kind_of_mode(st.st_mode)
        if kind == "link":
            raise _follow_link(machine)
        if kind == "dir":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", self.host_path(machine))
        if kind != "file":
            raise PathRefused(errno.EINVAL, self.host_path(machine),
                              f"is a {kind}, not a regular file; llmtpu opens only regular files under a root")

    # -- reads ----------------------------------------------------------------------------

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        machine = normalize(path)
        if not self.is_sysroot:
            # O_NONBLOCK keeps a FIFO or a device node from hanging the read.
            fd = os.open(machine, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
            try:
                if statmod.S_ISDIR(os.fstat(fd).st_mode):
                    raise IsADirectoryError(21, "Is a directory", machine)
                return self._read_fd(fd, limit)
            finally:
                os.close(fd)

        def read_here(folder_fd: int, name: str) -> bytes:
            self._only_regular(machine, os.stat(name, dir_fd=folder_fd, follow_symlinks=False))
            fd = os.open(name, _READ_FLAGS, dir_fd=folder_fd)
            try:
                self._only_regular(machine, os.fstat(fd))  # the same file the lstat saw, or refused
                return self._read_fd(fd, limit)
            finally:
                os.close(fd)

        return self._in_root(machine, read_here)

    @staticmethod
    def _read_fd(fd: int, limit: int) -> bytes:
        chunks = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def lstat_raw(self, path: str) -> FileStat | None:
        machine = normalize(path)
        try:
            if self.is_sysroot:
                folder, name = _split(machine)
                folder_fd = self._open_folder(folder)
                try:
                    st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                finally:
                    os.close(folder_fd)
            else:
                st = os.lstat(machine)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileStat(
            machine, kind_of_mode(st.st_mode), st.st_size,
            statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
        )

    def listdir_raw(self, path: str) -> list[str]:
        machine = normalize(path)
        if not self.is_sysroot:
            return os.listdir(machine)
        folder_fd = self._open_folder(machine, readable=True)
        try:
            return os.listdir(folder_fd)
        finally:
            os.close(folder_fd)

    def readlink_raw(self, path: str) -> str:
        machine = normalize(path)
        if not self.is_sysroot:
            return os.readlink(machine)
        folder, name = _split(machine)
        folder_fd = self._open_folder(folder)
        try:
            return os.readlink(name, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)

    def access_raw(self, path: str, want_write: bool) -> bool:
        machine = normalize(path)
        flags = os.R_OK | (os.W_OK if want_write else 0)
        if not self.is_sysroot:
            return os.access(machine, flags)

        def access_here(folder_fd: int, name: str) -> bool:
            if statmod.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
                raise _follow_link(machine)
            return os.access(name, flags, dir_fd=folder_fd, follow_symlinks=False)

        try:
            return self._in_root(machine, access_here)
        except OSError:
            return False

    def disk_usage(self, path: str) -> DiskUsage:
        machine = normalize(path)
        if not self.is_sysroot:
            st = os.statvfs(machine)
        else:

            def statvfs_here(folder_fd: int, name: str) -> os.statvfs_result:
                if statmod.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
                    raise _follow_link(machine)
                fd = os.open(name, _PATH_FLAGS, dir_fd=folder_fd)
                try:
                    return os.statvfs(fd)
                finally:
                    os.close(fd)

            st = self._in_root(machine, statvfs_here)
        return DiskUsage(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)

    # -- writes: folders resolved like reads, the last name never followed ----------------

    def append(self, path: str, data: bytes) -> None:
        machine = normalize(path)
        folder, name = _split(machine)
        folder_fd = self._open_folder(folder)
        try:
            if self.is_sysroot:
                st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                if not statmod.S_ISLNK(st.st_mode):
                    self._only_regular(machine, st)
            flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | _CLOEXEC
            try:
                fd = os.open(name, flags | (os.O_NONBLOCK if self.is_sysroot else 0), dir_fd=folder_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PathRefused(errno.ELOOP, self.host_path(machine),
                                      "is a symbolic link; llmtpu does not write through links") from exc
                raise
        finally:
            os.close(folder_fd)
        try:
            if self.is_sysroot:
                self._only_regular(machine, os.fstat(fd))
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise TargetError(f"{path}: short write ({written} of {len(data)} bytes)")

    def remove(self, path: str) -> None:
        folder, name = _split(normalize(path))
        try:
            folder_fd = self._open_folder(folder)
        except FileNotFoundError:
            return
        try:
            _unlink_quietly(name, folder_fd)
        finally:
            os.close(folder_fd)

    def symlink(self, link_text: str, path: str) -> None:
        folder, name = _split(normalize(path))
        folder_fd = self._open_folder(folder)
        try:
            tmp = f"{name}.llmtpu-link"
            _unlink_quietly(tmp, folder_fd)
            os.symlink(link_text, tmp, dir_fd=folder_fd)
            os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        finally:
            os.close(folder_fd)

    def makedirs(self, path: str) -> None:
        os.close(self._open_folder(path, create=True))

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644, backup: bool = True) -> str | None:
        machine = normalize(path)
        folder, name = _split(machine)
        if name == ".":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", self.host_path(machine))
        folder_fd = self._open_folder(folder, create=True, readable=True)
        try:
            backup_path = self._back_up(machine, folder_fd, name) if backup else None
            self._install(folder_fd, name, mode, lambda fd: _write_all(fd, data))
        finally:
            os.close(folder_fd)
        return backup_path

    def _install(self, folder_fd: int, name: str, mode: int, fill: Callable[[int], None]) -> None:
        """Make ``name`` a new file: a fresh temp file (O_EXCL, no link followed), filled, renamed."""
        while True:
            tmp = f".llmtpu-{secrets.token_hex(6)}"
            try:
                fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=folder_fd)
                break
            except FileExistsError:
                continue
        try:
            try:
                fill(fd)
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            _unlink_quietly(tmp, folder_fd)
            raise
        os.fsync(folder_fd)

    def _back_up(self, machine: str, folder_fd: int, name: str) -> str | None:
        """Keep what ``name`` is now (a file's bytes, or a link as a link) under BACKUP_DIR."""
        try:
            st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup_path = f"{BACKUP_DIR}/{stamp}{machine}"
        backup_folder, backup_name = _split(backup_path)
        if statmod.S_ISLNK(st.st_mode):
            self.makedirs(backup_folder)
            self.symlink(os.readlink(name, dir_fd=folder_fd), backup_path)
            return backup_path
        if not statmod.S_ISREG(st.st_mode):
            raise PathRefused(errno.EINVAL, self.host_path(machine),
                              f"is a {kind_of_mode(st.st_mode)}; llmtpu replaces only files and links")
        source = os.open(name, _READ_FLAGS, dir_fd=folder_fd)
        try:
            self._only_regular(machine, os.fstat(source))

            def copy(fd: int) -> None:
                while chunk := os.read(source, 1 << 20):
                    _write_all(fd, chunk)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

            backup_fd = self._open_folder(backup_folder, create=True, readable=True)
            try:
                self._install(backup_fd, backup_name, statmod.S_IMODE(st.st_mode), copy)
            finally:
                os.close(backup_fd)
        finally:
            os.close(source)
        return backup_path

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        argv = tuple(argv)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                start_new_session=True,  # so a timeout can kill the whole process group
            )
        except FileNotFoundError as exc:
            raise TargetError(f"{argv[0]}: command not found on {self.name}") from exc
        except PermissionError as exc:  # not executable, or a PATH folder this user may not search
            raise TargetError(f"{argv[0]}: permission denied on {self.name}") from exc
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            return CommandResult(argv, -9, out, err, timed_out=True)
        return CommandResult(argv, proc.returncode, out, err)
