"""Facts: read-only observations of a machine, each a small named unit with its parser.

A fact never changes anything. It returns an ``Observed`` value: the parsed value (or None),
where it was read, the raw text (trimmed, for evidence) and, when the value is None, why.
Parsers are pure functions of text so the tests can feed them every odd form we know.
Formats and their sources: tests/samples/README.md and the project's facts notes.
"""

from __future__ import annotations

import errno
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Generic, TypeVar, overload

from llmtpu.target import DEFAULT_READ_LIMIT, FileStat, Target, TargetError

T = TypeVar("T")

#: Evidence keeps at most this many characters of raw text.
EVIDENCE_CHARS = 300

KERNEL_VERSION = "/proc/sys/kernel/version"  # == `uname -v`
KERNEL_RELEASE = "/proc/sys/kernel/osrelease"  # == `uname -r`
DRIVER_VERSION = "/proc/bmsophon/driver_version"
BMSOPHON = "/proc/bmsophon"
CPUINFO = "/proc/cpuinfo"
DEVICE_TREE_NAME = "/proc/device-tree/info/file-name"
MEMINFO = "/proc/meminfo"
DPKG_STATUS = "/var/lib/dpkg/status"
LIBSOPHON_CURRENT = "/opt/sophon/libsophon-current"
LD_SO_CONF = "/etc/ld.so.conf.d/libsophon.conf"
PROFILE_SCRIPT = "/etc/profile.d/libsophon-bin-path.sh"
ION_HEAPS = "/sys/kernel/debug/ion"
CLK_DEBUGFS = "/sys/kernel/debug/clk"
TOP_CLOCK = "/sys/kernel/debug/top/clock"

#: Paths the facts below read; a remote target fetches them in one round trip.
FACT_PATHS = (
    KERNEL_VERSION, KERNEL_RELEASE, BMSOPHON, CPUINFO, DEVICE_TREE_NAME, MEMINFO, DPKG_STATUS,
    "/opt/sophon", LD_SO_CONF, PROFILE_SCRIPT, ION_HEAPS, TOP_CLOCK,
    *(f"{CLK_DEBUGFS}/{name}/clk_rate" for name in ("tpll_clock", "mpll_clock", "vpll_clock")),
    "/.dockerenv", "/run/.containerenv", "/proc/1/cgroup", "/dev.list", "/_cmd",
    "/etc/systemd/system/llmtpu-clock.service", "/etc/systemd/system/multi-user.target.wants/llmtpu-clock.service",
    "/sys/class/thermal/thermal_zone0/temp", "/sys/class/bm-tpu/bm-tpu0/device/npu_usage",
    "/sys/class/bm-sophon/bm-sophon0/device/npu_usage",
)


class once(Generic[T]):  # noqa: N801 - used like functools.cached_property
    """A fact computed on first use and kept in the instance.

    Why not ``functools.cached_property``: up to Python 3.11 it holds ONE lock per property
    across all instances, so a fleet doctor's hosts waited for each other's slow reads
    (issue 17). This keeps no lock: two threads on the same instance may both compute the
    value (facts only read), instances never wait for each other.
    """

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> once[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> T | once[T]:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.name] = value  # a non-data descriptor: later reads hit __dict__
        return value


@dataclass(frozen=True)
class Observed(Generic[T]):
    """A parsed value with its evidence. ``problem`` says why ``value`` is None."""

    value: T | None
    source: str
    raw: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def _trim(text: str) -> str:
    text = text.strip()
    return text if len(text) <= EVIDENCE_CHARS else text[:EVIDENCE_CHARS] + "…"


