"""A machine over SSH: the Target interface on one reused connection, strict about host keys.

Reads are served from a per-host cache that ``prefetch`` fills in ONE remote command: a small
Python program (sent with the command, run by the remote ``python3``) walks the requested
paths under the host's root and streams back, for every entry, its lstat, link text, folder
listing and (capped) content, framed as one JSON header line followed by exactly the bytes it
announces. A whole doctor is then: connect, one prefetch, and the few reads the cache cannot
answer (e.g. the free space of the models folder) -- each one more command on the same
connection. A machine without ``python3`` is read with one SFTP request per operation instead.

Every remote command is an argument list joined with ``shlex`` for the remote POSIX shell; no
command string is ever built from input by concatenation. Writes go to a temporary file next
to the destination and are renamed over it, after a backup of the old file.
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
# The remote side of a prefetch. Python 3.5+, standard library only, no f-strings.

GATHER_SCRIPT = r"""
import errno, json, os, stat, sys
spec = json.loads(sys.stdin.read())
root = spec["root"]
out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
budget = [spec["budget"]]
entries = [0]
seen = {}

def emit(rec, data=b""):
    rec["n"] = len(data)
    out.write(json.dumps(rec).encode("ascii") + b"\n")
    out.write(data)

def host(path):
    return root + path if path != "/" else (root or "/")

