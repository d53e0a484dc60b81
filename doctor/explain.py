"""Error signatures: match log lines against doctor/signatures.toml and say cause and fix.

One matcher serves `llmtpu explain`, the doctor's kernel-log check and the support report, so
a line is explained the same way wherever it is seen. The table is data; this module only
loads it (refusing a bad row by its id) and matches.

A row's fixes are ordered least destructive first, and each may hold only under conditions
(`when`) that the doctor's findings on the machine decide (DoctorEvidence): the same
`Create BM Handle Failed` line gets a permission fix where the doctor finds the nodes
unreadable, a driver reload where they are missing, and a reflash only where it finds the SoC
image too old. Without evidence the least destructive fix is given, never a reflash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Protocol

from llmtpu.data import load_toml

SEVERITIES = ("fail", "warn")
#: Colour codes some runtimes print; stripped before matching so they cannot split a pattern.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A matched line is kept (in output and reports) up to this many characters.
LINE_CHARS = 300
#: Machine kinds, as doctor/facts.py names them (not imported: this module must stay light).
SOC_BOARD, PCIE_HOST, PCIE_DOCKER = "soc-board", "pcie-host", "pcie-docker"
#: The fix that erases the board; offered only where the doctor finds the image too old.
REFLASH = "sdcard.flash"

#: Checks whose reflash or reinstall fix is not a finding about the image's or driver's age:
#: a damaged install, a failed inference, or the log's own errors (that would be circular).
NOT_ABOUT_VERSIONS = frozenset({"kernel.log", "smoke.inference", "libsophon.install", "libsophon.packages"})

#: What a fix's `when` may name, and how it reads to a user. Decided by DoctorEvidence.holds.
CONDITIONS: dict[str, str] = {
    "pcie": "on a PCIe host or container",
    "docker": "inside a PCIe docker container",
    "soc": "on a SoC board",
    "image-old": "the doctor finds the SoC image too old",
    "image-recent": "the doctor finds the SoC image recent enough",
    "stack-old": "the doctor finds the PCIe driver or libsophon too old",
    "devices-missing": "the doctor finds Sophgo device nodes missing",
    "devices-present": "the doctor finds the Sophgo device nodes present",
    "access-denied": "the doctor finds this user cannot open the device nodes",
}


class CheckVerdict(Protocol):
    """What evidence reads from a doctor check result (doctor.checks.CheckResult has it)."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def fix(self) -> Any: ...


