"""Every signature row against the lines users really posted (cases.toml), fixes judged by evidence."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from llmtpu.data import tomllib
from llmtpu.doctor.explain import (
    NO_EVIDENCE,
    REFLASH,
    DoctorEvidence,
    Match,
    Matcher,
    clean_line,
    default_matcher,
    load_signatures,
)

HERE = Path(__file__).parent
CASES: list[dict[str, Any]] = tomllib.loads((HERE / "cases.toml").read_text(encoding="utf-8"))["case"]
EXPLAIN_LOGS = HERE.parent.parent / "explain"


def evidence_of(case: dict[str, Any]) -> DoctorEvidence:
    checks = {check: (status, fix or None) for check, (status, fix) in case.get("checks", {}).items()}
    return DoctorEvidence(case.get("machine_kind"), checks)


@pytest.mark.parametrize("case", CASES, ids=[f"{c['expect']}@{c['source'].split('/')[-1]}" for c in CASES])
def test_explain_picks_the_row_of_the_real_line(case):
    found = [m.signature.id for m in default_matcher().scan([case["line"]])]
    assert sorted(found) == sorted([case["expect"], *case.get("also", [])]), case["line"]
    sig = next(s for s in load_signatures() if s.id == case["expect"])
    evidence = evidence_of(case)
    if "fix" in case:
        assert sig.fix_for(evidence).id == case["fix"]
    if "fixes" in case:
        assert [f.id for f in sig.fixes if f.applies(evidence) is not False] == case["fixes"]


def test_the_table_has_at_least_60_rows():
    assert len(load_signatures()) >= 60


def test_every_row_has_a_real_case_from_a_source_it_cites():
    for sig in load_signatures():
        cases = [c for c in CASES if c["expect"] == sig.id]
        assert cases, f"{sig.id}: no case in cases.toml"
        assert any(c["source"].split()[0] in sig.source for c in cases), f"{sig.id}: no case from a cited source"


def test_a_reflash_is_never_given_without_evidence_of_an_old_image():
    recent_soc = DoctorEvidence("soc-board", {"kernel.date": ("ok", None)})
    unknown_soc = DoctorEvidence("soc-board", {})
    for sig in load_signatures():
        for evidence in (NO_EVIDENCE, unknown_soc, recent_soc):
            assert sig.fix_for(evidence).id != REFLASH, sig.id
        assert all(f.applies(recent_soc) is False for f in sig.fixes if f.id == REFLASH), sig.id


def test_fixes_are_ordered_least_destructive_first():
    """A reflash is never before a fix that holds in the same place."""
    for sig in load_signatures():
        ids = [f.id for f in sig.fixes]
        if REFLASH in ids:
            assert ids.index(REFLASH) > 0, sig.id


def naive_scan(lines: list[str]) -> list[Match]:
    """Every line against every row, no pre-filter: what Matcher.scan must equal."""
    out = []
    for line_no, raw in enumerate(lines, 1):
        cleaned = clean_line(raw)
        out.extend(Match(line_no, cleaned[:300], sig) for sig in load_signatures() if sig.pattern.search(cleaned))
    return out


def test_prefilter_keeps_the_results_of_a_full_scan():
    lines = [c["line"] for c in CASES]
    for log in ("clean.log", "mixed.log"):
        lines += (EXPLAIN_LOGS / log).read_text(encoding="utf-8").splitlines()
    rng = random.Random(1684)
    mutated = []
    for line in lines:  # case changes, cut ends and colour codes must not make the two disagree
        mutated += [line.upper(), line.lower(), line[: len(line) // 2], f"\x1b[31m{line}\x1b[0m", line.swapcase()]
        chars = list(line)
        rng.shuffle(chars)
        mutated.append("".join(chars))
    everything = lines + mutated
    assert Matcher().scan(everything) == naive_scan(everything)


def test_the_table_is_parsed_once_per_process():
    assert load_signatures() is load_signatures()
    assert default_matcher() is default_matcher()


EVIDENCE_KINDS = {
    "nothing known": NO_EVIDENCE,
    "pcie host": DoctorEvidence("pcie-host", {"driver.date": ("ok", None)}),
    "pcie docker": DoctorEvidence("pcie-docker", {"libsophon.install": ("ok", None)}),
    "recent soc": DoctorEvidence("soc-board", {"kernel.date": ("ok", None)}),
    "old soc": DoctorEvidence("soc-board", {"kernel.date": ("fail", REFLASH)}),
}


@pytest.mark.parametrize("kind", EVIDENCE_KINDS)
def test_every_row_has_a_fix_that_holds_on_every_kind_of_machine(kind):
    evidence = EVIDENCE_KINDS[kind]
    for sig in load_signatures():
        assert sig.fix_for(evidence).applies(evidence) is not False, f"{sig.id} has no fix for a {kind}"


def test_only_version_findings_make_an_image_old():
    """A damaged libsophon or a failed smoke run asking for a reflash is no evidence of an old image."""
    damaged = DoctorEvidence("soc-board", {"kernel.date": ("ok", None), "libsophon.install": ("fail", REFLASH),
                                           "smoke.inference": ("fail", REFLASH), "kernel.log": ("fail", REFLASH)})
    assert damaged.holds("image-old") is False and damaged.holds("image-recent") is True
    old = DoctorEvidence("soc-board", {"kernel.date": ("fail", REFLASH)})
    assert old.holds("image-old") is True


LOGS: list[dict[str, Any]] = tomllib.loads((HERE / "cases.toml").read_text(encoding="utf-8"))["log"]


@pytest.mark.parametrize("log", LOGS, ids=[entry["source"].split("/")[-1] for entry in LOGS])
def test_whole_real_pastes_match_only_their_error_lines(log):
    lines = log["text"].splitlines()
    found = [[m.line_no, m.signature.id] for m in default_matcher().scan(lines)]
    assert found == log["found"]
