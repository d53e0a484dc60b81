"""The real smoke test: run the engine on a model and judge the output, not version files.

A machine whose driver and libraries all look right can still print "!!!!!!" (LLM-TPU FAQ Q3:
TPU voltage too low for its clock) or hang. This runs one greedy generation with a timeout and
checks, in order: the engine starts and loads the model; tokens come back; they are not
degenerate (NaN/inf logits, one token repeated, and, when a tokenizer decodes them, text that is
only punctuation such as "!!!!" or '!"!"', whatever the token ids); they equal the reference when
one is known; and it reports prefill and decode speed.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from llmtpu.runtime.engine import (
    EngineError,
    EngineSession,
    GenerateRequest,
    Generation,
    Ready,
    TokenStep,
    run_batch,
)
from llmtpu.target import LocalTarget, Target

#: LLM-TPU FAQ Q3: lower the TPU clock when the output is all "!" (voltage too low).
DOWNCLOCK_FIX = (
    "lower the TPU clock (LLM-TPU FAQ Q3): sudo llmtpu clock apply, then sudo llmtpu clock "
    "persist once the output is right; by hand, as root: "
    'echo "setr tpll_clock 750000000" > /sys/kernel/debug/top/clock; '
    'echo "setr mpll_clock 1800000000" > /sys/kernel/debug/top/clock; '
    'echo "setr vpll_clock 100000000" > /sys/kernel/debug/top/clock'
)
HUNG_FIX = ("the TPU stopped answering: look at `bm-smi` and dmesg for a chip fault, then reboot "
            "the machine (a hung TPU is only reset by a reboot or a driver reload)")
#: Failures whose cause an earlier doctor check names; the fix is that check's.
FIX_BY_ENGINE_ERROR = {
    "no_runtime": "install libsophon (see the doctor's libsophon check), or give the folder "
                  "holding libbmrt.so with --lib-dir",
    "not_built": "build the engine on this machine: llmtpu engine build",
    "device": "the TPU device could not be used: see the doctor's driver and device-node checks",
    "bad_model": "the bmodel is corrupt or for another chip: download it again",
    "timeout": HUNG_FIX,
    "exited": "the engine crashed: run it by hand to see its messages (csrc/README.md)",
    "protocol": "the engine and llmtpu disagree: rebuild the engine (llmtpu engine build)",
    "bad_request": "the smoke prompt does not fit this model: report a bug",
}
#: Fewer generated tokens than this cannot show a repetition reliably.
MIN_TOKENS_FOR_REPEAT_CHECK = 4


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    problem: str  # "" when ok; else an engine error kind, degenerate or mismatch
    message: str
    fix: str
    ready: Ready | None = None
    generation: Generation | None = None


def punctuation_only(text: str) -> bool:
    """True for text with something in it but no letter or digit: "!!!!", '!"!"', "？？". """
    visible = [ch for ch in text if not ch.isspace()]
    return bool(visible) and all(unicodedata.category(ch)[0] in "PS" for ch in visible)


def degenerate_reason(generation: Generation, bang_ids: Collection[int] = (),
                      text: str | None = None) -> str | None:
    """Why this output is garbage, or None.

    ``bang_ids``: the tokenizer's ids of "!" tokens; ``text``: the tokens decoded, which catches
    an all-"!" answer (LLM-TPU FAQ Q3) however the tokenizer splits it.
    """
    tokens = generation.tokens
    bad_steps = [i for i, step in enumerate(generation.steps) if step.nonfinite]
    if bad_steps:
        return f"NaN/inf logits at step {bad_steps[0]} ({generation.steps[bad_steps[0]].nonfinite} of them)"
    if not tokens:
        return "no tokens came back"
    if bang_ids and all(t in bang_ids for t in tokens):
        return f'every token is "!" ({len(tokens)} tokens, LLM-TPU FAQ Q3)'
    if text is not None and punctuation_only(text):
        shown = text.strip()
        shown = shown if len(shown) <= 24 else shown[:24] + "..."
        return f"the output is only punctuation: {shown!r} ({len(tokens)} tokens, LLM-TPU FAQ Q3)"
    if text is not None and not text.strip() and len(tokens) >= MIN_TOKENS_FOR_REPEAT_CHECK:
        return f"{len(tokens)} tokens decode to no visible text"
    if len(tokens) >= MIN_TOKENS_FOR_REPEAT_CHECK and len(set(tokens)) == 1:
        return f"the same token {tokens[0]} repeated {len(tokens)} times"
    return None


def speed_text(ready: Ready, generation: Generation) -> str:
    prefill = generation.prefill_tokens_per_s
    decode = generation.decode_tokens_per_s
    return (f"load {ready.load_ms:.0f} ms, prefill {generation.prefill_ms:.0f} ms"
            f"{f' ({prefill:.1f} tok/s)' if prefill else ''}, decode "
            f"{f'{decode:.2f} tok/s' if decode else 'n/a'}")


def smoke_test(target: Target, argv: Sequence[str], prompt: Sequence[int], max_new: int,
               timeout: float, expected: Sequence[int] | None = None,
               bang_ids: Collection[int] = (),
               decode: Callable[[Sequence[int]], str] | None = None,
               progress: Callable[[str], None] | None = None) -> SmokeResult:
    """One greedy generation on the machine, judged. ``argv`` is from engine.engine_argv.

    ``decode`` (a tokenizer's) turns the tokens into text for the punctuation check;
    ``progress`` hears what is being waited for (loading, prefill, each token) as it happens;
    it is used on this machine (a LocalTarget); other targets answer in one batch.
    """
    request = GenerateRequest(ids=list(prompt), max_new=max_new)
    try:
        if progress is None or not isinstance(target, LocalTarget):
            ready, (generation,) = run_batch(target, argv, [request], timeout)
        else:
            ready, generation = _watched_generation(argv, request, timeout, progress)
    except EngineError as exc:
        return SmokeResult(False, exc.kind, str(exc), FIX_BY_ENGINE_ERROR.get(exc.kind, HUNG_FIX))
    text = decode(generation.tokens) if decode is not None else None
    reason = degenerate_reason(generation, bang_ids, text)
    if reason:
        return SmokeResult(False, "degenerate", f"degenerate output: {reason}", DOWNCLOCK_FIX,
                           ready, generation)
    if expected is not None and generation.tokens != list(expected):
        first = next((i for i, (a, b) in enumerate(zip(generation.tokens, expected, strict=False)) if a != b),
                     min(len(generation.tokens), len(expected)))
        return SmokeResult(False, "mismatch",
                           f"tokens {generation.tokens} differ from the reference {list(expected)} "
                           f"from step {first}", DOWNCLOCK_FIX, ready, generation)
    return SmokeResult(True, "", f"{len(generation.tokens)} tokens; {speed_text(ready, generation)}",
                       "", ready, generation)


def _watched_generation(argv: Sequence[str], request: GenerateRequest, timeout: float,
                        progress: Callable[[str], None]) -> tuple[Ready, Generation]:
    """The same generation through a local session, telling ``progress`` each phase.

    ``timeout`` bounds the run as run_batch's does: each wait gets what was left of it when
    the wait began (the load; then each reply line of the generation).
    """
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(deadline - time.monotonic(), 0.001)

    progress("loading the model")
    with EngineSession(argv, load_timeout=left()) as session:
        ready = session.start()
        progress(f"loaded in {ready.load_ms:.0f} ms; prefill of {len(request.ids)} tokens")
        steps: list[int] = []

        def on_token(step: TokenStep) -> None:
            steps.append(step.token)
            progress(f"decode: token {len(steps)} of {request.max_new}")

        generation = session.generate(request, left(), on_token)
    return ready, generation