@dataclass(frozen=True)
class DoctorEvidence:
    """What the doctor found on the machine a log came from: its kind, each check's status and fix id.

    Built from a doctor run (``from_results``) or a saved ``llmtpu doctor --json`` document
    (``from_doctor_json``); empty means nothing is known, and every evidence condition is
    then unknown rather than false.
    """

    machine_kind: str | None = None
    checks: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)  # id -> (status, fix id)
    origin: str = ""  # where it came from, for the output ("doctor on airbox-07")

    @classmethod
    def from_results(cls, machine_kind: str | None, results: Iterable[CheckVerdict],
                     origin: str = "") -> DoctorEvidence:
        checks = {r.id: (r.status, r.fix.id if r.fix is not None else None) for r in results}
        return cls(machine_kind, checks, origin)

    @classmethod
    def from_doctor_json(cls, document: Any, origin: str = "") -> DoctorEvidence:
        """Evidence from a `llmtpu doctor --json` document; ValueError names what is wrong."""
        if not isinstance(document, dict) or not str(document.get("schema", "")).startswith("llmtpu.doctor/1"):
            raise ValueError("not a `llmtpu doctor --json` document (schema llmtpu.doctor/1)")
        kind = document.get("machine_kind")
        rows = document.get("checks")
        if not isinstance(kind, str) or not isinstance(rows, list):
            raise ValueError("the doctor document has no machine_kind or checks")
        checks: dict[str, tuple[str, str | None]] = {}
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(
                    row.get("status"), str):
                raise ValueError("a check in the doctor document has no id or status")
            fix = row.get("fix")
            checks[row["id"]] = (row["status"], fix.get("id") if isinstance(fix, dict) else None)
        return cls(kind, checks, origin or str(document.get("host", "")))

    def with_kind(self, kind: str) -> DoctorEvidence:
        return replace(self, machine_kind=kind)

    def _status(self, check_id: str) -> str | None:
        found = self.checks.get(check_id)
        return found[0] if found else None

    def _asks_for(self, fix_id: str) -> bool:
        return any(status in ("fail", "warn") and fix == fix_id
                   for check, (status, fix) in self.checks.items() if check not in NOT_ABOUT_VERSIONS)

    def holds(self, condition: str) -> bool | None:
        """True, False, or None when the evidence does not tell."""
        kind = self.machine_kind
        if condition in ("pcie", "docker", "soc"):
            if kind is None:
                return None
            return {"pcie": kind in (PCIE_HOST, PCIE_DOCKER), "docker": kind == PCIE_DOCKER,
                    "soc": kind == SOC_BOARD}[condition]
        if condition in ("image-old", "image-recent"):
            if kind is not None and kind != SOC_BOARD:
                return False
            if kind is None or not self.checks:
                return None
            old = self._asks_for(REFLASH)
            return old if condition == "image-old" else not old
        if condition == "stack-old":
            if kind is not None and kind not in (PCIE_HOST, PCIE_DOCKER):
                return False
            return None if kind is None or not self.checks else self._asks_for("debs.install")
        check_id, wanted = {"devices-missing": ("devices.present", "fail"),
                            "devices-present": ("devices.present", "ok"),
                            "access-denied": ("devices.access", "fail")}[condition]
        status = self._status(check_id)
        if status not in ("ok", "fail"):
            return None
        return status == wanted


NO_EVIDENCE = DoctorEvidence()


@dataclass(frozen=True)
class SignatureFix:
    """The doctor's fix id (or "none"), one line saying what to do, the exact commands, and when it holds."""

    id: str
    summary: str
    commands: tuple[str, ...] = ()
    when: tuple[str, ...] = ()

    def applies(self, evidence: DoctorEvidence) -> bool | None:
        verdicts = [evidence.holds(c) for c in self.when]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    def describe_when(self) -> str:
        return " and ".join(CONDITIONS[c] for c in self.when)


@dataclass(frozen=True)
class Signature:
    id: str
    pattern: re.Pattern[str]
    severity: str
    cause: str
    fixes: tuple[SignatureFix, ...]  # least destructive first
    source: str

    def fix_for(self, evidence: DoctorEvidence = NO_EVIDENCE) -> SignatureFix:
        """The first fix the evidence says holds; else the first that may hold, never a reflash."""
        verdicts = [(fix, fix.applies(evidence)) for fix in self.fixes]
        for fix, verdict in verdicts:
            if verdict is True:
                return fix
        for fix, verdict in verdicts:
            if verdict is None and fix.id != REFLASH:
                return fix
        return next(fix for fix in self.fixes if fix.id != REFLASH)  # parse_signatures ensures one


@dataclass(frozen=True)
class Match:
    line_no: int  # 1-based, as `grep -n` counts (lines end at \n only)
    text: str  # the line, colour codes removed, cut to LINE_CHARS
    signature: Signature


class SignatureError(ValueError):
    """signatures.toml has a bad row; the message names the row."""


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SignatureError(f"{where}: {key!r} must be a non-empty string")
    return value


