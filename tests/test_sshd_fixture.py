"""The sshd farm itself: a board answers OpenSSH with strict host keys, and stops by PID."""

from __future__ import annotations

import subprocess


def test_board_answers_with_its_sysroot(sshd_farm, sysroot) -> None:
    board = sshd_farm.add("b1", root=sysroot("soc-board-ok"))
    out = subprocess.run(sshd_farm.ssh_argv(board, 'cat "$LLMTPU_SYSROOT/proc/sys/kernel/version"'),
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "#1 SMP Thu Aug 15 10:20:28 CST 2024"


def test_untrusted_board_is_refused_by_openssh(sshd_farm) -> None:
    board = sshd_farm.add("stranger", trusted=False)
    out = subprocess.run(sshd_farm.ssh_argv(board, "true"), capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 255 and "Host key verification failed" in out.stderr
    sshd_farm.stop(board)
    assert board.process is None