def read(h, cap):
    fd = os.open(h, os.O_RDONLY | os.O_NONBLOCK)
    try:
        chunks, size, want = [], 0, min(cap, budget[0]) + 1
        while size < want:
            chunk = os.read(fd, min(65536, want - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    complete = len(data) <= min(cap, budget[0])
    data = data[:min(cap, budget[0])]
    budget[0] -= len(data)
    return data, complete

def visit(path, depth, content, cap, named, access):
    if seen.get(path, -2) >= depth and not named:
        return
    seen[path] = max(depth, seen.get(path, -2))
    entries[0] += 1
    h = host(path)
    try:
        st = os.lstat(h)
    except OSError as e:
        emit({"p": path, "e": e.errno})
        return
    rec = {"p": path, "m": st.st_mode, "u": st.st_uid, "g": st.st_gid, "s": st.st_size}
    data = b""
    isdir = stat.S_ISDIR(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        rec["l"] = os.readlink(h)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or access:
        rec["a"] = [os.access(h, os.R_OK), os.access(h, os.R_OK | os.W_OK)]
    followed = None
    if not isdir and (content or depth > 0):
        try:
            followed = os.stat(h)
        except OSError as e:
            rec["re"] = e.errno
    if content and not isdir and followed is not None:
        if stat.S_ISDIR(followed.st_mode):
            rec["re"] = errno.EISDIR
        elif stat.S_ISREG(followed.st_mode) and budget[0] > 0 and (named or followed.st_size <= cap):
            try:
                data, complete = read(h, cap)
                rec["c"] = 1
                rec["x"] = 1 if complete else 0
            except OSError as e:
                rec["re"] = e.errno
    names = None
    if depth > 0 and (isdir or (followed is not None and stat.S_ISDIR(followed.st_mode))):
        try:
            names = os.listdir(h)
            rec["d"] = names
        except OSError as e:
            rec["de"] = e.errno
    emit(rec, data)
    if isdir and names:
        for name in sorted(names):
            if entries[0] >= spec["max_entries"]:
                return
            child = path.rstrip("/") + "/" + name
            visit(child, depth - 1, content, spec["small_cap"], False, False)

for item in spec["items"]:
    path = item["p"]
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts)):
        visit("/" + "/".join(parts[:i]), 0, False, 0, False, False)
    visit(path, item["depth"], item["content"], item["cap"], True, item.get("access", False))
for path in spec["df"]:
    try:
        sv = os.statvfs(host(path))
        emit({"df": path, "t": sv.f_blocks * sv.f_frsize, "f": sv.f_bavail * sv.f_frsize})
    except OSError as e:
        emit({"df": path, "e": e.errno})
emit({"end": 1})
out.flush()
"""

#: Folder-making and backup before a write: a fixed script, inputs only as "$@" arguments.
PREPARE_SCRIPT = (
    'set -e; mkdir -p -- "$1"; '
    'if [ -n "$3" ] && { [ -e "$2" ] || [ -L "$2" ]; }; then '
    'mkdir -p -- "$(dirname -- "$3")"; cp -P -p -- "$2" "$3"; echo backup; fi'
)


def _oserror(code: int, path: str) -> OSError:
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

    def _exec(self, command: str, input: bytes | None, timeout: float) -> tuple[int, bytes, bytes, bool]:
        """Run a command line on the remote shell: (exit status, stdout, stderr, timed out)."""
        self.round_trips += 1
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
        words = list(argv)
        if env:
            words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
        status, out, err, timed_out = self._exec(shlex.join(words), input, min(timeout, self._timeout))
        self._forget()  # a command may change any file
        if status == 127 and not timed_out and b"not found" in err:
            raise TargetError(f"{argv[0]}: command not found on {self.name}")
        return CommandResult(argv, status, out, err, timed_out=timed_out)

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
        if not self.is_sysroot:
            items.append({"p": "/dev", "depth": 1, "content": False, "cap": 0})
        self._fetch(items, ["/"])

    def _fetch(self, items: list[dict[str, Any]], df: Sequence[str] = ()) -> bool:
        """Run the gather script for these items; False when the machine has no python3."""
        if not self._python_ok:
            return False
        spec = {
            "root": self.root.rstrip("/"), "items": items, "df": list(df), "budget": PREFETCH_BUDGET,
            "small_cap": SMALL_FILE_CAP, "max_entries": MAX_ENTRIES,
        }
        python = self.spec.vars.get("ansible_python_interpreter") or self.options.python
        command = shlex.join([python, "-I", "-S", "-c", GATHER_SCRIPT])
        status, out, err, timed_out = self._exec(command, json.dumps(spec).encode("ascii"), self._timeout)
        if timed_out:
            raise SSHError(TIMED_OUT, f"{self.name}: reading files took longer than {self._timeout:g} s")
        if status == 127:
            self._python_ok = False  # no python3 there: fall back to SFTP, one request per operation
            return False
        if status != 0:
            message = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {status}"]
            raise SSHError(ERROR, f"{self.name}: reading files failed: {message[0]}")
        self._absorb(out)
        return True

    def _absorb(self, stream: bytes) -> None:
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
            elif "df" in rec:
                self._df[rec["df"]] = rec["e"] if "e" in rec else DiskUsage(total=rec["t"], free=rec["f"])
            else:
                self._merge(rec, data)
        if not ended:
            raise SSHError(ERROR, f"{self.name}: the answer to a file read was cut short")

    def _merge(self, rec: dict[str, Any], data: bytes) -> None:
        entry = self._entries.setdefault(rec["p"], _Entry())
        if "e" in rec:
            self._entries[rec["p"]] = _Entry(lstat_errno=rec["e"])
            return
        entry.lstat_errno = None
        entry.mode, entry.uid, entry.gid, entry.size = rec["m"], rec["u"], rec["g"], rec["s"]
        entry.link = rec.get("l")
        if "d" in rec:
            entry.names, entry.list_errno = rec["d"], None
        if "de" in rec:
            entry.names, entry.list_errno = None, rec["de"]
        if "a" in rec:
            entry.access = (bool(rec["a"][0]), bool(rec["a"][1]))
        if "re" in rec:
            entry.read_errno, entry.data = rec["re"], None
        if rec.get("c"):
            entry.data, entry.complete, entry.read_errno = data, bool(rec["x"]), None

    def _forget(self) -> None:
        """Drop the cache: after a command or a write, any file may have changed."""
        self._entries.clear()
        self._df.clear()

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
            raise _oserror(entry.lstat_errno, self.host_path(path))
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
            raise _oserror(entry.lstat_errno, self.host_path(path))
        if entry.read_errno is not None:
            raise _oserror(entry.read_errno, self.host_path(path))
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
            raise _oserror(entry.lstat_errno, self.host_path(path))
        if entry.list_errno is not None:
            raise _oserror(entry.list_errno, self.host_path(path))
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
            raise _oserror(entry.lstat_errno, self.host_path(path))
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
        status, _, _, _ = self._exec(shlex.join(tests), None, self._timeout)
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
        status, out, err, _ = self._exec(shlex.join(["df", "-P", "-k", "--", self.host_path(path)]), None,
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

    # -- writes, put and get --------------------------------------------------------------

    def write_atomic(self, path: str, data: bytes, mode: int = 0o644, backup: bool = True) -> str | None:
        import io

        return self._install(normalize(path), lambda sftp, tmp: sftp.putfo(io.BytesIO(data), tmp), mode, backup)

    def append(self, path: str, data: bytes) -> None:
        def write(sftp: paramiko.SFTPClient, host: str) -> None:
            with sftp.open(host, "a") as handle:  # SFTP APPEND: the server does one write()
                handle.write(data)

        try:
            self._sftp_call(normalize(path), write)
        finally:
            self._forget()

    def remove(self, path: str) -> None:
        try:
            self._sftp_call(normalize(path), lambda sftp, host: sftp.remove(host))
        except FileNotFoundError:
            pass
        finally:
            self._forget()

    def symlink(self, link_text: str, path: str) -> None:
        self.remove(path)
        try:
            self._sftp_call(normalize(path), lambda sftp, host: sftp.symlink(link_text, host))
        finally:
            self._forget()

    def makedirs(self, path: str) -> None:
        args = ["mkdir", "-p", "--", self.host_path(normalize(path))]
        status, _, err, timed_out = self._exec(shlex.join(args), None, self._timeout)
        self._forget()
        if status != 0 or timed_out:
            raise TargetError(f"{self.name}: cannot create {path}: {err.decode(errors='replace').strip()}")

    def put(self, local: str | Path, path: str, mode: int | None = None, backup: bool = True) -> str | None:
        """Copy a local file to a machine path (temp + rename); returns the backup made, if any."""
        local = Path(local)
        final_mode = statmod.S_IMODE(local.stat().st_mode) if mode is None else mode
        return self._install(normalize(path), lambda sftp, tmp: sftp.put(str(local), tmp), final_mode, backup)

    def get(self, path: str, local: str | Path) -> Path:
        """Copy a machine file to a local path (written to a temp file, then renamed)."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.llmtpu-{secrets.token_hex(4)}")
        try:
            self._sftp_call(normalize(path), lambda sftp, host: sftp.get(host, str(tmp)))
            os.replace(tmp, local)
        finally:
            if tmp.exists():
                tmp.unlink()
        return local

    def _install(self, path: str, upload: Any, mode: int, backup: bool) -> str | None:
        host = self.host_path(path)
        folder = posixpath.dirname(host)
        backup_path = None
        if backup:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            backup_path = f"{BACKUP_DIR}/{stamp}{path}"
        args = ["sh", "-c", PREPARE_SCRIPT, "sh", folder, host, self.host_path(backup_path) if backup_path else ""]
        status, out, err, timed_out = self._exec(shlex.join(args), None, self._timeout)
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
