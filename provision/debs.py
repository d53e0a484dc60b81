"""Install Sophgo's PCIe debs (sophon-driver, -libsophon, -libsophon-dev) with real dpkg.

The operation follows pyinfra's split: ``plan`` reads what dpkg says is installed and lists
only what differs; ``apply`` carries it out with dpkg on the target's root; ``verify`` checks
dpkg's status, the libsophon-current link, the ld.so.conf.d and profile.d files and the loaded
driver's version; ``undo`` puts the machine back as it was.

Order, and why: first ``dpkg -r`` of the old sophon packages (-dev, libsophon, driver), as
Sophgo's LLM-TPU instructions do (``apt remove`` first), so the old prerm unloads the module and
drops its dkms build before the new postinst builds and loads its own; then one ``dpkg -i`` per
deb, driver -> libsophon -> libsophon-dev (-dev depends on libsophon = same version), so a
failing maintainer script stops the sequence at a known step instead of leaving dpkg to pick
what to configure.

What is kept for undo: (1) a snapshot (a tar made on the machine, owners, modes and links
kept) of everything dpkg and the sophon maintainer scripts touch: dpkg's status and the
sophon-* entries of its info/ folder, /opt/sophon, the ld.so.conf.d and profile.d files, the
firmware link, the cmake folder, and in a sysroot the /proc/bmsophon/driver_version file that
stands for the loaded driver; (2) the replaced debs themselves: a cached copy of the same
name and version (llmtpu's own deb store, apt's cache) or a deb rebuilt with dpkg-deb from
dpkg's file list, control fields and maintainer scripts of the installed package (what
dpkg-repack does). Undo purges the new packages with dpkg, reinstalls the kept debs with dpkg,
then restores every snapshotted path apply changed, byte for byte, and removes what apply
created. A failed dpkg step during apply is rolled back the same way (the kept debs are reinstalled
through dpkg, so what their scripts make -- dkms state, /usr/src -- comes back), then the result
is compared with the state before; the error shows dpkg's words and the failing script's own
last lines.

Where maintainer scripts run: on a sysroot (--root), dpkg --root chroots into the root before
running them (so a script writing /usr/src writes the root's), which needs root and a /bin/sh in
the root. Without those the plan refuses, unless the user opts in to running them on this
machine (--force-script-chrootless, only safe for scripts honouring $DPKG_ROOT).

Interrupts: the journal record is written before the first dpkg step and updated after each;
SIGINT/SIGTERM during apply let the running dpkg step finish (dpkg runs in its own session),
then stop with ``ApplyInterrupted`` naming the way back (``llmtpu undo``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llmtpu.doctor import facts
from llmtpu.provision.operation import Change, Journal, JournalRecord, Operation, OperationError, Plan
from llmtpu.target import FileStat, Target, TargetError

ADMINDIR = "/var/lib/dpkg"
STATE_DIR = "/var/lib/llmtpu"
#: Debs llmtpu installed, kept by name so a later undo can reinstall them.
DEB_STORE = f"{STATE_DIR}/debs"
BACKUPS = f"{STATE_DIR}/backups"
#: dpkg's log for llmtpu's runs: inside the root, beside the journal (not the host's log).
DPKG_LOG = f"{STATE_DIR}/dpkg.log"
APT_CACHE = "/var/cache/apt/archives"

#: Install order; removal is the reverse.
PACKAGE_ORDER = ("sophon-driver", "sophon-libsophon", "sophon-libsophon-dev")
DRIVER, LIBSOPHON, LIBSOPHON_DEV = PACKAGE_ORDER

#: What dpkg and Sophgo's maintainer scripts touch besides the packages' own files (facts §4).
SCRIPT_PATHS = (
    "/opt/sophon",
    facts.LD_SO_CONF,
    facts.PROFILE_SCRIPT,
    "/etc/ld.so.cache",
    "/lib/firmware/bm1684x_firmware.bin",
    "/usr/lib/cmake/libsophon",
)
#: In a sysroot the tree's /proc stands for the kernel; a real /proc is never snapshotted.
SYSROOT_ONLY_PATHS = (facts.DRIVER_VERSION,)

DPKG_TIMEOUT = 1800.0

#: Where maintainer scripts run: on the machine itself; chrooted by dpkg into the sysroot (as
#: root, or in a user namespace when not root); or, opted in, on this machine with $DPKG_ROOT
#: set (--force-script-chrootless).
NATIVE, CHROOT, CHROOT_USERNS, CHROOTLESS = "native", "chroot", "chroot-userns", "chrootless"

#: dpkg's own progress lines, told apart from what a maintainer script printed.
DPKG_CHATTER = ("dpkg:", "(Reading database", "Selecting previously", "Preparing to unpack", "Unpacking ",
                "Setting up ", "Removing ", "Purging ", "Processing ", "Errors were encountered",
                "(Noting disappearance", " ")


class RefusedInput(OperationError):
    """The input cannot be used safely as given (exit 64); the message names it and what to do."""


class ApplyInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during apply: the running dpkg step finished, nothing after it ran.

    A KeyboardInterrupt, so every caller maps it to exit 130; the message gives the way back."""


# ---------------------------------------------------------------------------------------
# Facts: the debs on offer and what dpkg says is installed

@dataclass(frozen=True)
class DebFile:
    path: str  # on this machine (the controller)
    package: str
    version: str
    architecture: str

    @property
    def filename(self) -> str:
        return f"{self.package}_{self.version}_{self.architecture}.deb"


