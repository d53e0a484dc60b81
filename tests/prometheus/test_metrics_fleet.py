"""`llmtpu metrics --inventory`: one textfile for a fleet of real sshd boards, each series
labelled with its host; a board that is down is `llmtpu_host_up 0`, exit 3; promtool accepts it."""

from __future__ import annotations

from pathlib import Path

from tests.fleet.conftest import SAMPLES
from tests.prometheus.test_metrics import promtool

BOARDS = [("rack1", "pcie-host-ok"), ("rack2", "pcie-host-old-driver"), ("airbox", "soc-board-downclocked"),
          ("dead", "soc-board-ok")]


def test_one_file_for_the_fleet(sshd_farm, home: Path, tmp_path: Path, cli) -> None:
    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    lines = []
    for name, sample in BOARDS:
        board = sshd_farm.add(name)
        lines.append(f"{name} ansible_host=127.0.0.1 ansible_port={board.port} ansible_user={board.user} "
                     f"root={SAMPLES / sample} ansible_ssh_private_key_file={sshd_farm.client_key}\n")
        if name == "dead":
            sshd_farm.stop(board)
    inventory = tmp_path / "boards.ini"
    inventory.write_text("[boards]\n" + "".join(lines))
    out = tmp_path / "fleet.prom"
    code, _, err = cli("metrics", "--inventory", str(inventory), "--output", str(out), "--connect-timeout", "3")
    assert code == 3 and "dead" in err
    text = out.read_text()
    assert 'llmtpu_host_up{host="dead"} 0' in text and 'llmtpu_host_up{host="rack1"} 1' in text
    assert 'llmtpu_check_ok{host="rack2",check="driver.date"} 0' in text
    assert 'llmtpu_check_ok{host="rack1",check="driver.date"} 1' in text
    assert 'llmtpu_soc_clock_hertz{host="airbox",clock="tpll_clock"} 750000000' in text
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
