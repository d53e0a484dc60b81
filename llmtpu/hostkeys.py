"""SSH host key verification: known_hosts files, strict by default, never silently trusting.

A host's key is checked against the user's OpenSSH known_hosts and llmtpu's own file
(``$XDG_CONFIG_HOME/llmtpu/known_hosts``, default ``~/.config/llmtpu/known_hosts``); a line in
either that matches is enough, as with OpenSSH. Three outcomes besides a match:

* unknown host: refused with its fingerprint and the exact command to trust it, unless the
  caller asked for ``accept_new`` (OpenSSH's ``StrictHostKeyChecking=accept-new``), which
  records the key in llmtpu's file;
* changed key (the host is known, with other keys): always refused, loudly, naming the file
  and line that hold the old key;
* revoked key (``@revoked`` line): always refused.

The check runs as the paramiko ``MissingHostKeyPolicy`` of a client that has no host keys
loaded, so every connection reaches it; paramiko's own auto-adding policies are never used.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

SSH_PORT = 22

#: Key algorithm names whose keys are the same family (one blob type, several signatures).
_FAMILY = {"rsa-sha2-256": "ssh-rsa", "rsa-sha2-512": "ssh-rsa"}


def key_family(name: str) -> str:
    return _FAMILY.get(name, name)


def host_key_name(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``host`` on port 22, ``[host]:port`` elsewhere."""
    return host if port == SSH_PORT else f"[{host}]:{port}"


def fingerprint(blob: bytes) -> str:
    """OpenSSH's default fingerprint: ``SHA256:`` + unpadded base64 of the key blob's digest."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def describe_key(key: paramiko.PKey) -> str:
    """``ED25519 SHA256:...``, the way ssh prints a key for a person to compare."""
    algorithm = key.get_name().replace("ssh-", "").split("-")[0].upper()
    return f"{algorithm} {fingerprint(key.asbytes())}"


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "llmtpu"


def default_own_file() -> Path:
    return user_config_dir() / "known_hosts"


def default_user_files() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    return [home / ".ssh" / "known_hosts", home / ".ssh" / "known_hosts2"]


@dataclass(frozen=True)
class KnownKey:
    """One known_hosts line's key, with where it came from (for messages)."""

    key_type: str
    blob: bytes
    file: Path
    line: int
    marker: str | None = None  # None, "revoked" or "cert-authority"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def _hashed_match(pattern: str, name: str) -> bool:
    """``|1|salt|hash`` entries written with HashKnownHosts (the Debian/Ubuntu default)."""
    parts = pattern.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2])
        want = base64.b64decode(parts[3])
    except ValueError:
        return False
    got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(got, want)


def names_match(field: str, name: str) -> bool:
    """OpenSSH host pattern list: comma separated, ``*``/``?`` wildcards, ``!`` negation."""
    matched = False
    for pattern in field.split(","):
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        if pattern.startswith("|"):
            hit = _hashed_match(pattern, name)
        elif "*" in pattern or "?" in pattern:
            hit = fnmatch.fnmatchcase(name.lower(), pattern.lower().replace("[", "[[]"))
        else:
            hit = pattern.lower() == name.lower()
        if hit and negate:
            return False
        matched = matched or hit
    return matched


