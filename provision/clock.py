"""Lower (or restore) the SoC's TPU, memory and video PLLs, now and across reboots.

LLM-TPU's fix for all-``!`` output is three ``echo "setr <clk> <rate>" > /sys/kernel/debug/top/clock``
lines (README Q3). Three facts shape this module (sophgo.md §2.3):

* the driver copies ``count - 1`` bytes of each write, so every ``setr`` line needs its trailing
  newline, and each write carries exactly one command (one ``Target.append`` per line);
* ``top/clock`` only lists what was written since boot, so the rates are read back from the
  common-clock debugfs ``clk/<name>/clk_rate`` (the doctor's ``soc_clocks`` fact);
* debugfs writes are lost at reboot; a systemd oneshot re-applies them (see ``unit_text``).

Rates are Hz inside; users write them with a unit (``750MHz``, ``0.75GHz``, ``750000000Hz``),
and a bare number means MHz, as ``clock show`` and the README speak (``parse_rate``). Each PLL
has a floor (``PLL_FLOORS``, with its source): below it no Sophgo source runs the chip, and a
unit persisting such a rate would cripple the board at every boot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from llmtpu.doctor.checks import SEED_DOWNCLOCK, SOC_DEFAULT_CLOCKS
from llmtpu.doctor.facts import SOC_CLOCKS, TOP_CLOCK, soc_clocks
from llmtpu.provision.operation import Change, Journal, JournalRecord, Operation, OperationError, Plan, restore_backup
from llmtpu.target import Target, TargetError

UNIT_NAME = "llmtpu-clock.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
#: bm_clk_pll_set_rate picks the nearest rate its dividers reach; closer than this counts as equal.
RATE_TOLERANCE = 0.005


@dataclass(frozen=True)
class Floor:
    hz: int
    reason: str
    source: str


#: The lowest rate each PLL may be set to. Sources: Sophgo's BM1684 kernel cooling driver
#: (linux-arm64, bm1684_cooling.c: ``#define MIN_TPU_CLK 75000000UL`` and
#: ``#define MIN_CPU_CLK 1150000000UL``, the lowest rates the kernel's own thermal throttling
#: runs the TPU and the A53 cluster at) and LLM-TPU README Q3 (vpll 100000000, the lowest vpll
#: any Sophgo source sets). The Q3 downclock (750/1800/100 MHz) is above every floor.
PLL_FLOORS = {
    "tpll_clock": Floor(75_000_000, "the lowest TPU rate Sophgo's kernel thermal throttling uses",
                        "linux-arm64 bm1684_cooling.c MIN_TPU_CLK 75000000UL"),
    "mpll_clock": Floor(1_150_000_000, "mpll feeds the A53 CPUs and the AXI/DDR divider; Sophgo's kernel "
                        "thermal throttling never runs the CPUs below 1150 MHz",
                        "linux-arm64 bm1684_cooling.c MIN_CPU_CLK 1150000000UL"),
    "vpll_clock": Floor(100_000_000, "the lowest video PLL rate any Sophgo source sets",
                        "LLM-TPU README Q3: setr vpll_clock 100000000"),
}

UNITS_HZ = {"hz": 1, "khz": 10**3, "mhz": 10**6, "ghz": 10**9}
RATE_SYNTAX = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?[hH][zZ])?\s*")
#: A bare number this large was meant as Hz: refused rather than read as MHz.
BARE_MHZ_LIMIT = 100_000


def parse_rate(text: str) -> int:
    """A rate as the user writes it, in Hz: ``750MHz``, ``0.75GHz``, ``750000000Hz``; bare = MHz."""
    match = RATE_SYNTAX.fullmatch(text)
    if match is None:
        raise OperationError(f"{text!r} is not a rate: write 750MHz, 0.75GHz or 750000000Hz "
                             "(a bare number means MHz)")
    number, unit = match.group(1), match.group(2)
    if unit is None and Decimal(number) >= BARE_MHZ_LIMIT:
        raise OperationError(f"{text!r}: a bare number means MHz; for {number} Hz write {number}Hz, "
                             f"for MHz write e.g. {Decimal(number) / 10**6:f}MHz")
    try:
        hz = Decimal(number) * UNITS_HZ[(unit or "MHz").lower()]
    except InvalidOperation as exc:
        raise OperationError(f"{text!r} is not a rate") from exc
    if hz != hz.to_integral_value():
        raise OperationError(f"{text!r} is not a whole number of Hz")
    return int(hz)


def describe_rate(rate: int) -> str:
    """A rate as the plan shows it: MHz for people, Hz as it is written to the driver."""
    return f"{Decimal(rate) / 10**6:f} MHz ({rate} Hz)".replace(".000000 MHz", " MHz")


def setr_line(name: str, rate: int) -> bytes:
    """One driver command, with the newline the driver drops instead of the last digit."""
    return f"setr {name} {rate}\n".encode()


def read_rates(target: Target) -> dict[str, int]:
    """The running PLL rates in Hz; an error that says why when debugfs cannot be read."""
    observed = soc_clocks(target)
    if observed.value is None:
        raise OperationError(f"cannot read the PLL rates on {target.name}: {observed.problem} "
                             "(debugfs needs root and `mount -t debugfs none /sys/kernel/debug`)")
    return dict(observed.value.rates_hz)


def same_rate(now: int, wanted: int) -> bool:
    return abs(now - wanted) <= wanted * RATE_TOLERANCE


def check_rates(rates: Mapping[str, int]) -> dict[str, int]:
    """Known clocks, never above the device-tree default (no overclocking), never below the floor."""
    for name, rate in rates.items():
        if name not in SOC_DEFAULT_CLOCKS:
            raise OperationError(f"unknown clock {name!r}; known: {', '.join(SOC_CLOCKS)}")
        if rate > SOC_DEFAULT_CLOCKS[name]:
            raise OperationError(f"{name} {describe_rate(rate)} is above the board's default "
                                 f"{describe_rate(SOC_DEFAULT_CLOCKS[name])}, its maximum")
        floor = PLL_FLOORS[name]
        if rate < floor.hz:
            raise OperationError(f"{name} {describe_rate(rate)} is below its floor {describe_rate(floor.hz)}: "
                                 f"{floor.reason} ({floor.source})")
    return dict(rates)


def write_rates(target: Target, rates: Mapping[str, int]) -> None:
    """One write() per line: the driver parses one command per write() call."""
    for name, rate in rates.items():
        try:
            target.append(TOP_CLOCK, setr_line(name, rate))
        except (OSError, TargetError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            raise OperationError(f"writing setr {name} {rate} to {TOP_CLOCK} failed: {detail} "
                                 "(run as root with debugfs mounted)") from exc


def differing(now: Mapping[str, int], wanted: Mapping[str, int]) -> dict[str, int]:
    """Only what differs is written: a second apply finds nothing to do."""
    return {name: rate for name, rate in wanted.items() if not same_rate(now[name], rate)}


def rate_changes(now: Mapping[str, int], wanted: Mapping[str, int]) -> list[Change]:
    return [Change(f"setr {name} {rate} > {TOP_CLOCK}", f"{name} {describe_rate(now[name])}",
                   f"{name} {describe_rate(rate)}") for name, rate in differing(now, wanted).items()]


def unit_rates(text: str | None) -> str | None:
    """What a boot unit sets, one line per rate (the plan shows this, not the whole unit)."""
    if text is None:
        return None
    found = re.findall(r"echo setr (\w+) (\d+) >", text)
    if not found:
        return "present, sets no rate llmtpu recognises"
    return "\n".join(f"at boot: {name} {describe_rate(int(rate))}" for name, rate in found)


class ClockApply(Operation):
    """``clock.apply``: set the PLL rates now (lost at reboot; ClockPersist keeps them)."""

    id = "clock.apply"
    summary = "lower the TPU/memory/video PLLs (LLM-TPU README Q3)"

    def __init__(self, rates: Mapping[str, int] | None = None) -> None:
        self.rates = check_rates(rates if rates is not None else SEED_DOWNCLOCK)

    def plan(self, target: Target) -> Plan:
        plan = Plan(self.id, target.name)
        plan.changes = rate_changes(read_rates(target), self.rates)
        if plan.changes:
            plan.notes.append(f"lost at reboot unless persisted (`llmtpu clock persist` installs {UNIT_NAME})")
        return plan

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        if plan.nothing_to_do:
            return
        before = read_rates(target)
        # Record first: if a write fails halfway, undo still knows the rates to go back to.
        journal.record(self.id, {"before": before, "wanted": self.rates})
        write_rates(target, differing(before, self.rates))

    def verify(self, target: Target) -> list[str]:
        now = read_rates(target)
        return [f"{name} runs at {now[name]} Hz, wanted {rate} Hz"
                for name, rate in self.rates.items() if not same_rate(now[name], rate)]

    def plan_undo(self, target: Target, entry: JournalRecord) -> Plan:
        plan = Plan(self.id + ".undo", target.name)
        plan.changes = rate_changes(read_rates(target), entry.undo["before"])
        return plan

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        plan = self.plan_undo(target, entry)
        write_rates(target, differing(read_rates(target), entry.undo["before"]))
        Journal(target).mark_undone(entry)
        return plan


def unit_text(rates: Mapping[str, int]) -> str:
    """The oneshot unit that re-applies the rates at every boot.

    Why a systemd oneshot after ``bmrt_setup.service``: the device tree puts the default rates
    back at each boot, and Sophgo's documented way to run something at boot on SE7/Airbox is
    a unit in /etc/systemd/system ordered after ``bmrt_setup.service`` (sophon-tools
    se7-skill 11-bsp-faq.md). Running after the board's own TPU setup means nothing resets
    the PLLs behind us; ``rc.local`` is not confirmed on these images, a udev rule has no
    debugfs guarantee. Each ExecStart is its own process, hence its own write, with echo's
    newline. The rates are integers checked by ``check_rates``, never user text.
    """
    lines = [
        "# Written by llmtpu (`llmtpu clock persist`); `llmtpu clock undo` removes it.",
        "[Unit]",
        "Description=llmtpu: TPU/memory/video PLL rates for LLM-TPU (README Q3)",
        "After=bmrt_setup.service sys-kernel-debug.mount",
        f"ConditionPathExists={TOP_CLOCK}",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
    ]
    lines += [f"ExecStart=/bin/sh -c 'echo setr {name} {rate} > {TOP_CLOCK}'" for name, rate in rates.items()]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def systemd_running(target: Target) -> bool:
    """Only a live machine booted with systemd can take daemon-reload/enable."""
    return not target.is_sysroot and target.exists("/run/systemd/system")


def _run(target: Target, argv: list[str]) -> None:
    try:
        result = target.run(argv)
    except TargetError as exc:
        raise OperationError(str(exc)) from exc
    if not result.ok:
        detail = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise OperationError(f"{' '.join(argv)} failed: {detail}")


class ClockPersist(Operation):
    """``clock.persist``: install and enable a oneshot unit that writes the rates at boot."""

    id = "clock.persist"
    summary = f"re-apply the PLL rates at every boot ({UNIT_NAME}, after bmrt_setup.service)"

    def __init__(self, rates: Mapping[str, int] | None = None) -> None:
        self.rates = check_rates(rates if rates is not None else SEED_DOWNCLOCK)

    def _current_unit(self, target: Target) -> str | None:
        try:
            return target.read_text(UNIT_PATH)
        except FileNotFoundError:
            return None

    def _enabled(self, target: Target) -> bool:
        return target.lstat(WANTS_LINK) is not None

    def plan(self, target: Target) -> Plan:
        plan = Plan(self.id, target.name)
        wanted = unit_text(self.rates)
        current = self._current_unit(target)
        if current != wanted:
            plan.changes.append(Change(f"write {UNIT_PATH}", unit_rates(current), unit_rates(wanted)))
        if not self._enabled(target):
            plan.changes.append(Change(f"enable {UNIT_NAME} (link {WANTS_LINK})", None, UNIT_PATH))
        if plan.changes and not systemd_running(target):
            plan.notes.append("no running systemd here: the link is made directly and "
                              "`systemctl daemon-reload` is NOT run; it takes effect at the next boot")
        return plan

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        if plan.nothing_to_do:
            return
        had_link = self._enabled(target)
        existed = self._current_unit(target) is not None
        backup = target.write_atomic(UNIT_PATH, unit_text(self.rates).encode(), mode=0o644, backup=True)
        journal.record(self.id, {"unit_existed": existed, "link_existed": had_link, "backup": backup})
        if systemd_running(target):
            _run(target, ["systemctl", "daemon-reload"])
            _run(target, ["systemctl", "enable", UNIT_NAME])
        elif not had_link:
            target.makedirs(WANTS_LINK.rsplit("/", 1)[0])
            target.symlink(UNIT_PATH, WANTS_LINK)

    def verify(self, target: Target) -> list[str]:
        problems = []
        if self._current_unit(target) != unit_text(self.rates):
            problems.append(f"{UNIT_PATH} does not hold the wanted rates")
        if not self._enabled(target):
            problems.append(f"{UNIT_NAME} is not enabled ({WANTS_LINK} missing)")
        return problems

    def plan_undo(self, target: Target, entry: JournalRecord) -> Plan:
        plan = Plan(self.id + ".undo", target.name)
        if not entry.undo["link_existed"] and self._enabled(target):
            plan.changes.append(Change(f"disable {UNIT_NAME} (remove {WANTS_LINK})", UNIT_PATH, None))
        backup = entry.undo.get("backup")
        if backup:
            plan.changes.append(Change(f"restore {UNIT_PATH} from {backup}"))
        elif not entry.undo["unit_existed"] and self._current_unit(target) is not None:
            plan.changes.append(Change(f"remove {UNIT_PATH}", "present", None))
        return plan

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        plan = self.plan_undo(target, entry)
        live = systemd_running(target)
        for change in plan.changes:
            if change.what.startswith("disable"):
                if live:
                    _run(target, ["systemctl", "disable", UNIT_NAME])
                else:
                    target.remove(WANTS_LINK)
            elif change.what.startswith("restore"):
                restore_backup(target, entry.undo["backup"], UNIT_PATH)
            else:
                target.remove(UNIT_PATH)
        if live and plan.changes:
            _run(target, ["systemctl", "daemon-reload"])
        Journal(target).mark_undone(entry)
        return plan


#: The clock operations by journal id, so an undo can rebuild the one that wrote a record.
CLOCK_OPERATIONS: dict[str, type[ClockApply] | type[ClockPersist]] = {
    ClockApply.id: ClockApply, ClockPersist.id: ClockPersist,
}


def pending_records(target: Target) -> list[JournalRecord]:
    """Clock records not undone yet, newest first (the order undo walks them)."""
    records = [r for r in Journal(target).records() if r.operation in CLOCK_OPERATIONS and not r.undone]
    return list(reversed(records))
