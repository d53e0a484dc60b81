"""``monitor.install``: a systemd timer that refreshes llmtpu's metrics file for node_exporter.

Why a timer and a oneshot service: the doctor takes a second or two and needs root (debugfs,
/proc/bmsophon); node_exporter's textfile collector only reads files, so a periodic writer next
to it is the pattern node_exporter documents. The service has a deadline (TimeoutStartSec) so a
hung chip read never piles up runs, and writes the file atomically (llmtpu/metrics.py).

The journal record is written before the first change and holds the previous text of every file
the install replaces, so `llmtpu monitor undo` (or `llmtpu undo`) puts back exactly what was
there, also after an interrupted install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmtpu.provision.operation import Change, Journal, JournalRecord, Operation, OperationError, Plan
from llmtpu.target import Target, TargetError

SERVICE_NAME = "llmtpu-metrics.service"
TIMER_NAME = "llmtpu-metrics.timer"
UNIT_DIR = "/etc/systemd/system"
SERVICE_PATH = f"{UNIT_DIR}/{SERVICE_NAME}"
TIMER_PATH = f"{UNIT_DIR}/{TIMER_NAME}"
WANTS_LINK = f"{UNIT_DIR}/timers.target.wants/{TIMER_NAME}"
#: Debian's prometheus-node-exporter reads this folder (its --collector.textfile.directory default).
DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
METRICS_FILE = "llmtpu.prom"
#: Seconds between refreshes, and the bounds a refresh interval must keep.
DEFAULT_INTERVAL = 300
MIN_INTERVAL, MAX_INTERVAL = 30, 86_400
#: A run that takes longer is killed by systemd (the doctor's own reads are bounded well below).
RUN_DEADLINE = 120

#: Paths and names written into a unit file: no spaces, quotes, '%' or newlines, so systemd reads
#: them as one word each and nothing can add a directive.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./+-]*")
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class MonitorSettings:
    llmtpu: str  # the llmtpu executable on the machine
    textfile_dir: str = DEFAULT_TEXTFILE_DIR
    interval: int = DEFAULT_INTERVAL
    model: str = "llama2-7b"

    def __post_init__(self) -> None:
        for what, value in (("--llmtpu", self.llmtpu), ("--textfile-dir", self.textfile_dir)):
            if not _SAFE_PATH.fullmatch(value) or "/../" in f"{value}/" or value.startswith("//"):
                raise OperationError(f"{what}: {value!r} must be an absolute path of letters, digits and ._+-/ "
                                     "(it is written into a systemd unit)")
        if not _SAFE_WORD.fullmatch(self.model):
            raise OperationError(f"--model: {self.model!r} is not a model name")
        if not MIN_INTERVAL <= self.interval <= MAX_INTERVAL:
            raise OperationError(f"--interval: {self.interval} s must be between {MIN_INTERVAL} and {MAX_INTERVAL}")

    @property
    def output(self) -> str:
        return f"{self.textfile_dir.rstrip('/')}/{METRICS_FILE}"


def service_text(settings: MonitorSettings) -> str:
    return "\n".join((
        "# Written by llmtpu (`llmtpu monitor install`); `llmtpu monitor undo` removes it.",
        "[Unit]",
        "Description=llmtpu metrics for node_exporter's textfile collector",
        "After=bmrt_setup.service",
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={settings.llmtpu} metrics --output {settings.output} --model {settings.model}",
        f"TimeoutStartSec={RUN_DEADLINE}",
        "Nice=10",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={settings.textfile_dir}",
        "",
    ))


def timer_text(settings: MonitorSettings) -> str:
    return "\n".join((
        "# Written by llmtpu (`llmtpu monitor install`); `llmtpu monitor undo` removes it.",
        "[Unit]",
        f"Description=refresh llmtpu metrics every {settings.interval} s",
        "",
        "[Timer]",
        "OnBootSec=60",
        f"OnUnitActiveSec={settings.interval}",
        "AccuracySec=10",
        f"Unit={SERVICE_NAME}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ))


def systemd_running(target: Target) -> bool:
    """Only a live machine booted with systemd can take daemon-reload/enable."""
    return not target.is_sysroot and target.exists("/run/systemd/system")


def _run(target: Target, argv: list[str]) -> None:
    try:
        result = target.run(argv, timeout=60)
    except TargetError as exc:
        raise OperationError(str(exc)) from exc
    if not result.ok:
        detail = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise OperationError(f"{' '.join(argv)} failed on {target.name}: {detail}")


def _current(target: Target, path: str) -> str | None:
    stat = target.lstat(path)
    if stat is None:
        return None
    if stat.kind != "file":
        raise OperationError(f"{target.name}: {path} is a {stat.kind}, not a file; llmtpu replaces only "
                             "files it can back up. Move it away and run again")
    return target.read_text(path)


class MonitorInstall(Operation):
    """Install and enable llmtpu-metrics.timer; `plan` says every file it writes, as a diff."""

    id = "monitor.install"
    summary = "refresh llmtpu's node_exporter metrics with a systemd timer"

    def __init__(self, settings: MonitorSettings | None = None) -> None:
        self.settings = settings

    def _wanted(self) -> dict[str, str]:
        if self.settings is None:
            raise OperationError("monitor.install needs its settings to plan an install")
        return {SERVICE_PATH: service_text(self.settings), TIMER_PATH: timer_text(self.settings)}

    def _enabled(self, target: Target) -> bool:
        return target.lstat(WANTS_LINK) is not None

    def plan(self, target: Target) -> Plan:
        plan = Plan(self.id, target.name)
        assert self.settings is not None
        if target.lstat(self.settings.textfile_dir) is None:
            plan.changes.append(Change(f"create folder {self.settings.textfile_dir}", None, "folder"))
        for path, text in self._wanted().items():
            current = _current(target, path)
            if current != text:
                plan.changes.append(Change(f"write {path}", current, text))
        if not self._enabled(target):
            plan.changes.append(Change(f"enable {TIMER_NAME} (link {WANTS_LINK})", None, TIMER_PATH))
        if plan.changes and not systemd_running(target):
            plan.notes.append("no running systemd here: the link is made directly and the timer starts at "
                              "the next boot")
        plan.notes.append(f"node_exporter reads {self.settings.output} with "
                          f"--collector.textfile.directory={self.settings.textfile_dir}")
        return plan

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        if plan.nothing_to_do:
            return
        assert self.settings is not None
        wanted = self._wanted()
        previous = {path: _current(target, path) for path in wanted}
        made_dir = target.lstat(self.settings.textfile_dir) is None
        journal.record(self.id, {"previous": previous, "link_existed": self._enabled(target),
                                 "made_dir": made_dir, "output": self.settings.output})
        if made_dir:
            target.makedirs(self.settings.textfile_dir)
        for path, text in wanted.items():
            if previous[path] != text:
                target.write_atomic(path, text.encode(), mode=0o644, backup=False)
        if systemd_running(target):
            _run(target, ["systemctl", "daemon-reload"])
            _run(target, ["systemctl", "enable", "--now", TIMER_NAME])
        elif not self._enabled(target):
            target.makedirs(WANTS_LINK.rsplit("/", 1)[0])
            target.symlink(TIMER_PATH, WANTS_LINK)

    def verify(self, target: Target) -> list[str]:
        problems = [f"{path} does not hold llmtpu's unit" for path, text in self._wanted().items()
                    if _current(target, path) != text]
        if not self._enabled(target):
            problems.append(f"{TIMER_NAME} is not enabled ({WANTS_LINK} missing)")
        return problems

    def plan_undo(self, target: Target, entry: JournalRecord) -> Plan:
        plan = Plan(self.id + ".undo", target.name)
        if not entry.undo["link_existed"] and self._enabled(target):
            plan.changes.append(Change(f"disable {TIMER_NAME} (remove {WANTS_LINK})", TIMER_PATH, None))
        for path, before in entry.undo["previous"].items():
            now = _current(target, path)
            if before is None and now is not None:
                plan.changes.append(Change(f"remove {path}", now, None))
            elif before is not None and now != before:
                plan.changes.append(Change(f"restore {path}", now, before))
        output = entry.undo["output"]
        if target.lstat(output) is not None:
            plan.changes.append(Change(f"remove {output} (stale metrics would look current)", "present", None))
        if entry.undo["made_dir"]:
            plan.notes.append(f"the folder {output.rsplit('/', 1)[0]} made by the install is kept")
        return plan

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        plan = self.plan_undo(target, entry)
        live = systemd_running(target)
        if live and any(c.what.startswith("disable") for c in plan.changes):
            _run(target, ["systemctl", "disable", "--now", TIMER_NAME])
        for change in plan.changes:
            verb, path = change.what.split(" ", 1)
            if verb == "disable" and not live:
                target.remove(WANTS_LINK)
            elif verb == "remove":
                target.remove(path.split(" ", 1)[0])
            elif verb == "restore":
                target.write_atomic(path, (change.after or "").encode(), mode=0o644, backup=False)
        if live and plan.changes:
            _run(target, ["systemctl", "daemon-reload"])
        Journal(target).mark_undone(entry)
        return plan


def pending_record(target: Target) -> JournalRecord | None:
    """The newest monitor install not undone yet."""
    return Journal(target).last(MonitorInstall.id)
