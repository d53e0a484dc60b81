"""The support report: everything LLM-TPU's issue template asks for, in one archive.

Secrets stay out by construction: the archive is built only from an allow-list of named facts
(the doctor's JSON, a few version files, the driver's kernel-log lines, the commit id and date
of an LLM-TPU checkout, versions of three Python packages) plus the one log the user names.
Nothing walks a folder, reads a home directory, a key, a git config or the environment. The
user's log and the kernel log are free text, so their lines pass through ``redact_lines``
(doctor/explain.py): password/token/secret values, URL credentials and private-key blocks.

Everything on the machine is read through a Target, so the same code serves a sysroot, this
machine and (later) a board over SSH. The archive itself is written on this computer.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from typing import Any

from llmtpu import __version__
from llmtpu.doctor import facts
from llmtpu.doctor.checks import DoctorOptions, Facts
from llmtpu.doctor.explain import DoctorEvidence, Match, default_matcher, match_json, redact_lines
from llmtpu.doctor.kernel_log import scan_kernel_log
from llmtpu.doctor.report import Report, run_doctor
from llmtpu.target import Target, TargetError

REPORT_SCHEMA = "llmtpu.report/1"
#: Python packages the LLM-TPU issue template asks about, with the distribution names tried.
PYTHON_PACKAGES = (("transformers", ("transformers",)), ("torch", ("torch",)), ("tpu-mlir", ("tpu_mlir", "tpu-mlir")))
NOT_INSTALLED = "not installed"
#: An engine log larger than this keeps only its last part (the error is nearly always there).
ENGINE_LOG_LIMIT = 8 << 20
#: Read limit for a git object: a commit object is a few hundred bytes; a bigger one is not a commit.
GIT_OBJECT_LIMIT = 1 << 16

# ---------------------------------------------------------------------------------------
# Versions of this Python environment and of an LLM-TPU checkout

def package_versions() -> dict[str, str]:
    """transformers, torch, tpu-mlir as installed for the Python running llmtpu."""
    versions = {}
    for label, names in PYTHON_PACKAGES:
        versions[label] = NOT_INSTALLED
        for name in names:
            try:
                versions[label] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


@dataclass(frozen=True)
class GitCommit:
    sha: str | None
    date: str | None  # committer date, "2024-05-07 20:50:07 +0800"
    problem: str | None = None

    def describe(self) -> str:
        if self.sha is None:
            return f"unknown: {self.problem}"
        return f"{self.sha} ({self.date or 'date unknown: ' + (self.problem or '')})"


_SHA = re.compile(r"[0-9a-f]{40}")
_REF = re.compile(r"refs/[A-Za-z0-9._/-]+")


def _read(target: Target, path: str, limit: int = 4096) -> str:
    return target.read_text(path, limit=limit).strip()


def _ref_sha(target: Target, git_dir: str, ref: str) -> str | None:
    try:
        return _read(target, f"{git_dir}/{ref}")
    except FileNotFoundError:
        pass
    try:
        packed = target.read_text(f"{git_dir}/packed-refs", limit=16 << 20)
    except FileNotFoundError:
        return None
    for line in packed.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1] == ref:
            return fields[0]
    return None


def parse_commit_date(raw_object: bytes) -> str | None:
    """Committer date of a loose git commit object (zlib data: header, then the commit text)."""
    try:
        data = zlib.decompress(raw_object)
    except zlib.error:
        return None
    header, _, body = data.partition(b"\0")
    if not header.startswith(b"commit "):
        return None
    for line in body.split(b"\n"):
        if not line:
            break  # end of the headers: the message follows
        if line.startswith(b"committer "):
            match = re.search(rb" (\d+) ([+-])(\d\d)(\d\d)$", line)
            if not match:
                return None
            sign = 1 if match.group(2) == b"+" else -1
            zone = timezone(sign * timedelta(hours=int(match.group(3)), minutes=int(match.group(4))))
            when = datetime.fromtimestamp(int(match.group(1)), zone)
            return when.strftime("%Y-%m-%d %H:%M:%S %z")
    return None


def read_git_commit(target: Target, checkout: str) -> GitCommit:
    """HEAD's commit id and date from a checkout's .git files, without running git.

    Reads only HEAD, the one ref it names (or packed-refs) and that commit's loose object:
    never the config (it may hold a token in a remote URL), never the reflog (names, emails).
    """
    git_dir = f"{checkout.rstrip('/')}/.git"
    try:
        st = target.lstat(git_dir)
        if st is None:
            return GitCommit(None, None, f"{git_dir} missing: not a git checkout")
        if st.kind != "dir":
            return GitCommit(None, None, f"{git_dir} is not a folder (a worktree?); give the main checkout")
        head = _read(target, f"{git_dir}/HEAD")
        if head.startswith("ref:"):
            ref = head[4:].strip()
            if not _REF.fullmatch(ref) or ".." in ref:
                return GitCommit(None, None, f"{git_dir}/HEAD names an odd ref")
            sha = _ref_sha(target, git_dir, ref)
            if sha is None:
                return GitCommit(None, None, f"{ref} has no commit yet")
        else:
            sha = head
        if not _SHA.fullmatch(sha):
            return GitCommit(None, None, "HEAD is not a commit id")
        try:
            raw = target.read_bytes(f"{git_dir}/objects/{sha[:2]}/{sha[2:]}", limit=GIT_OBJECT_LIMIT)
        except FileNotFoundError:
            return GitCommit(sha, None, f"packed; `git -C {checkout} log -1 --format=%cd` shows it")
        date = parse_commit_date(raw)
        return GitCommit(sha, date, None if date else "commit object unreadable")
    except (OSError, TargetError) as exc:
        return GitCommit(None, None, facts.read_problem(exc))


# ---------------------------------------------------------------------------------------
# Collecting

@dataclass(frozen=True)
class EngineLog:
    """A log the user chose to include: its name (for the summary) and its text."""

    name: str
    text: str
    truncated: bool = False


@dataclass(frozen=True)
class MachineVersions:
    kind: str
    uname_v: str | None
    uname_r: str | None
    driver: str | None  # the loaded PCIe driver's version, "0.5.1"
    driver_version: str | None  # the whole /proc/bmsophon/driver_version line (PCIe)
    libsophon: str | None
    packages: dict[str, str]
    sdk: str | None  # SoC: SophonSDK version from bm_version

    def to_json(self) -> dict[str, Any]:
        return {
            "machine_kind": self.kind, "uname_v": self.uname_v, "uname_r": self.uname_r,
            "driver": self.driver, "driver_version": self.driver_version, "libsophon": self.libsophon,
            "sophon_packages": self.packages, "sdk": self.sdk,
        }


def machine_versions(target: Target, kind: str) -> MachineVersions:
    """The allow-listed version facts; each read through the doctor's own fact functions."""
    uname_v = facts.kernel_build_date(target).raw
    uname_r = facts.kernel_release(target).raw
    driver = facts.driver_version(target)
    install = facts.libsophon_install(target).value
    packages = facts.sophon_packages(target).value or {}
    versions = {p.name: p.version for p in packages.values()}
    libsophon = install.version if install else None
    sdk = None
    if kind == facts.SOC_BOARD:
        bm_version = facts.bm_version(target).value
        sdk = facts.parse_sdk_version(bm_version) if bm_version else None
        libsophon = (libsophon or versions.get(SOC_LIBSOPHON_PACKAGE)
                     or (bm_version_package(bm_version, SOC_LIBSOPHON_PACKAGE) if bm_version else None))
    return MachineVersions(
        kind, uname_v, uname_r, driver.value.version if driver.value else None, driver.raw if driver.value else None,
        libsophon, versions, sdk,
    )


