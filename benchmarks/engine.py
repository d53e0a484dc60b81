"""The engine (csrc/) vs a bare loop over the same networks, and the chip's decode ceiling for a real model.

Part 1, measured: on the BM1684X cmodel (or a chip, with --lib-dir), load time and per-token
decode time of `llmtpu-engine` against `benchmarks/bare_loop/bare_loop.cpp`: the least code that
decodes greedily through the same bmodel (bm_dev_request, bmrt_create, load, then per token
embedding_cache -> block_cache_N (+ K/V row copy) -> lm_head -> argmax, on device buffers
allocated once; no protocol, no sampling). Both programs are built here from source, run one
after the other (never together: 2 shared cores), alternating which goes first, and the
medians are compared. Target (issue 7): engine / bare loop <= 1.1, for load and decode.
On the cmodel the verdict for decode uses CPU time (user+sys) of whole runs: the simulator does
all of the chip's work on the CPU, so wall time on a shared 2-core box mostly measures the
neighbours (single decode steps swing 0.4-4 s); wall-time ratios are printed too. With a chip
(no libcmodel.so in --lib-dir) the verdict uses wall time of the whole decode.

On the cmodel every network launch is simulated instruction by instruction (0.1-1 s each), so
the ratio mostly says the engine adds nothing measurable there; on a chip the same script
gives the ratio that matters (`--lib-dir /opt/sophon/libsophon-current/lib --bmodel FILE`).

Part 2, computed: the decode tokens/s that the BM1684X's memory bandwidth allows for a named
model of doctor/models.toml (default llama2-7b int4): every weight is read from DRAM once per
token, so tokens/s <= bandwidth / bytes of weights. See BANDWIDTH_SOURCE for the figure used.

Run: .venv/bin/python benchmarks/engine.py [--rounds 3] [--max-new 8] [--model-name llama2-7b]
     [--bandwidth-gbs 68.3] [--lib-dir DIR] [--bmodel FILE]
Exit status: 0 target met, 1 missed, 2 cannot measure (no cmodel libraries, no compiler).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (a dependency of llmtpu there)
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bench"
TESTMODEL = REPO / "runtime" / "testmodel"
CMODEL_LIB = Path.home() / ".cache" / "llmtpu" / "cmodel-1.30.2"  # what .ci/engine-deps.sh fills
TARGET_RATIO = 1.1
RUN_TIMEOUT = 60.0  # for a program to exit once its output has ended

# --- the physical limit ------------------------------------------------------------------------
#: BM1684X DRAM bandwidth in GB/s (1e9 bytes/s), theoretical peak.
BANDWIDTH_GBS = 68.3
BANDWIDTH_SOURCE = (
    "68.3 GB/s = LPDDR4X at 4266 MT/s on a 128-bit bus, theoretical peak; uncertain, as no\n"
    "  Sophgo datasheet page stating the figure could be retrieved here. What was found: Sophgo's\n"
    "  BM1684X module manual (github.com/sophgo/bootloader-arm64, docs/bm1684x/bm1684x-soft-dev-doc)\n"
    "  says the chip is paired with LPDDR4X; a public chip survey citing sophon.ai's BM1684X page\n"
    "  lists LPDDR4X 16 GB, ~68 GB/s; tpu-mlir's profiler model of the BM1688 (same 4266 MT/s\n"
    "  LPDDR4X, python/profile_helper) uses 32 GB/s per 64-bit DDR port, 94 % of its 34.1 GB/s peak.\n"
    "  Give --bandwidth-gbs to use another figure."
)
#: Bytes per weight by quantisation (weights only; group scales add ~3-6 % for int4 g64/g128).
BYTES_PER_WEIGHT = {"int4": 0.5, "w4bf16": 0.5, "w4f16": 0.5, "int8": 1.0, "w8bf16": 1.0,
                    "w8f16": 1.0, "bf16": 2.0, "f16": 2.0, "fp16": 2.0}


def load_models() -> dict[str, dict]:
    with open(REPO / "doctor" / "models.toml", "rb") as handle:
        return {row["name"]: row for row in tomllib.load(handle)["model"]}


def physical_limit(model_name: str, bandwidth_gbs: float) -> list[str]:
    models = load_models()
    if model_name not in models:
        return [f"model {model_name!r} is not in doctor/models.toml ({', '.join(models)})"]
    model = models[model_name]
    quant = model["quant"].lower()
    if quant not in BYTES_PER_WEIGHT:
        return [f"{model_name}: quantisation {quant!r} has no bytes-per-weight figure here"]
    weight_bytes = model["params_b"] * 1e9 * BYTES_PER_WEIGHT[quant]
    ceiling = bandwidth_gbs * 1e9 / weight_bytes
    return [
        f"{model_name} ({model['params_b']:g} B params, {quant}, doctor/models.toml): "
        f"{weight_bytes / 1e9:.2f} GB of weights read per token",
        f"  BM1684X DRAM bandwidth {bandwidth_gbs:g} GB/s -> at most {ceiling:.1f} tokens/s decode "
        f"({1000 / ceiling:.0f} ms/token)",
        "  an upper bound: it ignores the KV cache reads (grow with the context), int4 group scales,",
        "  and a lm_head kept in 16 bits; real decode reaches some fraction of it.",
        f"  bandwidth: {BANDWIDTH_SOURCE}",
    ]


# --- building ----------------------------------------------------------------------------------


def run_quiet(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{tail}")


def build() -> tuple[Path, Path]:
    """The engine the way `llmtpu engine build` makes it, and the bare loop, under build/bench/."""
    engine_dir = BUILD / "engine"
    run_quiet(["cmake", "-S", str(REPO / "csrc"), "-B", str(engine_dir), "-DCMAKE_BUILD_TYPE=Release"],
              "cmake configure")
    run_quiet(["cmake", "--build", str(engine_dir), "-j", "2"], "cmake build")
    bare = BUILD / "bare_loop"
    source = REPO / "benchmarks" / "bare_loop" / "bare_loop.cpp"
    header = REPO / "csrc" / "bmruntime_api.h"
    if not bare.exists() or bare.stat().st_mtime < max(source.stat().st_mtime, header.stat().st_mtime):
        run_quiet(["g++", "-O2", "-std=c++17", "-Wall", "-I", str(REPO / "csrc"), str(source),
                   "-o", str(bare), "-ldl"], "g++ bare_loop")
    return engine_dir / "llmtpu-engine", bare


# --- one run of each program ---------------------------------------------------------------------


@dataclass
class Run:
    load_ms: float  # bm_dev_request .. buffers allocated, measured inside the program
    ready_s: float  # process start .. load done, measured here (includes exec, dlopen)
    prefill_ms: float
    decode_ms: float  # all decode steps, as the program measured them
    cpu_s: float  # user+sys of the whole process (load, prefill, decode, exit)
    step_ms: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def fields(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def finish(proc: subprocess.Popen[str], request: str | None = None) -> tuple[str, float]:
    """Send ``request`` (if any), read the rest of stdout; return it and the process's CPU seconds."""
    assert proc.stdout is not None
    if request is not None:
        assert proc.stdin is not None
        proc.stdin.write(request)
        proc.stdin.close()
    out = proc.stdout.read()  # ends when the program exits; a hang is the caller's Ctrl-C
    _, status, usage = os.wait4(proc.pid, 0)  # user+sys of this child alone, all its threads
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out, usage.ru_utime + usage.ru_stime