def read_known_hosts(path: Path, name: str) -> list[KnownKey]:
    """Keys one file holds for a host name; unreadable or malformed lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = None
        if fields[0].startswith("@"):
            marker = fields[0][1:]
            fields = fields[1:]
        if len(fields) < 3 or not names_match(fields[0], name):
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except ValueError:
            continue
        found.append(KnownKey(fields[1], blob, path, number, marker))
    return found


class HostKeyError(paramiko.SSHException):
    """A host key was not accepted; ``str()`` is the message for the user."""

    kind = "host-key-refused"

    def __init__(self, message: str, name: str, key: paramiko.PKey) -> None:
        super().__init__(message)
        self.name = name
        self.key = key


class HostKeyUnknown(HostKeyError):
    kind = "host-key-unknown"


class HostKeyChanged(HostKeyError):
    kind = "host-key-changed"


class HostKeyRevoked(HostKeyError):
    kind = "host-key-revoked"


class HostKeyStore:
    """The known_hosts files to check, and llmtpu's own file where new keys are recorded."""

    def __init__(self, user_files: Sequence[Path] | None = None, own_file: Path | None = None) -> None:
        self.user_files = list(default_user_files() if user_files is None else user_files)
        self.own_file = own_file or default_own_file()
        self._lock = threading.Lock()

    @property
    def files(self) -> list[Path]:
        return [*self.user_files, self.own_file]

    def lookup(self, name: str) -> list[KnownKey]:
        with self._lock:
            return [k for path in self.files for k in read_known_hosts(path, name)]

    def known_types(self, name: str) -> set[str]:
        """Key families on record for a host (to ask the server for a key we can check)."""
        return {key_family(k.key_type) for k in self.lookup(name) if k.marker is None}

    def add(self, name: str, key: paramiko.PKey) -> None:
        """Append ``name type base64`` to llmtpu's file (created 0600, folder 0700)."""
        line = f"{name} {key.get_name()} {key.get_base64()}\n".encode()
        with self._lock:
            self.own_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.own_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write with O_APPEND: never interleaved with another
            finally:
                os.close(fd)

    def verify(self, name: str, key: paramiko.PKey, accept_new: bool = False,
               trust_command: str | None = None) -> str:
        """Accept the key or raise a HostKeyError. Returns "known" or "added"."""
        known = self.lookup(name)
        blob = key.asbytes()
        revoked = [k for k in known if k.marker == "revoked" and k.blob == blob]
        if revoked:
            raise HostKeyRevoked(
                f"host key of {name} ({describe_key(key)}) is REVOKED in {revoked[0].file}:{revoked[0].line}; "
                "refusing to connect", name, key)
        plain = [k for k in known if k.marker is None]
        if any(k.blob == blob for k in plain):
            return "known"
        if plain:
            old = plain[0]
            raise HostKeyChanged(
                f"HOST KEY CHANGED for {name}: it now presents {describe_key(key)}, but "
                f"{old.file}:{old.line} records {old.key_type} {old.fingerprint}. This is a re-installed "
                "machine or someone intercepting the connection; refused. Check the new fingerprint on "
                f"the machine's console (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then remove the old "
                f"line: ssh-keygen -R '{name}' -f {old.file}", name, key)
        if accept_new:
            self.add(name, key)
            return "added"
        command = trust_command or f"llmtpu hosts trust {name}"
        raise HostKeyUnknown(
            f"unknown host key for {name} ({describe_key(key)}); refused. If this fingerprint is the "
            f"machine's, trust it with: {command}   (or rerun with --accept-new)", name, key)


class StrictPolicy(paramiko.MissingHostKeyPolicy):
    """paramiko policy that defers to a HostKeyStore; installed on every client llmtpu opens.

    The client it is installed on has no host keys loaded, so paramiko calls it for every
    server, and the store decides: known, changed, revoked, unknown (or accepted as new).
    """

    def __init__(self, store: HostKeyStore, accept_new: bool = False, trust_command: str | None = None) -> None:
        self.store = store
        self.accept_new = accept_new
        self.trust_command = trust_command
        self.outcome: str | None = None

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        self.outcome = self.store.verify(hostname, key, accept_new=self.accept_new,
                                         trust_command=self.trust_command)


def disabled_key_algorithms(known_types: Iterable[str], offered: Iterable[str]) -> list[str]:
    """Host key algorithms to turn off so the server shows a key of a type we have on record.

    OpenSSH prefers the key types known for a host; without this, a host known by its RSA key
    would show its ed25519 key first and look "changed".
    """
    known = set(known_types)
    if not known:
        return []
    usable = [a for a in offered if key_family(a) in known]
    if not usable:
        return []
    return [a for a in offered if key_family(a) not in known]


def fetch_host_key(host: str, port: int, timeout: float, sock: Any = None) -> paramiko.PKey:
    """The key a server presents, without logging in (for `llmtpu hosts trust`)."""
    import socket

    own_sock = sock is None
    if own_sock:
        sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()