#: The SoC image's libsophon package, as dpkg and `bm_version` name it.
SOC_LIBSOPHON_PACKAGE = "sophon-soc-libsophon"


def bm_version_package(bm_version_text: str, package: str) -> str | None:
    """A package's version from `bm_version` ("sophon-soc-libsophon : 0.5.1"): boards whose dpkg
    has no entry for it (images flashed without the package database) still name it there."""
    match = re.search(rf"^\s*{re.escape(package)}\s*:\s*(\S+)", bm_version_text, re.MULTILINE)
    return match.group(1) if match else None


@dataclass(frozen=True)
class SupportReport:
    folder: str  # the archive's top folder
    members: dict[str, bytes]  # file name inside the folder -> content
    verdict: str
    known_errors: int


def _numbered(lines: list[tuple[int, str]]) -> str:
    return "".join(f"{n}: {text}\n" for n, text in lines)


def collect_report(target: Target, options: DoctorOptions, engine_log: EngineLog | None = None,
                   llm_tpu_dir: str | None = None) -> SupportReport:
    """Run the doctor and gather the allow-listed facts. Reads only; changes nothing."""
    shared = Facts(target, options)
    doctor = run_doctor(target, options, shared=shared)
    matcher = default_matcher()
    evidence = DoctorEvidence.from_results(doctor.machine_kind, doctor.results, doctor.host)
    members: dict[str, bytes] = {"doctor.json": _json(doctor.to_json())}

    kernel = shared.kernel_log  # the one dmesg the kernel.log check ran
    kernel_matches: list[Match] = []
    if kernel.value is not None:
        scan = scan_kernel_log(kernel.value, matcher)
        kernel_matches = list(scan.matches)
        members["kernel-log.txt"] = (_numbered(scan.relevant_lines) or "(no lines from the Sophgo driver)\n").encode()
    engine_matches: list[Match] = []
    if engine_log is not None:
        engine_lines = redact_lines(engine_log.text.splitlines())
        engine_matches = matcher.scan(engine_lines)
        note = f"[llmtpu: only the last {ENGINE_LOG_LIMIT >> 20} MiB of {engine_log.name} kept]\n"
        members["engine-log.txt"] = ((note if engine_log.truncated else "") + "\n".join(engine_lines) + "\n").encode()
    members["signatures.json"] = _json({
        "kernel_log": [match_json(m, evidence) for m in kernel_matches],
        "engine_log": [match_json(m, evidence) for m in engine_matches],
    })

    machine = machine_versions(target, doctor.machine_kind)
    python = package_versions()
    commit = read_git_commit(target, llm_tpu_dir) if llm_tpu_dir else None
    members["versions.json"] = _json({
        "schema": REPORT_SCHEMA,
        "llmtpu": __version__,
        "python": sys.version.split()[0],
        "python_packages": python,
        "llm_tpu": None if commit is None else {
            "dir": llm_tpu_dir, "commit": commit.sha, "date": commit.date, "problem": commit.problem},
        "machine": machine.to_json(),
    })
    members["summary.md"] = render_summary(
        doctor, machine, python, commit, kernel.problem, engine_log, kernel_matches, engine_matches,
        evidence).encode()
    safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", doctor.host) or "host"
    return SupportReport(f"llmtpu-report-{safe_host}", members, doctor.verdict,
                         len(kernel_matches) + len(engine_matches))


