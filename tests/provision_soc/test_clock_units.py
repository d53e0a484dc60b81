"""Clock rates take units, say what is written in MHz and Hz, and refuse rates below each PLL's
floor (issue 11 item 21, issue 14 item 4). The floors and the Q3 rates are checked against the
real text of their sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmtpu.cli import main
from llmtpu.doctor.checks import SEED_DOWNCLOCK
from llmtpu.provision.clock import PLL_FLOORS, UNIT_PATH, ClockPersist, check_rates, parse_rate
from llmtpu.provision.operation import OperationError
from llmtpu.target import LocalTarget
from tests.provision_soc.kernel import BoardWithDriver, FakeClockDriver

SEED_README = Path("/work/shared/seed/LLM-TPU-README.md")
#: LLM-TPU README, FAQ Q3 (https://github.com/sophgo/LLM-TPU, README.md "Q3"), verbatim.
Q3_COMMANDS = """\
echo "setr tpll_clock 750000000" > /sys/kernel/debug/top/clock
echo "setr mpll_clock 1800000000" > /sys/kernel/debug/top/clock
echo "setr vpll_clock 100000000"> /sys/kernel/debug/top/clock
"""
#: Sophgo linux-arm64, the BM1684 thermal cooling driver (bm1684_cooling.c), verbatim.
COOLING_DRIVER = """\
#define MAX_TPU_CLK 550000000UL\t\t\t// 550M
#define MIN_TPU_CLK 75000000UL\t\t\t// 75M
#define MAX_CPU_CLK 2300000000UL\t\t// 2.3G
#define MIN_CPU_CLK 1150000000UL\t\t// 1.15G
"""


@pytest.fixture
def board(sysroot, monkeypatch) -> tuple[Path, FakeClockDriver]:
    root = sysroot("soc-board-ok")
    driver = FakeClockDriver(root)
    monkeypatch.setattr("llmtpu.target.LocalTarget", lambda path: BoardWithDriver(path, driver))
    return root, driver


def q3_rates(text: str) -> dict[str, int]:
    return {name: int(rate) for name, rate in re.findall(r"setr (\w+) (\d+)", text)}


@pytest.mark.parametrize("text", ["750", "750MHz", "750 MHz", "0.75GHz", "750000kHz", "750000000Hz", "750mhz"])
def test_rates_take_units_and_a_bare_number_means_mhz(text: str) -> None:
    assert parse_rate(text) == 750_000_000


@pytest.mark.parametrize("text, says", [
    ("750000000", "a bare number means MHz"),  # the old Hz-only spelling is refused, not read as MHz
    ("1.5Hz", "whole number of Hz"), ("fast", "not a rate"), ("-750", "not a rate"), ("750 MB", "not a rate")])
def test_ambiguous_or_bad_rates_are_refused(text: str, says: str) -> None:
    with pytest.raises(OperationError, match=says):
        parse_rate(text)


def test_floors_come_from_their_sources_and_q3_is_above_every_floor() -> None:
    if SEED_README.exists():  # the real README text holds the same Q3 lines
        assert Q3_COMMANDS.splitlines()[0] in SEED_README.read_text()
    q3 = q3_rates(Q3_COMMANDS)
    assert q3 == SEED_DOWNCLOCK
    cooling = dict(re.findall(r"#define (MIN_\w+) (\d+)UL", COOLING_DRIVER))
    assert PLL_FLOORS["tpll_clock"].hz == int(cooling["MIN_TPU_CLK"])
    assert PLL_FLOORS["mpll_clock"].hz == int(cooling["MIN_CPU_CLK"])
    assert PLL_FLOORS["vpll_clock"].hz == q3["vpll_clock"]
    assert check_rates(q3) == q3


@pytest.mark.parametrize("name", sorted(PLL_FLOORS))
def test_one_hz_is_refused_for_every_pll_with_the_reason(name: str) -> None:
    with pytest.raises(OperationError) as caught:
        check_rates({name: 1})
    message = str(caught.value)
    assert "below its floor" in message and PLL_FLOORS[name].reason in message and PLL_FLOORS[name].source in message


@pytest.mark.parametrize("action", ["apply", "persist"])
def test_cli_refuses_a_rate_below_the_floor_and_writes_nothing(board, capsys, action: str) -> None:
    root, driver = board
    assert main(["clock", action, "--root", str(root), "--tpll", "1Hz", "--yes"]) == 64
    err = capsys.readouterr().err
    assert "below its floor 75 MHz (75000000 Hz)" in err and "thermal" in err
    assert driver.writes == [] and not (root / UNIT_PATH.lstrip("/")).exists()


def test_cli_750_means_750_mhz_and_the_plan_shows_mhz_and_hz(board, capsys) -> None:
    root, driver = board
    assert main(["clock", "apply", "--root", str(root), "--tpll", "750", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "- tpll_clock 950 MHz (950000000 Hz)" in out and "+ tpll_clock 750 MHz (750000000 Hz)" in out
    assert driver.writes == []
    assert main(["clock", "apply", "--root", str(root), "--tpll", "750", "--yes"]) == 0
    capsys.readouterr()
    assert driver.writes == [b"setr tpll_clock 750000000\n"]


def test_persist_plan_shows_the_rates_not_the_whole_unit(board, capsys) -> None:
    root, _ = board
    plan = ClockPersist({"tpll_clock": 750_000_000}).plan(LocalTarget(str(root)))
    text = "\n".join(plan.lines())
    assert "+ at boot: tpll_clock 750 MHz (750000000 Hz)" in text
    assert "[Service]" not in text and "ExecStart" not in text
