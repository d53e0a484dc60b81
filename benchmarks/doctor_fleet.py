"""Doctor across 1, 8 and 32 loopback sshd boards in one run, against OpenSSH `ssh host cat`.

For each fleet size: wall time of the whole fleet doctor (connect, prefetch, checks; in-process,
all boards at once), its ratio to 1 board (target: <= 2x at 32 boards), and SSH round trips per
host after connecting. The reference, in the same run and on the same boards: the files the
doctor reads, fetched with a plain loop of the OpenSSH client -- one `ssh host cat FILE...` per
board, and (for 1 board) one `ssh host cat FILE` per file, the way people check by hand.
The reference only reads files; the doctor also lists folders, follows links and checks.

Needs root or a user that may run sshd (see tests/sshd.py). Run:
    .venv/bin/python benchmarks/doctor_fleet.py [--sizes 1,8,32] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmtpu.doctor.checks import DoctorOptions  # noqa: E402
from llmtpu.doctor.report import run_doctor  # noqa: E402
from llmtpu.fleet import DONE, run_on_hosts  # noqa: E402
from llmtpu.hostkeys import HostKeyStore  # noqa: E402
from llmtpu.inventory import HostSpec  # noqa: E402
from llmtpu.ssh import SSHOptions  # noqa: E402
from llmtpu.target import DEFAULT_READ_LIMIT, LocalTarget  # noqa: E402
from tests.sshd import SshdFarm, sshd_available  # noqa: E402

SAMPLES = ROOT / "tests" / "samples"
TARGET_RATIO = 2.0


class RecordingTarget(LocalTarget):
    """A local target that notes every file the doctor reads (the reference's file list)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.read: list[str] = []

    def read_bytes(self, path: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        data = super().read_bytes(path, limit)
        if path not in self.read:
            self.read.append(path)
        return data


def files_read(sample: str) -> list[str]:
    target = RecordingTarget(str(SAMPLES / sample))
    run_doctor(target, DoctorOptions())
    return target.read


def fleet_doctor(farm: SshdFarm, boards: list, roots: list[str], options: SSHOptions) -> tuple[float, float, list]:
    """(wall seconds, llmtpu's own CPU seconds, results) of one fleet doctor."""
    specs = [HostSpec(name=b.name, hostname=b.host, port=b.port, user=b.user, root=r)
             for b, r in zip(boards, roots, strict=True)]
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    results = run_on_hosts(specs, lambda t: run_doctor(t, DoctorOptions()), options, parallel=len(specs))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    bad = [r for r in results if r.status != DONE]
    if bad:
        raise SystemExit(f"benchmark boards failed: {[(r.spec.name, r.error) for r in bad]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, results


def ssh_loop(farm: SshdFarm, boards: list, roots: list[str], files: dict[str, list[str]], per_file: bool) -> float:
    start = time.perf_counter()
    for board, root in zip(boards, roots, strict=True):
        paths = [root + f for f in files[root]]
        batches = [[p] for p in paths] if per_file else [paths]
        for batch in batches:
            subprocess.run(farm.ssh_argv(board, "cat", *batch), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=False, timeout=120)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,8,32", help="fleet sizes (default 1,8,32)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size; the median is shown")
    parser.add_argument("--python", default="python3",
                        help="remote interpreter for the one-command read (default python3 from the login PATH)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not sshd_available():
        print("needs OpenSSH sshd (apt-get install openssh-server)")
        return 2
    samples = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="llmtpu-bench-") as work:
        farm = SshdFarm(Path(work))
        try:
            started = time.perf_counter()
            boards = [farm.add(f"b{i:02d}") for i in range(max(sizes))]
            roots = [str(SAMPLES / samples[i % len(samples)]) for i in range(len(boards))]
            print(f"{len(boards)} sshd boards up in {time.perf_counter() - started:.2f} s "
                  f"(samples: {', '.join(samples)})")
            files = {str(SAMPLES / s): files_read(s) for s in samples}
            options = SSHOptions(store=HostKeyStore([farm.known_hosts], Path(work) / "own_known_hosts"),
                                 allow_agent=False, look_for_keys=False, identity_files=(str(farm.client_key),),
                                 python=args.python)
            fleet_doctor(farm, boards[:1], roots[:1], options)  # warm up: imports, page cache
            probe = subprocess.run(farm.ssh_argv(boards[0], "true"), capture_output=True, check=False)
            started = time.perf_counter()
            subprocess.run(farm.ssh_argv(boards[0], "true"), capture_output=True, check=False)
            print(f"one `ssh board true` (connection + login shell startup): {time.perf_counter() - started:.2f} s"
                  f"{'' if probe.returncode == 0 else ' (FAILED)'}")
            print(f"\n{'boards':>6} {'doctor wall':>12} {'ratio to 1':>10} {'round trips/host':>17} "
                  f"{'llmtpu CPU':>11} {'ssh cat loop':>13} {'loop/doctor':>11} {'files/board':>11}")
            base = None
            measured: dict[int, float] = {}
            for size in sizes:
                walls, cpus, trips = [], [], []
                for _ in range(args.runs):
                    wall, cpu, results = fleet_doctor(farm, boards[:size], roots[:size], options)
                    walls.append(wall)
                    cpus.append(cpu)
                    trips.extend(r.round_trips for r in results)
                wall = statistics.median(walls)
                base = base or wall
                measured[size] = wall
                reference = ssh_loop(farm, boards[:size], roots[:size], files, per_file=False)
                per_board = statistics.mean(len(files[r]) for r in roots[:size])
                print(f"{size:>6} {wall:>10.2f} s {wall / base:>9.2f}x {statistics.mean(trips):>9.1f} "
                      f"(max {max(trips)}) {statistics.median(cpus):>9.2f} s {reference:>11.2f} s "
                      f"{reference / wall:>10.1f}x {per_board:>11.1f}")
            per_file = ssh_loop(farm, boards[:1], roots[:1], files, per_file=True)
            print(f"\nreference by hand, 1 board, one `ssh host cat FILE` per file ({len(files[roots[0]])} files): "
                  f"{per_file:.2f} s")
            largest = max(sizes)
            if 1 in measured and largest > 1:
                ratio = measured[largest] / measured[1]
                verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
                print(f"target: {largest} boards <= {TARGET_RATIO:g}x one board: {ratio:.2f}x, {verdict}")
                print("(all boards share this machine's CPUs with llmtpu: the llmtpu CPU column is what the "
                      "fleet costs the machine running llmtpu; the rest of the wall is the boards' own sshd and "
                      "shell work, which real boards do in parallel on their own CPUs)")
        finally:
            farm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
