"""A machine over SSH: the Target interface on one reused connection, strict about host keys.

Reads are served from a per-host cache that ``prefetch`` fills in ONE remote command: a small
Python program (GATHER_SCRIPT, sent with the command, run by the remote ``python3``) walks the
requested paths under the host's root and streams back, for every entry, its lstat, link text,
folder listing and (capped) content, framed as one JSON header line followed by exactly the
bytes it announces. The same command also runs the commands the doctor will ask for
(PREFETCH_COMMANDS: ``dmesg``, ``bm_version``), which ``run`` answers once from that answer: a
whole doctor is connect plus one command, one login shell. A machine (root /) without
``python3`` is read with one SFTP request per operation instead.

Under a root (``root=DIR``) the same program does every read and every write, walking DIR from
a descriptor with openat and O_NOFOLLOW exactly as LocalTarget walks a sysroot (see "Confinement"
in llmtpu/target.py): no SFTP request and no shell command ever names a path under a root, so
the board's kernel never follows a link out of it. Without ``python3`` there, a root is refused.

Every remote command is an argument list joined with ``shlex`` for the remote POSIX shell and
goes through ``execute`` (the transport GatheredTarget replaces); no command string is ever
built from input by concatenation. Writes go to a temporary file next to the destination and
are renamed over it, after a backup of the old file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import secrets
import select
import shlex
import socket
import stat as statmod
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from llmtpu.hostkeys import (
    HostKeyError,
    HostKeyStore,
    StrictPolicy,
    disabled_key_algorithms,
    host_key_name,
)
from llmtpu.inventory import HostSpec
from llmtpu.target import (
    BACKUP_DIR,
    DEFAULT_READ_LIMIT,
    CommandResult,
    DiskUsage,
    FileStat,
    PathRefused,
    Target,
    TargetError,
    kind_of_mode,
    normalize,
)

# paramiko logs every failed handshake with a traceback; llmtpu reports the failure itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

#: Environment variables a password or key passphrase may come from (never the inventory).
PASSWORD_ENV = "LLMTPU_SSH_PASSWORD"
PASSPHRASE_ENV = "LLMTPU_SSH_PASSPHRASE"

#: Content caps of one prefetch: per file found under a folder, per file asked for by name,
#: and for the whole answer. Bigger files are fetched on demand when read.
SMALL_FILE_CAP = 64 << 10
NAMED_FILE_CAP = 8 << 20
PREFETCH_BUDGET = 32 << 20
#: Entries one prefetch walks at most (a huge folder must not stall a run).
MAX_ENTRIES = 20000
#: Folder depth a prefetched folder is walked to.
MAX_DEPTH = 16

#: Commands the doctor runs on a real machine (doctor/kernel_log.py, doctor/facts.py), with the
#: timeouts it gives them: the prefetch runs them in its own remote command and run() answers
#: from that, so a whole doctor is one command (one login shell) per board.
PREFETCH_COMMANDS: tuple[tuple[tuple[str, ...], float], ...] = ((("dmesg",), 15.0), (("bm_version",), 10.0))

#: Connection failures, by what the user should do about them.
UNREACHABLE = "unreachable"
AUTH_FAILED = "auth-failed"
TIMED_OUT = "timed-out"
ERROR = "error"


class SSHError(TargetError):
    """An SSH failure with its kind (unreachable, auth-failed, host-key-*, timed-out, error)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class SSHOptions:
    """How to connect: host key store, timeouts, and the secrets (never printed)."""

    store: HostKeyStore = field(default_factory=HostKeyStore)
    accept_new: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    allow_agent: bool = True
    look_for_keys: bool = True
    identity_files: tuple[str, ...] = ()  # tried for every host, after the host's own
    password: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    python: str = "python3"  # remote interpreter for the one-command prefetch

    @staticmethod
    def secrets_from(environ: Mapping[str, str], ask_pass: bool = False) -> tuple[str | None, str | None]:
        """(password, passphrase) from the environment or, when asked, a prompt on the terminal."""
        password = environ.get(PASSWORD_ENV) or None
        passphrase = environ.get(PASSPHRASE_ENV) or None
        if ask_pass and password is None:
            import getpass

            password = getpass.getpass("SSH password (or key passphrase): ") or None
            passphrase = passphrase or password
        return password, passphrase


# ---------------------------------------------------------------------------------------
# The remote side: one program for reads (a prefetch, with the commands the doctor will ask
# for) and for each write. Python 3.5+, standard library only, no f-strings. Its input is one
# JSON line, then the bytes a write stores. Under a root every path is walked from a
# descriptor of the root with O_NOFOLLOW, exactly as LocalTarget walks a sysroot (see
# llmtpu/target.py, "Confinement"): links are read, never followed by the board's kernel.

