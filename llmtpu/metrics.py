"""The doctor's findings as Prometheus metrics, in node_exporter's textfile-collector format.

Between llmtpu runs nobody watches the boards; node_exporter's textfile collector does, if a
file of metrics is refreshed in its folder (``llmtpu monitor install`` sets up the timer).
Every series comes from the same facts the doctor reads and only from values it actually read:
a chip whose temperature file is missing has no temperature series, never a 0.

Names (all gauges; ``host`` is the machine as llmtpu calls it):

* ``llmtpu_check_ok{check}`` 1 when the check is ok, else 0; ``llmtpu_check_status{check,status}``
  1 for the check's status and 0 for the other three (a state set, so alerts can match a status).
* ``llmtpu_verdict{verdict}`` likewise for the whole report; ``llmtpu_info{machine_kind,tool_version}``.
* ``llmtpu_kernel_build_timestamp_seconds``, ``llmtpu_driver_build_timestamp_seconds``,
  ``llmtpu_driver_info{version}``, ``llmtpu_libsophon_info{version}``, ``llmtpu_package_info{package,version}``.
* Per PCIe chip (``card``, ``chip`` labels): ``llmtpu_chip_up{status}``, ``llmtpu_chip_temperature_celsius``,
  ``llmtpu_chip_tpu_clock_hertz``, ``llmtpu_chip_clock_hertz{clock}``, ``llmtpu_chip_heap_bytes{heap}``,
  and per card ``llmtpu_card_tpu_max_clock_hertz``.
* SoC: ``llmtpu_soc_clock_hertz{clock}``, ``llmtpu_soc_heap_bytes{heap}``.
* ``llmtpu_host_up`` 1 when the machine was read (fleet runs: 0 for one that could not be),
  ``llmtpu_run_timestamp_seconds``, ``llmtpu_run_duration_seconds``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from llmtpu import __version__
from llmtpu.doctor.checks import FAIL, OK, SKIP, WARN, DoctorOptions, Facts
from llmtpu.doctor.report import Report, run_doctor
from llmtpu.target import Target

STATUSES = (OK, WARN, FAIL, SKIP)

#: HELP text of every metric llmtpu writes, in the order written.
HELP = {
    "llmtpu_host_up": "1 when llmtpu read the machine, 0 when it could not (unreachable, refused)",
    "llmtpu_info": "llmtpu's view of the machine; the value is always 1",
    "llmtpu_verdict": "1 for the doctor's verdict (ok, warn, fail), 0 for the others",
    "llmtpu_check_ok": "1 when the doctor check is ok, else 0",
    "llmtpu_check_status": "1 for the check's status (ok, warn, fail, skip), 0 for the others",
    "llmtpu_kernel_build_timestamp_seconds": "build date of the running kernel (SoC boards), Unix time",
    "llmtpu_driver_build_timestamp_seconds": "release date of the PCIe driver (/proc/bmsophon/driver_version)",
    "llmtpu_driver_info": "the PCIe driver's release version; the value is always 1",
    "llmtpu_libsophon_info": "the libsophon version /opt/sophon/libsophon-current points to; always 1",
    "llmtpu_package_info": "an installed sophon deb and its version; always 1",
    "llmtpu_chip_up": "1 when the chip's status is Active, else 0; status as the driver says it",
    "llmtpu_chip_temperature_celsius": "chip temperature (/proc/bmsophon/cardN/bmsophonM/chip_temp)",
    "llmtpu_chip_tpu_clock_hertz": "current TPU clock of the chip (tpu_freq)",
    "llmtpu_chip_clock_hertz": "the chip's PLL and unit clocks (clk)",
    "llmtpu_chip_heap_bytes": "size of each device-memory heap of the chip (heap0 holds the model)",
    "llmtpu_card_tpu_max_clock_hertz": "the card's highest TPU clock (tpu_maxclk)",
    "llmtpu_soc_clock_hertz": "current PLL rates of the SoC (debugfs clk_rate)",
    "llmtpu_soc_heap_bytes": "total size of the SoC's ion heaps (npu, vpu, vpp)",
    "llmtpu_run_timestamp_seconds": "when llmtpu read the machine, Unix time",
    "llmtpu_run_duration_seconds": "seconds reading the machine and running the checks took",
}

MHZ = 1_000_000


@dataclass
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass
class Metrics:
    """Samples of one or more machines, grouped by metric name when written."""

    samples: list[Sample] = field(default_factory=list)

    def add(self, name: str, value: float, **labels: str) -> None:
        if name not in HELP:
            raise KeyError(f"metric {name} has no HELP text")
        self.samples.append(Sample(name, labels, value))

    def text(self) -> str:
        """The textfile-collector (Prometheus text 0.0.4) format, one HELP/TYPE per name."""
        lines = []
        for name in HELP:
            rows = [s for s in self.samples if s.name == name]
            if not rows:
                continue
            lines.append(f"# HELP {name} {_escape_help(HELP[name])}")
            lines.append(f"# TYPE {name} gauge")
            lines.extend(f"{name}{_labels(s.labels)} {_number(s.value)}" for s in rows)
        return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape_label(value: str) -> str:
    """A label value read from a machine may hold anything; the format allows \\\\, \\" and \\n escapes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _day(when: date) -> float:
    return datetime(when.year, when.month, when.day, tzinfo=timezone.utc).timestamp()


