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
"""

from __future__ import annotations

import os
import posixpath
import shutil
import signal
import stat as statmod
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Reads are capped so a huge or endless file (a /dev node, a runaway log) cannot stall a check.
DEFAULT_READ_LIMIT = 1 << 20
#: Linux gives up after 40 symlink hops (ELOOP); so do we when resolving inside a root.
MAX_SYMLINK_HOPS = 40
#: Where replaced system files are kept before an atomic write overwrites them.
BACKUP_DIR = "/var/lib/llmtpu/backups"


class TargetError(Exception):
    """A machine operation failed; the message is one line a user can act on."""


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
        if not self.is_sysroot or st.kind != "file" or not 1 < st.size < 4096:
            return None
        try:
            data = self.read_bytes(st.path, 4096)
        except OSError:
            return None
        if data.startswith(b"/") and b"\n" not in data and b"\0" not in data:
            return data.decode("utf-8", errors="replace")
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
        """Follow symlinks *inside the root* (never out to this machine's own files)."""
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


class LocalTarget(Target):
    """This machine, optionally seen through a sysroot folder."""

    def __init__(self, root: str = "/", name: str | None = None) -> None:
        import socket

        root = os.path.abspath(root)
        super().__init__(root=root, name=name or socket.gethostname())

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        host = self.host_path(path)
        # O_NONBLOCK keeps a FIFO or a device node from hanging the read.
        fd = os.open(host, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            if statmod.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(21, "Is a directory", host)
            chunks = []
            remaining = limit
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def lstat_raw(self, path: str) -> FileStat | None:
        try:
            st = os.lstat(self.host_path(path))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        return FileStat(
            normalize(path), kind_of_mode(st.st_mode), st.st_size,
            statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
        )

    def listdir_raw(self, path: str) -> list[str]:
        return os.listdir(self.host_path(path))

    def readlink_raw(self, path: str) -> str:
        return os.readlink(self.host_path(path))

    def append(self, path: str, data: bytes) -> None:
        fd = os.open(self.host_path(path), os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise TargetError(f"{path}: short write ({written} of {len(data)} bytes)")

    def remove(self, path: str) -> None:
        try:
            os.unlink(self.host_path(path))
        except FileNotFoundError:
            pass

    def symlink(self, link_text: str, path: str) -> None:
        host = self.host_path(path)
        tmp = f"{host}.llmtpu-link"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(link_text, tmp)
        os.replace(tmp, host)

    def makedirs(self, path: str) -> None:
        os.makedirs(self.host_path(path), exist_ok=True)

    def access_raw(self, path: str, want_write: bool) -> bool:
        flags = os.R_OK | (os.W_OK if want_write else 0)
        return os.access(self.host_path(path), flags)

    def disk_usage(self, path: str) -> DiskUsage:
        import psutil

        usage = psutil.disk_usage(self.host_path(path))
        return DiskUsage(total=usage.total, free=usage.free)

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

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644, backup: bool = True) -> str | None:
        path = normalize(path)
        host = self.host_path(path)
        folder = os.path.dirname(host)
        os.makedirs(folder, exist_ok=True)
        backup_path = None
        if backup and os.path.lexists(host):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            backup_path = f"{BACKUP_DIR}/{stamp}{path}"
            backup_host = self.host_path(backup_path)
            os.makedirs(os.path.dirname(backup_host), exist_ok=True)
            shutil.copy2(host, backup_host, follow_symlinks=False)
        fd, tmp = tempfile.mkstemp(prefix=".llmtpu-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, host)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return backup_path