@dataclass(frozen=True)
class Installed:
    package: str
    version: str
    status: str  # dpkg's db:Status-Abbrev, e.g. "ii", "iF", "rc"
    architecture: str

    @property
    def ok(self) -> bool:
        return self.status.strip() == "ii"


def read_deb(path: str) -> DebFile:
    """Control fields of a .deb, read with dpkg-deb; anything else is refused."""
    try:
        out = subprocess.run(["dpkg-deb", "-f", path, "Package", "Version", "Architecture"], capture_output=True,
                             text=True, check=False, timeout=60)
    except FileNotFoundError as exc:
        raise OperationError("dpkg-deb not found: install dpkg (Debian/Ubuntu only)") from exc
    info = subprocess.run(["dpkg-deb", "--info", path], capture_output=True, text=True, check=False, timeout=60)
    if out.returncode != 0 or info.returncode != 0:
        why = _last((out.stderr or info.stderr).encode())
        raise RefusedInput(f"{path}: not a .deb dpkg-deb can read ({why}); remove it or fetch it again")
    fields = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    deb = DebFile(path, fields.get("Package", ""), fields.get("Version", ""), fields.get("Architecture", ""))
    if not deb.package or not deb.version or not deb.architecture:
        raise RefusedInput(f"{path}: its control has no Package, Version or Architecture; not a usable .deb")
    return deb


def deb_members(deb: DebFile) -> list[str]:
    """The paths a deb's data part holds, read to the end (a truncated or corrupt deb is refused).

    dpkg-deb's tar stream goes straight into tar -t: a large deb is never held in memory."""
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb.path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        listing = subprocess.run(["tar", "-t"], stdin=fsys.stdout, capture_output=True, check=False, timeout=600)
    finally:
        if fsys.stdout is not None:
            fsys.stdout.close()
        fsys_error = fsys.stderr.read() if fsys.stderr is not None else b""
        fsys_code = fsys.wait(timeout=600)
    if fsys_code != 0 or listing.returncode != 0:
        raise RefusedInput(f"{deb.path}: dpkg-deb cannot read its files ({_last(fsys_error or listing.stderr)}); "
                           "fetch it again")
    return listing.stdout.decode(errors="replace").splitlines()


def target_architectures(target: Target) -> tuple[set[str], str]:
    """The architectures dpkg on the target installs, and where that was read."""
    if not target.is_sysroot:
        result = target.run(["dpkg", "--print-architecture"], timeout=60)
        foreign = target.run(["dpkg", "--print-foreign-architectures"], timeout=60)
        if not result.ok:
            raise OperationError(f"{target.name}: dpkg --print-architecture failed: {_last(result.stderr)}")
        return {result.text().strip(), *foreign.text().split()}, "dpkg --print-architecture"
    arch_file = f"{ADMINDIR}/arch"
    if target.exists(arch_file):
        listed = set(target.read_text(arch_file).split())
        if listed:
            return listed, f"{target.root}{arch_file}"
    status = target.read_text(f"{ADMINDIR}/status", limit=256 << 20) if target.exists(f"{ADMINDIR}/status") else ""
    seen = Counter(line.split(":", 1)[1].strip() for line in status.splitlines()
                   if line.startswith("Architecture:") and line.split(":", 1)[1].strip() != "all")
    if seen:
        return {seen.most_common(1)[0][0]}, f"the packages in {target.root}{ADMINDIR}/status"
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False, timeout=60)
    return {native.stdout.strip()}, "an empty dpkg database: this machine's dpkg --print-architecture"


def check_architectures(target: Target, debs: Sequence[DebFile]) -> None:
    """Refuse, before anything changes, debs dpkg on the target would refuse halfway."""
    accepted, source = target_architectures(target)
    for deb in debs:
        if deb.architecture != "all" and deb.architecture not in accepted:
            raise RefusedInput(f"{deb.path}: Architecture {deb.architecture}, but {target.name} installs "
                               f"{'/'.join(sorted(accepted))} (from {source}); fetch the debs for "
                               f"{sorted(accepted)[0]}")


def debs_in(folder: str) -> list[DebFile]:
    """The sophon debs in a folder (as `llmtpu fetch debs` leaves it), in install order."""
    if not os.path.isdir(folder):
        raise OperationError(f"--debs {folder}: not a folder; fetch the debs first with `llmtpu fetch debs`")
    found: dict[str, DebFile] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".deb") or name.startswith("."):
            continue
        deb = read_deb(os.path.join(folder, name))
        if deb.package not in PACKAGE_ORDER:
            continue
        if deb.package in found:
            raise OperationError(f"--debs {folder}: two debs for {deb.package} ({found[deb.package].version} and "
                                 f"{deb.version}); keep one release in the folder")
        found[deb.package] = deb
    if LIBSOPHON not in found:
        raise OperationError(f"--debs {folder}: no sophon-libsophon_*.deb in it; fetch with `llmtpu fetch debs`")
    versions = {d.version for d in found.values()}
    if len(versions) > 1:
        raise OperationError(f"--debs {folder}: debs of different releases ({', '.join(sorted(versions))}); "
                             "driver and libsophon must come from the same release")
    return [found[p] for p in PACKAGE_ORDER if p in found]