def _commands(row: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise SignatureError(f"{where}: {key!r} must be a list of command strings")
    return tuple(value)


_ROW_KEYS = {"id", "pattern", "severity", "cause", "fixes", "source"}
_FIX_KEYS = {"id", "summary", "commands", "when", "use"}
#: A leading case-insensitive flag is the one inline flag a row may use (what the pre-filter
#: reads of a row must mean the same under any flag).
_LEADING_IGNORECASE = "(?i)"
_UNSAFE_IN_UNION = re.compile(r"\\[1-9]|\(\?P[<=]|\(\?[aiLmsux]+\)")


def _shared_fixes(table: dict[str, Any]) -> dict[str, SignatureFix]:
    shared = table.get("shared_fix", {})
    if not isinstance(shared, dict):
        raise SignatureError("signatures.toml: [shared_fix.ID] must be tables")
    fixes = {}
    for fix_id, row in shared.items():
        where = f"signatures.toml shared_fix {fix_id!r}"
        if not isinstance(row, dict) or set(row) - {"id", "summary", "commands"}:
            raise SignatureError(f"{where}: only id, summary and commands may be given")
        fixes[fix_id] = SignatureFix(_text(row, "id", where) if "id" in row else fix_id, _text(row, "summary", where),
                                     _commands(row, "commands", where))
    return fixes


def _fix(entry: Any, shared: dict[str, SignatureFix], where: str) -> SignatureFix:
    if not isinstance(entry, dict) or set(entry) - _FIX_KEYS:
        raise SignatureError(f"{where}: a fix is a table of {', '.join(sorted(_FIX_KEYS))}")
    when = entry.get("when", [])
    if not isinstance(when, list) or any(c not in CONDITIONS for c in when):
        raise SignatureError(f"{where}: 'when' must list conditions among {', '.join(CONDITIONS)}")
    if "use" in entry:
        if set(entry) - {"use", "when"}:
            raise SignatureError(f"{where}: a fix with 'use' takes only 'when' beside it")
        base = shared.get(entry["use"])
        if base is None:
            raise SignatureError(f"{where}: 'use' names no [shared_fix] ({entry['use']!r})")
        fix = replace(base, when=tuple(when))
    else:
        fix = SignatureFix(_text(entry, "id", where), _text(entry, "summary", where),
                           _commands(entry, "commands", where), tuple(when))
    if fix.id == REFLASH and "image-old" not in fix.when:
        raise SignatureError(f"{where}: a reflash erases the board; give it when = [..., \"image-old\"]")
    return fix


def _pattern(row: dict[str, Any], where: str) -> re.Pattern[str]:
    text = _text(row, "pattern", where)
    body = text[len(_LEADING_IGNORECASE):] if text.startswith(_LEADING_IGNORECASE) else text
    if _UNSAFE_IN_UNION.search(body):
        raise SignatureError(f"{where}: pattern may not use backreferences, named groups or inline "
                             "flags other than a leading (?i)")
    try:
        return re.compile(text)
    except re.error as exc:
        raise SignatureError(f"{where}: pattern does not compile: {exc}") from exc


def parse_signatures(table: dict[str, Any]) -> tuple[Signature, ...]:
    """Signatures from the parsed TOML; every row is checked so a typo fails at load, not later."""
    rows = table.get("signature")
    if not isinstance(rows, list) or not rows:
        raise SignatureError("signatures.toml: no [[signature]] rows")
    shared = _shared_fixes(table)
    seen: set[str] = set()
    signatures = []
    for index, row in enumerate(rows, 1):
        where = f"signatures.toml row {index}"
        sig_id = _text(row, "id", where)
        where = f"signatures.toml row {index} ({sig_id})"
        if sig_id in seen:
            raise SignatureError(f"{where}: duplicate id")
        seen.add(sig_id)
        if set(row) - _ROW_KEYS:
            raise SignatureError(f"{where}: unknown field(s) {', '.join(sorted(set(row) - _ROW_KEYS))}")
        pattern = _pattern(row, where)
        severity = _text(row, "severity", where)
        if severity not in SEVERITIES:
            raise SignatureError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
        entries = row.get("fixes")
        if not isinstance(entries, list) or not entries:
            raise SignatureError(f"{where}: 'fixes' must list at least one fix, least destructive first")
        fixes = tuple(_fix(entry, shared, f"{where} fix {n}") for n, entry in enumerate(entries, 1))
        if all(fix.id == REFLASH for fix in fixes):
            raise SignatureError(f"{where}: give a fix that does not erase the board")
        signatures.append(Signature(sig_id, pattern, severity, _text(row, "cause", where), fixes,
                                    _text(row, "source", where)))
    return tuple(signatures)


@cache
def load_signatures() -> tuple[Signature, ...]:
    """The table, parsed once per process (a fleet run scans one kernel log per host)."""
    return parse_signatures(load_toml("llmtpu.doctor", "signatures.toml"))


# ---------------------------------------------------------------------------------------
# Secrets in log lines

_SECRET_WORD = r"(?:[a-z0-9]+[_.-])*(?:password|passwd|passphrase|pass|pwd|secret|token|api[_-]?key|access[_-]?key" \
               r"|private[_-]?key|credentials?|auth)"
_SECRET_ASSIGNMENT = re.compile(
    rf"(?i)(?<![a-z0-9])([\"']?{_SECRET_WORD}[\"']?)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&}}]+)")
_SECRET_OPTION = re.compile(r"(?i)((?<![\w-])--?(?:password|passwd|pass|token|secret|api-key))(\s+|=)(\S+)")
_SSHPASS = re.compile(r"(?i)(\bsshpass\s+-p\s*)(\S+)")
_MYSQL_PASSWORD = re.compile(r"(\bmysql\w*\b[^|;&]*?\s-p)(\S+)")
_AUTH_HEADER = re.compile(r"(?i)(\b(?:proxy-)?authorization\s*:\s*)(?:(bearer|basic|token|digest)\s+)?(\S+)")
_COOKIE_HEADER = re.compile(r"(?i)(\b(?:set-)?cookie\s*:\s*)(.+)")
_PASSWORD_PROSE = re.compile(r"(?i)(\bpass(?:word|phrase)\s+(?:is|was|=)\s+)(\S+)")
_NETRC_PASSWORD = re.compile(r"(?i)(\b(?:password|passwd)\s+)(?!is\b|was\b|for\b|required\b|authentication\b)(\S+)")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
#: Lines with none of these hold no secret our own rules find (the token detectors have their
#: own union pattern): most kernel-log lines skip the rules.
_MAY_HOLD_SECRET = re.compile(r"pass|pwd|pw|secret|token|key|auth|cookie|bearer|credential|contrase|://|mysql")
#: Words detect-secrets' keyword detector looks for; it runs only on lines holding one.
_KEYWORD_HINT = re.compile(r"key|pass|pwd|secret|contrase")
REDACTED = "[redacted]"


@dataclass(frozen=True)
class _Detectors:
    """detect-secrets' token regexes, and what decides cheaply which of them a line needs."""

    tokens: tuple[re.Pattern[str], ...]
    prefilter: Prefilter  # by the literals the token regexes require
    plain_always: re.Pattern[str] | None  # the case-sensitive regexes without literals, joined
    keyword_always: tuple[re.Pattern[str], ...]  # the case-insensitive ones: they need a secret word
    keyword: Any


def _scoped(regex: re.Pattern[str]) -> str:
    return f"(?x:{regex.pattern})" if regex.flags & re.VERBOSE else f"(?:{regex.pattern})"


@cache
def _detectors() -> _Detectors:
    """detect-secrets' token detectors (their regexes, pre-filtered) and its keyword detector.

    The entropy detectors are left out: they take hex addresses and serial numbers, which a
    support report needs, for secrets.
    """
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.keyword import KeywordDetector

    regexes: list[re.Pattern[str]] = []
    plugin: Any
    for plugin in get_mapping_from_secret_type_to_class().values():
        if issubclass(plugin, RegexBasedDetector) and plugin.__name__ != "IPPublicDetector":
            regexes.extend(plugin().denylist)
    prefilter = Prefilter(regexes)
    plain = [r for r in prefilter.always if not r.flags & re.IGNORECASE]
    return _Detectors(tuple(regexes), prefilter, re.compile("|".join(map(_scoped, plain))) if plain else None,
                      tuple(r for r in prefilter.always if r.flags & re.IGNORECASE), KeywordDetector())


def redact_line(line: str) -> str:
    """One line with every secret it holds replaced by [redacted]."""
    found = _detectors()
    lowered = line.lower()
    ours = _MAY_HOLD_SECRET.search(lowered)
    candidates: tuple[re.Pattern[str], ...] = ()
    if found.prefilter.may_match(lowered):
        candidates = found.tokens
    elif ours or (found.plain_always is not None and found.plain_always.search(line)):
        candidates = found.prefilter.always
    if not ours and not any(regex.search(line) for regex in candidates):
        return line
    if ours:
        line = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", line)
        line = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", line)
        line = _COOKIE_HEADER.sub(lambda m: f"{m.group(1)}{REDACTED}", line)
        line = _SSHPASS.sub(lambda m: f"{m.group(1)}{REDACTED}", line)
        line = _MYSQL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}", line)
        line = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", line)
        line = _SECRET_OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", line)
        line = _PASSWORD_PROSE.sub(lambda m: f"{m.group(1)}{REDACTED}", line)
        line = _NETRC_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}", line)
    for regex in candidates:
        line = regex.sub(REDACTED, line)
    if _KEYWORD_HINT.search(lowered):
        for secret in found.keyword.analyze_line(filename="log.txt", line=line, line_number=0):
            value = secret.secret_value
            if value and value != REDACTED:
                line = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", REDACTED, line)
    return line