def read_problem(exc: BaseException) -> str:
    """One phrase for why a read failed, for evidence lines."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied (run as root?)"
    if isinstance(exc, IsADirectoryError):
        return "unreadable: is a folder"
    if isinstance(exc, TargetError):
        return f"unreadable: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"unreadable: {exc.strerror}"
    return f"unreadable: {exc}"


def observe(target: Target, path: str, parse: Callable[[str], T | None], what: str) -> Observed[T]:
    """Read one file and parse it; every failure becomes a problem, never an exception."""
    try:
        raw = read_fact(target, path)
    except (OSError, TargetError) as exc:
        return Observed(None, path, None, read_problem(exc))
    value = parse(raw)
    if value is None:
        if not raw.strip():
            return Observed(None, path, "", "empty file")
        return Observed(None, path, _trim(raw), f"not a recognisable {what}")
    return Observed(value, path, _trim(raw))


def in_root(target: Target, path: str) -> str:
    """``path`` with every link resolved inside a sysroot, so no read follows one out of it.

    On a live machine (root /) the path is what it says; a remote target answers from its
    prefetch. A sysroot is a folder of files anyone may have planted links in.
    """
    return target.resolve(path) if target.is_sysroot else path


def read_fact(target: Target, path: str, limit: int = DEFAULT_READ_LIMIT) -> str:
    """The text of one machine file; in a sysroot only a regular file reached inside the root."""
    if not target.is_sysroot:
        return target.read_text(path, limit)
    resolved = target.resolve(path)
    st = target.lstat(resolved)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    if st.kind != "file":
        raise OSError(errno.EINVAL, f"not a regular file ({st.kind})", path)
    return target.read_text(resolved, limit)


def list_fact(target: Target, path: str) -> list[str]:
    """Names in a machine folder, the folder reached inside the root."""
    return target.listdir(in_root(target, path))


def safe_lstat(target: Target, path: str) -> FileStat | None:
    """lstat (of the entry itself, its folder reached inside the root); an unreadable parent is
    like an absent path: no evidence either way."""
    try:
        if target.is_sysroot:
            folder, name = posixpath.split(path)
            return target.lstat(posixpath.join(target.resolve(folder), name))
        return target.lstat(path)
    except (OSError, TargetError):
        return None


def regular_file_problem(target: Target, path: str) -> str | None:
    """Why ``path`` in a sysroot is no file to read as it stands (a link, a FIFO, a folder),
    or None when it is a regular file reached without following any link."""
    try:
        resolved = target.resolve(path)
        st = target.lstat(resolved)
    except (OSError, TargetError) as exc:
        return read_problem(exc)
    if st is None:
        return "missing"
    if resolved != path:
        return f"unreadable: a link (to {resolved}); not followed"
    if st.kind != "file":
        return f"unreadable: not a regular file ({st.kind})"
    return None


# ---------------------------------------------------------------------------------------
# Kernel build date (`uname -v`)

_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
_TEXT_DATE = re.compile(
    r"\b(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2})\b"
    r"(?P<rest>.*?)\b(?P<year>(?:19|20)\d\d)\b",
    re.IGNORECASE,
)
_ISO_DATE = re.compile(r"\b(?P<year>(?:19|20)\d\d)-(?P<mon>\d\d)-(?P<day>\d\d)\b")


def parse_kernel_build_date(text: str) -> date | None:
    """Build date from a `uname -v` string, whatever the distribution put around it.

    Handles ``#2 SMP Sat Nov 18 10:07:36 HKT 2023`` (any timezone token, or none), ``PREEMPT``
    and ``PREEMPT_DYNAMIC`` words, a missing weekday or time, and Debian's
    ``#1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)``.
    """
    line = text.strip().splitlines()[0] if text.strip() else ""
    match = _TEXT_DATE.search(line)
    if match:
        try:
            return date(int(match["year"]), _MONTHS[match["mon"][:3].lower()], int(match["day"]))
        except ValueError:
            return None
    iso = _ISO_DATE.search(line)
    if iso:
        try:
            return date(int(iso["year"]), int(iso["mon"]), int(iso["day"]))
        except ValueError:
            return None
    return None


def kernel_build_date(target: Target) -> Observed[date]:
    return observe(target, KERNEL_VERSION, parse_kernel_build_date, "`uname -v` build date")


def kernel_release(target: Target) -> Observed[str]:
    return observe(target, KERNEL_RELEASE, lambda t: t.strip() or None, "kernel release")


# ---------------------------------------------------------------------------------------
# PCIe driver: /proc/bmsophon/driver_version

@dataclass(frozen=True)
class DriverVersion:
    version: str
    released: date
    built_at: datetime | None


_DRIVER_LINE = re.compile(
    r"release version:\s*(?P<ver>\d+\.\d+\.\d+)\s+release date:\s*(?P<date>\d{8})(?:-(?P<time>\d{6}))?"
)


def parse_driver_version(text: str) -> DriverVersion | None:
    """``release version:0.5.1   release date: 20240717-103602`` (libsophon bm_debug.c)."""
    match = _DRIVER_LINE.search(text)
    if not match:
        return None
    try:
        released = datetime.strptime(match["date"], "%Y%m%d").date()
        built = datetime.strptime(match["date"] + match["time"], "%Y%m%d%H%M%S") if match["time"] else None
    except ValueError:
        return None
    return DriverVersion(match["ver"], released, built)


def driver_version(target: Target) -> Observed[DriverVersion]:
    return observe(target, DRIVER_VERSION, parse_driver_version, "driver_version line")


# ---------------------------------------------------------------------------------------
# Cards and chips under /proc/bmsophon (PCIe)

@dataclass(frozen=True)
class Chip:
    name: str  # bmsophon0
    status: str | None  # Active or Fault (bm_debug.c)
    tpu_freq_mhz: int | None
    chip_temp_c: int | None
    clocks_mhz: dict[str, int] = field(default_factory=dict)
    heap_bytes: tuple[int, ...] = ()  # heap0 is where bmruntime puts the model
    #: ``path: why`` for every file of this chip that could not be read.
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Card:
    name: str  # card0
    chipid: str | None
    mode: str | None
    board_type: str | None
    tpu_min_mhz: int | None
    tpu_max_mhz: int | None
    chips: tuple[Chip, ...]
    serial: str | None = None
    #: ``path: why`` for every file of this card that could not be read.
    problems: tuple[str, ...] = ()


def _first_int(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.search(r"-?\d+", text)
    return int(match.group()) if match else None


def parse_clk(text: str) -> dict[str, int]:
    """``mpll: 2300 MHz`` lines of /proc/bmsophon/cardN/bmsophonM/clk."""
    clocks = {}
    for line in text.splitlines():
        match = re.match(r"\s*(\w+):\s*(\d+)\s*MHz", line)
        if match:
            clocks[match.group(1)] = int(match.group(2))
    return clocks


def parse_heaps(text: str) -> tuple[int, ...]:
    """``heap0, size = 0x2a0000000, start_addr =0x100000000`` lines, sizes in bytes by heap index."""
    found = {int(m.group(1)): int(m.group(2), 16)
             for m in re.finditer(r"heap(\d+),\s*size\s*=\s*0x([0-9a-fA-F]+)", text)}
    return tuple(found[i] for i in sorted(found))


def _read_opt(target: Target, path: str) -> str | None:
    try:
        return read_fact(target, path, limit=4096).strip()
    except (OSError, TargetError):
        return None


class _Reader:
    """Reads small files of one card or chip and notes every one it could not read."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.problems: list[str] = []

    def text(self, path: str) -> str | None:
        try:
            text = read_fact(self.target, path, limit=4096).strip()
        except (OSError, TargetError) as exc:
            problem = read_problem(exc)
        else:
            if text:
                return text
            problem = "empty file"
        self.problems.append(f"{path}: {problem}")
        return None

    def number(self, path: str) -> int | None:
        text = self.text(path)
        value = _first_int(text)
        if text is not None and value is None:
            self.problems.append(f"{path}: not a number: {_trim(text)!r}")
        return value

    def parsed(self, path: str, parse: Callable[[str], T], empty: T) -> T:
        text = self.text(path)
        value = parse(text) if text is not None else empty
        if text is not None and not value:
            self.problems.append(f"{path}: not recognisable: {_trim(text)!r}")
        return value


