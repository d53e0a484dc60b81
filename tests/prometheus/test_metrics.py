"""`llmtpu metrics` and `llmtpu monitor`: the textfile format checked by Prometheus's own
promtool, atomic writes that never follow a planted link, the timer installed on a sysroot
through the operation journal (dry run, rerun, undo, an interrupted install undone), and the
example alert rules checked and unit-tested by promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import llmtpu.cli as cli_module
from llmtpu.doctor.checks import DoctorOptions
from llmtpu.metrics import Metrics, collect, write_textfile
from llmtpu.provision import monitor
from llmtpu.provision.monitor import SERVICE_PATH, TIMER_PATH, WANTS_LINK, MonitorInstall, MonitorSettings
from llmtpu.provision.operation import Journal
from llmtpu.target import LocalTarget
from tests.conftest import SAMPLES, copy_sample, require

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "prometheus" / "llmtpu-alerts.yml"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    require(shutil.which("promtool") is not None, "promtool (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_module.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()))
def test_every_sample_gives_metrics_promtool_accepts(sample: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "llmtpu.prom"
    code, _, err = run(capsys, "metrics", "--root", str(SAMPLES / sample), "--output", str(out))
    assert code == 0, err
    checked = promtool("check", "metrics", stdin=out.read_text())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["llmtpu.prom"]  # no temporary left behind


def test_series_come_only_from_what_was_read(sysroot) -> None:
    """The sample's own numbers; a chip file that is missing gives no series, never a 0."""
    root = sysroot("pcie-host-old-driver")
    text = collect(LocalTarget(str(root), name="rack2"), DoctorOptions()).text()
    assert 'llmtpu_check_ok{host="rack2",check="driver.date"} 0' in text
    assert 'llmtpu_check_status{host="rack2",check="driver.date",status="fail"} 1' in text
    assert 'llmtpu_verdict{host="rack2",verdict="fail"} 1' in text
    assert "llmtpu_driver_build_timestamp_seconds" in text and "llmtpu_kernel_build" not in text
    chip = next((root / "proc/bmsophon/card0").glob("bmsophon*"))
    assert "llmtpu_chip_temperature_celsius{" in text
    (chip / "chip_temp").unlink()
    assert "llmtpu_chip_temperature_celsius{" not in collect(LocalTarget(str(root)), DoctorOptions()).text()


def test_hostile_label_values_are_escaped(sysroot) -> None:
    root = sysroot("pcie-host-ok")
    chip = next((root / "proc/bmsophon/card0").glob("bmsophon*"))
    (chip / "status").write_text('Fault"} 1\nllmtpu_forged 1 \\')
    text = collect(LocalTarget(str(root)), DoctorOptions()).text()
    assert "\nllmtpu_forged" not in text
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_write_replaces_a_planted_link_and_never_follows_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    folder = tmp_path / "textfile"
    folder.mkdir()
    (folder / "llmtpu.prom").symlink_to(victim)
    metrics = Metrics()
    metrics.add("llmtpu_host_up", 1, host="b1")
    write_textfile(folder / "llmtpu.prom", metrics.text())
    assert victim.read_text() == "precious\n"
    assert not (folder / "llmtpu.prom").is_symlink()
    assert (folder / "llmtpu.prom").read_text().endswith('llmtpu_host_up{host="b1"} 1\n')


def test_metrics_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(SAMPLES / "pcie-host-ok")
    code, _, err = run(capsys, "metrics", "--root", root, "--output", str(tmp_path / "missing" / "x.prom"))
    assert code == 64 and "does not exist" in err
    code, _, err = run(capsys, "metrics", "--root", root, "--output", str(tmp_path / "x.txt"))
    assert code == 64 and ".prom" in err


def settings() -> MonitorSettings:
    return MonitorSettings(llmtpu="/usr/local/bin/llmtpu")