def redact_lines(lines: list[str]) -> list[str]:
    """Mask secrets in log lines before they leave the machine in a report or the doctor's JSON.

    Values of password/token/secret keys, credentials in URLs, Authorization and Cookie
    headers, `sshpass -p`, `mysql -p`, netrc and prose passwords, the tokens detect-secrets
    knows (cloud keys, GitHub/Slack/OpenAI tokens, JWTs, ...), and every line of a private-key block.
    """
    out = []
    in_key = False
    for line in lines:
        if in_key or _PEM_BEGIN.search(line):
            in_key = not _PEM_END.search(line)
            out.append(REDACTED)
            continue
        out.append(redact_line(line))
    return out


# ---------------------------------------------------------------------------------------
# Matching

def clean_line(raw: str) -> str:
    line = raw.rstrip("\r\n")
    return ANSI_ESCAPE.sub("", line) if "\x1b" in line else line


#: Shortest literal worth a pre-filter word; a row without one is searched on every line.
MIN_LITERAL = 3


def _sre() -> tuple[Any, Any]:
    try:
        import re._constants as constants  # type: ignore[import-not-found,unused-ignore]
        import re._parser as parser  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_constants as constants  # type: ignore[no-redef,unused-ignore]
        import sre_parse as parser  # type: ignore[no-redef,unused-ignore]
    return parser, constants