def cards(target: Target) -> Observed[list[Card]]:
    """Every card and chip the PCIe driver lists; an empty list when /proc/bmsophon is absent."""
    try:
        names = list_fact(target, BMSOPHON)
    except FileNotFoundError:
        return Observed([], BMSOPHON, None, None)
    except (OSError, TargetError) as exc:
        return Observed(None, BMSOPHON, None, read_problem(exc))
    found = []
    for card in sorted(n for n in names if re.fullmatch(r"card\d+", n)):
        base = f"{BMSOPHON}/{card}"
        card_reader = _Reader(target)
        chips = []
        try:
            chip_names = sorted(n for n in list_fact(target, base) if re.fullmatch(r"bmsophon\d+", n))
        except (OSError, TargetError) as exc:
            card_reader.problems.append(f"{base}: {read_problem(exc)}")
            chip_names = []
        for chip in chip_names:
            cbase = f"{base}/{chip}"
            read = _Reader(target)
            chips.append(Chip(
                chip,
                read.text(f"{cbase}/status"),
                read.number(f"{cbase}/tpu_freq"),
                read.number(f"{cbase}/chip_temp"),
                read.parsed(f"{cbase}/clk", parse_clk, {}),
                read.parsed(f"{cbase}/heap", parse_heaps, ()),
                tuple(read.problems),
            ))
        found.append(Card(
            card,
            card_reader.text(f"{base}/chipid"),
            card_reader.text(f"{base}/mode"),
            card_reader.text(f"{base}/board_type"),
            card_reader.number(f"{base}/tpu_minclk"),
            card_reader.number(f"{base}/tpu_maxclk"),
            tuple(chips),
            card_reader.text(f"{base}/sn"),
            tuple(card_reader.problems),
        ))
    return Observed(found, BMSOPHON, ", ".join(c.name for c in found) or "no cards")