def script_mode(target: Target, scripts_here: bool = False) -> str:
    """Where the debs' maintainer scripts will run; refuses a sysroot they cannot run inside."""
    if not target.is_sysroot:
        return NATIVE
    problems = []
    for mode in (CHROOT, CHROOT_USERNS) if os.geteuid() == 0 else (CHROOT_USERNS,):
        why = _why_no_chroot(target, mode)
        if why is None:
            return mode
        problems.append(why)
    if scripts_here:
        return CHROOTLESS
    raise RefusedInput(f"--root {target.root}: the debs' maintainer scripts cannot run inside it ({problems[0]}), "
                       "so they would run on this machine; give the root a usable /bin/sh, or pass "
                       "--scripts-on-this-machine to accept that")


def _wrapper(mode: str) -> list[str]:
    """Not root here: the chroot happens in a user namespace where this user is root."""
    return ["unshare", "--map-root-user", "--"] if mode == CHROOT_USERNS else []


def _why_no_chroot(target: Target, mode: str) -> str | None:
    try:
        shell = target.stat("/bin/sh")
    except TargetError as exc:
        return f"/bin/sh: {exc}"
    if shell is None or shell.kind != "file":
        return "it has no /bin/sh"
    try:
        probe = target.run([*_wrapper(mode), "chroot", target.root, "/bin/sh", "-c", ":"], timeout=60)
    except TargetError as exc:
        return f"no chroot here: {exc}"
    if not probe.ok:
        return f"its /bin/sh does not run chrooted here: {_last(probe.stderr)}"
    return None


def state_path(target: Target, path: str) -> str:
    """The host path of one of llmtpu's own files under a root, for tar, dpkg and dpkg-deb.

    Those tools open the path textually and would follow a link on the way out of the root; llmtpu
    makes no links in its state folders, so any link among the path's folders (or the path) is refused.
    """
    path = posixpath.normpath("/" + path.lstrip("/"))
    if target.is_sysroot:
        folder = posixpath.dirname(path)
        st = target.lstat(path)
        if target.resolve(folder) != folder or (st is not None and st.kind == "link"):
            raise RefusedInput(f"--root {target.root}: {path} leads through a symbolic link, so dpkg or tar "
                               f"would write where it points; make {STATE_DIR} and its folders real folders "
                               "in the root (remove the link), then rerun")
    return target.host_path(path)


def check_state_folders(target: Target) -> None:
    """Refuse at plan time a root whose llmtpu state folders lead through a link (see state_path)."""
    for folder in (DEB_STORE, BACKUPS):
        state_path(target, f"{folder}/.probe")
    state_path(target, DPKG_LOG)


def dpkg_command(target: Target, mode: str | None = None) -> list[str]:
    """dpkg with the global options for this target: its root, a log inside it, where scripts run."""
    mode = mode or script_mode(target)
    argv = [*_wrapper(mode), "dpkg", f"--log={state_path(target, DPKG_LOG)}"]
    if target.is_sysroot:
        argv.insert(argv.index("dpkg") + 1, f"--root={target.root}")  # dpkg chroots into it for scripts
        if mode == CHROOTLESS:
            argv.append("--force-script-chrootless")
            if os.geteuid() != 0:
                argv.append("--force-not-root")
    return argv


def run_dpkg(target: Target, mode: str, step: Sequence[str]) -> Any:
    """One dpkg call; a failure raises nothing, the caller decides (roll back, report)."""
    return target.run([*dpkg_command(target, mode), *step], timeout=DPKG_TIMEOUT)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while a dpkg step runs: the caller checks the list between steps."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def note(signum: int, _frame: object) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def installed_packages(target: Target) -> dict[str, Installed]:
    """What dpkg-query says about the sophon packages on the target."""
    argv = ["dpkg-query", *( [f"--root={target.root}"] if target.is_sysroot else []), "-W",
            "-f=${Package}\t${Version}\t${db:Status-Abbrev}\t${Architecture}\n", "sophon-*"]
    try:
        result = target.run(argv, timeout=60)
    except TargetError as exc:
        raise OperationError(f"{target.name}: {exc}") from exc
    if not result.ok and "no packages found" not in result.stderr.decode(errors="replace"):
        raise OperationError(f"{target.name}: dpkg-query failed: {_last(result.stderr)}")
    found = {}
    for line in result.text().splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[2].strip() and parts[2].strip() != "un":
            found[parts[0]] = Installed(parts[0], parts[1], parts[2].strip(), parts[3])
    return found