def required_literals(pattern: str) -> frozenset[str] | None:
    """Lower-case strings one of which every match of ``pattern`` contains; None if none is known.

    Read from the parsed regex: a sequence needs its longest literal run (or a required part),
    an alternation one literal of each branch, a repeat of at least once its body.
    """
    parser, c = _sre()

    def sequence(items: Any) -> frozenset[str] | None:
        options: list[frozenset[str]] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                options.append(frozenset({"".join(run).lower()}))
                run.clear()

        for op, av in items:
            if op is c.LITERAL:
                run.append(chr(av))
                continue
            flush()
            found: frozenset[str] | None = None
            if op is c.SUBPATTERN:
                found = sequence(av[-1])
            elif op is c.BRANCH:
                branches = [sequence(b) for b in av[1]]
                found = None if any(b is None for b in branches) else frozenset().union(*branches)  # type: ignore[arg-type]
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[0] >= 1:
                body = list(av[2])
                if len(body) == 1 and body[0][0] is c.LITERAL:
                    found = frozenset({chr(body[0][1]).lower() * min(av[0], 16)})
                else:
                    found = sequence(body)
            if found is not None:
                options.append(found)
        flush()
        usable = [o for o in options if min(map(len, o)) >= MIN_LITERAL]
        return max(usable, key=lambda o: min(map(len, o))) if usable else None

    return sequence(parser.parse(pattern))