# ---------------------------------------------------------------------------------------
# Device nodes

PCIE_NODE = re.compile(r"bm-sophon\d+")
SOC_NODE = re.compile(r"bm-tpu\d+")
CONTROL_NODE = "/dev/bmdev-ctl"


@dataclass(frozen=True)
class DeviceNode:
    path: str
    kind: str  # char, block, or whatever lstat found
    can_open: bool | None  # None: unknown (a sysroot records no modes)


def device_nodes(target: Target) -> Observed[list[DeviceNode]]:
    """Sophgo device nodes: bm-sophonN (PCIe), bm-tpuN (SoC), bmdev-ctl, and the SoC's ion."""
    try:
        names = target.listdir("/dev")
    except (OSError, TargetError) as exc:
        return Observed(None, "/dev", None, read_problem(exc))
    wanted = [n for n in names if PCIE_NODE.fullmatch(n) or SOC_NODE.fullmatch(n)]
    wanted += [n for n in ("bmdev-ctl", "ion", "bm-vpp") if n in names]
    nodes = []
    for name in sorted(set(wanted)):
        path = f"/dev/{name}"
        try:
            st = target.lstat(path)
            can_open = target.access(path, want_write=True)
        except (OSError, TargetError):
            st, can_open = None, None
        nodes.append(DeviceNode(path, st.kind if st else "unreadable", can_open))
    raw = " ".join(f"{n.path}({n.kind})" for n in nodes) or "no Sophgo nodes"
    return Observed(nodes, "/dev", raw)


# ---------------------------------------------------------------------------------------
# Machine kind

PCIE_HOST = "pcie-host"
PCIE_DOCKER = "pcie-docker"
SOC_BOARD = "soc-board"
NO_DEVICE = "none"


def parse_cpuinfo_is_bm1684x(text: str) -> bool:
    """Sophgo's own tools call a machine SoC when cpuinfo's model name is bm1684x."""
    return any(
        line.split(":", 1)[0].strip().lower() == "model name" and "bm1684" in line.split(":", 1)[1].lower()
        for line in text.splitlines() if ":" in line
    )


def in_container(target: Target) -> Observed[bool]:
    for marker in ("/.dockerenv", "/run/.containerenv"):
        if _read_opt(target, marker) is not None:  # docker and podman create a plain, readable file
            return Observed(True, marker, "present")
    try:
        cgroup = read_fact(target, "/proc/1/cgroup")
    except (OSError, TargetError):
        return Observed(False, "/.dockerenv", "absent")
    inside = any(word in cgroup for word in ("docker", "containerd", "kubepods", "libpod"))
    return Observed(inside, "/proc/1/cgroup", _trim(cgroup))