def _json(document: Any) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


# ---------------------------------------------------------------------------------------
# summary.md: the issue template's fields, filled

_TEMPLATE_KIND = {
    facts.SOC_BOARD: "soc", facts.PCIE_HOST: "pcie", facts.PCIE_DOCKER: "pcie (inside docker)",
    facts.NO_DEVICE: "unknown: no Sophgo device found",
}


def render_summary(doctor: Report, machine: MachineVersions, python: dict[str, str], commit: GitCommit | None,
                   kernel_problem: str | None, engine_log: EngineLog | None,
                   kernel_matches: list[Match], engine_matches: list[Match],
                   evidence: DoctorEvidence | None = None) -> str:
    def cell(value: str | None) -> str:
        return (value or "unknown").replace("|", "\\|").replace("\n", " ")

    driver = machine.driver
    if machine.kind == facts.SOC_BOARD:
        driver = f"libsophon {machine.libsophon or '?'} (SoC: no separate driver)"
    rows = [
        ("soc or pcie", _TEMPLATE_KIND.get(machine.kind, machine.kind)),
        ("transformers version", python["transformers"]),
        ("torch version", python["torch"]),
        ("LLM-TPU commit (date)", commit.describe() if commit else "not given (llmtpu report --llm-tpu DIR)"),
        ("tpu-mlir version", python["tpu-mlir"]),
        ("driver version", driver),
        ("`uname -v`" if machine.kind == facts.SOC_BOARD else "driver_version",
         machine.uname_v if machine.kind == facts.SOC_BOARD else machine.driver_version),
        ("`uname -r`", machine.uname_r),
        ("SophonSDK (bm_version)", machine.sdk if machine.kind == facts.SOC_BOARD else "n/a (PCIe)"),
        ("sophon debs", ", ".join(f"{k} {v}" for k, v in machine.packages.items()) or "none"),
    ]
    lines = [
        f"# llmtpu support report: {doctor.host}",
        "",
        f"Made by llmtpu {__version__} at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}. "
        "The table fills LLM-TPU's issue template; paste it into the issue.",
        "",
        "| field | value |",
        "| --- | --- |",
        *(f"| {name} | {cell(value)} |" for name, value in rows),
        "",
        "Python package versions are those of the Python that ran llmtpu.",
        "",
        f"## Doctor: {doctor.verdict}",
        "",
    ]
    counts = doctor.counts
    lines.append(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail, {counts['skip']} skip "
                 "(all checks and their evidence: doctor.json).")
    lines.append("")
    for res in doctor.results:
        if res.status in ("warn", "fail"):
            advice = f" Fix ({res.fix.id}): {res.fix.summary}." if res.fix else ""
            lines.append(f"- `{res.id}` {res.status}: {res.summary}.{advice}")
    lines += ["", "## Known error lines", ""]
    found = [("kernel log", m) for m in kernel_matches] + [("engine log", m) for m in engine_matches]
    if not found:
        lines.append("None found" + ("" if engine_log else " (no engine log given: --log FILE)") + ".")
    evidence = evidence or DoctorEvidence.from_results(doctor.machine_kind, doctor.results, doctor.host)
    for where, match in found:
        sig = match.signature
        fix = sig.fix_for(evidence)
        lines.append(f"- `{sig.id}` ({where} line {match.line_no}): {sig.cause}. "
                     f"Fix ({fix.id}): {fix.summary}. Source: {sig.source}.")
    lines += [
        "",
        "## What this archive holds",
        "",
        "- `doctor.json`: every check with its evidence (schema llmtpu.doctor/1)",
        "- `versions.json`: the fields above as JSON",
        "- `signatures.json`: the known error lines found, with cause and fix",
        "- `kernel-log.txt`: the Sophgo driver's kernel-log lines and any known error line" if not kernel_problem
        else f"- no `kernel-log.txt`: the kernel log was not read ({kernel_problem})",
    ]
    if engine_log is not None:
        lines.append(f"- `engine-log.txt`: {engine_log.name}, with secrets masked")
    lines += [
        "",
        "It never holds keys, passwords, environment variables, home-directory files or git "
        "configuration: only the named facts above are collected. Password, token and secret "
        "values and private-key blocks in log lines are replaced by `[redacted]`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Writing the archive

class ArchiveExists(Exception):
    """The output file exists and replacing it was not asked for."""


def archive_bytes(report: SupportReport) -> bytes:
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo(report.folder)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, now
        tar.addfile(folder)
        for name, data in report.members.items():
            info = tarfile.TarInfo(f"{report.folder}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, now
            tar.addfile(info, io.BytesIO(data))  # uid/gid 0, no user names: nothing about this account
    return buffer.getvalue()


def write_archive(report: SupportReport, out: str, force: bool = False) -> int:
    """Write atomically (temp file + link/rename). Without force an existing file is never replaced."""
    data = archive_bytes(report)
    folder = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".llmtpu-report-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # fails if out exists, even if it appeared a moment ago
            except FileExistsError as exc:
                raise ArchiveExists(out) from exc
            os.unlink(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(data)