class Prefilter:
    """Which of many regexes may match a line, from one literal search of the lower-cased line.

    A regex matches only lines holding one of its required literals, whatever its case flags,
    so a line holding none of them needs only the regexes that have no literal (``always``).
    """

    def __init__(self, patterns: Iterable[re.Pattern[str]]) -> None:
        literals = [(p, required_literals(p.pattern)) for p in patterns]
        self.always = tuple(p for p, words in literals if words is None)
        words = sorted({w for _, ws in literals if ws for w in ws}, key=len, reverse=True)
        self._words = re.compile("|".join(map(re.escape, words))) if words else None

    def may_match(self, lowered: str) -> bool:
        """True if a regex with literals may match; the ``always`` ones are the caller's to try."""
        return self._words is not None and self._words.search(lowered) is not None


class Matcher:
    """Finds known error lines. Built once from the table, then fed lines."""

    def __init__(self, signatures: tuple[Signature, ...] | None = None) -> None:
        self.signatures = load_signatures() if signatures is None else signatures
        self._prefilter = Prefilter(sig.pattern for sig in self.signatures)
        always = set(self._prefilter.always)
        self._always = tuple(sig for sig in self.signatures if sig.pattern in always)

    def scan(self, lines: Iterable[str]) -> list[Match]:
        matches = []
        may_match = self._prefilter.may_match
        for line_no, raw in enumerate(lines, 1):
            cleaned = clean_line(raw)
            for sig in self.signatures if may_match(cleaned.lower()) else self._always:
                if sig.pattern.search(cleaned):
                    matches.append(Match(line_no, cleaned[:LINE_CHARS], sig))
        return matches


@cache
def default_matcher() -> Matcher:
    """The matcher of the packaged table, built once per process."""
    return Matcher()


def fix_json(fix: SignatureFix | None) -> dict[str, Any] | None:
    if fix is None:
        return None
    return {"id": fix.id, "summary": fix.summary, "commands": list(fix.commands)}


def match_json(match: Match, evidence: DoctorEvidence = NO_EVIDENCE) -> dict[str, Any]:
    """One match; `fix` is the fix for this evidence, `fixes` all of them with when each holds."""
    sig = match.signature
    fix = sig.fix_for(evidence)
    soc_fix = sig.fix_for(evidence.with_kind(SOC_BOARD)) if evidence.machine_kind is None else fix
    return {
        "line": match.line_no,
        "text": match.text,
        "id": sig.id,
        "severity": sig.severity,
        "cause": sig.cause,
        "fix": fix_json(fix),
        "soc_fix": None if soc_fix == fix else fix_json(soc_fix),
        "fixes": [{**(fix_json(f) or {}), "when": list(f.when), "applies": f.applies(evidence)}
                  for f in sig.fixes],
        "source": sig.source,
    }


def group_by_signature(matches: list[Match]) -> list[tuple[Signature, list[Match]]]:
    """Matches grouped per signature, in the order each was first seen (for readable output)."""
    groups: dict[str, tuple[Signature, list[Match]]] = {}
    for match in matches:
        groups.setdefault(match.signature.id, (match.signature, []))[1].append(match)
    return list(groups.values())
