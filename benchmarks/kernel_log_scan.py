"""The doctor's kernel-log work per host vs. every line against every row (the old way), same run.

Issue 17: the kernel-log scan was 44 of 46 ms of client CPU per host (the signature file parsed
per host, each line tried against each row). Target: the pre-filtered scan at most half of that.
Run: .venv/bin/python benchmarks/kernel_log_scan.py [--lines N] [--runs N]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from llmtpu.data import load_toml
from llmtpu.doctor.explain import clean_line, default_matcher, parse_signatures
from llmtpu.doctor.kernel_log import scan_kernel_log

TARGET_RATIO = 0.5
#: Lines of the kind a BM1684X board's dmesg holds, most of them not the driver's.
KINDS = [
    "usb 1-1: new high-speed USB device number {n} using xhci-hcd",
    "EXT4-fs (mmcblk0p5): mounted filesystem with ordered data mode. Opts: (null)",
    "bm-tpu0: bmdrv: probe start",
    "ion: ion_bm_heap_create npu heap 0x1dbf00000",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    "audit: type=1400 audit({n}.123:45): apparmor=\"STATUS\" operation=\"profile_load\"",
    "bmtpu: loading out-of-tree module taints kernel.",
    "vpudrv: vpu_probe: enter, pdev=0x{n:x}",
    "eth0: Link is Up - 1Gbps/Full - flow control rx/tx",
]


def dmesg(count: int) -> str:
    rng = random.Random(1684)
    lines = [f"[{i * 0.37:12.6f}] " + rng.choice(KINDS).format(n=rng.randrange(1, 99999)) for i in range(count)]
    lines.insert(count * 3 // 4, "[ 8812.000001] bm-tpu0 tpu api [5:GEMM] timeout")
    return "\n".join(lines) + "\n"


def every_row(text: str) -> list[tuple[int, str]]:
    signatures = parse_signatures(load_toml("llmtpu.doctor", "signatures.toml"))
    return [(n, sig.id) for n, raw in enumerate(text.splitlines(), 1) for sig in signatures
            if sig.pattern.search(clean_line(raw))]


def pre_filtered(text: str) -> list[tuple[int, str]]:
    return [(m.line_no, m.signature.id) for m in scan_kernel_log(text, default_matcher()).matches]


def best(run: Callable[[str], object], text: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(text)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    text = dmesg(args.lines)
    assert every_row(text) == pre_filtered(text), "the pre-filter changed what is found"
    old, new = best(every_row, text, args.runs), best(pre_filtered, text, args.runs)
    print(f"{args.lines} lines: every line x every row {old * 1000:.1f} ms, pre-filtered {new * 1000:.1f} ms "
          f"per host ({new / old:.2f}x; target <= {TARGET_RATIO}x)")
    return 0 if new <= old * TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
