"""Offline bundles: the models/ and deploy/ trees of LLM-TPU plus extras, with a sha256 manifest.

A bundle is a folder ``OUT`` holding ``payload/`` (the files, as they will sit on the board) and
``manifest.json`` (path, size, sha256 and mode of every file, the in-bundle symlinks, and the
manifest's own digest over its canonical JSON). The digest names the release on the board, so
the same bundle always lands in the same place and a changed one never overwrites a good one.

Every file is hashed exactly once while it is copied. ``verify`` re-hashes, but remembers the
(size, mtime, ctime, inode) of each file it has hashed in ``.verified.json`` beside the
manifest: an untouched bundle is re-checked by stat alone, and any write to a file (which moves
its ctime, something ``touch`` cannot undo) forces the full hash again.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat as statmod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "llmtpu.bundle/1"
MANIFEST = "manifest.json"
PAYLOAD = "payload"
VERIFIED_CACHE = ".verified.json"
CHUNK = 1 << 20
#: The LLM-TPU folders FAQ Q1 says to copy to an offline board.
COLLECTED = ("models", "deploy")
ARCHES = ("soc", "pcie")

#: Called with the number of bytes just read, so a caller can draw a progress bar.
Progress = Callable[[int], None]


class BundleError(Exception):
    """The bundle cannot be built or trusted; the message names the path and what is wrong."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    mode: int


@dataclass(frozen=True)
class LinkEntry:
    path: str
    target: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    links: tuple[LinkEntry, ...] = ()
    model: str | None = None
    arch: str | None = None
    digest: str = field(default="")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def body(self) -> dict[str, object]:
        """Everything the digest covers (the manifest minus its digest)."""
        return {
            "schema": SCHEMA,
            "model": self.model,
            "arch": self.arch,
            "files": [asdict(f) for f in self.files],
            "links": [asdict(link) for link in self.links],
        }

    def computed_digest(self) -> str:
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(canonical).hexdigest()

    def to_json(self) -> str:
        return json.dumps({**self.body(), "digest": self.computed_digest()}, indent=2, sort_keys=True) + "\n"


def check_relative(path: str, what: str = "path") -> str:
    """Refuse a bundle path that is absolute, climbs out with .., or could confuse a shell parser."""
    if not path or path.startswith("/") or "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise BundleError(f"{what} {path!r} is not a plain relative path inside the bundle")
    clean = posixpath.normpath(path)
    if clean != path or clean == "." or clean.startswith("../") or clean == "..":
        raise BundleError(f"{what} {path!r} escapes the bundle or is not normalized")
    if any(part.startswith(".llmtpu") for part in clean.split("/")):
        raise BundleError(f"{what} {path!r} uses the reserved name .llmtpu")
    return clean


def check_link(path: str, target: str) -> None:
    """A link target must be plain text (no control characters) and relative, never climbing out."""
    if not target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        raise BundleError(f"link {path!r} -> {target!r}: the target is empty or holds a control character "
                          "(newline, tab, ...); rename the target in the tree and rebuild the bundle")
    if target.startswith("/"):
        raise BundleError(f"link {path!r} -> {target!r} points outside the bundle (absolute target)")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise BundleError(f"link {path!r} -> {target!r} points outside the bundle")


#: The kernel's own limit on links followed while resolving one path (ELOOP).
MAX_LINK_HOPS = 40


def check_link_set(files: Iterable[str], links: Sequence[LinkEntry]) -> None:
    """Resolve every link as the board will, through the other links of the bundle, and refuse escapes.

    A lexical check of each link alone is not enough: ``a/up -> ..`` then ``a/up/a/up/x -> ../../..``
    each look inside, yet the second climbs above the release. So no entry may sit under a link of
    the bundle (the board would write through it), and each target is walked component by
    component, following in-bundle links, never above the bundle's root.
    """
    targets = {link.path: link.target for link in links}
    for path in [*files, *targets]:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if above in targets:
                raise BundleError(f"{path!r} sits under the link {above!r} -> {targets[above]!r}; "
                                  "a bundle entry may not be reached through a link, rebuild without it")
    for link in links:
        check_link(link.path, link.target)
        resolve_link(link, targets)


def resolve_link(link: LinkEntry, targets: dict[str, str]) -> list[str]:
    """The bundle path a link ends at, as folder names; BundleError when it climbs out or loops."""
    where = link.path.split("/")[:-1]
    pending = link.target.split("/")
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if not where:
                raise BundleError(f"link {link.path!r} -> {link.target!r} points outside the bundle "
                                  "(through the bundle's other links)")
            where.pop()
            continue
        where.append(name)
        here = "/".join(where)
        if here in targets:
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise BundleError(f"link {link.path!r} -> {link.target!r} loops through other links; "
                                  "rebuild the bundle without the loop")
            where.pop()
            pending = targets[here].split("/") + pending
            if targets[here].startswith("/"):
                raise BundleError(f"link {link.path!r} -> {link.target!r} goes through {here!r} -> "
                                  f"{targets[here]!r}, outside the bundle")
    return where