def machine_kind(target: Target) -> Observed[str]:
    """PCIe host, docker container on a PCIe host, SoC board, or none of these."""
    evidence = []
    sources = []  # the file each piece of evidence came from, first one names the fact
    try:
        cpuinfo = read_fact(target, CPUINFO)
        if parse_cpuinfo_is_bm1684x(cpuinfo):
            sources.append(CPUINFO)
            evidence.append(f"{CPUINFO}: model name bm1684x")
    except (OSError, TargetError):
        pass
    dt_name = _read_opt(target, DEVICE_TREE_NAME)
    if dt_name and "bm1684" in dt_name:
        sources.append(DEVICE_TREE_NAME)
        evidence.append(f"{DEVICE_TREE_NAME}: {dt_name.strip(chr(0))}")
    nodes = device_nodes(target).value or []
    if any(SOC_NODE.fullmatch(n.path[5:]) for n in nodes):
        sources.append("/dev")
        evidence.append("/dev/bm-tpu* present")
    if sources:
        return Observed(SOC_BOARD, sources[0], "; ".join(evidence))
    if _read_opt(target, DRIVER_VERSION) is not None:  # read, not only seen: evidence is what was read
        sources.append(DRIVER_VERSION)
        evidence.append(f"{DRIVER_VERSION} present")
    if any(PCIE_NODE.fullmatch(n.path[5:]) for n in nodes):
        sources.append("/dev")
        evidence.append("/dev/bm-sophon* present")
    if sources:
        container = in_container(target)
        if container.value:
            evidence.append(f"container: {container.source}")
            return Observed(PCIE_DOCKER, container.source, "; ".join(evidence))
        return Observed(PCIE_HOST, sources[0], "; ".join(evidence))
    return Observed(
        NO_DEVICE, "/dev",
        "no /dev/bm-sophon*, no /dev/bm-tpu*, no /proc/bmsophon, cpuinfo is not bm1684x",
    )


# ---------------------------------------------------------------------------------------
# libsophon install

@dataclass(frozen=True)
class LibsophonInstall:
    current_link: str | None  # what /opt/sophon/libsophon-current points to
    prefix: str | None  # the resolved folder, when it exists
    version: str | None  # from the folder name libsophon-<ver>
    libbmrt: bool
    libbmlib: bool
    kernel_module: bool  # lib/tpu_module/libbm1684x_kernel_module.so
    ld_conf: str | None  # contents of /etc/ld.so.conf.d/libsophon.conf
    profile_script: bool

    @property
    def missing(self) -> list[str]:
        lib = f"{LIBSOPHON_CURRENT}/lib"
        parts = []
        if self.prefix is None:
            parts.append(LIBSOPHON_CURRENT)
        else:
            if not self.libbmrt:
                parts.append(f"{lib}/libbmrt.so")
            if not self.libbmlib:
                parts.append(f"{lib}/libbmlib.so")
            if not self.kernel_module:
                parts.append(f"{lib}/tpu_module/libbm1684x_kernel_module.so")
        if self.ld_conf is None or f"{LIBSOPHON_CURRENT}/lib" not in self.ld_conf:
            parts.append(LD_SO_CONF)
        if not self.profile_script:
            parts.append(PROFILE_SCRIPT)
        return parts


