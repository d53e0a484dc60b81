"""The per-card/per-chip view (issue 12 item 4): data from each sample, a Fault chip, the table."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from llmtpu.doctor.checks import DoctorOptions, Facts, chip_rows
from llmtpu.doctor.render import render_cards
from llmtpu.doctor.report import chips_json
from llmtpu.target import LocalTarget


def rows_of(root) -> list:
    return chip_rows(Facts(LocalTarget(str(root)), DoctorOptions()))


def test_pcie_card_rows_carry_status_temperature_heap_clock_board_serial(sysroot) -> None:
    (row,) = rows_of(sysroot("pcie-host-ok"))
    assert (row.card, row.chip, row.board_type, row.serial) == ("card0", "bmsophon0", "SC7+", "HQDZKM5BAJACJ0001")
    assert (row.status, row.temp_c, row.tpu_mhz, row.heap_mib, row.npu_usage_pct) == ("Active", 47, 1000, 10752, 0)
    assert row.problems == ()
    document = json.loads(json.dumps(chips_json([row])))
    assert document[0]["status"] == "Active" and document[0]["problems"] == []


def test_soc_board_row_from_its_own_files(sysroot) -> None:
    (row,) = rows_of(sysroot("soc-board-downclocked"))
    assert row.card is None and row.chip == "bm-tpu0" and row.board_type == "bm1684x_sm7_airbox.dtb"
    assert (row.temp_c, row.tpu_mhz, row.heap_mib, row.heap_used_mib) == (46, 750, 7615, 0)


def test_fault_chip_is_red_and_unread_files_are_named(sysroot) -> None:
    root = sysroot("pcie-host-ok")
    (root / "proc/bmsophon/card0/bmsophon0/status").write_text("Fault\n")
    (root / "proc/bmsophon/card0/bmsophon0/chip_temp").unlink()
    (row,) = rows_of(root)
    assert row.status == "Fault" and row.temp_c is None
    assert any("chip_temp: missing" in p for p in row.problems)
    out = io.StringIO()
    render_cards([row], out)
    text = out.getvalue()
    assert "Fault" in text and "HQDZKM5BAJACJ0001" in text
    assert "not read: /proc/bmsophon/card0/bmsophon0/chip_temp" in text


def test_no_device_has_no_rows(sysroot) -> None:
    assert rows_of(sysroot(None)) == []
    out = io.StringIO()
    render_cards([], out)
    assert "no Sophgo cards" in out.getvalue()


def test_doctor_cards_flag_prints_the_chip_table() -> None:
    root = Path(__file__).parent / "samples" / "pcie-host-ok"
    run = subprocess.run([sys.executable, "-m", "llmtpu", "doctor", "--root", str(root), "--cards"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode in (0, 1), run.stderr
    assert "bmsophon0" in run.stdout and "card0" in run.stdout
    plain = subprocess.run([sys.executable, "-m", "llmtpu", "doctor", "--root", str(root)],
                           capture_output=True, text=True, timeout=120)
    assert "bmsophon0" not in plain.stdout
