"""The fix-garbage-output playbook against a stand-in engine whose output turns to "!!!" above a
TPU clock rate the test chooses: the search must find exactly that rate, persist it, and put
the clocks back when no rate helps. The clock driver is the debugfs stand-in of the clock tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtpu.doctor.checks import DoctorOptions, check_ids
from llmtpu.playbook import PlayRunner, PlayState, parse_playbook, read_playbook_text
from llmtpu.provision.clock import UNIT_PATH
from llmtpu.provision.registry import operation_ids
from llmtpu.runtime import testmodel
from tests.provision_soc.kernel import BoardWithDriver, FakeClockDriver

TPLL_RATE = "sys/kernel/debug/clk/tpll_clock/clk_rate"


def stand_in_engine(folder: Path, root: Path, garbage_above_hz: int) -> Path:
    """Speaks the engine protocol; answers the reference tokens at or below the threshold, '!' above."""
    tokens = testmodel.reference_cases()[0].tokens
    good = "\n".join(f"  echo 'token {t} ms=1 gap=1 nonfinite=0'" for t in tokens)
    bang = "\n".join("  echo 'token 0 ms=1 gap=9 nonfinite=0'" for _ in tokens)
    engine = folder / "engine"
    engine.write_text(f"""#!/bin/sh
echo "ready protocol=1 layers=2 seq=64 hidden=64 vocab=256 dtype=f16 load_ms=1"
while read -r line; do
  [ "$line" = quit ] && exit 0
  rate=$(cat "{root}/{TPLL_RATE}")
  echo "prefill ms=1 tokens=6"
  if [ "$rate" -gt {garbage_above_hz} ]; then
{bang}
  else
{good}
  fi
  echo "done tokens={len(tokens)} reason=length prefill_ms=1 decode_ms=8"
done
""")
    engine.chmod(0o755)
    return engine


def run_playbook(root: Path, engine: Path, state: Path) -> tuple[dict[str, str], list]:
    text, source = read_playbook_text("fix-garbage-output")
    book = parse_playbook(text, source, set(check_ids()), operation_ids())
    board = BoardWithDriver(str(root), FakeClockDriver(root))
    runner = PlayRunner(book, board, PlayState.load(state), DoctorOptions(engine=str(engine), smoke_timeout=30),
                        lambda op_id, args: None)
    outcomes = runner.run()
    return {o.step: o.status for o in outcomes}, outcomes


@pytest.mark.parametrize("threshold_mhz", [800, 700])
def test_search_finds_the_highest_correct_rate_and_persists_it(sysroot, tmp_path: Path, threshold_mhz: int) -> None:
    root = sysroot("soc-board-ok")
    engine = stand_in_engine(tmp_path, root, threshold_mhz * 1_000_000)
    statuses, outcomes = run_playbook(root, engine, tmp_path / "state.json")
    assert statuses == {"smoke": "done", "search": "done", "verify": "done"}, outcomes
    assert (root / TPLL_RATE).read_text().strip() == str(threshold_mhz * 1_000_000)
    search = next(o for o in outcomes if o.step == "search")
    assert f"keeping tpll {threshold_mhz} MHz" in "\n".join(search.lines)
    unit = (root / UNIT_PATH.lstrip("/")).read_text()
    assert f"setr tpll_clock {threshold_mhz * 1_000_000}" in unit
    assert json.loads((tmp_path / "state.json").read_text())["results"]["smoke.inference"] == "ok"


def test_no_rate_helps_so_the_clocks_are_restored(sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-ok")
    engine = stand_in_engine(tmp_path, root, 100_000_000)  # garbage at every rate tried
    statuses, outcomes = run_playbook(root, engine, tmp_path / "state.json")
    assert statuses["search"] == "failed"
    assert "clocks restored" in outcomes[-1].lines[0]
    assert (root / TPLL_RATE).read_text().strip() == "950000000"
    assert not (root / UNIT_PATH.lstrip("/")).exists()


def test_correct_output_at_the_default_clock_changes_nothing(sysroot, tmp_path: Path) -> None:
    root = sysroot("soc-board-ok")
    engine = stand_in_engine(tmp_path, root, 950_000_000)
    statuses, _ = run_playbook(root, engine, tmp_path / "state.json")
    assert statuses == {"smoke": "done", "search": "skipped", "verify": "done"}
    assert (root / TPLL_RATE).read_text().strip() == "950000000"


def test_each_rate_runs_once_below_the_failing_one_and_q3_lowers_mpll_vpll(sysroot, tmp_path: Path) -> None:
    """Issue 14 item 4: no re-runs at the starting rate, mpll/vpll lowered as Q3 does, a compact table."""
    root = sysroot("soc-board-ok")
    engine = stand_in_engine(tmp_path, root, 800_000_000)
    log = tmp_path / "rates.log"
    text = engine.read_text().replace('  rate=$(cat', f'  cat "{root}/{TPLL_RATE}" >> "{log}"\n  rate=$(cat', 1)
    engine.write_text(text)
    statuses, outcomes = run_playbook(root, engine, tmp_path / "state.json")
    assert statuses == {"smoke": "done", "search": "done", "verify": "done"}, outcomes
    runs = [int(line) // 1_000_000 for line in log.read_text().split()]
    # the first smoke step at 950, then each lower rate once until 800 passes, then the verify step
    assert runs == [950, 900, 850, 800, 800], runs
    rates = FakeClockDriver(root).rates()
    assert rates == {"mpll_clock": 1_800_000_000, "tpll_clock": 800_000_000, "vpll_clock": 100_000_000}
    search = next(o for o in outcomes if o.step == "search")
    table = [line for line in search.lines if line.split()[:1] and line.split()[0].isdigit()]
    assert [line.split() for line in table] == [["900", "1800", "100", "wrong"], ["850", "1800", "100", "wrong"],
                                                ["800", "1800", "100", "correct"]]
    assert not any("[Service]" in line or "ExecStart" in line for line in search.lines)
    unit = (root / UNIT_PATH.lstrip("/")).read_text()
    assert "setr mpll_clock 1800000000" in unit and "setr vpll_clock 100000000" in unit