GATHER_SCRIPT = r"""
import errno, json, os, posixpath, stat, sys
inp = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
spec = json.loads(inp.readline().decode("utf-8"))
root = spec["root"]
confined = root != ""
out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
budget = [spec.get("budget", 0)]
entries = [0]
seen = {}
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
OPATH = getattr(os, "O_PATH", 0)
WALK = (OPATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | CLOEXEC
FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | CLOEXEC
READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | CLOEXEC
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | CLOEXEC
PATHONLY = (OPATH or (os.O_RDONLY | os.O_NONBLOCK)) | os.O_NOFOLLOW | CLOEXEC
KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link", stat.S_IFCHR: "char",
         stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}

class Refused(OSError):
    pass

def refused(code, reason):
    return Refused(code, reason)

def kind(mode):
    return KINDS.get(stat.S_IFMT(mode), "other")

def emit(rec, data=b""):
    rec["n"] = len(data)
    out.write(json.dumps(rec).encode("ascii") + b"\n")
    out.write(data)

def error(rec, key, e):
    rec[key] = e.errno or errno.EIO
    if isinstance(e, Refused):
        rec[key + "r"] = e.strerror

def parts_of(path):
    return [p for p in path.split("/") if p]

def stand_in(dfd, name):
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode) or not 1 < st.st_size < 4096:
        return None
    fd = os.open(name, READ, dir_fd=dfd)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if 1 < len(data) < 4096 and data.startswith(b"/") and b"\n" not in data and b"\0" not in data:
        return data.decode("utf-8", "replace")
    return None

def link_at(dfd, name, e):
    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
        return None
    try:
        return os.readlink(name, dir_fd=dfd)
    except OSError:
        pass
    if e.errno != errno.ENOTDIR or not confined:
        return None
    try:
        return stand_in(dfd, name)
    except OSError:
        return None

def follow():
    return OSError(errno.ELOOP, "follow")

def walk(path, final, create=False):
    # final(folder_fd, name) on what path names, every link followed inside the root
    parts = parts_of(path)
    hops = 0
    fds = [os.open(root or "/", os.O_RDONLY | os.O_DIRECTORY | CLOEXEC)]
    try:
        while True:
            depth = len(fds) - 1
            if depth == len(parts):
                return final(fds[-1], ".")
            part = parts[depth]
            try:
                if depth == len(parts) - 1:
                    return final(fds[-1], part)
                fds.append(os.open(part, WALK, dir_fd=fds[-1]))
                continue
            except Refused:
                raise
            except OSError as e:
                if create and e.errno == errno.ENOENT and depth < len(parts) - 1:
                    try:
                        os.mkdir(part, 0o777, dir_fd=fds[-1])
                    except OSError as made:
                        if made.errno != errno.EEXIST:
                            raise
                    continue
                link = link_at(fds[-1], part, e)
                if link is None:
                    if e.strerror == "follow":
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    raise
            hops += 1
            if hops > 40:
                raise refused(errno.ELOOP, "too many levels of symbolic links")
            here = "/" + "/".join(parts[:depth])
            parts = parts_of(posixpath.normpath(posixpath.join(here, link))) + parts[depth + 1:]
            while len(fds) > 1:
                os.close(fds.pop())
    finally:
        for fd in fds:
            os.close(fd)

def lstat_at(d, n):
    return os.stat(n, dir_fd=d, follow_symlinks=False)

def only_regular(st):
    k = kind(st.st_mode)
    if k == "link":
        raise follow()
    if k == "dir":
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
    if k != "file":
        raise refused(errno.EINVAL, "is a " + k + ", not a regular file; llmtpu opens only regular files under a root")

def read_fd(fd, cap):
    chunks, size, want = [], 0, min(cap, budget[0]) + 1
    while size < want:
        chunk = os.read(fd, min(65536, want - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    keep = min(cap, budget[0])
    budget[0] -= min(len(data), keep)
    return data[:keep], len(data) <= keep

def target_of(path, content, cap, named):
    # (stat of what path leads to, content or None): links followed inside the root
    def here(d, n):
        st = lstat_at(d, n)
        if stat.S_ISLNK(st.st_mode):
            raise follow()
        if not content or stat.S_ISDIR(st.st_mode):
            return st, None
        if not stat.S_ISREG(st.st_mode):
            only_regular(st)
        if budget[0] <= 0 or not (named or st.st_size <= cap):
            return st, None
        fd = os.open(n, READ, dir_fd=d)
        try:
            only_regular(os.fstat(fd))
            return st, read_fd(fd, cap)
        finally:
            os.close(fd)
    if confined:
        return walk(path, here)
    st = os.stat(path)
    if not content or stat.S_ISDIR(st.st_mode) or not stat.S_ISREG(st.st_mode):
        return st, None
    if budget[0] <= 0 or not (named or st.st_size <= cap):
        return st, None
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | CLOEXEC)
    try:
        return st, read_fd(fd, cap)
    finally:
        os.close(fd)

def names_of(path):
    if not confined:
        return os.listdir(path)
    def here(d, n):
        fd = os.open(n, FOLDER, dir_fd=d)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)
    return walk(path, here)

def may(path, flags):
    if not confined:
        return os.access(path, flags)
    def here(d, n):
        if stat.S_ISLNK(lstat_at(d, n).st_mode):
            raise follow()
        return os.access(n, flags, dir_fd=d, follow_symlinks=False)
    try:
        return walk(path, here)
    except OSError:
        return False

def visit(path, depth, content, cap, named, access):
    if seen.get(path, -2) >= depth and not named:
        return
    seen[path] = max(depth, seen.get(path, -2))
    entries[0] += 1
    try:
        st = walk(path, lstat_at) if confined else os.lstat(path)
    except OSError as e:
        rec = {"p": path}
        error(rec, "e", e)
        emit(rec)
        return
    rec = {"p": path, "m": st.st_mode, "u": st.st_uid, "g": st.st_gid, "s": st.st_size}
    data = b""
    isdir = stat.S_ISDIR(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        try:
            rec["l"] = walk(path, lambda d, n: os.readlink(n, dir_fd=d)) if confined else os.readlink(path)
        except OSError as e:
            error(rec, "e", e)
            emit(rec)
            return
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or access:
        rec["a"] = [may(path, os.R_OK), may(path, os.R_OK | os.W_OK)]
    followed = None
    if not isdir and (content or depth > 0):
        try:
            followed, got = target_of(path, content, cap, named)
            if got is not None:
                data = got[0]
                rec["c"] = 1
                rec["x"] = 1 if got[1] else 0
            elif content and stat.S_ISDIR(followed.st_mode):
                rec["re"] = errno.EISDIR
        except OSError as e:
            error(rec, "re", e)
            if depth > 0:
                error(rec, "de", e)  # a link to nothing: listing it fails the same way
    names = None
    if depth > 0 and (isdir or (followed is not None and stat.S_ISDIR(followed.st_mode))):
        try:
            names = names_of(path)
            rec["d"] = names
        except OSError as e:
            error(rec, "de", e)
    emit(rec, data)
    if isdir and names:
        for name in sorted(names):
            if entries[0] >= spec["max_entries"]:
                return
            child = path.rstrip("/") + "/" + name
            visit(child, depth - 1, content, spec["small_cap"], False, False)

def statvfs_of(path):
    if not confined:
        return os.statvfs(path)
    def here(d, n):
        if stat.S_ISLNK(lstat_at(d, n).st_mode):
            raise follow()
        fd = os.open(n, PATHONLY, dir_fd=d)
        try:
            return os.statvfs(fd)
        finally:
            os.close(fd)
    return walk(path, here)

def run_commands(commands):
    import subprocess
    for index, item in enumerate(commands):
        rec = {"cmd": index, "t": 0}
        try:
            proc = subprocess.Popen(item["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            rec["s"], rec["o"] = 127, 0
            emit(rec, (item["argv"][0] + ": " + ("not found" if e.errno == errno.ENOENT else e.strerror)).encode())
            continue
        try:
            o, e = proc.communicate(timeout=item["timeout"])
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            o, e = proc.communicate()
            rec["t"] = 1
        rec["s"], rec["o"] = proc.returncode if not rec["t"] else -9, len(o)
        emit(rec, o + e)

# -- writes: folders resolved like reads, the last name never followed

def folder_of(path, create, readable=True):
    flags = FOLDER if readable else WALK
    def here(d, n):
        if create and n != ".":
            try:
                os.mkdir(n, 0o777, dir_fd=d)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        return os.open(n, flags, dir_fd=d)
    return walk(path, here, create=create)

def split(path):
    folder, name = posixpath.split(path)
    return folder, name or "."

def unlink_quietly(name, d):
    try:
        os.unlink(name, dir_fd=d)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise

def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

def install(d, name, mode, fill):
    while True:
        tmp = ".llmtpu-" + os.urandom(6).hex()
        try:
            fd = os.open(tmp, CREATE, 0o600, dir_fd=d)
            break
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    try:
        try:
            fill(fd)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
    except BaseException:
        unlink_quietly(tmp, d)
        raise
    os.fsync(d)

def make_link(text, path):
    folder, name = split(path)
    d = folder_of(folder, True, False)
    try:
        tmp = name + ".llmtpu-link"
        unlink_quietly(tmp, d)
        os.symlink(text, tmp, dir_fd=d)
        os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
    finally:
        os.close(d)

def back_up(d, name, backup):
    try:
        st = lstat_at(d, name)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    if stat.S_ISLNK(st.st_mode):
        make_link(os.readlink(name, dir_fd=d), backup)
        return backup
    if not stat.S_ISREG(st.st_mode):
        raise refused(errno.EINVAL, "is a " + kind(st.st_mode) + "; llmtpu replaces only files and links")
    source = os.open(name, READ, dir_fd=d)
    try:
        only_regular(os.fstat(source))
        def copy(fd):
            while True:
                chunk = os.read(source, 1 << 20)
                if not chunk:
                    break
                write_all(fd, chunk)
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        bfolder, bname = split(backup)
        bd = folder_of(bfolder, True)
        try:
            install(bd, bname, stat.S_IMODE(st.st_mode), copy)
        finally:
            os.close(bd)
    finally:
        os.close(source)
    return backup

def change(op):
    path = op["p"]
    folder, name = split(path)
    kind_of = op["op"]
    if kind_of == "makedirs":
        os.close(folder_of(path, True, False))
        return {}
    if kind_of == "symlink":
        make_link(op["text"], path)
        return {}
    if kind_of == "remove":
        try:
            d = folder_of(folder, False, False)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return {}
            raise
        try:
            unlink_quietly(name, d)
        finally:
            os.close(d)
        return {}
    data = inp.read()
    if kind_of == "append":
        d = folder_of(folder, False, False)
        try:
            if confined:
                st = lstat_at(d, name)
                if not stat.S_ISLNK(st.st_mode):
                    only_regular(st)
            try:
                fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | CLOEXEC
                             | (os.O_NONBLOCK if confined else 0), dir_fd=d)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise refused(errno.ELOOP, "is a symbolic link; llmtpu does not write through links")
                raise
        finally:
            os.close(d)
        try:
            if confined:
                only_regular(os.fstat(fd))
            written = os.write(fd, data)
        finally:
            os.close(fd)
        return {"w": written}
    if name == ".":
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
    d = folder_of(folder, True)
    try:
        made = back_up(d, name, op["backup"]) if op.get("backup") else None
        install(d, name, op["mode"], lambda fd: write_all(fd, data))
    finally:
        os.close(d)
    return {"b": made}

if "op" in spec:
    try:
        rec = change(spec)
    except OSError as e:
        rec = {}
        error(rec, "e", e)
        rec["es"] = e.strerror or ""
    emit(rec)
else:
    for item in spec["items"]:
        path = item["p"]
        parts = parts_of(path)
        for i in range(1, len(parts)):
            visit("/" + "/".join(parts[:i]), 0, False, 0, False, False)
        visit(path, item["depth"], item["content"], item["cap"], True, item.get("access", False))
    for path in spec["df"]:
        try:
            sv = statvfs_of(path)
            emit({"df": path, "t": sv.f_blocks * sv.f_frsize, "f": sv.f_bavail * sv.f_frsize})
        except OSError as e:
            rec = {"df": path}
            error(rec, "e", e)
            emit(rec)
    if spec.get("cmds"):
        run_commands(spec["cmds"])
emit({"end": 1})
out.flush()
"""


