"""Fuzz `llmtpu doctor --root X --json` over mutated sample sysroots (issue 11 item 17).

Each round copies a sample, mutates one to three of its entries (delete, truncate, binary
garbage, chmod 000, replace with a FIFO, a folder, a symlink loop or a link escaping the root)
and runs the real CLI entry point in this process. Every round must give:

* no traceback and exactly one JSON document on stdout (schema llmtpu.doctor/1), exit 0/1/2;
* no "ok" without evidence: no check is ok while its evidence names a path the round made
  unreadable or empty (or a path under / above it);
* no read outside the root: an audit hook on ``open`` and ``os.listdir`` sees every path the
  doctor touches; resolved, each must be inside the root (or Python's own files).

Bounded by ``FUZZ_SECONDS`` (CI: well under 60 s); the seed is printed and can be replayed
with ``LLMTPU_FUZZ_SEED=N``. Run it as a non-root user too (README: tests/faults), where
mode-000 files are really unreadable.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmtpu.cli import main
from llmtpu.target import LocalTarget

SAMPLES = Path(__file__).parent.parent / "samples"
#: Wall-clock budget of the mutation loop (the whole test stays far below CI's 60 s).
FUZZ_SECONDS = float(os.environ.get("LLMTPU_FUZZ_SECONDS", "25"))
MAX_ROUNDS = 2000
#: Mutations after which the entry holds no data the doctor may call evidence.
NO_DATA = {"delete", "empty", "chmod000", "fifo", "folder", "loop", "escape"}

_audit: dict[str, Any] = {"roots": None, "allowed": (), "outside": [], "busy": False}


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    """Record every file or folder the doctor opens that resolves outside the root."""
    if _audit["roots"] is None or _audit["busy"] or event not in ("open", "os.listdir", "os.scandir"):
        return
    path = args[0] if args else None
    if isinstance(path, int) or path is None:
        return
    _audit["busy"] = True
    try:  # an audit hook must never raise into the code it watches
        real = os.path.realpath(os.fsdecode(path))
        if not any(real == r or real.startswith(r + os.sep) for r in _audit["roots"] + _audit["allowed"]):
            _audit["outside"].append(real)
    except Exception as exc:  # noqa: BLE001
        _audit["outside"].append(f"{path!r}: audit failed: {exc}")
    finally:
        _audit["busy"] = False


sys.addaudithook(_audit_hook)
# psutil reads this machine's /proc/stat when it is imported (its own boot-time bookkeeping,
# not a fact of the machine judged): import it before the first audited run.
import psutil  # noqa: E402,F401


@contextlib.contextmanager
def audited(root: Path) -> Iterator[list[str]]:
    _audit["outside"] = []
    _audit["roots"] = (os.path.realpath(root),)
    # Python's own modules (imports of the first run) and /dev/null are not the machine's files.
    _audit["allowed"] = tuple(os.path.realpath(p) for p in sys.path if p) + ("/dev/null",)
    try:
        yield _audit["outside"]
    finally:
        _audit["roots"] = None


def links_confined(tmp: Path) -> bool:
    """Does the local target refuse to read through a link that leaves the root?"""
    outside = tmp / "probe-outside"
    outside.write_text("outside")
    root = tmp / "probe-root"
    root.mkdir()
    (root / "x").symlink_to(outside)
    try:
        return LocalTarget(str(root)).read_bytes("/x") != b"outside"
    except OSError:
        return True
    except Exception:  # a TargetError: refused, as it should be
        return True


def entries(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(Path(folder) / name)
    return found


def mutate(rng: random.Random, root: Path, outside: Path, kinds: list[str]) -> list[tuple[str, Path]]:
    """One to three mutations; returns (kind, machine path) of each."""
    done = []
    for _ in range(rng.randint(1, 3)):
        candidates = entries(root)
        if not candidates:
            break
        host = rng.choice(candidates)
        try:
            kind = mutate_one(rng, host, rng.choice(kinds), outside)
        except PermissionError:  # non-root, inside a folder an earlier mutation made mode 000
            continue
        done.append((kind, Path("/") / host.relative_to(root)))
    return done


def mutate_one(rng: random.Random, host: Path, kind: str, outside: Path) -> str:
    is_file = host.is_file() and not host.is_symlink()
    if kind in ("truncate", "garbage") and not is_file:
        kind = "delete"
    if kind == "chmod000" and host.is_symlink():
        kind = "delete"
    if kind == "chmod000":
        host.chmod(0)
    elif kind == "truncate":
        before = host.read_bytes()
        data = before[: rng.randint(0, max(0, len(before) - 1))]
        host.write_bytes(data)
        kind = "empty" if before and not data else "truncate"  # a cut file still holds what it holds
    elif kind == "garbage":
        host.write_bytes(rng.randbytes(rng.randint(1, 5000)))
    else:
        remove(host)
        if kind == "fifo":
            os.mkfifo(host)
        elif kind == "folder":
            host.mkdir()
        elif kind == "loop":
            host.symlink_to(host.name)
        elif kind == "escape":
            host.symlink_to(str(outside) if rng.random() < 0.5 else "../" * 12 + str(outside).lstrip("/"))
    return kind


def remove(host: Path) -> None:
    if host.is_symlink() or not host.is_dir():
        host.unlink(missing_ok=True)
        return
    host.chmod(0o755)
    for folder, dirs, _ in os.walk(host):  # a chmod-000 folder below would stop rmtree
        for name in dirs:
            child = Path(folder) / name
            if not child.is_symlink():
                child.chmod(0o755)
    shutil.rmtree(host)


def spoils(mutated: str, source: str) -> bool:
    """The evidence ``source`` is the mutated entry or lies under it."""
    return source == mutated or source.startswith(mutated.rstrip("/") + "/")


def run_doctor_json(root: Path) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["doctor", "--root", str(root), "--json"])
        except BaseException:  # noqa: BLE001 - counting tracebacks is the point
            import traceback

            return None, out.getvalue(), traceback.format_exc()
    return code, out.getvalue(), err.getvalue()


def per_card_view_error(root: Path) -> str | None:
    """The --cards data must survive the same trees (and read inside the root only)."""
    from llmtpu.doctor.checks import DoctorOptions, Facts, chip_rows
    from llmtpu.doctor.report import chips_json

    try:
        json.dumps(chips_json(chip_rows(Facts(LocalTarget(str(root)), DoctorOptions()))))
    except Exception:  # noqa: BLE001
        import traceback

        return traceback.format_exc()
    return None


def judge(root: Path, mutations: list[tuple[str, Path]]) -> list[str]:
    """Every promise one round breaks, as lines naming the round."""
    with audited(root) as outside:
        code, stdout, stderr = run_doctor_json(root)
        cards_error = per_card_view_error(root)
    problems = []
    where = f"{root.name} {[(k, str(p)) for k, p in mutations]}"
    if code is None:
        return [f"traceback on {where}:\n{stderr}"]
    if cards_error:
        problems.append(f"per-card view failed on {where}:\n{cards_error}")
    try:
        document = json.loads(stdout)
    except ValueError:
        return [f"not one JSON document (exit {code}) on {where}: {stdout[:200]!r} {stderr[:200]!r}"]
    if document.get("schema") != "llmtpu.doctor/1" or code not in (0, 1, 2):
        problems.append(f"schema {document.get('schema')!r}, exit {code} on {where}")
    # root reads mode-000 files anyway: there chmod 000 spoils nothing.
    no_data = NO_DATA - ({"chmod000"} if os.geteuid() == 0 else set())
    spoiled = [str(p) for kind, p in mutations if kind in no_data]
    for check in document["checks"]:
        if check["status"] != "ok":
            continue
        for item in check["evidence"]:
            source = item["source"]
            if source.startswith("/") and any(spoils(p, source) for p in spoiled):
                problems.append(f"{check['id']} ok on {source} ({item['value']!r}) that is spoiled on {where}")
    problems += [f"read outside the root: {p} on {where}" for p in sorted(set(outside))]
    return problems


def test_doctor_survives_mutated_sysroots(tmp_path: Path) -> None:
    seed = int(os.environ.get("LLMTPU_FUZZ_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"doctor fuzz seed {seed} (replay: LLMTPU_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    outside = tmp_path / "outside-secret"
    outside.write_text("SECRET-OUTSIDE-THE-ROOT\n")
    kinds = ["delete", "truncate", "garbage", "chmod000", "fifo", "folder", "loop"]
    if links_confined(tmp_path):
        kinds.append("escape")
    print(f"mutations: {', '.join(kinds)}" + ("" if "escape" in kinds else
          " (no escaping links: this Target still follows them; see the report)"))
    samples = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())
    # Every unmutated sample first: the baseline must keep every promise too.
    failures = []
    for name in samples:
        root = tmp_path / f"base-{name}"
        shutil.copytree(SAMPLES / name, root, symlinks=True)
        failures += judge(root, [])
    deadline = time.monotonic() + FUZZ_SECONDS
    rounds = 0
    while time.monotonic() < deadline and rounds < MAX_ROUNDS:
        rounds += 1
        root = tmp_path / f"r{rounds}"
        shutil.copytree(SAMPLES / rng.choice(samples), root, symlinks=True)
        failures += judge(root, mutate(rng, root, outside, kinds))
        remove(root)
    print(f"{rounds} mutated trees, {len(failures)} broken promises")
    assert rounds >= 20, f"only {rounds} rounds in {FUZZ_SECONDS} s"
    assert not failures, f"seed {seed}:\n" + "\n".join(failures[:20])


def test_unreadable_proc_gives_one_json_document(tmp_path: Path) -> None:
    """issue 11 item 17: `chmod 000 proc` (as non-root) once gave a PermissionError traceback."""
    for name in ("pcie-host-ok", "soc-board-ok"):
        root = tmp_path / name
        shutil.copytree(SAMPLES / name, root, symlinks=True)
        (root / "proc").chmod(0)
        try:
            problems = judge(root, [("chmod000", Path("/proc"))])
        finally:
            (root / "proc").chmod(0o755)
        assert not problems, problems
