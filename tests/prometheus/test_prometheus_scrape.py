"""The real thing: Debian's prometheus-node-exporter reads `llmtpu metrics`' file with its
textfile collector, a real prometheus on 127.0.0.1 scrapes it (and loads the example alert
rules), and a PromQL query through Prometheus's HTTP API returns the sample machine's values.
Every wait is bounded; both daemons are stopped by the test."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import llmtpu.cli as cli_module
from tests.conftest import SAMPLES, require
from tests.prometheus.test_metrics import RULES

DEADLINE = 90.0  # seconds for each daemon to come up and for the first scrape (2 loaded cores)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return str(response.read().decode())


@dataclass
class Daemons:
    textfiles: Path
    api_port: int
    processes: dict[Path, subprocess.Popen[bytes]]  # log file -> process


def wait_for(what: str, probe: Callable[[], list[dict]], daemons: Daemons) -> list[dict]:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        for log, process in daemons.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{log.stem} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    logs = "; ".join(f"{log.stem}: {log.read_text()[-1000:]}" for log in daemons.processes)
    pytest.fail(f"{what}: nothing after {DEADLINE:g} s: {logs}")


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """node_exporter on a textfile folder, prometheus scraping it every second: (folder, API port)."""
    exporter_bin, prometheus_bin = shutil.which("prometheus-node-exporter"), shutil.which("prometheus")
    require(exporter_bin is not None and prometheus_bin is not None,
            "prometheus and prometheus-node-exporter (apt-get install prometheus prometheus-node-exporter)")
    assert exporter_bin is not None and prometheus_bin is not None
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    exporter_port, api_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    exporter = start([exporter_bin, f"--web.listen-address=127.0.0.1:{exporter_port}",
                      "--collector.disable-defaults", "--collector.textfile",
                      f"--collector.textfile.directory={textfiles}"], tmp_path / "exporter.log")
    prometheus = start([prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{api_port}", "--web.enable-lifecycle"],
                       tmp_path / "prometheus.log")
    try:
        yield Daemons(textfiles, api_port, {tmp_path / "exporter.log": exporter,
                                            tmp_path / "prometheus.log": prometheus})
    finally:
        stop(prometheus)
        stop(exporter)


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    document = json.loads(fetch(url))
    assert document["status"] == "success", document
    return list(document["data"]["result"])


def test_prometheus_answers_for_the_sample_machine(daemons: Daemons, capsys: pytest.CaptureFixture[str]) -> None:
    textfiles, port = daemons.textfiles, daemons.api_port
    code = cli_module.main(["metrics", "--root", str(SAMPLES / "pcie-host-old-driver"),
                            "--output", str(textfiles / "llmtpu.prom")])
    assert code == 0, capsys.readouterr().err
    promql = 'llmtpu_check_ok{check="driver.date"}'
    rows = wait_for("prometheus query", lambda: query(port, promql), daemons)
    assert [row["value"][1] for row in rows] == ["0"]  # the sample's driver predates 20240110
    assert rows[0]["metric"]["job"] == "node"
    failing = query(port, 'llmtpu_check_status{status="fail"} == 1')
    assert {row["metric"]["check"] for row in failing} == {"driver.date"}
    assert [r["value"][1] for r in query(port, 'llmtpu_chip_temperature_celsius')] == ["47"]
    rules = json.loads(fetch(f"http://127.0.0.1:{port}/api/v1/rules"))
    names = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
    assert {"LlmtpuCheckFailing", "LlmtpuChipNotActive", "LlmtpuDownclockLost"} <= names
