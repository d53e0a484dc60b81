"""Playbooks: named end-to-end flows as data files (TOML) that sequence checks and operations.

A playbook is data, not code: each ``[[step]]`` has an ``id``, a ``run`` kind from a fixed set,
its arguments, an optional ``when`` condition on the latest check results, and optional
``after`` ids (extra ordering; a cycle is refused). Loading validates everything and names the
line of the offending step, so a user's edited copy fails early and clearly.

Running records progress per host in a state file, so a rerun after an interruption (or
after a manual step such as flashing a card) continues where it stopped.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

#: Step kinds and the arguments each takes (required, optional).
STEP_KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # run doctor checks; `require` = worst acceptable verdict (ok/warn) or the step fails;
    # `smoke = true` includes the real inference (smoke.inference)
    "doctor": (frozenset(), frozenset({"checks", "require", "smoke"})),
    # step the TPU clock down until the smoke test is correct; `persist` keeps it across reboots
    "clock-search": (frozenset(), frozenset({"tpll_mhz", "persist"})),
    # push an offline bundle to this host over SSH (llmtpu push), verified and switched atomically;
    # `timeout` bounds each remote step in seconds (default 60)
    "push": (frozenset({"bundle"}), frozenset({"dest", "checksum", "timeout"})),
    # apply the fix operation each named failing check points to
    "fix": (frozenset({"checks"}), frozenset()),
    # apply one operation by id with arguments
    "operation": (frozenset({"operation"}), frozenset({"args"})),
    # tell the user something; `stop = true` ends the run here until they rerun it
    "say": (frozenset({"text"}), frozenset({"stop"})),
}
COMMON_KEYS = frozenset({"id", "run", "when", "after", "title"})
STATUSES = ("ok", "warn", "fail", "skip")
#: ``{name}`` in a string argument is replaced by ``llmtpu play --set name=VALUE``.
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_WHEN = re.compile(r"^(?P<check>[a-z][\w.]*)\s+is\s+(?P<neg>not\s+)?(?P<statuses>\w+(?:\s*\|\s*\w+)*)$")


class PlaybookError(Exception):
    """A playbook file is wrong; the message names the file and line."""


@dataclass(frozen=True)
class Condition:
    """``<check-id> is [not] <status>[|<status>...]`` evaluated on the latest results."""

    check: str
    statuses: frozenset[str]
    negate: bool

    def holds(self, results: dict[str, str]) -> bool:
        status = results.get(self.check)
        if status is None:
            return False  # a condition on a check not run yet is not met
        return (status in self.statuses) != self.negate

    def __str__(self) -> str:
        return f"{self.check} is {'not ' if self.negate else ''}{'|'.join(sorted(self.statuses))}"


@dataclass(frozen=True)
class Step:
    id: str
    run: str
    args: dict[str, Any]
    when: Condition | None
    after: tuple[str, ...]
    title: str
    line: int


@dataclass(frozen=True)
class Playbook:
    name: str
    summary: str
    kinds: tuple[str, ...]
    steps: tuple[Step, ...]  # in execution order
    source: str

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)


def _step_lines(text: str) -> list[int]:
    """Line number (1-based) of each ``[[step]]`` header, in order."""
    return [i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith("[[step]]")]


def parse_condition(text: str, where: str) -> Condition:
    match = _WHEN.match(text.strip())
    if not match:
        raise PlaybookError(f"{where}: when = {text!r} is not '<check> is [not] <status>[|<status>]'")
    statuses = frozenset(s.strip() for s in match["statuses"].split("|"))
    unknown = statuses - set(STATUSES)
    if unknown:
        raise PlaybookError(f"{where}: when: unknown status {', '.join(sorted(unknown))}; use {'/'.join(STATUSES)}")
    return Condition(match["check"], statuses, bool(match["neg"]))


def parse_playbook(text: str, source: str, known_checks: set[str], known_operations: set[str]) -> Playbook:
    """Validate a playbook's text. Every error names ``source:line``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlaybookError(f"{source}: not valid TOML: {exc}") from exc
    head = data.get("playbook")
    if not isinstance(head, dict) or "name" not in head:
        raise PlaybookError(f"{source}:1: missing [playbook] table with a name")
    raw_steps = data.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise PlaybookError(f"{source}: no [[step]] entries")
    lines = _step_lines(text)
    steps: list[Step] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_steps):
        line = lines[index] if index < len(lines) else 0
        where = f"{source}:{line}"
        step_id = raw.get("id")
        if not isinstance(step_id, str) or not step_id:
            raise PlaybookError(f"{where}: step has no id")
        if step_id in seen:
            raise PlaybookError(f"{where}: step id {step_id!r} is used twice")
        seen.add(step_id)
        kind = raw.get("run")
        if kind not in STEP_KINDS:
            kinds = ", ".join(STEP_KINDS)
            raise PlaybookError(f"{where}: step {step_id!r}: unknown run = {kind!r}; use one of {kinds}")
        required, optional = STEP_KINDS[kind]
        args = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
        missing = required - set(args)
        if missing:
            raise PlaybookError(f"{where}: step {step_id!r} ({kind}) is missing {', '.join(sorted(missing))}")
        extra = set(args) - required - optional
        if extra:
            raise PlaybookError(f"{where}: step {step_id!r} ({kind}) does not take {', '.join(sorted(extra))}")
        for check in args.get("checks", []):
            if check not in known_checks:
                raise PlaybookError(f"{where}: step {step_id!r}: unknown check {check!r}")
        if kind == "operation" and args["operation"] not in known_operations:
            raise PlaybookError(f"{where}: step {step_id!r}: unknown operation {args['operation']!r}")
        if args.get("require") not in (None, "ok", "warn"):
            raise PlaybookError(f"{where}: step {step_id!r}: require must be 'ok' or 'warn'")
        when = parse_condition(raw["when"], where) if "when" in raw else None
        if when is not None and when.check not in known_checks:
            raise PlaybookError(f"{where}: step {step_id!r}: when names unknown check {when.check!r}")
        after = raw.get("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise PlaybookError(f"{where}: step {step_id!r}: after must be a list of step ids")
        steps.append(Step(step_id, kind, args, when, tuple(after), str(raw.get("title", step_id)), line))
    ordered = _order(steps, source)
    return Playbook(str(head["name"]), str(head.get("summary", "")), tuple(head.get("kinds", [])),
                    tuple(ordered), source)


def _order(steps: list[Step], source: str) -> list[Step]:
    """File order, moved only as far as ``after`` demands; a cycle is an error."""
    by_id = {s.id: s for s in steps}
    for step in steps:
        for dep in step.after:
            if dep not in by_id:
                raise PlaybookError(f"{source}:{step.line}: step {step.id!r}: after names unknown step {dep!r}")
    ordered: list[Step] = []
    state: dict[str, str] = {}

    def visit(step: Step, chain: list[str]) -> None:
        if state.get(step.id) == "done":
            return
        if state.get(step.id) == "visiting":
            cycle = " -> ".join([*chain[chain.index(step.id):], step.id])
            raise PlaybookError(f"{source}:{step.line}: steps form a cycle: {cycle}")
        state[step.id] = "visiting"
        for dep in step.after:
            visit(by_id[dep], [*chain, step.id])
        state[step.id] = "done"
        ordered.append(step)

    for step in steps:
        visit(step, [])
    return ordered


def builtin_names() -> list[str]:
    folder = resources.files("llmtpu.playbooks")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_playbook_text(name_or_path: str) -> tuple[str, str]:
    """A built-in playbook by name, or the user's own copy by path: (text, source label)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or "/" in name_or_path:
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise PlaybookError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if name_or_path not in builtin_names():
        raise PlaybookError(f"no playbook named {name_or_path!r}; built in: {', '.join(builtin_names())}")
    text = resources.files("llmtpu.playbooks").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
    return text, f"playbooks/{name_or_path}.toml"


@dataclass
class PlayState:
    """Progress of one playbook on one host, kept in a JSON file between runs."""

    path: Path
    done: list[str] = field(default_factory=list)
    results: dict[str, str] = field(default_factory=dict)  # latest status per check id
    stopped_at: str | None = None

    @classmethod
    def load(cls, path: Path) -> PlayState:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise PlaybookError(f"{path}: unreadable state file ({exc}); delete it to start over") from exc
        return cls(path, list(data.get("done", [])), dict(data.get("results", {})), data.get("stopped_at"))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"done": self.done, "results": self.results, "stopped_at": self.stopped_at},
                                  indent=2) + "\n")
        tmp.replace(self.path)


@dataclass(frozen=True)
class StepOutcome:
    """What happened to one step on one host: done, skipped, planned, stopped or failed."""

    step: str
    status: str
    lines: tuple[str, ...] = ()


class StepFailed(Exception):
    """A step could not complete; the run stops and the state keeps the steps done so far."""


def failed_outcome(step: Step, exc: Exception) -> StepOutcome:
    """An operation's or the machine's error as the step's one-line failure (play exits 2)."""
    return StepOutcome(step.id, "failed", (f"{step.id}: {exc}",))


class PlayRunner:
    """Runs one playbook on one host: doctor steps read, fix/operation steps plan then apply.

    ``operation_for(id, args)`` gives the Operation for an operation or fix id (None if none);
    it is passed in so the runner knows nothing about which operations exist.
    """

    def __init__(self, playbook: Playbook, target: Any, state: PlayState, options: Any,
                 operation_for: Any, dry_run: bool = False, variables: dict[str, str] | None = None) -> None:
        self.playbook = playbook
        self.target = target
        self.state = state
        self.options = options
        self.operation_for = operation_for
        self.dry_run = dry_run
        self.variables = dict(variables or {})

    def value(self, step: Step, key: str) -> Any:
        """A step argument with its ``{name}`` variables filled in; a missing one fails the step."""
        raw = step.args[key]
        if not isinstance(raw, str):
            return raw
        missing = [name for name in _VARIABLE.findall(raw) if name not in self.variables]
        if missing:
            raise StepFailed(f"step {step.id!r} needs {', '.join(f'--set {m}=...' for m in missing)}")
        return _VARIABLE.sub(lambda m: self.variables[m.group(1)], raw)

    def run(self) -> list[StepOutcome]:
        """Every run re-verifies: doctor steps read the machine again, fix and operation steps plan
        again (an effect still in place plans nothing: "in place"), and conditions see this run's
        results. Only a manual stop (a ``say`` step with ``stop``) that a rerun acknowledged is
        not repeated; a run that completes forgets those acknowledgements."""
        from llmtpu.provision.operation import OperationError
        from llmtpu.target import TargetError

        outcomes: list[StepOutcome] = []
        self.state.stopped_at = None
        self.state.results = {}
        for step in self.playbook.steps:
            if step.when is not None and not step.when.holds(self.state.results):
                outcomes.append(StepOutcome(step.id, "skipped", (f"condition not met: {step.when}",)))
                continue
            if step.run == "say" and step.args.get("stop") and step.id in self.state.done:
                outcomes.append(StepOutcome(step.id, "done earlier", ("acknowledged by rerunning the playbook",)))
                continue
            try:
                outcome = self._run_step(step)
            except StepFailed as exc:
                outcome = StepOutcome(step.id, "failed", (str(exc),))
            except (OperationError, TargetError) as exc:
                outcome = failed_outcome(step, exc)
            outcomes.append(outcome)
            if outcome.status == "failed":
                self._save()
                return outcomes
            if outcome.status == "stopped":
                self.state.stopped_at = step.id
                self._mark_done(step)
                return outcomes
        if not self.dry_run:
            self.state.done = []
            self._save()
        return outcomes

    def _mark_done(self, step: Step) -> None:
        if not self.dry_run and step.id not in self.state.done:
            self.state.done.append(step.id)
            self._save()

    def _save(self) -> None:
        if not self.dry_run:
            self.state.save()

    def _run_step(self, step: Step) -> StepOutcome:
        if step.run == "doctor":
            return self._doctor(step, step.args.get("checks", []), step.args.get("require"))
        if step.run == "clock-search":
            return self._clock_search(step)
        if step.run == "push":
            return self._push(step)
        if step.run == "say":
            lines = tuple(str(step.args["text"]).strip().splitlines())
            return StepOutcome(step.id, "stopped" if step.args.get("stop") else "done", lines)
        if step.run == "operation":
            operation = self.operation_for(step.args["operation"], step.args.get("args", {}))
            if operation is None:
                raise StepFailed(f"operation {step.args['operation']!r} is not available in this llmtpu")
            return self._apply(step, [operation])
        return self._fix(step)

    def _doctor(self, step: Step, checks: list[str], require: str | None) -> StepOutcome:
        from llmtpu.doctor.report import run_doctor

        options = replace(self.options, smoke=True) if step.args.get("smoke") else self.options
        report = run_doctor(self.target, options, checks)
        if self.playbook.kinds and report.machine_kind not in self.playbook.kinds:
            raise StepFailed(f"this is a {report.machine_kind}; {self.playbook.name} is for "
                             f"{', '.join(self.playbook.kinds)}")
        self.state.results.update({r.id: r.status for r in report.results})
        lines = tuple(f"{r.id}: {r.status}: {r.summary}" for r in report.results if r.status != "skip")
        if require is not None and (report.verdict == "fail" or (require == "ok" and report.verdict == "warn")):
            if self.dry_run:  # the changes planned before it are not made in a dry run
                return StepOutcome(step.id, "planned", (*lines, f"then requires a doctor verdict of {require} "
                                                        f"(now {report.verdict})"))
            raise StepFailed(f"doctor verdict {report.verdict}, this step requires {require}: " + "; ".join(
                f"{r.id} {r.status}" for r in report.results if r.status in ("warn", "fail")))
        return StepOutcome(step.id, "done", lines)

    def _clock_search(self, step: Step) -> StepOutcome:
        from llmtpu.doctor.report import run_doctor
        from llmtpu.provision.clock import ClockPersist, read_rates
        from llmtpu.provision.clock_search import DEFAULT_TPLL_MHZ, search_tpll
        from llmtpu.provision.operation import Journal, OperationError

        candidates = [int(m) for m in step.args.get("tpll_mhz", DEFAULT_TPLL_MHZ)]
        if self.dry_run:
            return StepOutcome(step.id, "planned", (
                "step tpll down through " + ", ".join(f"{m} MHz" for m in sorted(candidates, reverse=True)) +
                ", running the smoke test at each rate; keep the first rate with correct tokens" +
                (" and persist it" if step.args.get("persist") else ""),))
        smoke_options = replace(self.options, smoke=True)

        def smoke() -> tuple[bool, str, str]:
            res = run_doctor(self.target, smoke_options, ["smoke.inference"]).results[0]
            self.state.results[res.id] = res.status
            return res.status == "ok", res.summary, res.fix.id if res.fix else ""

        try:
            found = search_tpll(self.target, smoke, candidates)
        except OperationError as exc:
            raise StepFailed(str(exc)) from exc
        if found.chosen_hz is None:
            raise StepFailed("; ".join(found.lines()))
        lines = found.lines()
        if step.args.get("persist"):
            persist = ClockPersist(read_rates(self.target))
            plan = persist.plan(self.target)
            lines.extend(plan.lines())
            persist.apply(self.target, plan, Journal(self.target))
            problems = persist.verify(self.target)
            if problems:
                raise StepFailed(f"clock.persist: {'; '.join(problems)}")
        return StepOutcome(step.id, "done", tuple(lines))

    def _push(self, step: Step) -> StepOutcome:
        from pathlib import Path

        from llmtpu.provision.bundle import BundleError
        from llmtpu.provision.push import (
            DEFAULT_DEST,
            BoardPush,
            board_for_target,
            cancel_on_signals,
            verified_manifest,
        )

        bundle = Path(self.value(step, "bundle"))
        dest = str(self.value(step, "dest")) if "dest" in step.args else DEFAULT_DEST
        try:
            board = board_for_target(self.target)
            manifest = verified_manifest(bundle)
        except (ValueError, BundleError) as exc:
            raise StepFailed(str(exc)) from exc
        if self.dry_run:
            return StepOutcome(step.id, "planned", (
                f"push {bundle} ({len(manifest.files)} files, digest {manifest.digest[:12]}) to {board.name}:{dest}; "
                "only what differs is sent, verified on the board, then switched atomically",))
        timeout = float(step.args.get("timeout", 60))
        with cancel_on_signals() as cancel:  # SIGTERM too: ssh processes and temp folders go
            result = BoardPush(board, bundle, manifest, dest, checksum=bool(step.args.get("checksum")),
                               timeout=timeout, cancel=cancel).run()
        if result.status == "interrupted":
            raise KeyboardInterrupt(f"push to {board.name} interrupted; run the playbook again to resume it")
        if result.status not in ("deployed", "unchanged"):
            raise StepFailed(f"push to {board.name}: {result.message}")
        return StepOutcome(step.id, "done", (f"{result.status}: {result.message}",))

    def _fix(self, step: Step) -> StepOutcome:
        from llmtpu.doctor.report import run_doctor

        report = run_doctor(self.target, self.options, step.args["checks"])
        self.state.results.update({r.id: r.status for r in report.results})
        fix_ids: list[str] = []
        for res in report.results:
            if res.status not in ("warn", "fail") or res.fix is None or res.fix.id in fix_ids:
                continue
            fix_ids.append(res.fix.id)
        operations = []
        for fix_id in fix_ids:
            operation = self.operation_for(fix_id, {})
            if operation is None:
                res = next(r for r in report.results if r.fix is not None and r.fix.id == fix_id)
                raise StepFailed(f"{res.id}: no automatic fix for {fix_id!r}; by hand: "
                                 + " && ".join(res.fix.commands if res.fix else ()))
            operations.append(operation)
        if not operations:
            return StepOutcome(step.id, "in place", ("nothing to fix",))
        outcome = self._apply(step, operations)
        if not self.dry_run and outcome.status == "done":
            after = run_doctor(self.target, self.options, step.args["checks"])
            self.state.results.update({r.id: r.status for r in after.results})
            still = [f"{r.id} {r.status}" for r in after.results if r.status == "fail"]
            if still:
                raise StepFailed(f"still failing after the fix: {', '.join(still)}")
        return outcome

    def _apply(self, step: Step, operations: list[Any]) -> StepOutcome:
        """Plan each operation; apply what differs (not in a dry run). Nothing to change: "in place",
        or "stopped" when an earlier apply still waits for a reboot."""
        from llmtpu.provision.operation import Journal

        lines: list[str] = []
        reboot = pending = changed = False
        for operation in operations:
            plan = operation.plan(self.target)
            lines.extend(plan.lines(self.target.root))
            pending = pending or plan.reboot_pending
            if plan.nothing_to_do:
                continue
            changed = True
            if self.dry_run:
                continue
            operation.apply(self.target, plan, Journal(self.target))
            problems = operation.verify(self.target)
            if problems:
                raise StepFailed(f"{operation.id}: not in the wanted state after apply: {'; '.join(problems)}")
            reboot = reboot or plan.reboot_required
        if self.dry_run and changed:
            return StepOutcome(step.id, "planned", tuple(lines))
        if reboot or pending:
            lines.append("reboot the machine now, then run this playbook again: it continues from here")
            return StepOutcome(step.id, "stopped", tuple(lines))
        return StepOutcome(step.id, "done" if changed else "in place", tuple(lines))
