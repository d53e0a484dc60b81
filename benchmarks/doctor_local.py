"""Doctor wall time on one sysroot vs. `cat` of the same files (the floor), in the same run.

Target (issue 3): the whole doctor, interpreter start included, under 0.3 s wall.
Run: .venv/bin/python benchmarks/doctor_local.py [--runs N] [--sample NAME]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "samples"
TARGET_SECONDS = 0.3


def wall(argv: list[str], runs: int) -> float:
    """Median wall seconds of running argv (output discarded)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sample", default="soc-board-ok")
    args = parser.parse_args()
    root = SAMPLES / args.sample
    files = sorted(str(p) for p in root.rglob("*") if p.is_file())
    llmtpu = shutil.which("llmtpu", path=os.path.dirname(sys.executable)) or "llmtpu"
    doctor = wall([llmtpu, "doctor", "--root", str(root), "--json"], args.runs)
    floor = wall(["cat", *files], args.runs)
    python = wall([sys.executable, "-c", "pass"], args.runs)
    print(f"sample {args.sample}: {len(files)} files, median of {args.runs} runs")
    print(f"  cat of the same files (floor):   {floor * 1000:7.1f} ms")
    print(f"  bare python start:               {python * 1000:7.1f} ms")
    print(f"  llmtpu doctor --json:            {doctor * 1000:7.1f} ms   ratio to cat {doctor / floor:5.1f}x")
    verdict = "met" if doctor < TARGET_SECONDS else "MISSED"
    print(f"  target < {TARGET_SECONDS * 1000:.0f} ms wall: {verdict}")
    return 0 if doctor < TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
