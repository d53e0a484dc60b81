"""Error signatures: match log lines against doctor/signatures.toml and say cause and fix.

One matcher serves `llmtpu explain`, the doctor's kernel-log check and the support report, so
a line is explained the same way wherever it is seen. The table is data; this module only
loads it (refusing a bad row by its id) and matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmtpu.data import load_toml

SEVERITIES = ("fail", "warn")
#: Colour codes some runtimes print; stripped before matching so they cannot split a pattern.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A matched line is kept (in output and reports) up to this many characters.
LINE_CHARS = 300


@dataclass(frozen=True)
class SignatureFix:
    """The doctor's fix id (or "none"), one line saying what to do, and the exact commands."""

    id: str
    summary: str
    commands: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signature:
    id: str
    pattern: re.Pattern[str]
    severity: str
    cause: str
    fix: SignatureFix
    soc_fix: SignatureFix | None
    source: str

    def fix_for(self, soc: bool) -> SignatureFix:
        """The fix that applies on this kind of machine."""
        return self.soc_fix if soc and self.soc_fix is not None else self.fix


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


def parse_signatures(table: dict[str, Any]) -> tuple[Signature, ...]:
    """Signatures from the parsed TOML; every row is checked so a typo fails at load, not later."""
    rows = table.get("signature")
    if not isinstance(rows, list) or not rows:
        raise SignatureError("signatures.toml: no [[signature]] rows")
    seen: set[str] = set()
    signatures = []
    for index, row in enumerate(rows, 1):
        where = f"signatures.toml row {index}"
        sig_id = _text(row, "id", where)
        where = f"signatures.toml row {index} ({sig_id})"
        if sig_id in seen:
            raise SignatureError(f"{where}: duplicate id")
        seen.add(sig_id)
        try:
            pattern = re.compile(_text(row, "pattern", where))
        except re.error as exc:
            raise SignatureError(f"{where}: pattern does not compile: {exc}") from exc
        severity = _text(row, "severity", where)
        if severity not in SEVERITIES:
            raise SignatureError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
        fix = SignatureFix(_text(row, "fix_id", where), _text(row, "fix", where), _commands(row, "commands", where))
        soc_fix = None
        if "soc_fix_id" in row or "soc_fix" in row or "soc_commands" in row:
            soc_fix = SignatureFix(_text(row, "soc_fix_id", where), _text(row, "soc_fix", where),
                                   _commands(row, "soc_commands", where))
        signatures.append(Signature(sig_id, pattern, severity, _text(row, "cause", where), fix, soc_fix,
                                    _text(row, "source", where)))
    return tuple(signatures)


def load_signatures() -> tuple[Signature, ...]:
    return parse_signatures(load_toml("llmtpu.doctor", "signatures.toml"))


_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?<![a-z])(password|passwd|passphrase|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
    r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)")
_SECRET_OPTION = re.compile(r"(?i)(--?(?:password|passwd|pass|token|secret|api-key))(\s+)(\S+)")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
REDACTED = "[redacted]"


def redact_lines(lines: list[str]) -> list[str]:
    """Mask secrets in log lines before they leave the machine in a report or the doctor's JSON.

    Password/token/secret values, credentials in URLs, and every line of a private-key block.
    """
    out = []
    in_key = False
    for line in lines:
        if in_key or _PEM_BEGIN.search(line):
            in_key = not _PEM_END.search(line)
            out.append(REDACTED)
            continue
        line = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", line)
        line = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", line)
        line = _SECRET_OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", line)
        out.append(line)
    return out


def clean_line(raw: str) -> str:
    return ANSI_ESCAPE.sub("", raw).rstrip("\r\n")


class Matcher:
    """Finds known error lines. Built once from the table, then fed lines."""

    def __init__(self, signatures: tuple[Signature, ...] | None = None) -> None:
        self.signatures = load_signatures() if signatures is None else signatures

    def scan(self, lines: Iterable[str]) -> list[Match]:
        matches = []
        for line_no, raw in enumerate(lines, 1):
            cleaned = clean_line(raw)
            for sig in self.signatures:
                if sig.pattern.search(cleaned):
                    matches.append(Match(line_no, cleaned[:LINE_CHARS], sig))
        return matches


def fix_json(fix: SignatureFix | None) -> dict[str, Any] | None:
    if fix is None:
        return None
    return {"id": fix.id, "summary": fix.summary, "commands": list(fix.commands)}


def match_json(match: Match) -> dict[str, Any]:
    sig = match.signature
    return {
        "line": match.line_no,
        "text": match.text,
        "id": sig.id,
        "severity": sig.severity,
        "cause": sig.cause,
        "fix": fix_json(sig.fix),
        "soc_fix": fix_json(sig.soc_fix),
        "source": sig.source,
    }


def group_by_signature(matches: list[Match]) -> list[tuple[Signature, list[Match]]]:
    """Matches grouped per signature, in the order each was first seen (for readable output)."""
    groups: dict[str, tuple[Signature, list[Match]]] = {}
    for match in matches:
        groups.setdefault(match.signature.id, (match.signature, []))[1].append(match)
    return list(groups.values())