def _last(data: bytes) -> str:
    lines = [ln for ln in data.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


# ---------------------------------------------------------------------------------------
# Snapshot: what dpkg and the scripts may touch, before and after

Inventory = dict[str, dict[str, Any]]


def _entry(target: Target, st: FileStat) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": st.kind, "mode": st.mode}
    if st.kind == "file":
        entry["sha256"] = hashlib.sha256(target.read_bytes(st.path, st.size + 1)).hexdigest()
    elif st.kind == "link":
        entry["link"] = target.readlink_raw(st.path)
    return entry


class Snapshot:
    """The state of the paths a deb install may change, and a tar of them kept on the machine."""

    def __init__(self, target: Target, extra_paths: Sequence[str] = ()) -> None:
        self.target = target
        paths = [ADMINDIR, *SCRIPT_PATHS, *extra_paths]
        if target.is_sysroot:
            paths.extend(SYSROOT_ONLY_PATHS)
        self.paths = sorted({posixpath.normpath(p) for p in paths})

    def _in_admindir_scope(self, path: str) -> bool:
        """dpkg's info/ folder holds every package's files; only sophon-* entries are ours."""
        info = f"{ADMINDIR}/info/"
        if not path.startswith(info):
            return True
        name = path[len(info):]
        return name.startswith("sophon-") or name == "format"

    def inventory(self) -> Inventory:
        found: Inventory = {}
        for top in self.paths:
            parts = top.strip("/").split("/")
            for depth in range(1, len(parts)):  # ancestors: noticed when created, never restored
                ancestor = "/" + "/".join(parts[:depth])
                st = self.target.lstat_raw(ancestor)
                if st is not None:
                    found[ancestor] = {"kind": st.kind, "mode": st.mode, "ancestor": True}
            self._walk(top, found)
        return found

    def _walk(self, path: str, found: Inventory) -> None:
        if not self._in_admindir_scope(path):
            return
        st = self.target.lstat_raw(path)
        if st is None:
            return
        found[path] = _entry(self.target, st)
        if st.kind == "dir":
            for name in sorted(self.target.listdir_raw(path)):
                self._walk(f"{path.rstrip('/')}/{name}", found)

    def save(self, inventory: Inventory, folder: str, name: str = "snapshot") -> str:
        """Tar every inventoried path (not ancestors) into ``folder`` on the machine."""
        members = [p for p, e in inventory.items() if not e.get("ancestor")]
        tar = f"{folder}/{name}.tar"
        self.target.write_atomic(f"{folder}/{name}.json", json.dumps(inventory, indent=1).encode(), backup=False)
        names = b"".join(b"." + p.encode() + b"\0" for p in members)
        self._tar(["-cpf", state_path(self.target, tar)], names, f"saving a snapshot to {tar}")
        return tar

    def _tar(self, args: list[str], names: bytes, what: str) -> None:
        root = self.target.root if self.target.is_sysroot else "/"
        result = self.target.run(["tar", "-C", root, "--null", "--no-recursion", *args, "-T", "-"],
                                 input=names, timeout=DPKG_TIMEOUT)
        if not result.ok:
            raise OperationError(f"{self.target.name}: {what} failed: tar: {_last(result.stderr)}")

    def restore(self, before: Inventory, tar: str, leave: Sequence[str] = (),
                only: Sequence[str] | None = None) -> list[str]:
        """Make every path differing from ``before`` as it was (except ``leave``; or just ``only``)."""
        now = self.inventory()
        keep = set(leave)
        candidates = set(only) if only is not None else set(before) | set(now)
        changed = sorted(p for p in candidates if p not in keep and _differs(before.get(p), now.get(p)))
        gone_or_retyped = [p for p in changed if p in now and (p not in before or before[p]["kind"] != now[p]["kind"])]
        for path in sorted(gone_or_retyped, key=lambda p: -p.count("/")):
            self._remove(path, now[path]["kind"])
        members = [p for p in changed if p in before and not before[p].get("ancestor")]
        if members:
            names = b"".join(b"." + p.encode() + b"\0" for p in members)
            self._tar(["-xpf", state_path(self.target, tar)], names, f"restoring from {tar}")
        return changed

    def _remove(self, path: str, kind: str) -> None:
        host = self.target.host_path(path)
        # children are removed first (deepest paths first), so a folder left non-empty holds
        # something the snapshot does not know: rmdir refuses, and the error says where
        argv = ["rmdir", "--", host] if kind == "dir" else ["rm", "-f", "--", host]
        result = self.target.run(argv, timeout=600)
        if not result.ok:
            raise OperationError(f"{self.target.name}: cannot remove {path}: {_last(result.stderr)}")


def _differs(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is not b
    if a.get("ancestor") or b.get("ancestor"):
        return a["kind"] != b["kind"]
    return a != b


# ---------------------------------------------------------------------------------------
# The operation

@dataclass(frozen=True)
class KeptDeb:
    package: str
    version: str
    source: str  # "cache <path>", "rebuilt from dpkg's file list", or "none: <why>"
    machine_path: str | None  # where the kept deb is on the machine


class InstallDebs(Operation):
    """Bring the sophon debs on a machine to the release in a folder of .deb files."""

    id = "debs.install"
    summary = "install sophon-driver, sophon-libsophon, sophon-libsophon-dev with dpkg"

    def __init__(self, debs: Sequence[DebFile], scripts_here: bool = False) -> None:
        if not debs:
            raise OperationError("no debs to install")
        self.debs = list(debs)
        self.version = self.debs[0].version
        self.scripts_here = scripts_here  # opt-in: a sysroot's scripts may run on this machine

    # -- plan --------------------------------------------------------------------------

    def _steps(self, target: Target) -> tuple[dict[str, Installed], list[Installed], list[DebFile], list[str]]:
        installed = installed_packages(target)
        wanted = {d.package: d for d in self.debs}
        remove = [installed[p] for p in reversed(PACKAGE_ORDER) if p in wanted and p in installed
                  and (installed[p].version != wanted[p].version or not installed[p].ok)]
        removing = {r.package for r in remove}
        if LIBSOPHON in removing and LIBSOPHON_DEV in installed and LIBSOPHON_DEV not in removing:
            remove.insert(0, installed[LIBSOPHON_DEV])  # -dev depends on libsophon (= version)
        install = [d for d in self.debs if d.package not in installed or installed[d.package].package in
                   {r.package for r in remove}]
        repairs: list[str] = []
        if not remove and not install:
            repairs = self.verify(target)
            if repairs:
                install = [d for d in self.debs if d.package in (LIBSOPHON, DRIVER)]
        return installed, remove, install, repairs

    def _dropped(self, remove: Sequence[Installed]) -> list[Installed]:
        """Packages the plan removes with no deb in the folder to replace them (the -dev one)."""
        offered = {d.package for d in self.debs}
        return [old for old in remove if old.package not in offered]

    def plan(self, target: Target) -> Plan:
        mode = script_mode(target, self.scripts_here)
        check_state_folders(target)
        check_architectures(target, self.debs)
        self._new_paths()  # every deb read to its end now, before anything is removed
        installed, remove, install, repairs = self._steps(target)
        plan = Plan(self.id, target.name, needs_root=not target.is_sysroot)
        now = ", ".join(f"{i.package} {i.version} ({i.status})" for i in installed.values()) or "no sophon packages"
        plan.notes.append(f"dpkg says installed now: {now}")
        dropped = {d.package for d in self._dropped(remove)}
        for old in remove:
            what = f"dpkg -r {old.package}"
            if old.package in dropped:
                what += " (no replacement in the debs folder: stays removed)"
            plan.changes.append(Change(what, f"{old.package} {old.version} ({old.status})", None))
        for deb in install:
            before = installed.get(deb.package)
            plan.changes.append(Change(f"dpkg -i {deb.filename}",
                                       f"{before.package} {before.version} ({before.status})" if before else None,
                                       f"{deb.package} {deb.version}"))
        if repairs:
            plan.notes.append(f"reinstalling because: {'; '.join(repairs)}")
        for old in self._dropped(remove):
            plan.notes.append(f"{old.package} {old.version} will be REMOVED and not reinstalled: it depends on "
                              f"libsophon (= {old.version}) and the folder has no {old.package}_{self.version} deb; "
                              "add it to the folder to keep a -dev package")
        if plan.changes:
            plan.notes.append("order: remove the old packages first (Sophgo's procedure: the old prerm unloads the "
                              "module), then one dpkg call per deb, driver -> libsophon -> libsophon-dev, so a "
                              "failing script stops at a known step and is rolled back")
            for old in remove:
                plan.notes.append(f"kept for undo: {old.package} {old.version}: {self._keep_source(target, old)}")
            plan.notes.append(f"kept for undo: a snapshot of {ADMINDIR} (sophon entries), /opt/sophon and the "
                              f"files the scripts write, under {BACKUPS}")
            plan.notes.append(_mode_note(target, mode))
        return plan

    def _keep_source(self, target: Target, old: Installed) -> str:
        cached = self._cached(target, old)
        if cached:
            return f"the cached {cached}"
        if target.exists(f"{ADMINDIR}/info/{old.package}.list"):
            return "a deb rebuilt with dpkg-deb from dpkg's file list and scripts"
        return "no deb (dpkg has no file list for it); its files come back from the snapshot"

    @staticmethod
    def _cached(target: Target, old: Installed) -> str | None:
        name = f"{old.package}_{old.version}_{old.architecture}.deb"
        for folder in (DEB_STORE, APT_CACHE):
            if target.exists(f"{folder}/{name}"):
                return f"{folder}/{name}"
        return None

    # -- apply -------------------------------------------------------------------------

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        mode = script_mode(target, self.scripts_here)
        with deferred_interrupts() as caught:
            self._apply(target, journal, mode, caught)

    def _apply(self, target: Target, journal: Journal, mode: str, caught: list[int]) -> None:
        installed, remove, install, _ = self._steps(target)
        if not remove and not install:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = f"{BACKUPS}/{stamp}-{self.id}"
        snapshot = Snapshot(target, self._new_paths())
        before = snapshot.inventory()
        tar = snapshot.save(before, folder)
        kept = [self._keep(target, old, folder) for old in remove]
        machine_debs = [self._place(target, deb) for deb in install]
        steps = [["-r", old.package] for old in remove] + [["-i", state_path(target, p)] for p in machine_debs]
        if caught:
            raise ApplyInterrupted(f"interrupted before any dpkg step: the packages on {target.name} are as they "
                                   f"were (only llmtpu's backup {folder} was written)")
        # the record comes before the first change, so an interrupt anywhere below leaves a way back
        entry = journal.record(self.id, {
            "backup": folder,
            "snapshot_paths": snapshot.paths,
            "removed": [{"package": o.package, "version": o.version} for o in remove],
            "installed": [{"package": d.package, "version": d.version} for d in install],
            "kept_debs": [k.__dict__ for k in kept],
            "scripts": mode,
            "state": "applying",
            "steps_done": 0,
        })
        for number, step in enumerate(steps, start=1):
            what = f"dpkg {step[0]} {os.path.basename(step[1])}"
            result = run_dpkg(target, mode, step)
            if not result.ok:
                error = _dpkg_error(result.stdout + result.stderr)
                try:
                    left = revert(target, mode, entry.undo, snapshot, before, tar)
                except OperationError as exc:
                    entry.undo["state"] = "rollback failed"
                    _rewrite(target, entry)
                    raise OperationError(f"{what} failed: {error}; rolling back failed too: {exc}; the record "
                                         f"is kept: fix that, then `{undo_command(target)}`") from exc
                entry.undo["state"] = "rolled back"
                journal.mark_undone(entry)
                state = _dpkg_state(target)
                outcome = ("rolled back to the state before" if not left else
                           f"rolled back, but {len(left)} thing(s) differ from before: {'; '.join(left[:3])}")
                raise OperationError(f"{what} failed: {error}; {outcome} (dpkg: {state})")
            entry.undo["steps_done"] = number
            if caught or number == len(steps):
                target.write_atomic(f"{folder}/after.json", json.dumps(snapshot.inventory(), indent=1).encode(),
                                    backup=False)
            if caught and number < len(steps):
                entry.undo["state"] = "interrupted"
                _rewrite(target, entry)
                raise ApplyInterrupted(
                    f"interrupted: step {number} of {len(steps)} ({what}) finished, the rest not run "
                    f"(dpkg: {_dpkg_state(target)}); the way back: `{undo_command(target)}`; "
                    "or run the same apply again to finish")
            _rewrite(target, entry)
        entry.undo["state"] = "applied"
        _rewrite(target, entry)

    def _new_paths(self) -> list[str]:
        """Paths inside the new debs, so anything they add outside the usual places is noticed."""
        paths = set()
        for deb in self.debs:
            for line in deb_members(deb):
                if line.endswith("/"):
                    continue  # folders such as /usr are noticed as ancestors, never walked whole
                name = posixpath.normpath("/" + line.removeprefix("./"))
                if not any(name == p or name.startswith(p + "/") for p in SCRIPT_PATHS):
                    paths.add(name)
        return sorted(paths)

    def _place(self, target: Target, deb: DebFile) -> str:
        """Copy a deb into the machine's deb store (where a later undo finds it); its machine path."""
        path = f"{DEB_STORE}/{deb.filename}"
        with open(deb.path, "rb") as handle:
            target.write_atomic(path, handle.read(), backup=False)
        return path

    def _keep(self, target: Target, old: Installed, folder: str) -> KeptDeb:
        cached = self._cached(target, old)
        if cached:
            return KeptDeb(old.package, old.version, f"cache {cached}", cached)
        if not target.exists(f"{ADMINDIR}/info/{old.package}.list"):
            return KeptDeb(old.package, old.version, "none: dpkg has no file list; restored from the snapshot", None)
        return rebuild_deb(target, old, folder)

    # -- verify ------------------------------------------------------------------------

    def verify(self, target: Target) -> list[str]:
        problems = []
        installed = installed_packages(target)
        for deb in self.debs:
            now = installed.get(deb.package)
            if now is None or now.version != deb.version or not now.ok:
                seen = f"{now.version} ({now.status})" if now else "not installed"
                problems.append(f"dpkg: {deb.package} is {seen}, wanted {deb.version} (ii)")
        wanted_prefix = f"/opt/sophon/libsophon-{self.version}"
        link = target.lstat(facts.LIBSOPHON_CURRENT)
        if link is None or link.kind != "link" or target.readlink(facts.LIBSOPHON_CURRENT) != wanted_prefix:
            problems.append(f"{facts.LIBSOPHON_CURRENT} does not point to {wanted_prefix}")
        elif (target.stat(facts.LIBSOPHON_CURRENT) or link).kind != "dir":
            problems.append(f"{facts.LIBSOPHON_CURRENT} -> {wanted_prefix}, which is not a folder")
        if f"{facts.LIBSOPHON_CURRENT}/lib" not in _read(target, facts.LD_SO_CONF):
            problems.append(f"{facts.LD_SO_CONF} does not list {facts.LIBSOPHON_CURRENT}/lib")
        if f"{facts.LIBSOPHON_CURRENT}/bin" not in _read(target, facts.PROFILE_SCRIPT):
            problems.append(f"{facts.PROFILE_SCRIPT} does not put {facts.LIBSOPHON_CURRENT}/bin on PATH")
        if any(d.package == DRIVER for d in self.debs) and not facts.in_container(target).value:
            driver = facts.driver_version(target)
            if driver.value is None and (not target.is_sysroot or target.exists(facts.DRIVER_VERSION)):
                problems.append(f"{facts.DRIVER_VERSION}: {driver.problem}; the new driver is not loaded: "
                                "run `sudo modprobe -r bmsophon; sudo modprobe bmsophon` or reboot")
            elif driver.value is not None and driver.value.version != self.version:
                problems.append(f"the loaded driver is still {driver.value.version}, not {self.version}: run "
                                "`sudo modprobe -r bmsophon; sudo modprobe bmsophon` (stop its users first) or reboot")
        return problems

    # -- undo --------------------------------------------------------------------------

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        return undo_install(target, entry)


def _read(target: Target, path: str) -> str:
    try:
        return target.read_text(path)
    except OSError:
        return ""


def _dpkg_error(output: bytes) -> str:
    """dpkg's own words for what failed, and the last lines the failing script printed itself."""
    lines = [ln.rstrip() for ln in output.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    error = lines[-1].strip() if lines else "(no output)"
    for index, line in enumerate(lines):
        if "returned error exit status" in line or line.startswith("dpkg: error"):
            error = " ".join(ln.strip() for ln in lines[index:index + 2]) if line.endswith(":") else line.strip()
            break
    said = [ln.strip() for ln in lines if not ln.startswith(DPKG_CHATTER)][-3:]
    return f"{error}; the script said: {' | '.join(said)}" if said else error


def _mode_note(target: Target, mode: str) -> str:
    if mode == CHROOT:
        return f"maintainer scripts run inside {target.root} (dpkg --root chroots into it)"
    if mode == CHROOT_USERNS:
        return (f"maintainer scripts run inside {target.root} (dpkg --root chroots into it, in a user namespace: "
                "not root here, files are owned by this user)")
    if mode == CHROOTLESS:
        return (f"maintainer scripts run on THIS machine with DPKG_ROOT={target.root} (--scripts-on-this-machine): "
                "a script that ignores $DPKG_ROOT changes this machine's files")
    return "maintainer scripts run on this machine, the target"


def _dpkg_state(target: Target) -> str:
    now = installed_packages(target)
    return ", ".join(f"{i.package} {i.version} ({i.status})" for i in now.values()) or "no sophon packages"


def _rewrite(target: Target, entry: JournalRecord) -> None:
    """Save an updated journal record in place (the Journal's own format)."""
    target.write_atomic(entry.path, (json.dumps(asdict(entry), indent=2) + "\n").encode(), backup=False)


def undo_command(target: Target) -> str:
    """The command that reverts the newest record on this target, as the user types it."""
    if target.is_sysroot:
        return f"llmtpu undo --root {shlex.quote(target.root)}"
    return "sudo llmtpu undo"


def revert(target: Target, mode: str, data: dict[str, Any], snapshot: Snapshot, before: Inventory, tar: str,
           leave: Sequence[str] = ()) -> list[str]:
    """Put the packages back through dpkg, then the files; what still differs from ``before``.

    The new packages still installed are purged (their prerm undoes what their postinst made),
    the kept old debs are reinstalled with dpkg (their postinst recreates dkms state, /usr/src,
    the links), then every snapshotted path that still differs is restored from the tar and
    the result compared with the snapshot. Works for a partial apply too: only what is there
    is purged, only what is missing is reinstalled."""
    now = installed_packages(target)
    for item in reversed(data["installed"]):
        current = now.get(item["package"])
        if current is not None and (current.version == item["version"] or not current.ok):
            result = run_dpkg(target, mode, ["-P", item["package"]])
            if not result.ok:
                raise OperationError(f"dpkg -P {item['package']} failed: {_dpkg_error(result.stdout + result.stderr)}")
    now = installed_packages(target)
    order = {p: i for i, p in enumerate(PACKAGE_ORDER)}
    for kept in sorted(data["kept_debs"], key=lambda k: order.get(k["package"], 9)):
        current = now.get(kept["package"])
        if kept["machine_path"] and (current is None or current.version != kept["version"] or not current.ok):
            result = run_dpkg(target, mode, ["-i", state_path(target, kept["machine_path"])])
            if not result.ok:
                raise OperationError(f"reinstalling {kept['package']} {kept['version']} failed: "
                                     f"{_dpkg_error(result.stdout + result.stderr)}")
    snapshot.restore(before, tar, leave=leave)
    after = snapshot.inventory()
    skip = set(leave)
    return sorted(f"{p} differs" for p in set(before) | set(after) if p not in skip and _differs(before.get(p),
                                                                                                 after.get(p)))


def rebuild_deb(target: Target, old: Installed, folder: str) -> KeptDeb:
    """Build a .deb of an installed package from dpkg's database and its files on disk (dpkg-repack's job)."""
    info = f"{ADMINDIR}/info/{old.package}"
    stage = f"{folder}/stage-{old.package}"
    files = [ln for ln in target.read_text(f"{info}.list", limit=64 << 20).splitlines() if ln.startswith("/")]
    names = b"".join(b"." + p.encode() + b"\0" for p in files if p != "/")
    root = target.root if target.is_sysroot else "/"
    target.write_atomic(f"{stage}/DEBIAN/control", _control_of(target, old).encode(), backup=False)
    packed = target.run(["tar", "-C", root, "--null", "--no-recursion", "-T", "-", "-cpf",
                         state_path(target, f"{stage}.tar")], input=names, timeout=DPKG_TIMEOUT)
    unpacked = packed.ok and target.run(["tar", "-C", state_path(target, stage), "-xpf",
                                         state_path(target, f"{stage}.tar")], timeout=DPKG_TIMEOUT).ok
    if not unpacked:
        return KeptDeb(old.package, old.version, f"none: cannot copy its files ({_last(packed.stderr)})", None)
    for script in ("preinst", "postinst", "prerm", "postrm", "conffiles", "md5sums"):
        path = f"{info}.{script}"
        if target.exists(path):
            mode = 0o644 if script in ("conffiles", "md5sums") else 0o755
            target.write_atomic(f"{stage}/DEBIAN/{script}", target.read_bytes(path, 64 << 20), mode=mode, backup=False)
    deb = f"{folder}/{old.package}_{old.version}_{old.architecture}.deb"
    built = target.run(["dpkg-deb", "--root-owner-group", "--build", state_path(target, stage),
                        state_path(target, deb)], timeout=DPKG_TIMEOUT)
    target.run(["rm", "-rf", "--", state_path(target, stage), state_path(target, f"{stage}.tar")], timeout=600)
    if not built.ok:
        return KeptDeb(old.package, old.version, f"none: dpkg-deb failed ({_last(built.stderr)})", None)
    return KeptDeb(old.package, old.version, "rebuilt from dpkg's file list", deb)


def _control_of(target: Target, old: Installed) -> str:
    """The package's control stanza from dpkg's status, minus the fields only the database has."""
    text = target.read_text(f"{ADMINDIR}/status", limit=256 << 20)
    for stanza in text.split("\n\n"):
        if f"Package: {old.package}\n" in stanza + "\n":
            lines, skipping = [], False
            for line in stanza.strip("\n").splitlines():
                if line[:1] not in (" ", "\t"):
                    skipping = line.split(":", 1)[0] in ("Status", "Config-Version", "Conffiles")
                if not skipping:
                    lines.append(line)
            return "\n".join(lines) + "\n"
    raise OperationError(f"{old.package}: not in {ADMINDIR}/status")


def undo_install(target: Target, entry: JournalRecord, execute: bool = True) -> Plan:
    """Purge what the install added, reinstall the kept debs, restore the snapshot byte for byte.

    Also for an apply that was interrupted (or cut) partway. With ``execute`` false only the
    plan is made (after the same conflict check)."""
    data = entry.undo
    folder = data["backup"]
    mode = script_mode(target, scripts_here=data.get("scripts") == CHROOTLESS)
    before: Inventory = json.loads(target.read_text(f"{folder}/snapshot.json", limit=256 << 20))
    snapshot = Snapshot(target)
    snapshot.paths = list(data["snapshot_paths"])
    now = snapshot.inventory()
    cut = not target.exists(f"{folder}/after.json")  # the apply died before recording its result
    after: Inventory = now if cut else json.loads(target.read_text(f"{folder}/after.json", limit=256 << 20))
    by_us = {p for p in set(before) | set(after) if _differs(before.get(p), after.get(p))}
    conflicts = sorted(p for p in by_us if _differs(after.get(p), now.get(p)))
    if conflicts:
        raise OperationError(f"{len(conflicts)} path(s) changed since the install, e.g. {conflicts[0]}; undo would "
                             "overwrite them: put them back or remove the packages by hand")
    foreign = sorted(p for p in set(before) | set(now) if p not in by_us and _differs(before.get(p), now.get(p)))
    plan = Plan("undo " + entry.operation, target.name, needs_root=not target.is_sysroot)
    installed = installed_packages(target)
    for item in reversed(data["installed"]):
        current = installed.get(item["package"])
        if current is not None and (current.version == item["version"] or not current.ok):
            plan.changes.append(Change(f"dpkg -P {item['package']}", f"{item['package']} {item['version']}", None))
    for kept in data["kept_debs"]:
        if kept["machine_path"]:
            plan.changes.append(Change(f"dpkg -i {kept['machine_path']}", None, f"{kept['package']} {kept['version']}"))
    plan.changes.append(Change(f"restore {len(by_us)} path(s) from {folder}/snapshot.tar"))
    if data.get("state") == "interrupted":
        plan.notes.append(f"the apply was interrupted after step {data.get('steps_done')}: undoing what it did")
    if cut:
        plan.notes.append("the apply was cut before it recorded its result: every difference is taken as its own")
    if foreign:
        plan.notes.append(f"left alone (changed by something else since the install): {', '.join(foreign[:5])}")
    if not execute:
        return plan
    if foreign:  # the dpkg steps below may touch them (a prerm removing a file): keep them as they are now
        others = snapshot.save({p: now[p] for p in foreign if p in now}, folder,
                               time.strftime("foreign-%Y%m%dT%H%M%SZ", time.gmtime()))
    left = revert(target, mode, data, snapshot, before, f"{folder}/snapshot.tar", leave=foreign)
    if foreign:
        snapshot.restore({p: now[p] for p in foreign if p in now}, others, only=foreign)
    if left:
        raise OperationError(f"undo left {len(left)} path(s) unlike before: {'; '.join(left[:3])}")
    return plan


# ---------------------------------------------------------------------------------------
# Half-configured packages (the doctor's debs.configure fix)

class ConfigureDebs(Operation):
    """Let dpkg finish configuring half-installed sophon packages (`dpkg --configure -a`)."""

    id = "debs.configure"
    summary = "finish configuring half-installed sophon packages"

    def plan(self, target: Target) -> Plan:
        plan = Plan(self.id, target.name, needs_root=not target.is_sysroot)
        script_mode(target)  # refuses a sysroot its scripts cannot run inside
        broken = [i for i in installed_packages(target).values() if not i.ok and i.status[:1] == "i"]
        for item in broken:
            plan.changes.append(Change(f"dpkg --configure {item.package}", f"{item.package} {item.version} "
                                       f"({item.status})", f"{item.package} {item.version} (ii)"))
        return plan

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        if plan.nothing_to_do:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = f"{BACKUPS}/{stamp}-{self.id}"
        snapshot = Snapshot(target)
        before = snapshot.inventory()
        tar = snapshot.save(before, folder)
        mode = script_mode(target)
        with deferred_interrupts() as caught:  # one dpkg step: it finishes, then an interrupt takes effect
            result = run_dpkg(target, mode, ["--configure", "-a"])
        if not result.ok:
            snapshot.restore(before, tar)
            raise OperationError(f"dpkg --configure -a failed: {_dpkg_error(result.stdout + result.stderr)}; "
                                 "rolled back to the state before")
        target.write_atomic(f"{folder}/after.json", json.dumps(snapshot.inventory(), indent=1).encode(), backup=False)
        journal.record(self.id, {"backup": folder, "snapshot_paths": snapshot.paths, "removed": [], "installed": [],
                                 "kept_debs": [], "scripts": mode, "state": "applied"})
        if caught:
            raise ApplyInterrupted(f"interrupted after dpkg --configure -a finished; the way back: "
                                   f"`{undo_command(target)}`")

    def verify(self, target: Target) -> list[str]:
        return [f"dpkg: {i.package} {i.version} is {i.status}" for i in installed_packages(target).values()
                if not i.ok and i.status[:1] == "i"]

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        return undo_install(target, entry)