def libsophon_install(target: Target) -> Observed[LibsophonInstall]:
    link = None
    prefix = None
    try:
        st = safe_lstat(target, LIBSOPHON_CURRENT)
        if st is not None and st.kind == "link":
            link = target.readlink(LIBSOPHON_CURRENT)
        resolved = target.resolve(LIBSOPHON_CURRENT)
        resolved_stat = target.lstat(resolved)
        if resolved_stat is not None and resolved_stat.kind == "dir":
            prefix = resolved
    except (OSError, TargetError) as exc:
        return Observed(None, LIBSOPHON_CURRENT, link, read_problem(exc))
    version = None
    if prefix:
        match = re.search(r"libsophon-(\d[\w.\-]*)$", prefix)
        version = match.group(1) if match else None
    lib = f"{prefix}/lib" if prefix else None

    def present(path: str) -> bool:
        # exists() says False for a broken link; an unreadable folder must not pass as absent.
        return target.stat(path) is not None

    try:
        install = LibsophonInstall(
            current_link=link,
            prefix=prefix,
            version=version,
            libbmrt=bool(lib) and present(f"{lib}/libbmrt.so"),
            libbmlib=bool(lib) and present(f"{lib}/libbmlib.so"),
            kernel_module=bool(lib) and present(f"{lib}/tpu_module/libbm1684x_kernel_module.so"),
            ld_conf=_read_opt(target, LD_SO_CONF),
            profile_script=present(PROFILE_SCRIPT),
        )
    except (OSError, TargetError) as exc:
        return Observed(None, LIBSOPHON_CURRENT, link, read_problem(exc))
    raw = f"{LIBSOPHON_CURRENT} -> {link}" if link else f"{LIBSOPHON_CURRENT}: {'folder' if prefix else 'absent'}"
    return Observed(install, LIBSOPHON_CURRENT, raw)


# ---------------------------------------------------------------------------------------
# dpkg status

@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    status: str  # e.g. "install ok installed", "install ok half-configured"
    architecture: str | None

    @property
    def installed(self) -> bool:
        return self.status.split()[-1:] == ["installed"]


def parse_dpkg_status(text: str) -> dict[str, DebPackage]:
    """Stanzas of dpkg's status file (deb822: ``Field: value``, continuation lines indented)."""
    packages: dict[str, DebPackage] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                last = key.strip().lower()
                fields[last] = value.strip()
        if "package" in fields and "status" in fields:
            packages[fields["package"]] = DebPackage(
                fields["package"], fields.get("version", ""), fields["status"], fields.get("architecture"),
            )
    return packages


def sophon_packages(target: Target) -> Observed[dict[str, DebPackage]]:
    """Installed sophon-* debs; an empty dict when dpkg knows none (or has no status file)."""
    try:
        text = read_fact(target, DPKG_STATUS, limit=64 << 20)
    except FileNotFoundError:
        return Observed({}, DPKG_STATUS, None, None)
    except (OSError, TargetError) as exc:
        return Observed(None, DPKG_STATUS, None, read_problem(exc))
    sophon = {n: p for n, p in parse_dpkg_status(text).items() if n.startswith("sophon-")}
    raw = ", ".join(f"{p.name} {p.version} ({p.status})" for p in sophon.values()) or "no sophon-* packages"
    return Observed(sophon, DPKG_STATUS, raw)


# ---------------------------------------------------------------------------------------
# TPU clocks

@dataclass(frozen=True)
class Clocks:
    """Current PLL rates in Hz (SoC, from debugfs clk_rate) or MHz-derived (PCIe)."""

    rates_hz: dict[str, int]
    source: str


SOC_CLOCKS = ("tpll_clock", "mpll_clock", "vpll_clock")


def soc_clocks(target: Target) -> Observed[Clocks]:
    """Read /sys/kernel/debug/clk/<pll>/clk_rate; top/clock only lists what was written."""
    rates = {}
    problems = []
    for name in SOC_CLOCKS:
        path = f"{CLK_DEBUGFS}/{name}/clk_rate"
        try:
            text = read_fact(target, path, limit=64).strip()
        except (OSError, TargetError) as exc:
            problems.append(f"{path}: {read_problem(exc)}")
            continue
        if text.isdigit():
            rates[name] = int(text)
        else:
            problems.append(f"{path}: not a number: {_trim(text)!r}")
    raw = ", ".join(f"{k}={v}" for k, v in rates.items())
    if problems:
        return Observed(None, CLK_DEBUGFS, raw or None, "; ".join(problems))
    return Observed(Clocks(rates, CLK_DEBUGFS), CLK_DEBUGFS, raw)


# ---------------------------------------------------------------------------------------
# Memory: RAM and SoC ion heaps

def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes (the file says kB, meaning KiB)."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"(\w+):\s+(\d+)\s*(kB)?", line)
        if match:
            values[match.group(1)] = int(match.group(2)) * (1024 if match.group(3) else 1)
    return values if "MemTotal" in values else {}