def check_mode(path: str, mode: object) -> int:
    """Only permission bits travel: no setuid/setgid/sticky, no world-writable file, nothing out of range."""
    if type(mode) is not int or not 0 <= mode <= 0o777 or mode & 0o002:
        shown = f"0o{mode:o}" if type(mode) is int and mode >= 0 else repr(mode)
        raise BundleError(f"file {path!r} has mode {shown}: only permission bits up to 0o775 (no setuid, "
                          "setgid, sticky or world-writable) are deployed; chmod it and rebuild the bundle")
    return mode


def hash_file(path: Path, progress: Progress | None = None, limit: int | None = None) -> str:
    """sha256 of a file (or its first ``limit`` bytes), streamed in 1 MiB reads."""
    digest = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def copy_hashed(src: Path, dest: Path, progress: Progress | None = None) -> str:
    """Copy src to dest and return the sha256 of exactly the bytes written (one read pass)."""
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dest, "wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


@dataclass(frozen=True)
class Source:
    """One file or link to put in the bundle: where it is now, where it goes in payload/."""

    origin: Path
    path: str


def collect(from_dirs: Sequence[Path], model: str | None, extras: Sequence[Path]) -> list[Source]:
    """The LLM-TPU models/ and deploy/ trees of each --from folder, then the extras under extra/."""
    sources: dict[str, Source] = {}
    for base in from_dirs:
        if not base.is_dir():
            raise BundleError(f"--from {base}: not a folder; give an LLM-TPU checkout holding models/ or deploy/")
        present = [name for name in COLLECTED if (base / name).is_dir()]
        if not present:
            raise BundleError(f"--from {base}: holds neither models/ nor deploy/; run ./run.sh there first")
        for name in present:
            top = base / name
            roots = [top]
            if name == "models" and model:
                roots = [top / model]
                if not roots[0].is_dir():
                    have = ", ".join(sorted(p.name for p in top.iterdir() if p.is_dir())) or "none"
                    raise BundleError(f"--model {model}: no {top}/{model} folder (models there: {have})")
            for root in roots:
                for origin in walk(root):
                    rel = f"{name}/{origin.relative_to(top).as_posix()}"
                    sources[rel] = Source(origin, check_relative(rel))
    for extra in extras:
        if not extra.is_file():
            raise BundleError(f"--extra {extra}: not a file; give a .deb, an engine binary or another file")
        rel = check_relative(f"extra/{extra.name}")
        sources[rel] = Source(extra, rel)
    if not sources:
        raise BundleError("nothing to bundle: the --from folders hold no files")
    return [sources[key] for key in sorted(sources)]


def walk(root: Path) -> Iterable[Path]:
    """Files and symlinks under root, without following linked folders."""
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in sorted(dirs):
            if (base / name).is_symlink():
                yield base / name
        for name in sorted(files):
            yield base / name