def test_monitor_install_dry_run_rerun_and_undo(sysroot, capsys: pytest.CaptureFixture[str]) -> None:
    root = sysroot("soc-board-ok")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    code, out, _ = run(capsys, "monitor", "install", "--root", str(root), "--llmtpu", "/usr/local/bin/llmtpu",
                       "--dry-run")
    assert code == 0 and "write /etc/systemd/system/llmtpu-metrics.timer" in out
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before  # the dry run changed nothing
    code, out, _ = run(capsys, "monitor", "install", "--root", str(root), "--llmtpu", "/usr/local/bin/llmtpu",
                       "--yes", "--interval", "120")
    assert code == 0, out
    timer = (root / TIMER_PATH.lstrip("/")).read_text()
    assert "OnUnitActiveSec=120" in timer and "WantedBy=timers.target" in timer
    service = (root / SERVICE_PATH.lstrip("/")).read_text()
    assert "ExecStart=/usr/local/bin/llmtpu metrics --output /var/lib/prometheus/node-exporter/llmtpu.prom" in service
    assert "TimeoutStartSec=120" in service
    assert os.readlink(root / WANTS_LINK.lstrip("/")) == TIMER_PATH
    code, out, _ = run(capsys, "monitor", "install", "--root", str(root), "--llmtpu", "/usr/local/bin/llmtpu",
                       "--yes", "--interval", "120")
    assert code == 0 and "nothing to do" in out
    (root / "var/lib/prometheus/node-exporter/llmtpu.prom").write_text("stale\n")
    code, out, _ = run(capsys, "monitor", "undo", "--root", str(root), "--yes")
    assert code == 0, out
    assert not (root / TIMER_PATH.lstrip("/")).exists() and not (root / SERVICE_PATH.lstrip("/")).exists()
    assert not os.path.lexists(root / WANTS_LINK.lstrip("/"))
    assert not (root / "var/lib/prometheus/node-exporter/llmtpu.prom").exists()
    code, out, _ = run(capsys, "monitor", "undo", "--root", str(root), "--yes")
    assert code == 0 and "nothing to undo" in out


def test_undo_puts_back_a_unit_that_was_there(sysroot) -> None:
    root = sysroot("soc-board-ok")
    unit = root / SERVICE_PATH.lstrip("/")
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/opt/site/own-exporter\n")
    target = LocalTarget(str(root))
    operation = MonitorInstall(settings())
    operation.apply(target, operation.plan(target), Journal(target))
    assert "llmtpu metrics" in unit.read_text()
    entry = monitor.pending_record(target)
    assert entry is not None
    MonitorInstall().undo(target, entry)
    assert unit.read_text() == "[Service]\nExecStart=/opt/site/own-exporter\n"


def test_an_interrupted_install_is_undone_from_its_journal(sysroot, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal record comes first: an install cut after the first unit leaves a state undo repairs."""
    root = sysroot("soc-board-ok")
    target = LocalTarget(str(root))
    operation = MonitorInstall(settings())
    plan = operation.plan(target)
    real_write = LocalTarget.write_atomic
    writes: list[str] = []

    def cut_after_one(self: LocalTarget, path: str, data: bytes, mode: int = 0o644, backup: bool = True):
        if path in (SERVICE_PATH, TIMER_PATH):
            writes.append(path)
            if len(writes) == 2:
                raise KeyboardInterrupt
        return real_write(self, path, data, mode, backup)

    monkeypatch.setattr(LocalTarget, "write_atomic", cut_after_one)
    with pytest.raises(KeyboardInterrupt):
        operation.apply(target, plan, Journal(target))
    monkeypatch.undo()
    assert (root / SERVICE_PATH.lstrip("/")).exists()
    entry = monitor.pending_record(target)
    assert entry is not None
    MonitorInstall().undo(target, entry)
    assert not (root / SERVICE_PATH.lstrip("/")).exists() and not (root / TIMER_PATH.lstrip("/")).exists()


@pytest.mark.parametrize("flag, value", [
    ("--textfile-dir", "/var/lib/x\nExecStartPre=/bin/sh -c evil"),
    ("--textfile-dir", "relative/dir"),
    ("--textfile-dir", "/var/lib/../../etc"),
    ("--llmtpu", "/usr/bin/llmtpu --root=/tmp"),
    ("--model", "x; rm"),
    ("--interval", "1"),
])
def test_values_written_into_a_unit_are_refused(flag: str, value: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_sample("soc-board-ok", tmp_path / "root")
    code, _, err = run(capsys, "monitor", "install", "--root", str(root), "--yes", flag, value)
    assert code == 64 and flag in err
    assert not (root / "etc/systemd/system/llmtpu-metrics.service").exists()


def test_a_planted_link_where_a_unit_goes_is_refused(sysroot) -> None:
    root = sysroot("soc-board-ok")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / SERVICE_PATH.lstrip("/")).symlink_to("/etc/passwd")
    from llmtpu.provision.operation import OperationError

    with pytest.raises(OperationError, match="not a file"):
        MonitorInstall(settings()).plan(LocalTarget(str(root)))


def test_alert_rules_pass_promtool() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(Path(__file__).with_name("alerts-test.yml")))
    assert tested.returncode == 0, tested.stdout + tested.stderr