def meminfo(target: Target) -> Observed[dict[str, int]]:
    return observe(target, MEMINFO, lambda t: parse_meminfo(t) or None, "/proc/meminfo")


HEAPS = ("npu", "vpu", "vpp")

_ION_SUMMARY = re.compile(r"heap size:\s*(?P<total>\d+)\s*bytes,\s*used:\s*(?P<used>\d+)\s*bytes")


def parse_ion_summary(text: str) -> tuple[int, int] | None:
    """(total, used) bytes from an ion heap's ``summary`` file.

    Format of linux-arm64 ``drivers/soc/bitmain/ion/bitmain/bitmain_ion_debugfs.c``
    (``bm_ion_debug_heap_show``): ``Summary:`` then
    ``[2] bm_npu_heap heap size:7985954816 bytes, used:0 bytesusage rate:0%, memory usage
    peak 0 bytes`` (no space before ``usage``), then a ``Details:`` table of buffers.
    """
    match = _ION_SUMMARY.search(text)
    return (int(match["total"]), int(match["used"])) if match else None


@dataclass(frozen=True)
class IonHeap:
    total: int  # bytes
    used: int | None  # bytes, when alloc_mem or the summary said
    source: str  # the file the total was read from


def ion_heap_details(target: Target) -> tuple[dict[str, IonHeap], list[str]]:
    """Each SoC ion heap from ``total_mem``/``alloc_mem``, or else from its ``summary``.

    Returns the heaps read and a ``path: why`` line for each heap that could not be read.
    """
    heaps: dict[str, IonHeap] = {}
    problems = []
    for heap in HEAPS:
        base = f"{ION_HEAPS}/bm_{heap}_heap_dump"
        tried = []
        for name in ("total_mem", "summary"):
            path = f"{base}/{name}"
            problem = None
            text = ""
            try:
                text = read_fact(target, path, limit=1 << 16).strip()
            except (OSError, TargetError) as exc:
                problem = read_problem(exc)
            if problem is None and name == "total_mem":
                if text.isdigit() and int(text) > 0:
                    used_text = _read_opt(target, f"{base}/alloc_mem") or ""
                    heaps[heap] = IonHeap(int(text), int(used_text) if used_text.isdigit() else None, path)
                    break
                problem = "not a number" if text else "empty file"
            elif problem is None:
                parsed = parse_ion_summary(text)
                if parsed and parsed[0] > 0:
                    heaps[heap] = IonHeap(parsed[0], parsed[1], path)
                    break
                problem = "no 'heap size:N bytes, used:N bytes' line" if text else "empty file"
            tried.append(f"{path}: {problem}")
        else:
            problems.extend(tried)
    return heaps, problems


def ion_heaps(target: Target) -> Observed[dict[str, int]]:
    """Total bytes of the SoC's npu/vpu/vpp ion heaps (debugfs, root only on real boards)."""
    heaps, problems = ion_heap_details(target)
    sizes = {name: heap.total for name, heap in heaps.items()}
    raw = ", ".join(f"{k}={v // (1 << 20)} MiB" for k, v in sizes.items())
    if "npu" not in sizes:
        npu_problems = [p for p in problems if "/bm_npu_heap_dump/" in p]
        return Observed(None, ION_HEAPS, raw or None, "; ".join(npu_problems) or "no npu heap")
    return Observed(sizes, heaps["npu"].source.rsplit("/", 1)[0], raw)


# ---------------------------------------------------------------------------------------
# The installed boot-time clock unit (provision/clock.py ``clock persist``)

CLOCK_UNIT = "/etc/systemd/system/llmtpu-clock.service"
CLOCK_UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/llmtpu-clock.service"
_SETR = re.compile(r"setr\s+(?P<name>\w+)\s+(?P<rate>\d+)")


def parse_clock_unit(text: str) -> dict[str, int]:
    """PLL rates (Hz) of the ``ExecStart=... echo setr <clk> <rate> > .../top/clock`` lines."""
    rates = {}
    for line in text.splitlines():
        if line.strip().startswith("ExecStart="):
            match = _SETR.search(line)
            if match and match["name"] in SOC_CLOCKS:
                rates[match["name"]] = int(match["rate"])
    return rates