def create_bundle(
    out: Path,
    sources: Sequence[Source],
    model: str | None = None,
    arch: str | None = None,
    start: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Copy the sources into out/payload, hashing as they stream, and write the manifest last.

    ``out`` must not exist yet or be empty: a bundle is written once, never merged into.
    """
    if arch is not None and arch not in ARCHES:
        raise BundleError(f"--arch {arch}: must be one of {', '.join(ARCHES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: already exists and is not empty; choose a new folder for the bundle")
    files: list[FileEntry] = []
    links: list[LinkEntry] = []
    plan: list[tuple[Source, os.stat_result]] = []
    for source in sources:
        st = os.lstat(source.origin)
        if statmod.S_ISLNK(st.st_mode):
            target = os.readlink(source.origin)
            check_link(source.path, target)
            links.append(LinkEntry(source.path, target))
        elif statmod.S_ISREG(st.st_mode):
            check_mode(source.path, statmod.S_IMODE(st.st_mode))
            plan.append((source, st))
        else:
            raise BundleError(f"{source.origin}: not a regular file or link; remove it from the tree")
    check_link_set([source.path for source, _ in plan], links)
    if start:
        start(sum(st.st_size for _, st in plan))
    payload = out / PAYLOAD
    payload.mkdir(parents=True, exist_ok=True)
    for source, st in plan:
        dest = payload / source.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        sha = copy_hashed(source.origin, dest, progress)
        mode = statmod.S_IMODE(st.st_mode)
        os.chmod(dest, mode)
        files.append(FileEntry(source.path, dest.stat().st_size, sha, mode))
    for link in links:
        dest = payload / link.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link.target, dest)
    manifest = Manifest(tuple(files), tuple(links), model, arch)
    manifest = Manifest(manifest.files, manifest.links, model, arch, manifest.computed_digest())
    write_atomic(out / MANIFEST, manifest.to_json())
    remember_verified(out, manifest)
    return manifest


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_manifest(out: Path) -> Manifest:
    """Read and check the manifest: schema, field types, safe paths, links and modes, and its own digest.

    Everything the board will be told (names, link targets, modes) is checked here, before
    anything is sent.
    """
    path = out / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: no manifest; build the bundle with `llmtpu bundle create`") from exc
    except RecursionError as exc:
        raise BundleError(f"{path}: unreadable manifest (nested too deeply); rebuild the bundle") from exc
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc}); rebuild the bundle") from exc
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise BundleError(f"{path}: not a {SCHEMA} manifest; rebuild the bundle")
    try:
        files = tuple(file_entry(f) for f in typed(raw, "files", list))
        links = tuple(LinkEntry(check_relative(typed(x, "path", str), "link"), typed(x, "target", str))
                      for x in typed(raw, "links", list))
        labels = [raw.get(key) for key in ("model", "arch")]
        if any(label is not None and not isinstance(label, str) for label in labels):
            raise BundleError("model and arch must be text")
        manifest = Manifest(files, links, labels[0], labels[1], typed(raw, "digest", str))
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}; rebuild the bundle") from exc
    seen = [f.path for f in files] + [x.path for x in links]
    if len(set(seen)) != len(seen):
        raise BundleError(f"{path}: a path is listed twice; rebuild the bundle")
    try:
        check_link_set([f.path for f in files], links)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    if manifest.computed_digest() != manifest.digest:
        raise BundleError(f"{path}: manifest digest mismatch (edited after it was built); rebuild the bundle")
    return manifest


def typed(record: object, key: str, kind: type) -> Any:
    """record[key] when it is of the kind the schema says, else one line naming the field."""
    if not isinstance(record, dict) or key not in record:
        raise BundleError(f"malformed manifest (an entry has no {key!r})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"malformed manifest ({key!r} is {type(value).__name__}, not {kind.__name__})")
    return value


def file_entry(record: object) -> FileEntry:
    path = check_relative(typed(record, "path", str))
    size, sha256 = typed(record, "size", int), typed(record, "sha256", str)
    if size < 0 or len(sha256) != 64 or sha256.strip("0123456789abcdef"):
        raise BundleError(f"file {path!r}: size {size} or sha256 {sha256[:70]!r} is not valid")
    return FileEntry(path, size, sha256, check_mode(path, record.get("mode") if isinstance(record, dict) else None))


@dataclass(frozen=True)
class VerifyResult:
    manifest: Manifest
    hashed_bytes: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def remember_verified(out: Path, manifest: Manifest) -> None:
    keys = {f.path: stat_key(os.lstat(out / PAYLOAD / f.path)) for f in manifest.files}
    write_atomic(out / VERIFIED_CACHE, json.dumps({"digest": manifest.digest, "files": keys}))


def verified_cache(out: Path, manifest: Manifest) -> dict[str, list[int]]:
    try:
        raw = json.loads((out / VERIFIED_CACHE).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(raw, dict) or raw.get("digest") != manifest.digest or not isinstance(raw.get("files"), dict):
        return {}
    return raw["files"]


def payload_file(out: Path, rel: str) -> Path:
    """The payload path of a manifest entry, refusing any symlinked folder on the way."""
    current = out / PAYLOAD
    for part in rel.split("/"):
        current = current / part
        if current.is_symlink():
            raise BundleError(f"{current}: is a symlink where the manifest lists a file; rebuild the bundle")
    return current


def verify_bundle(
    out: Path,
    rehash: bool = False,
    start: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """Check every payload file against the manifest; hash only what changed since the last check."""
    manifest = load_manifest(out)
    cache = {} if rehash else verified_cache(out, manifest)
    problems: list[str] = []
    to_hash: list[tuple[FileEntry, Path]] = []
    for entry in manifest.files:
        path = payload_file(out, entry.path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            problems.append(f"{entry.path}: missing from the bundle")
            continue
        if not statmod.S_ISREG(st.st_mode):
            problems.append(f"{entry.path}: not a regular file")
        elif st.st_size != entry.size:
            problems.append(f"{entry.path}: size {st.st_size}, manifest says {entry.size}")
        elif cache.get(entry.path) != stat_key(st):
            to_hash.append((entry, path))
    for link in manifest.links:
        path = out / PAYLOAD / link.path
        if not path.is_symlink() or os.readlink(path) != link.target:
            problems.append(f"{link.path}: link missing or not pointing to {link.target}")
    if start:
        start(sum(entry.size for entry, _ in to_hash))
    for entry, path in to_hash:
        if hash_file(path, progress) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest (file changed or corrupt)")
    if not problems and to_hash:
        remember_verified(out, manifest)
    return VerifyResult(manifest, sum(entry.size for entry, _ in to_hash), tuple(problems))


def remove_bundle(out: Path) -> None:
    """Remove a half-built bundle after a failed create, so a retry starts clean."""
    shutil.rmtree(out, ignore_errors=True)
