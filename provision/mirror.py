"""An offline mirror: a folder of Sophgo's files plus a manifest any static web server can serve.

Manifest format (``llmtpu-mirror.json`` at the top of the folder, schema ``llmtpu.mirror/1``)::

    {
      "schema": "llmtpu.mirror/1",
      "created": "2024-07-20T10:00:00Z",
      "files": [
        {"name": "sophon-driver_0.5.1_amd64.deb", "size": 1234, "sha256": "<64 hex>"},
        {"name": "sdcard/sdcard.tgz", "size": 99, "sha256": "..."}
      ]
    }

``name`` is the file's path relative to the folder, with ``/`` separators; it never starts
with ``/`` and has no ``..`` or ``.`` component (a manifest that says otherwise is refused).
A client fetches ``<mirror URL>/llmtpu-mirror.json``, then ``<mirror URL>/<name>``, and
refuses any file whose size or sha256 differ. Files whose name starts with ``.`` (partial
downloads, editor files) are not listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

MANIFEST_NAME = "llmtpu-mirror.json"
MANIFEST_SCHEMA = "llmtpu.mirror/1"
HASH_CHUNK = 1 << 20


class MirrorError(Exception):
    """A mirror folder or manifest is unusable; the message is one actionable line."""


@dataclass(frozen=True)
class MirrorFile:
    name: str
    size: int
    sha256: str


def safe_name(name: str) -> bool:
    """A manifest name may only point inside the mirror folder."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts) and posixpath.normpath(name) == name


def sha256_file(path: str, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def scan(folder: str) -> list[str]:
    """Relative names of the regular files to list, sorted; hidden files and the manifest left out."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith(".") or filename == MANIFEST_NAME:
                continue
            full = os.path.join(dirpath, filename)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            names.append(os.path.relpath(full, folder).replace(os.sep, "/"))
    return sorted(names)


def create_manifest(folder: str, on_bytes: Callable[[int], None] | None = None) -> list[MirrorFile]:
    """Hash every file under ``folder`` and write the manifest atomically beside them."""
    if not os.path.isdir(folder):
        raise MirrorError(f"{folder}: not a folder; give the folder that holds the files to serve")
    files = []
    for name in scan(folder):
        path = os.path.join(folder, *name.split("/"))
        files.append(MirrorFile(name, os.path.getsize(path), sha256_file(path, on_bytes)))
    if not files:
        raise MirrorError(f"{folder}: no files to list; copy the fetched debs or sdcard.tgz into it first")
    document = {
        "schema": MANIFEST_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files],
    }
    fd, tmp = tempfile.mkstemp(prefix=".llmtpu-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(folder, MANIFEST_NAME))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return files


def parse_manifest(data: bytes, where: str) -> dict[str, MirrorFile]:
    """Validate a manifest document; every problem is named with ``where`` it came from."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MirrorError(f"{where}: not a JSON manifest ({exc}); recreate it with `llmtpu mirror create`") from exc
    if not isinstance(document, dict) or document.get("schema") != MANIFEST_SCHEMA:
        raise MirrorError(f"{where}: schema is not {MANIFEST_SCHEMA}; recreate it with `llmtpu mirror create`")
    entries: dict[str, MirrorFile] = {}
    for row in document.get("files", []):
        try:
            entry = MirrorFile(str(row["name"]), int(row["size"]), str(row["sha256"]).lower())
        except (KeyError, TypeError, ValueError) as exc:
            raise MirrorError(f"{where}: malformed file entry {row!r}") from exc
        if not safe_name(entry.name):
            raise MirrorError(f"{where}: file name {entry.name!r} points outside the mirror; refusing the manifest")
        if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256) or entry.size < 0:
            raise MirrorError(f"{where}: bad size or sha256 for {entry.name}")
        entries[entry.name] = entry
    return entries