@dataclass(frozen=True)
class PersistedClocks:
    rates_hz: dict[str, int]  # what the unit sets at boot
    enabled: bool  # the multi-user.target.wants link exists


def persisted_clocks(target: Target) -> Observed[PersistedClocks]:
    """The rates llmtpu's boot unit re-applies; value None (problem "missing") when none is installed."""
    observed = observe(target, CLOCK_UNIT, lambda t: parse_clock_unit(t) or None, "llmtpu clock unit")
    if observed.value is None:
        return Observed(None, observed.source, observed.raw, observed.problem)
    enabled = safe_lstat(target, CLOCK_UNIT_LINK) is not None
    return Observed(PersistedClocks(observed.value, enabled), CLOCK_UNIT, observed.raw)


def bm_version(target: Target) -> Observed[str]:
    """SoC `bm_version` output: recorded in a sysroot, run on a real board."""
    if target.is_sysroot:
        try:
            recorded = read_fact(target, "/_cmd/bm_version.txt")
        except (OSError, TargetError) as exc:
            return Observed(None, "/_cmd/bm_version.txt", None, read_problem(exc))
        return Observed(recorded, "/_cmd/bm_version.txt", _trim(recorded))
    try:
        result = target.run(["bm_version"], timeout=10)
    except TargetError as exc:
        return Observed(None, "bm_version", None, str(exc))
    if not result.ok:
        return Observed(None, "bm_version", _trim(result.stderr.decode(errors="replace")), "command failed")
    return Observed(result.text(), "bm_version", _trim(result.text()))


def parse_sdk_version(bm_version_text: str) -> str | None:
    match = re.search(r"SophonSDK version:\s*(.+)", bm_version_text)
    return match.group(1).strip() if match else None


@dataclass(frozen=True)
class BmVersion:
    """What a SoC board's ``bm_version`` says (sophon-tools 03-sdk-version.md)."""

    sdk: str | None  # "v23.09 LTS-SP3"
    libsophon: str | None  # "0.5.1"
    kernel: str | None  # the KernelVersion line


def parse_bm_version(text: str) -> BmVersion | None:
    """``SophonSDK version: v23.09 LTS-SP3`` / ``sophon-soc-libsophon : 0.5.1`` / ``KernelVersion : ...``."""
    lib = re.search(r"^\s*sophon-soc-libsophon\s*:\s*(\S+)", text, re.MULTILINE)
    kernel = re.search(r"^\s*KernelVersion\s*:\s*(.+)$", text, re.MULTILINE)
    parsed = BmVersion(parse_sdk_version(text), lib.group(1) if lib else None,
                       kernel.group(1).strip() if kernel else None)
    return parsed if parsed.sdk or parsed.libsophon else None


def sdk_key(name: str) -> str:
    """``v23.09 LTS-SP1`` and ``V23.09 LTS SP1`` name the same release."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def parse_version(text: str) -> tuple[int, ...] | None:
    """``0.4.9-LTS`` -> (0, 4, 9); None when it does not start with a dotted number."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


SOC_THERMAL = "/sys/class/thermal/thermal_zone0/temp"


def npu_usage_path(node: str) -> str:
    """``bm-sophon0`` / ``bm-tpu0`` -> its ``npu_usage`` file (libsophon driver/bm_attr.c)."""
    kind = "bm-tpu" if node.startswith("bm-tpu") else "bm-sophon"
    return f"/sys/class/{kind}/{node}/device/npu_usage"


def parse_npu_usage(text: str) -> int | None:
    """``usage:0 avusage:0`` -> the current usage in percent."""
    match = re.search(r"\busage:\s*(\d+)", text)
    return int(match.group(1)) if match else None


def parse_millidegrees(text: str) -> int | None:
    """thermal_zone ``temp`` (millidegrees C) -> whole degrees C."""
    text = text.strip()
    return int(text) // 1000 if re.fullmatch(r"-?\d+", text) else None
