"""`llmtpu push` vs OpenSSH scp and rsync to loopback sshd boards, measured side by side.

Targets (issue 6): fresh push throughput >= 0.9x scp of the same bundle to the same board; a
no-change push no slower than `rsync -e ssh` of the same tree; resume sends only the missing
bytes; on-board verify about as fast as a plain `sha256sum` over ssh.
Every llmtpu run is the real command line in a fresh interpreter, timed like the tools it is
compared with. Files come from the page cache for every tool alike.
On-board verify (issue 17): `openssl dgst` where the board has it, else `sha256sum`; measured
interleaved on two boards of the same machine, one without a working openssl.
Run: .venv/bin/python benchmarks/push.py [--size-mb 1024] [--boards 8] [--verify-rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmtpu.provision.bundle import PAYLOAD, collect, create_bundle, load_manifest  # noqa: E402
from llmtpu.provision.push import BoardPush  # noqa: E402
from tests.push.helpers import DEST, board_of, board_without_openssl  # noqa: E402
from tests.push.test_push import CutAfter  # noqa: E402
from tests.sshd import SshdFarm  # noqa: E402

PUSH_CLI = ("import sys\nfrom llmtpu.clikit import Parser\nfrom llmtpu.provision import push_command\n"
            "p = Parser(prog='llmtpu'); c = p.add_subparsers(dest='command', parser_class=Parser)\n"
            "push_command.add_parser(c); a = p.parse_args(sys.argv[1:]); sys.exit(a.run(a))\n")


def make_tree(base: Path, size: int) -> None:
    """One big bmodel (90 %), a second model file, and a deploy/ folder of small files."""
    (base / "models" / "m").mkdir(parents=True)
    (base / "deploy").mkdir()
    for name, nbytes in (("models/m/big.bmodel", size * 9 // 10), ("models/m/embed.bin", size // 10)):
        with open(base / name, "wb") as handle:
            left = nbytes
            while left > 0:
                handle.write(os.urandom(min(left, 1 << 20)))
                left -= 1 << 20
    for i in range(40):
        (base / "deploy" / f"file{i}.py").write_bytes(os.urandom(20_000))


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def timed_push(argv: list[str]) -> tuple[float, float]:
    """Wall seconds of an `llmtpu push --json` run and the on-board verify seconds it reports."""
    start = time.perf_counter()
    proc = subprocess.run(argv, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, max(b["verify_seconds"] for b in json.loads(proc.stdout)["boards"])


def timed_all(argvs: list[list[str]]) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL) for a in argvs]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"failed: {proc.args}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--boards", type=int, default=8)
    parser.add_argument("--verify-rounds", type=int, default=3, help="interleaved rounds of openssl vs sha256sum")
    args = parser.parse_args()
    size = args.size_mb << 20
    work = Path(tempfile.mkdtemp(prefix="llmtpu-bench-"))
    farm = SshdFarm(work / "sshd")
    try:
        boards = [farm.add(f"b{i}") for i in range(args.boards)]
        make_tree(work / "src", size)
        start = time.perf_counter()
        bundle = work / "bundle"
        create_bundle(bundle, collect([work / "src"], None, []))
        create_s = time.perf_counter() - start
        manifest = load_manifest(bundle)
        total = manifest.total_bytes
        mib = total / 2**20
        payload = str(bundle / PAYLOAD)
        ssh = " ".join(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                        "-o", f"UserKnownHostsFile={farm.known_hosts}", "-i", str(farm.client_key)])

        def scp(board, dest: str, cipher: str | None = None) -> list[str]:
            return ["scp", "-q", "-r", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"UserKnownHostsFile={farm.known_hosts}", "-i", str(farm.client_key),
                    *(["-c", cipher] if cipher else []), "-P", str(board.port), payload,
                    f"{board.user}@127.0.0.1:{board.root}/{dest}"]

        def rsync(board, dest: str) -> list[str]:
            return ["rsync", "-a", "-e", f"{ssh} -p {board.port}", f"{payload}/",
                    f"{board.user}@127.0.0.1:{board.root}/{dest}/"]

        def push(selected) -> list[str]:
            hosts = ",".join(f"127.0.0.1:{b.port}" for b in selected)
            return [sys.executable, "-c", PUSH_CLI, "push", str(bundle), "--hosts", hosts, "--identity",
                    str(farm.client_key), "--known-hosts", str(farm.known_hosts), "--ssh-config", "/dev/null",
                    "--board-root", str(selected[0].root), "--json"]

        def clean(selected, dest: str) -> None:
            for b in selected:
                shutil.rmtree(Path(b.root) / dest, ignore_errors=True)

        one = boards[:1]
        rows: list[tuple[str, float, str]] = []
        scp_s = timed(scp(one[0], "scp"))
        clean(one, "scp")
        scp_gcm_s = timed(scp(one[0], "scp", "aes128-gcm@openssh.com"))
        clean(one, "scp")
        rsync_s = timed(rsync(one[0], "rsync"))
        rsync_again_s = timed(rsync(one[0], "rsync"))
        clean(one, "rsync")
        push_s, push_verify_s = timed_push(push(one))
        push_again_s = timed(push(one))
        rows += [("1 board: scp (default cipher)", scp_s, f"{mib / scp_s:.0f} MiB/s"),
                 ("1 board: scp -c aes128-gcm", scp_gcm_s, f"{mib / scp_gcm_s:.0f} MiB/s"),
                 ("1 board: rsync -a -e ssh", rsync_s, f"{mib / rsync_s:.0f} MiB/s"),
                 ("1 board: llmtpu push", push_s, f"{mib / push_s:.0f} MiB/s (incl. verify + fsync)"),
                 ("1 board: llmtpu push minus on-board verify", push_s - push_verify_s,
                  f"{mib / (push_s - push_verify_s):.0f} MiB/s"),
                 ("1 board: rsync, nothing changed", rsync_again_s, ""),
                 ("1 board: llmtpu push, nothing changed", push_again_s, "")]

        # Verify on the board vs a plain sha256sum of the same files over ssh.
        live = f"{one[0].root}{DEST}/current"
        sums = farm.ssh_argv(one[0], "sh", "-c", f"'cd {live} && find . -type f ! -path ./.llmtpu/\\* "
                             "-exec sha256sum {} +'")
        sha_s = timed(sums)
        clean(one, DEST.lstrip("/"))
        cut = CutAfter(one[0], total // 2)
        BoardPush(board_of(farm, one[0]), bundle, manifest, DEST, cut).run()
        staging = next((Path(one[0].root) / DEST.lstrip("/") / "releases").glob(".staging-*"))
        present = sum((staging / f.path).stat().st_size for f in manifest.files if (staging / f.path).exists())
        start = time.perf_counter()
        resumed = BoardPush(board_of(farm, one[0]), bundle, manifest, DEST).run()
        resume_s = time.perf_counter() - start
        missing = total - present
        rows += [("1 board: resume after a cut at 50 %", resume_s,
                  f"sent {resumed.bytes_sent / 2**20:.1f} MiB for {missing / 2**20:.1f} MiB missing"),
                 ("1 board: verify on board (in push)", resumed.verify_seconds, ""),
                 ("1 board: ssh sha256sum of the same files", sha_s, "")]
        clean(one, DEST.lstrip("/"))

        plain = board_without_openssl(farm, "no-openssl")
        verify: dict[str, list[float]] = {"openssl": [], "sha256sum": []}
        whole: dict[str, list[float]] = {"openssl": [], "sha256sum": []}
        for _ in range(args.verify_rounds):
            for b in (one[0], plain):
                clean([b], DEST.lstrip("/"))
                result = BoardPush(board_of(farm, b), bundle, manifest, DEST).run()
                verify[result.verify_tool].append(result.verify_seconds)
                whole[result.verify_tool].append(result.seconds)
        clean([one[0], plain], DEST.lstrip("/"))
        medians = {tool: (statistics.median(verify[tool]), statistics.median(whole[tool])) for tool in verify}
        rows += [(f"1 board: verify on board, {tool} (median of {args.verify_rounds})", v,
                  f"range {min(verify[tool]):.3f}-{max(verify[tool]):.3f} s; whole push {w:.3f} s")
                 for tool, (v, w) in medians.items()]

        fleet_scp_s = timed_all([scp(b, "scp", "aes128-gcm@openssh.com") for b in boards])
        clean(boards, "scp")
        fleet_rsync_s = timed_all([rsync(b, "rsync") for b in boards])
        clean(boards, "rsync")
        fleet_push_argv = [push([b]) for b in boards]  # each board has its own root: one command per board
        fleet_push_s = timed_all(fleet_push_argv)
        for b in boards:
            shutil.rmtree(Path(b.root) / DEST.lstrip("/"), ignore_errors=True)
        n = len(boards)
        rows += [(f"{n} boards: scp -c aes128-gcm, parallel", fleet_scp_s, f"{n * mib / fleet_scp_s:.0f} MiB/s"),
                 (f"{n} boards: rsync, parallel", fleet_rsync_s, f"{n * mib / fleet_rsync_s:.0f} MiB/s"),
                 (f"{n} boards: llmtpu push", fleet_push_s, f"{n * mib / fleet_push_s:.0f} MiB/s")]

        print(f"bundle: {len(manifest.files)} files, {mib:.0f} MiB; bundle create (copy + sha256) {create_s:.2f} s")
        for label, seconds, note in rows:
            print(f"{label:45} {seconds:8.3f} s  {note}")
        ratios = {
            "push_vs_scp_default_throughput": scp_s / push_s,
            "push_vs_scp_gcm_throughput": scp_gcm_s / push_s,
            "push_vs_rsync_throughput": rsync_s / push_s,
            "push_without_verify_vs_scp_gcm_throughput": scp_gcm_s / (push_s - push_verify_s),
            "nochange_push_vs_rsync_time": push_again_s / rsync_again_s,
            "resume_bytes_vs_missing": resumed.bytes_sent / missing if missing else 0.0,
            "verify_vs_sha256sum_time": resumed.verify_seconds / sha_s,
            "verify_openssl_vs_sha256sum_time": medians["openssl"][0] / medians["sha256sum"][0],
            "push_openssl_vs_sha256sum_time": medians["openssl"][1] / medians["sha256sum"][1],
            f"fleet{n}_push_vs_scp_gcm_throughput": fleet_scp_s / fleet_push_s,
            f"fleet{n}_push_vs_rsync_throughput": fleet_rsync_s / fleet_push_s,
        }
        print(json.dumps({k: round(v, 3) for k, v in ratios.items()}, indent=1))
        print("targets: push_vs_scp >= 0.9, nochange_push_vs_rsync_time <= 1.0, resume_bytes_vs_missing <= 1.05")
    finally:
        farm.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
