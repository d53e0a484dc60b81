"""Find the highest TPU clock at which the board gives correct tokens (LLM-TPU FAQ Q3, done right).

The seed's fix for all-"!" output is one fixed set of rates (tpll 750 MHz). Boards differ, and
every MHz given up is decode speed lost, so this steps the TPU PLL down from the default, runs
the smoke test at each rate, and keeps the first (highest) rate that passes. If none passes,
the rates from before the search are put back: a lower clock did not help, so it is not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmtpu.provision.clock import ClockApply, read_rates
from llmtpu.provision.operation import Journal, OperationError
from llmtpu.target import Target

TPLL = "tpll_clock"
#: Default search: the BM1684X default (950 MHz) down to 600 MHz in 50 MHz steps.
DEFAULT_TPLL_MHZ = (950, 900, 850, 800, 750, 700, 650, 600)

#: One smoke run: (passed, summary, fix id of the failure or "").
SmokeRun = Callable[[], tuple[bool, str, str]]


@dataclass
class SearchResult:
    chosen_hz: int | None  # the highest passing rate; None when none passed
    tried: list[tuple[int, bool, str]] = field(default_factory=list)  # (rate, passed, summary)
    restored: dict[str, int] | None = None  # the rates put back when nothing passed

    def lines(self) -> list[str]:
        out = [f"tpll {rate // 1_000_000} MHz: {'correct' if ok else 'wrong'}: {summary}"
               for rate, ok, summary in self.tried]
        if self.chosen_hz is not None:
            out.append(f"keeping tpll {self.chosen_hz // 1_000_000} MHz, the highest rate with correct tokens")
        if self.restored is not None:
            out.append("no rate gave correct tokens; clocks restored to " +
                       ", ".join(f"{k} {v // 1_000_000} MHz" for k, v in self.restored.items()))
        return out


def search_tpll(target: Target, smoke: SmokeRun, candidates_mhz: Sequence[int] = DEFAULT_TPLL_MHZ,
                journal: Journal | None = None) -> SearchResult:
    """Step tpll down through ``candidates_mhz`` (highest first) until ``smoke`` passes.

    A smoke failure that a lower clock cannot cure (a hung chip, a missing library) stops the
    search at once with an OperationError naming the smoke test's own fix.
    """
    journal = journal or Journal(target)
    before = read_rates(target)
    result = SearchResult(None)
    for mhz in sorted(set(candidates_mhz), reverse=True):
        rate = mhz * 1_000_000
        operation = ClockApply({TPLL: rate})
        plan = operation.plan(target)
        operation.apply(target, plan, journal)
        problems = operation.verify(target)
        if problems:
            raise OperationError(f"clock search: {'; '.join(problems)}")
        passed, summary, fix_id = smoke()
        result.tried.append((rate, passed, summary))
        if passed:
            result.chosen_hz = rate
            return result
        if fix_id != "clock.apply":
            _restore(target, before, journal)
            raise OperationError(f"clock search stopped at tpll {mhz} MHz: the smoke test failed in a way a lower "
                                 f"clock does not cure ({summary}); clocks restored")
    _restore(target, before, journal)
    result.restored = before
    return result


def _restore(target: Target, rates: dict[str, int], journal: Journal) -> None:
    operation = ClockApply(rates)
    operation.apply(target, operation.plan(target), journal)
