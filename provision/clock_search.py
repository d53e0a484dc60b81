"""Find the highest TPU clock at which the board gives correct tokens (LLM-TPU FAQ Q3, done right).

The seed's fix for all-"!" output is one fixed set of rates (tpll 750 MHz, mpll 1800 MHz, vpll
100 MHz). Boards differ, and every MHz given up is decode speed lost, so this steps the TPU PLL
down and keeps the first (highest) rate whose smoke test passes. What is searched, and why:

* only tpll rates *below* the running one: the search runs because the smoke test just failed
  at the running rates, so running it there again only costs time;
* each rate once: a smoke run is deterministic enough for "all !" (the engine reports the
  non-finite logits), and one run on the cmodel takes tens of seconds;
* mpll and vpll go down to Q3's rates with the first step and stay there (never raised): Q3
  lowers all three, and the TPU's voltage margin is what the memory and video clocks share.

If none passes, the rates from before the search are put back: a lower clock did not help, so
it is not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmtpu.doctor.checks import SEED_DOWNCLOCK
from llmtpu.provision.clock import ClockApply, read_rates
from llmtpu.provision.operation import Journal, OperationError
from llmtpu.target import Target

TPLL, MPLL, VPLL = "tpll_clock", "mpll_clock", "vpll_clock"
#: Default search: 50 MHz steps below the BM1684X default (950 MHz) down to 600 MHz.
DEFAULT_TPLL_MHZ = (900, 850, 800, 750, 700, 650, 600)

#: One smoke run: (passed, summary, fix id of the failure or "").
SmokeRun = Callable[[], tuple[bool, str, str]]


@dataclass
class SearchResult:
    chosen: dict[str, int] | None  # the rates of the highest passing tpll; None when none passed
    tried: list[tuple[dict[str, int], bool, str]] = field(default_factory=list)  # (rates, passed, summary)
    restored: dict[str, int] | None = None  # the rates put back when nothing passed
    skipped_mhz: list[int] = field(default_factory=list)  # candidates at or above the failing running rate

    @property
    def chosen_hz(self) -> int | None:
        return self.chosen[TPLL] if self.chosen is not None else None

    def lines(self) -> list[str]:
        """A compact table (rates in MHz, one row per smoke run), then the outcome."""
        out = [f"{'tpll':>5} {'mpll':>5} {'vpll':>5}  tokens  (MHz, one smoke run each)"]
        out += [f"{rates[TPLL] // 1_000_000:>5} {rates[MPLL] // 1_000_000:>5} {rates[VPLL] // 1_000_000:>5}  "
                f"{'correct' if ok else 'wrong'}" for rates, ok, _ in self.tried]
        if self.skipped_mhz:
            out.append(f"not retried (the smoke test had failed at the running rate): "
                       f"{', '.join(str(m) for m in self.skipped_mhz)} MHz")
        if self.chosen is not None:
            out.append("keeping " + _named(self.chosen) + ", the highest TPU rate with correct tokens")
        elif self.tried:
            out.append(f"last failure: {self.tried[-1][2]}")
        if self.restored is not None:
            out.append("no rate gave correct tokens; clocks restored to " + _named(self.restored))
        return out


def _named(rates: dict[str, int]) -> str:
    return ", ".join(f"{k.split('_')[0]} {v // 1_000_000} MHz" for k, v in rates.items())


def search_tpll(target: Target, smoke: SmokeRun, candidates_mhz: Sequence[int] = DEFAULT_TPLL_MHZ,
                journal: Journal | None = None) -> SearchResult:
    """Step tpll down through ``candidates_mhz`` below the running rate until ``smoke`` passes.

    Called after the smoke test failed at the running rates. A smoke failure that a lower
    clock cannot cure (a hung chip, a missing library) stops the search at once with an
    OperationError naming the smoke test's own fix.
    """
    journal = journal or Journal(target)
    before = read_rates(target)
    companions = {name: min(rate, before[name]) for name, rate in SEED_DOWNCLOCK.items() if name != TPLL}
    wanted = sorted(set(candidates_mhz), reverse=True)
    result = SearchResult(None, skipped_mhz=[m for m in wanted if m * 1_000_000 >= before[TPLL]])
    for mhz in (m for m in wanted if m * 1_000_000 < before[TPLL]):
        rates = {TPLL: mhz * 1_000_000, **companions}
        operation = ClockApply(rates)
        operation.apply(target, operation.plan(target), journal)
        problems = operation.verify(target)
        if problems:
            raise OperationError(f"clock search: {'; '.join(problems)}")
        passed, summary, fix_id = smoke()
        result.tried.append((rates, passed, summary))
        if passed:
            result.chosen = rates
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