#: Folder-making and backup before an SFTP write on a machine (root /) without python3: a fixed
#: script, inputs only as "$@" arguments.
PREPARE_SCRIPT = (
    'set -e; mkdir -p -- "$1"; '
    'if [ -n "$3" ] && { [ -e "$2" ] || [ -L "$2" ]; }; then '
    'mkdir -p -- "$(dirname -- "$3")"; cp -P -p -- "$2" "$3"; echo backup; fi'
)


def _oserror(code: int, path: str, refused: str | None = None) -> OSError:
    """The error a read met on the machine; PathRefused when the remote program refused the path."""
    if refused is not None:
        return PathRefused(code, path, refused)
    return OSError(code, os.strerror(code), path)


@dataclass
class _Entry:
    """What the cache knows about one machine path; None fields are unknown."""

    lstat_errno: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int = 0
    link: str | None = None
    names: list[str] | None = None
    list_errno: int | None = None
    data: bytes | None = None
    complete: bool = False
    read_errno: int | None = None
    access: tuple[bool, bool] | None = None
    refused: str | None = None  # why the remote program refused this path under the root


class SSHTarget(Target):
    """One machine over SSH, with its paths under ``spec.root`` on that machine."""

    def __init__(self, spec: HostSpec, options: SSHOptions | None = None) -> None:
        super().__init__(root=spec.root, name=spec.name)
        self.spec = spec
        self.options = options or SSHOptions()
        self.round_trips = 0  # remote commands and SFTP requests after the connection is up
        self.host_key_outcome: str | None = None  # "known" or "added" once connected
        self._connections: list[Any] = []  # fabric Connections: jump hosts first, this host last
        self._socket: socket.socket | None = None  # the TCP connection (to the first hop)
        self._sftp: paramiko.SFTPClient | None = None
        self._entries: dict[str, _Entry] = {}
        self._df: dict[str, DiskUsage | int] = {}
        self._python_ok = True
        #: Command results the prefetch brought back, served once each by run().
        self._answers: dict[tuple[str, ...], CommandResult] = {}
        self.aborted = False  # set by abort(): the fleet's watchdog gave up on this host
        #: time.monotonic() by which all work on this host must be done (set by the fleet).
        self.deadline: float | None = None

    # -- connection -----------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection (through ProxyJump hosts, each checked the same strict way)."""
        if self._connections:
            return
        if self.spec.proxy_command:
            raise SSHError(ERROR, f"{self.name}: ProxyCommand in ~/.ssh/config is not supported; use ProxyJump")
        chain = [*self.spec.jump, self.spec]
        sock: Any = None
        try:
            for index, hop in enumerate(chain):
                if sock is None:
                    sock = self._tcp(hop)
                self._connections.append(self._open(hop, sock))
                sock = None
                if index + 1 < len(chain):
                    sock = self._through(hop, chain[index + 1])
        except BaseException:
            if sock is not None:
                sock.close()
            self.close()
            raise

    def _where(self, hop: HostSpec) -> str:
        """How a failure names the machine: the address, or which jump host it was."""
        return hop.address if hop is self.spec else f"jump host {hop.name} ({hop.address})"

    def _tcp(self, hop: HostSpec) -> socket.socket:
        where = self._where(hop)
        timeout = self.options.connect_timeout
        try:
            sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
        except socket.gaierror as exc:
            raise SSHError(UNREACHABLE, f"{where}: unknown host name ({exc.strerror})") from exc
        except ConnectionRefusedError as exc:
            raise SSHError(UNREACHABLE, f"{where}: connection refused (sshd not running?)") from exc
        except TimeoutError as exc:
            raise SSHError(UNREACHABLE, f"{where}: no answer within {timeout:g} s") from exc
        except OSError as exc:
            raise SSHError(UNREACHABLE, f"{where}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock
        if self.aborted:  # the watchdog fired while we were connecting
            sock.close()
        return sock

    def open_tunnel(self, hostname: str, port: int) -> Any:
        """A socket-like channel to hostname:port, opened by this (connected) machine."""
        nxt = HostSpec(name=f"{hostname}:{port}", hostname=hostname, port=port)
        return self._through(self.spec, nxt)

    def _through(self, hop: HostSpec, nxt: HostSpec) -> Any:
        transport = self._connections[-1].client.get_transport()
        try:
            return transport.open_channel("direct-tcpip", (nxt.hostname, nxt.port), ("", 0),
                                          timeout=self.options.connect_timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise SSHError(UNREACHABLE, f"{nxt.hostname}:{nxt.port} via jump host {hop.name}: {exc}") from exc

    def _open(self, hop: HostSpec, sock: Any) -> Any:
        """A fabric Connection whose client can only accept keys our store accepts."""
        from fabric import Config, Connection

        options = self.options
        timeout = options.connect_timeout
        name = host_key_name(hop.hostname, hop.port)
        kwargs: dict[str, Any] = {
            "sock": sock, "timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout,
            "allow_agent": options.allow_agent, "look_for_keys": options.look_for_keys,
        }
        keys = [k for k in (*hop.identity_files, *options.identity_files) if os.path.exists(k)]
        if keys:
            kwargs["key_filename"] = keys
        if options.password:
            kwargs["password"] = options.password
        if options.passphrase:
            kwargs["passphrase"] = options.passphrase
        disabled = disabled_key_algorithms(options.store.known_types(name), paramiko.Transport._preferred_keys)
        if disabled:
            kwargs["disabled_algorithms"] = {"keys": disabled}
        # An empty ssh_config and lazy config: fabric reads no file and builds no gateway of its
        # own (its gateways would carry its AutoAddPolicy); ~/.ssh/config was read by inventory.
        cx = Connection(hop.hostname, user=hop.login, port=hop.port, gateway=False, connect_kwargs=kwargs,
                        config=Config(lazy=True, ssh_config=paramiko.SSHConfig()))
        policy = StrictPolicy(options.store, accept_new=options.accept_new, trust_command=self._trust_command(hop))
        cx.client.set_missing_host_key_policy(policy)
        where = self._where(hop)
        started = time.monotonic()
        try:
            cx.open()
        except HostKeyError as exc:
            cx.close()
            raise SSHError(exc.kind, str(exc)) from exc
        except paramiko.PasswordRequiredException as exc:
            cx.close()
            raise SSHError(AUTH_FAILED, f"{where}: the private key is encrypted; set {PASSPHRASE_ENV} "
                                        "or use --ask-pass") from exc
        except paramiko.AuthenticationException as exc:
            cx.close()
            raise SSHError(AUTH_FAILED, f"{where}: login as {hop.login} refused ({exc}); check the key "
                                        f"(IdentityFile, ansible_ssh_private_key_file, agent) or {PASSWORD_ENV}"
                           ) from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            cx.close()
            if "No authentication methods available" in str(exc):
                raise SSHError(AUTH_FAILED, f"{where}: no key to log in with: give one with IdentityFile in "
                                            "~/.ssh/config or ansible_ssh_private_key_file, load it into the "
                                            f"agent, or set {PASSWORD_ENV}") from exc
            waited = time.monotonic() - started
            timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError) \
                or waited >= timeout * 0.95
            if timed_out:
                raise SSHError(TIMED_OUT, f"{where}: no SSH handshake within {timeout:g} s (sshd hung or "
                                          "overloaded)") from exc
            raise SSHError(ERROR, f"{where}: SSH handshake failed: {exc or type(exc).__name__}") from exc
        finally:
            if hop is self.spec:
                self.host_key_outcome = policy.outcome  # also when the login failed after the key check
        return cx

    def _trust_command(self, hop: HostSpec) -> str:
        """The `llmtpu hosts trust` line that reaches this hop: its address, or its name when
        it sits behind a jump host (the inventory knows the way)."""
        chain = [*self.spec.jump, self.spec]
        if chain.index(hop) > 0:
            return f"llmtpu hosts trust {shlex.quote(hop.name)} (with this run's --inventory or --ssh-config)"
        address = hop.hostname if hop.port == 22 else f"{hop.hostname}:{hop.port}"
        return f"llmtpu hosts trust {shlex.quote(address)}"

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, EOFError):
                pass
            self._sftp = None
        for cx in reversed(self._connections):
            cx.close()
        self._connections = []

    def abort(self) -> None:
        """Called from another thread when this host ran out of time: unblocks its thread,
        whether it is still in the handshake or waiting for a command."""
        self.aborted = True
        for cx in self._connections:
            transport = cx.client.get_transport()
            if transport is not None:
                transport.close()
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> SSHTarget:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _transport(self) -> paramiko.Transport:
        if not self._connections:
            self.connect()
        transport = self._connections[-1].client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHError(ERROR, f"{self.name}: the SSH connection is closed")
        return transport

    def open_channel(self, command: str, timeout: float | None = None) -> paramiko.Channel:
        """A session channel running ``command`` (built with shlex by the caller), for protocols
        that stream both ways over one connection (the engine's line protocol)."""
        self.round_trips += 1
        channel = self._transport.open_session(timeout=timeout or self.options.connect_timeout)
        channel.exec_command(command)
        return channel

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self.connect()
            self.round_trips += 1
            self._sftp = self._connections[-1].sftp()  # fabric keeps one SFTP session per connection
        return self._sftp

    # -- commands -------------------------------------------------------------------------

    def execute(self, command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes, bool]:
        """The transport: one command line on the remote shell, ``stdin`` sent then closed,
        bounded by ``timeout``: (exit status, stdout, stderr, timed out). Every remote command
        of this target goes through here (a GatheredTarget puts another transport here)."""
        self.round_trips += 1
        input = stdin
        deadline = time.monotonic() + timeout
        try:
            channel = self._transport.open_session(timeout=timeout)
            channel.exec_command(command)
            if input:
                channel.sendall(input)
            channel.shutdown_write()
            out: list[bytes] = []
            err: list[bytes] = []
            while True:
                while channel.recv_ready():
                    out.append(channel.recv(1 << 16))
                while channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(1 << 16))
                if channel.eof_received or channel.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    channel.close()
                    return -9, b"".join(out), b"".join(err), True
                select.select([channel], [], [], min(remaining, 1.0))
            while channel.recv_ready():
                out.append(channel.recv(1 << 16))
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(1 << 16))
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                channel.close()
                return -9, b"".join(out), b"".join(err), True
            status = channel.recv_exit_status()
            channel.close()
            return status, b"".join(out), b"".join(err), False
        except SSHError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if self.aborted:
                raise SSHError(TIMED_OUT, f"{self.name}: stopped after its time ran out") from exc
            if isinstance(exc, TimeoutError) or "timeout" in str(exc).lower():
                raise SSHError(TIMED_OUT, f"{self.name}: no answer within {timeout:g} s ({exc})") from exc
            raise SSHError(ERROR, f"{self.name}: SSH connection failed: {exc or type(exc).__name__}") from exc

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        argv = tuple(argv)
        if not argv:
            raise ValueError("empty command")
        result = self._answers.pop(argv, None) if input is None and not env else None
        if result is None:
            words = list(argv)
            if env:
                words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
            status, out, err, timed_out = self.execute(shlex.join(words), input, min(timeout, self._timeout))
            self._forget()  # a command may change any file
            result = CommandResult(argv, status, out, err, timed_out=timed_out)
        # else: the prefetch ran it, in the same remote command as the reads
        if result.returncode == 127 and not result.timed_out and b"not found" in result.stderr:
            raise TargetError(f"{argv[0]}: command not found on {self.name}")
        return result

    @property
    def _timeout(self) -> float:
        """Seconds the next remote command may take: the command timeout, within the deadline."""
        timeout = self.options.command_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise SSHError(TIMED_OUT, f"{self.name}: out of time ({self.options.command_timeout:g} s)")
        return timeout

    # -- the cache and the one-command fetch ----------------------------------------------

    def prefetch(self, paths: Sequence[str]) -> None:
        """Read these paths (folders recursively) and the top of the tree in one command."""
        items = [{"p": normalize(p), "depth": MAX_DEPTH, "content": True, "cap": NAMED_FILE_CAP} for p in paths]
        items.append({"p": "/", "depth": 1, "content": True, "cap": 0})  # small files at the top (dev.list)
        commands: Sequence[tuple[tuple[str, ...], float]] = ()
        if not self.is_sysroot:
            items.append({"p": "/dev", "depth": 1, "content": False, "cap": 0})
            commands = PREFETCH_COMMANDS
        self._fetch(items, ["/"], commands)

    def _fetch(self, items: list[dict[str, Any]], df: Sequence[str] = (),
               commands: Sequence[tuple[tuple[str, ...], float]] = ()) -> bool:
        """Run the gather script for these items; False when the machine has no python3."""
        if not self._python_ok:
            return False
        spec = {
            "root": self.root.rstrip("/"), "items": items, "df": list(df), "budget": PREFETCH_BUDGET,
            "small_cap": SMALL_FILE_CAP, "max_entries": MAX_ENTRIES,
            "cmds": [{"argv": list(argv), "timeout": timeout} for argv, timeout in commands],
        }
        out = self._remote(spec, b"", "reading files")
        if out is None:
            return False
        self._absorb(out, [argv for argv, _ in commands])
        return True

    def _remote(self, spec: Mapping[str, Any], data: bytes, what: str) -> bytes | None:
        """Run the remote program on ``spec`` (+ ``data``): its framed answer, or None when the
        machine has no python3 and may be read without it (not under a root: see _no_python)."""
        python = self.spec.vars.get("ansible_python_interpreter") or self.options.python
        command = shlex.join([python, "-I", "-S", "-c", GATHER_SCRIPT])
        timeout = self._timeout
        stdin = json.dumps(spec).encode("ascii") + b"\n" + data
        status, out, err, timed_out = self.execute(command, stdin, timeout)
        if timed_out:
            raise SSHError(TIMED_OUT, f"{self.name}: {what} took longer than {timeout:g} s")
        if status == 127:
            self._no_python()
            self._python_ok = False  # no python3 there: fall back to SFTP, one request per operation
            return None
        if status != 0:
            message = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {status}"]
            raise SSHError(ERROR, f"{self.name}: {what} failed: {message[0]}")
        return out

    def _no_python(self) -> None:
        """Under a root only the remote program keeps paths inside it (SFTP and the shell
        follow the board's links out of the root): without python3 there, refuse."""
        if self.is_sysroot:
            python = self.spec.vars.get("ansible_python_interpreter") or self.options.python
            raise SSHError(ERROR, f"{self.name}: no python3 answered there ({shlex.quote(python)}); root={self.root} "
                                  "needs it to keep every path inside the root: install python3 there or set "
                                  "ansible_python_interpreter")

    def _absorb(self, stream: bytes, commands: Sequence[tuple[str, ...]] = ()) -> None:
        """Parse the gather script's framed records into the cache."""
        pos = 0
        ended = False
        while pos < len(stream):
            newline = stream.find(b"\n", pos)
            if newline < 0:
                break
            rec = json.loads(stream[pos:newline])
            pos = newline + 1 + rec["n"]
            data = stream[newline + 1:pos]
            if "end" in rec:
                ended = True
            elif "cmd" in rec:
                argv = tuple(commands[rec["cmd"]])
                self._answers[argv] = CommandResult(argv, rec["s"], data[:rec["o"]], data[rec["o"]:],
                                                    timed_out=bool(rec["t"]))
            elif "df" in rec:
                self._df[rec["df"]] = rec["e"] if "e" in rec else DiskUsage(total=rec["t"], free=rec["f"])
            else:
                self._merge(rec, data)
        if not ended:
            raise SSHError(ERROR, f"{self.name}: the answer to a file read was cut short")

    def _merge(self, rec: dict[str, Any], data: bytes) -> None:
        entry = self._entries.setdefault(rec["p"], _Entry())
        if "e" in rec:
            self._entries[rec["p"]] = _Entry(lstat_errno=rec["e"], refused=rec.get("er"))
            return
        entry.lstat_errno = None
        entry.mode, entry.uid, entry.gid, entry.size = rec["m"], rec["u"], rec["g"], rec["s"]
        entry.link = rec.get("l")
        if "d" in rec:
            entry.names, entry.list_errno = rec["d"], None
        if "de" in rec:
            entry.names, entry.list_errno, entry.refused = None, rec["de"], rec.get("der")
        if "a" in rec:
            entry.access = (bool(rec["a"][0]), bool(rec["a"][1]))
        if "re" in rec:
            entry.read_errno, entry.data, entry.refused = rec["re"], None, rec.get("rer")
        if rec.get("c"):
            entry.data, entry.complete, entry.read_errno = data, bool(rec["x"]), None

    def _forget(self) -> None:
        """Drop the cache: after a command or a write, any file may have changed."""
        self._entries.clear()
        self._df.clear()
        self._answers.clear()

    def _absent(self, path: str) -> int | None:
        """ENOENT/ENOTDIR when the cache proves the path is not there, else None (unknown)."""
        child = path
        parent = posixpath.dirname(child)
        while child != "/":
            entry = self._entries.get(parent)
            if entry is not None:
                if entry.lstat_errno in (errno.ENOENT, errno.ENOTDIR):
                    return entry.lstat_errno
                if entry.mode is not None and statmod.S_ISDIR(entry.mode):
                    if entry.names is not None and posixpath.basename(child) not in entry.names:
                        return errno.ENOENT
                    return None
                if entry.mode is not None and not statmod.S_ISLNK(entry.mode):
                    return errno.ENOTDIR
                return None
            child, parent = parent, posixpath.dirname(parent)
        return None

    def _entry(self, path: str, want: str, item: dict[str, Any]) -> _Entry | None:
        """The cache entry answering ``want`` for path, fetching it once when missing."""
        path = normalize(path)
        for attempt in (0, 1):
            entry = self._entries.get(path)
            if entry is not None and _answers(entry, want, item):
                return entry
            if self._absent(path) is not None:
                return None
            if attempt == 0 and not self._fetch([{"p": path, **item}]):
                return None
        raise SSHError(ERROR, f"{self.name}: no answer for {path}")

    # -- the raw operations -----------------------------------------------------------------

    def lstat_raw(self, path: str) -> FileStat | None:
        path = normalize(path)
        if not self._python_ok:
            return self._sftp_lstat(path)
        entry = self._entry(path, "lstat", {"depth": 0, "content": False, "cap": 0})
        if not self._python_ok:
            return self._sftp_lstat(path)
        if entry is None or entry.lstat_errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        if entry.lstat_errno is not None:
            raise _oserror(entry.lstat_errno, self.host_path(path), entry.refused)
        assert entry.mode is not None
        return FileStat(path, kind_of_mode(entry.mode), entry.size, statmod.S_IMODE(entry.mode),
                        entry.uid, entry.gid)

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        path = normalize(path)
        if self._python_ok:
            entry = self._entries.get(path)
            if entry is None or not _answers(entry, "read", {"cap": limit}):
                absent = self._absent(path)
                if absent is not None:
                    raise _oserror(absent, self.host_path(path))
                self._fetch([{"p": path, "depth": 0, "content": True, "cap": limit}])
                entry = self._entries.get(path)
        if not self._python_ok:
            return self._sftp_read(path, limit)
        if entry is None:
            raise SSHError(ERROR, f"{self.name}: no answer for {path}")
        if entry.lstat_errno is not None:
            raise _oserror(entry.lstat_errno, self.host_path(path), entry.refused)
        if entry.read_errno is not None:
            raise _oserror(entry.read_errno, self.host_path(path), entry.refused)
        if entry.mode is not None and statmod.S_ISDIR(entry.mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", self.host_path(path))
        if entry.data is None:
            raise SSHError(ERROR, f"{self.name}: {path} is not a regular file; not read")
        return entry.data[:limit]

    def listdir_raw(self, path: str) -> list[str]:
        path = normalize(path)
        if not self._python_ok:
            return self._sftp_call(path, lambda sftp, host: sftp.listdir(host))
        entry = self._entry(path, "list", {"depth": 1, "content": False, "cap": 0})
        if not self._python_ok:
            return self._sftp_call(path, lambda sftp, host: sftp.listdir(host))
        if entry is None:
            raise _oserror(self._absent(path) or errno.ENOENT, self.host_path(path))
        if entry.lstat_errno is not None:
            raise _oserror(entry.lstat_errno, self.host_path(path), entry.refused)
        if entry.list_errno is not None:
            raise _oserror(entry.list_errno, self.host_path(path), entry.refused)
        if entry.names is None:
            raise _oserror(errno.ENOTDIR, self.host_path(path))
        return list(entry.names)

    def readlink_raw(self, path: str) -> str:
        path = normalize(path)
        if not self._python_ok:
            return self._sftp_call(path, lambda sftp, host: sftp.readlink(host))
        entry = self._entry(path, "lstat", {"depth": 0, "content": False, "cap": 0})
        if not self._python_ok:
            return self._sftp_call(path, lambda sftp, host: sftp.readlink(host))
        if entry is None:
            raise _oserror(self._absent(path) or errno.ENOENT, self.host_path(path))
        if entry.lstat_errno is not None:
            raise _oserror(entry.lstat_errno, self.host_path(path), entry.refused)
        if entry.link is None:
            raise _oserror(errno.EINVAL, self.host_path(path))
        return entry.link

    def access_raw(self, path: str, want_write: bool) -> bool:
        path = normalize(path)
        if self._python_ok:
            entry = self._entry(path, "access", {"depth": 0, "content": False, "cap": 0, "access": True})
            if self._python_ok:
                if entry is None or entry.access is None:
                    return False
                return entry.access[1] if want_write else entry.access[0]
        tests = ["test", "-r", self.host_path(path)] + (["-a", "-w", self.host_path(path)] if want_write else [])
        status, _, _, _ = self.execute(shlex.join(tests), None, self._timeout)
        return status == 0

    def disk_usage(self, path: str) -> DiskUsage:
        path = normalize(path)
        if path not in self._df and self._python_ok:
            self._fetch([], [path])
        if path in self._df:
            usage = self._df[path]
            if isinstance(usage, int):
                raise _oserror(usage, self.host_path(path))
            return usage
        status, out, err, _ = self.execute(shlex.join(["df", "-P", "-k", "--", self.host_path(path)]), None,
                                         self._timeout)
        lines = out.decode(errors="replace").strip().splitlines()
        fields = lines[-1].split() if lines else []
        if status != 0 or len(fields) < 4 or not fields[1].isdigit() or not fields[3].isdigit():
            raise TargetError(f"{self.name}: df {path}: {err.decode(errors='replace').strip() or 'no answer'}")
        return DiskUsage(total=int(fields[1]) * 1024, free=int(fields[3]) * 1024)

    # -- SFTP fallback (no python3 on the machine): one request per operation ---------------

    def _sftp_call(self, path: str, call: Any) -> Any:
        self.round_trips += 1
        try:
            return call(self._sftp_client(), self.host_path(path))
        except OSError:
            raise
        except (paramiko.SSHException, EOFError) as exc:
            raise SSHError(ERROR, f"{self.name}: SFTP {path}: {exc}") from exc

    def _sftp_lstat(self, path: str) -> FileStat | None:
        try:
            attrs = self._sftp_call(path, lambda sftp, host: sftp.lstat(host))
        except (FileNotFoundError, NotADirectoryError):
            return None
        mode = attrs.st_mode or 0
        return FileStat(path, kind_of_mode(mode), attrs.st_size or 0, statmod.S_IMODE(mode), attrs.st_uid,
                        attrs.st_gid)

    def _sftp_read(self, path: str, limit: int) -> bytes:
        def read(sftp: paramiko.SFTPClient, host: str) -> bytes:
            if statmod.S_ISDIR(sftp.stat(host).st_mode or 0):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", host)
            with sftp.open(host, "rb") as handle:
                chunks, size = [], 0
                while size < limit:
                    chunk = handle.read(min(1 << 15, limit - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                return b"".join(chunks)

        result: bytes = self._sftp_call(path, read)
        return result

    # -- writes: by the remote program (folders resolved like reads, the last name never followed)

    def _change(self, op: dict[str, Any], data: bytes = b"") -> dict[str, Any] | None:
        """One write by the remote program; its answer, or None when the machine (not a root)
        has no python3 and the write goes over SFTP instead."""
        path = op["p"]
        try:
            out = self._remote({"root": self.root.rstrip("/"), **op}, data, f"{op['op']} {path}") \
                if self._python_ok else None
        finally:
            self._forget()
        if out is None:
            return None
        newline = out.find(b"\n")
        answer: dict[str, Any] = json.loads(out[:newline]) if newline > 0 else {}
        if "e" in answer:
            code = answer["e"]
            if answer.get("er"):
                raise PathRefused(code, self.host_path(path), answer["er"])
            raise OSError(code, answer.get("es") or os.strerror(code), self.host_path(path))
        return answer

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644, backup: bool = True) -> str | None:
        path = normalize(path)
        op = {"op": "write", "p": path, "mode": mode, "backup": _backup_path(path) if backup else None}
        answer = self._change(op, data)
        if answer is None:
            import io

            return self._sftp_install(path, lambda sftp, tmp: sftp.putfo(io.BytesIO(data), tmp), mode, backup)
        made: str | None = answer.get("b")
        return made

    def append(self, path: str, data: bytes) -> None:
        path = normalize(path)
        answer = self._change({"op": "append", "p": path}, data)
        if answer is None:
            def write(sftp: paramiko.SFTPClient, host: str) -> None:
                with sftp.open(host, "a") as handle:  # SFTP APPEND: the server does one write()
                    handle.write(data)

            try:
                self._sftp_call(path, write)
            finally:
                self._forget()
        elif answer.get("w") != len(data):
            raise TargetError(f"{path}: short write ({answer.get('w')} of {len(data)} bytes)")

    def remove(self, path: str) -> None:
        path = normalize(path)
        if self._change({"op": "remove", "p": path}) is None:
            try:
                self._sftp_call(path, lambda sftp, host: sftp.remove(host))
            except FileNotFoundError:
                pass
            finally:
                self._forget()

    def symlink(self, link_text: str, path: str) -> None:
        path = normalize(path)
        if self._change({"op": "symlink", "p": path, "text": link_text}) is None:
            self.remove(path)
            try:
                self._sftp_call(path, lambda sftp, host: sftp.symlink(link_text, host))
            finally:
                self._forget()

    def makedirs(self, path: str) -> None:
        path = normalize(path)
        if self._change({"op": "makedirs", "p": path}) is None:
            args = ["mkdir", "-p", "--", self.host_path(path)]
            status, _, err, timed_out = self.execute(shlex.join(args), None, self._timeout)
            if status != 0 or timed_out:
                raise TargetError(f"{self.name}: cannot create {path}: {err.decode(errors='replace').strip()}")

    def put(self, local: str | Path, path: str, mode: int | None = None, backup: bool = True) -> str | None:
        """Copy a local file to a machine path (temp + rename); returns the backup made, if any."""
        local = Path(local)
        final_mode = statmod.S_IMODE(local.stat().st_mode) if mode is None else mode
        return self.write_atomic(path, local.read_bytes(), final_mode, backup)

    def get(self, path: str, local: str | Path) -> Path:
        """Copy a machine file to a local path (written to a temp file, then renamed)."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.llmtpu-{secrets.token_hex(4)}")
        try:
            if self._python_ok and self.is_sysroot:
                tmp.write_bytes(self.read_bytes(path, limit=1 << 40))
            else:
                self._sftp_call(normalize(path), lambda sftp, host: sftp.get(host, str(tmp)))
            os.replace(tmp, local)
        finally:
            if tmp.exists():
                tmp.unlink()
        return local

    def _sftp_install(self, path: str, upload: Any, mode: int, backup: bool) -> str | None:
        """A write on a machine without python3 (never under a root): the shell makes the folder
        and the backup, SFTP uploads a temp file and renames it over the destination."""
        host = self.host_path(path)
        folder = posixpath.dirname(host)
        backup_path = _backup_path(path) if backup else None
        args = ["sh", "-c", PREPARE_SCRIPT, "sh", folder, host, self.host_path(backup_path) if backup_path else ""]
        status, out, err, timed_out = self.execute(shlex.join(args), None, self._timeout)
        if status != 0 or timed_out:
            raise TargetError(f"{self.name}: cannot prepare {path}: {err.decode(errors='replace').strip()}")
        made_backup = backup_path if b"backup" in out else None
        tmp = posixpath.join(folder, f".llmtpu-{secrets.token_hex(6)}")
        sftp = self._sftp_client()
        try:
            self.round_trips += 3
            upload(sftp, tmp)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, host)
        except BaseException:
            try:
                sftp.remove(tmp)
            except OSError:
                pass
            raise
        finally:
            self._forget()
        return made_backup


def _backup_path(path: str) -> str:
    """Where the file a write replaces is kept (a machine path)."""
    return f"{BACKUP_DIR}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}{path}"


def _answers(entry: _Entry, want: str, item: Mapping[str, Any]) -> bool:
    """Whether a cache entry already holds what an operation needs."""
    if entry.lstat_errno is not None:
        return True
    if entry.mode is None:
        return False
    if want == "lstat":
        return True
    if want == "list":
        is_dir = statmod.S_ISDIR(entry.mode)
        return entry.names is not None or entry.list_errno is not None or not (is_dir or statmod.S_ISLNK(entry.mode))
    if want == "access":
        return entry.access is not None
    if want == "read":
        if entry.read_errno is not None or statmod.S_ISDIR(entry.mode):
            return True
        if entry.data is None:
            return False
        return entry.complete or len(entry.data) >= int(item["cap"])
    return False