def load_only(name: str, binary: Path, bmodel: Path, lib_dir: Path) -> float:
    """load_ms of a program that loads the bmodel and exits (cheap: no prefill, no decode)."""
    if name == "engine":
        argv, request = [str(binary), "--model", str(bmodel), "--lib-dir", str(lib_dir)], "quit\n"
    else:
        argv, request = [str(binary), "--model", str(bmodel), "--lib-dir", str(lib_dir), "--ids", "1",
                         "--max-new", "0"], None
    result = subprocess.run(argv, input=request, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            check=False)
    line = result.stdout.splitlines()[0] if result.stdout else ""
    if "load_ms=" not in line:
        raise SystemExit(f"{name} did not load: {line or result.stderr.strip()[-300:]}")
    return float(fields(line)["load_ms"])


def run_engine(binary: Path, bmodel: Path, lib_dir: Path, ids: list[int], max_new: int) -> Run:
    request = f"generate ids={','.join(map(str, ids))} max_new={max_new}\nquit\n"
    start = time.perf_counter()
    proc = subprocess.Popen([str(binary), "--model", str(bmodel), "--lib-dir", str(lib_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdin is not None and proc.stdout is not None
    ready = proc.stdout.readline()
    ready_s = time.perf_counter() - start
    if not ready.startswith("ready "):
        proc.kill()
        raise SystemExit(f"engine did not start: {ready.strip() or 'no output'}")
    out, cpu_s = finish(proc, request)
    steps, done = [], {}
    for line in out.splitlines():
        if line.startswith("token "):
            steps.append((int(line.split()[1]), float(fields(line)["ms"])))
        elif line.startswith("done "):
            done = fields(line)
        elif line.startswith("error "):
            raise SystemExit(f"engine: {line}")
    return Run(float(fields(ready)["load_ms"]), ready_s, float(done["prefill_ms"]), float(done["decode_ms"]),
               cpu_s, [ms for _, ms in steps[1:]], [token for token, _ in steps])  # step 1: the prefill's


def run_bare(binary: Path, bmodel: Path, lib_dir: Path, ids: list[int], max_new: int) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen([str(binary), "--model", str(bmodel), "--lib-dir", str(lib_dir),
                             "--ids", ",".join(map(str, ids)), "--max-new", str(max_new)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    ready_s = time.perf_counter() - start
    rest, cpu_s = finish(proc)
    if proc.returncode != 0 or not first.startswith("load_ms="):
        raise SystemExit(f"bare_loop failed (exit {proc.returncode}); run it by hand to see its stderr")
    values: dict[str, str] = fields(first)
    for line in rest.splitlines():
        values.update(fields(line))
    steps = [float(x) for x in values["step_ms"].split(",") if x]
    return Run(float(values["load_ms"]), ready_s, float(values["prefill_ms"]), float(values["decode_ms"]),
               cpu_s, steps, [int(x) for x in values["tokens"].split(",")])


# --- report --------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each program (default 3)")
    parser.add_argument("--max-new", type=int, default=8, help="tokens per run (default 8: 7 decode steps)")
    parser.add_argument("--load-runs", type=int, default=8,
                        help="extra load-only runs of each program, for the load median (default 8)")
    parser.add_argument("--budget-s", type=float, default=150.0,
                        help="start no new round after this many seconds (default 150)")
    parser.add_argument("--lib-dir", help="folder with libbmrt.so/libbmlib.so (default: $LLMTPU_CMODEL_LIB, "
                                          f"else {CMODEL_LIB})")
    parser.add_argument("--bmodel", default=str(TESTMODEL / "tiny_llama_f16.bmodel"))
    parser.add_argument("--ids", help="prompt token ids, comma separated (default: reference.json case 0)")
    parser.add_argument("--model-name", default="llama2-7b", help="doctor/models.toml model for the ceiling")
    parser.add_argument("--bandwidth-gbs", type=float, default=BANDWIDTH_GBS)
    args = parser.parse_args()

    ceiling = physical_limit(args.model_name, args.bandwidth_gbs)
    lib_dir = Path(args.lib_dir or os.environ.get("LLMTPU_CMODEL_LIB") or CMODEL_LIB)
    missing = [name for name in ("libbmrt.so", "libbmlib.so") if not (lib_dir / name).exists()]
    if missing:
        print(f"cannot measure: {', '.join(missing)} not in {lib_dir}. Fetch the BM1684X cmodel "
              "libraries with `bash .ci/engine-deps.sh` (or set LLMTPU_CMODEL_LIB / --lib-dir).")
        print("\nPhysical limit (computed, needs no libraries):")
        print("\n".join(ceiling))
        return 2
    tools = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if tools:
        print(f"cannot build: {' and '.join(tools)} not found (apt-get install cmake g++)")
        return 2

    started = time.perf_counter()
    engine, bare = build()
    build_s = time.perf_counter() - started
    reference = json.loads((TESTMODEL / "reference.json").read_text())["cases"][0]
    ids = [int(x) for x in args.ids.split(",")] if args.ids else reference["prompt"]
    bmodel = Path(args.bmodel)
    is_testmodel = bmodel.resolve().parent == TESTMODEL.resolve()
    expected = reference["tokens"][: args.max_new] if is_testmodel and not args.ids else None

    runs: dict[str, list[Run]] = {"engine": [], "bare": []}
    for round_no in range(max(args.rounds, 1)):
        if round_no >= 1 and time.perf_counter() - started > args.budget_s:
            print(f"(stopped after {round_no} rounds: --budget-s {args.budget_s:g} spent)")
            break
        order = ["engine", "bare"] if round_no % 2 == 0 else ["bare", "engine"]  # cancel drift
        for name in order:
            runner = run_engine if name == "engine" else run_bare
            runs[name].append(runner(engine if name == "engine" else bare, bmodel, lib_dir, ids, args.max_new))
        e, b = runs["engine"][-1], runs["bare"][-1]
        print(f"round {round_no + 1}: decode ms/token engine {median(e.step_ms):7.1f}  bare "
              f"{median(b.step_ms):7.1f}   load ms engine {e.load_ms:6.1f}  bare {b.load_ms:6.1f}", flush=True)

    e_runs, b_runs = runs["engine"], runs["bare"]
    loads = {"engine": [r.load_ms for r in e_runs], "bare": [r.load_ms for r in b_runs]}
    for i in range(args.load_runs):
        for name in (["engine", "bare"] if i % 2 == 0 else ["bare", "engine"]):
            loads[name].append(load_only(name, engine if name == "engine" else bare, bmodel, lib_dir))
    e_steps = [ms for r in e_runs for ms in r.step_ms]
    b_steps = [ms for r in b_runs for ms in r.step_ms]
    same_tokens = all(r.tokens == e_runs[0].tokens for r in e_runs + b_runs)
    ratio = median(e_steps) / median(b_steps)
    load_ratio = median(loads["engine"]) / median(loads["bare"])
    total_ratio = median([r.decode_ms / len(r.step_ms) for r in e_runs]) / \
        median([r.decode_ms / len(r.step_ms) for r in b_runs])

    print(f"\n{bmodel.name} on {lib_dir}: medians of {len(e_runs)} runs each ({len(e_steps)} decode "
          f"steps; {len(loads['engine'])} loads), prompt {len(ids)} tokens, {args.max_new} new")
    print(f"{'':34}{'engine':>10}{'bare loop':>11}{'ratio':>8}")
    rows = [
        ("load ms (dev_request..buffers)", loads["engine"], loads["bare"]),
        ("start to loaded ms (process)", [r.ready_s * 1000 for r in e_runs], [r.ready_s * 1000 for r in b_runs]),
        ("prefill ms", [r.prefill_ms for r in e_runs], [r.prefill_ms for r in b_runs]),
        ("decode ms/token (per step)", e_steps, b_steps),
        ("decode ms/token (whole decode)", [r.decode_ms / len(r.step_ms) for r in e_runs],
         [r.decode_ms / len(r.step_ms) for r in b_runs]),
        ("CPU s per run (user+sys)", [r.cpu_s for r in e_runs], [r.cpu_s for r in b_runs]),
    ]
    for label, e_values, b_values in rows:
        e_med, b_med = median(e_values), median(b_values)
        print(f"  {label:32}{e_med:10.1f}{b_med:11.1f}{e_med / b_med:7.2f}x")
    spread = [min(e_steps), max(e_steps), min(b_steps), max(b_steps)]
    print(f"  decode step spread: engine {spread[0]:.0f}-{spread[1]:.0f} ms, bare {spread[2]:.0f}-{spread[3]:.0f} ms "
          "(the cmodel's own noise on shared cores)")
    print(f"  tokens identical in every run: {'yes' if same_tokens else 'NO'} {e_runs[0].tokens}"
          + (f"; reference.json: {'match' if e_runs[0].tokens == expected else 'MISMATCH'}" if expected else ""))
    cpu_ratio = median([r.cpu_s for r in e_runs]) / median([r.cpu_s for r in b_runs])
    # On the simulator all the chip's work is CPU work of the process, so CPU time compares the two
    # programs without counting the neighbours' load on the shared cores; on a chip, wall time does.
    simulator = (lib_dir / "libcmodel.so").exists()
    decode_ratio = cpu_ratio if simulator else total_ratio
    decode_met = decode_ratio <= TARGET_RATIO
    load_met = load_ratio <= TARGET_RATIO
    met = decode_met and load_met
    print(f"  wall decode ratio {ratio:.3f} per step, {total_ratio:.3f} whole decode; CPU ratio {cpu_ratio:.3f}")
    print(f"  overhead engine/bare, target <= {TARGET_RATIO}: decode {decode_ratio:.3f} "
          f"({'CPU time, whole run: the simulator is all CPU' if simulator else 'wall, whole decode'}): "
          f"{'met' if decode_met else 'MISSED'}; load {load_ratio:.3f}: {'met' if load_met else 'MISSED'}")
    print(f"  wall {time.perf_counter() - started:.0f} s (build {build_s:.1f} s)")

    print("\nPhysical limit on a chip (computed):")
    print("\n".join(ceiling))
    return 0 if met and same_tokens else 1


if __name__ == "__main__":
    raise SystemExit(main())