def add_report(metrics: Metrics, report: Report, facts: Facts, started: float, seconds: float) -> None:
    """The series of one machine read by the doctor (``facts`` are the ones its checks used)."""
    host = report.host
    metrics.add("llmtpu_host_up", 1, host=host)
    metrics.add("llmtpu_info", 1, host=host, machine_kind=report.machine_kind, tool_version=__version__)
    for verdict in (OK, WARN, FAIL):
        metrics.add("llmtpu_verdict", int(report.verdict == verdict), host=host, verdict=verdict)
    for res in report.results:
        metrics.add("llmtpu_check_ok", int(res.status == OK), host=host, check=res.id)
    for res in report.results:
        for status in STATUSES:
            metrics.add("llmtpu_check_status", int(res.status == status), host=host, check=res.id, status=status)
    _versions(metrics, host, facts)
    _chips(metrics, host, facts)
    metrics.add("llmtpu_run_timestamp_seconds", round(started, 3), host=host)
    metrics.add("llmtpu_run_duration_seconds", round(seconds, 3), host=host)


def _versions(metrics: Metrics, host: str, facts: Facts) -> None:
    kind = facts.kind.value
    if kind == "soc-board" and facts.kernel.value is not None:
        metrics.add("llmtpu_kernel_build_timestamp_seconds", _day(facts.kernel.value), host=host)
    if kind in ("pcie-host", "pcie-docker") and facts.driver.value is not None:
        driver = facts.driver.value
        built = driver.built_at.replace(tzinfo=timezone.utc).timestamp() if driver.built_at else _day(driver.released)
        metrics.add("llmtpu_driver_build_timestamp_seconds", built, host=host)
        metrics.add("llmtpu_driver_info", 1, host=host, version=driver.version)
    libsophon = facts.libsophon.value
    if libsophon is not None and libsophon.version:
        metrics.add("llmtpu_libsophon_info", 1, host=host, version=libsophon.version)
    for package in sorted((facts.packages.value or {}).values(), key=lambda p: p.name):
        if package.installed:
            metrics.add("llmtpu_package_info", 1, host=host, package=package.name, version=package.version)


def _chips(metrics: Metrics, host: str, facts: Facts) -> None:
    kind = facts.kind.value
    if kind in ("pcie-host", "pcie-docker"):
        for card in facts.cards.value or []:
            if card.tpu_max_mhz is not None:
                metrics.add("llmtpu_card_tpu_max_clock_hertz", card.tpu_max_mhz * MHZ, host=host, card=card.name)
            for chip in card.chips:
                where = {"host": host, "card": card.name, "chip": chip.name}
                if chip.status is not None:
                    status = chip.status.strip()
                    metrics.add("llmtpu_chip_up", int(status == "Active"), **where, status=status)
                if chip.chip_temp_c is not None:
                    metrics.add("llmtpu_chip_temperature_celsius", chip.chip_temp_c, **where)
                if chip.tpu_freq_mhz is not None:
                    metrics.add("llmtpu_chip_tpu_clock_hertz", chip.tpu_freq_mhz * MHZ, **where)
                for clock, mhz in sorted(chip.clocks_mhz.items()):
                    metrics.add("llmtpu_chip_clock_hertz", mhz * MHZ, **where, clock=clock)
                for index, size in enumerate(chip.heap_bytes):
                    metrics.add("llmtpu_chip_heap_bytes", size, **where, heap=str(index))
    elif kind == "soc-board":
        if facts.soc_clocks.value is not None:
            for clock, hz in sorted(facts.soc_clocks.value.rates_hz.items()):
                metrics.add("llmtpu_soc_clock_hertz", hz, host=host, clock=clock)
        for heap, size in sorted((facts.heaps.value or {}).items()):
            metrics.add("llmtpu_soc_heap_bytes", size, host=host, heap=heap)


def add_unreachable(metrics: Metrics, host: str, started: float) -> None:
    """A machine of a fleet run that could not be read: only that, said as a series."""
    metrics.add("llmtpu_host_up", 0, host=host)
    metrics.add("llmtpu_run_timestamp_seconds", round(started, 3), host=host)


def collect(target: Target, options: DoctorOptions, only: Sequence[str] = ()) -> Metrics:
    """Run the doctor on one machine and turn what it read into metrics."""
    metrics = Metrics()
    started, clock = time.time(), time.monotonic()
    facts = Facts(target, options)
    report = run_doctor(target, options, only, shared=facts)
    add_report(metrics, report, facts, started, time.monotonic() - clock)
    return metrics


def merge(parts: Iterable[Metrics]) -> Metrics:
    merged = Metrics()
    for part in parts:
        merged.samples.extend(part.samples)
    return merged


def write_textfile(path: str | Path, text: str) -> None:
    """Atomically replace ``path``: node_exporter never reads half a file. The temporary name does
    not end in .prom (the collector reads only those); an existing link at ``path`` is replaced,
    never followed."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; create it (node_exporter's textfile directory)")
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
