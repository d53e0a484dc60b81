"""Real OpenSSH sshd "boards" on 127.0.0.1 for tests: own host key, own port, own sysroot each.

Each board is an sshd child of the test process, started with its own config and stopped by
PID. The client key and one known_hosts file are shared by all boards of a farm. sshd runs
as the current user (root in CI); logins are as that user. See the test-infra notes for why
each config line is there (UsePAM no, StrictModes no, /run/sshd as root).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path), "-C", comment], check=True)


@dataclass
class Board:
    """One sshd: where it listens, its sysroot, its host key, its process."""

    name: str
    port: int
    root: Path
    host_key: Path
    config: Path
    log: Path
    host: str = "127.0.0.1"
    user: str = field(default_factory=getpass.getuser)
    process: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts_line(self) -> str:
        key = (self.host_key.with_suffix(".pub")).read_text().split()[:2]
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {key[0]} {key[1]}\n"


class SshdFarm:
    """Start and stop sshd boards under one work folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.client_key = workdir / "client_ed25519"
        keygen(self.client_key, "llmtpu-tests")
        self.authorized_keys = workdir / "authorized_keys"
        shutil.copy(self.client_key.with_suffix(".pub"), self.authorized_keys)
        self.authorized_keys.chmod(0o600)
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text("")
        self.boards: list[Board] = []
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def add(self, name: str, root: Path | None = None, trusted: bool = True, extra_config: str = "",
            host: str = "127.0.0.1", port: int | None = None) -> Board:
        """Create and start a board; ``trusted`` adds its key to the farm's known_hosts."""
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        if root is None:
            root = folder / "root"
            root.mkdir(exist_ok=True)
        host_key = folder / "host_ed25519"
        if not host_key.exists():
            keygen(host_key, f"board-{name}")
        board = Board(name, port or free_port(), root, host_key, folder / "sshd_config", folder / "sshd.log", host)
        board.config.write_text(
            f"Port {board.port}\n"
            f"ListenAddress {host}\n"
            f"HostKey {host_key}\n"
            f"PidFile {folder}/sshd.pid\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
            f"SetEnv LLMTPU_SYSROOT={root} LLMTPU_BOARD={name}\n"
            + extra_config
        )
        self.start(board)
        if trusted:
            with self.known_hosts.open("a") as handle:
                handle.write(board.known_hosts_line)
        self.boards.append(board)
        return board

    def start(self, board: Board, prefix: list[str] | None = None) -> None:
        """Start the board's sshd (``prefix`` e.g. ``ip netns exec NS``) and wait until it listens.

        Only log text written by this start counts: a restarted board's log still holds the
        previous run's "Server listening" line.
        """
        offset = board.log.stat().st_size if board.log.exists() else 0
        log = board.log.open("ab")
        board.process = subprocess.Popen([*(prefix or []), SSHD, "-D", "-e", "-f", str(board.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if board.process.poll() is not None:
                raise RuntimeError(f"sshd for {board.name} exited: {board.log.read_text()[-2000:]}")
            if "Server listening on" in board.log.read_bytes()[offset:].decode(errors="replace"):
                return
            time.sleep(0.02)
        raise RuntimeError(f"sshd for {board.name} did not start: {board.log.read_text()[-2000:]}")

    def stop(self, board: Board) -> None:
        if board.process is not None and board.process.poll() is None:
            board.process.send_signal(signal.SIGCONT)
            board.process.terminate()
            try:
                board.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                board.process.kill()
                board.process.wait()
        board.process = None

    def pause(self, board: Board) -> None:
        """Freeze the listening sshd: TCP connects still succeed (kernel backlog) but no banner
        ever comes. Sessions already logged in keep running (they are other processes)."""
        assert board.process is not None
        board.process.send_signal(signal.SIGSTOP)

    def resume(self, board: Board) -> None:
        assert board.process is not None
        board.process.send_signal(signal.SIGCONT)

    def new_host_key(self, board: Board) -> None:
        """Give the board a different host key (a re-flashed board, or an impostor) and restart it."""
        self.stop(board)
        for path in (board.host_key, board.host_key.with_suffix(".pub")):
            path.unlink()
        keygen(board.host_key, f"board-{board.name}-new")
        self.start(board)

    def ssh_argv(self, board: Board, *command: str) -> list[str]:
        """The OpenSSH client command line for a board, strict about its host key."""
        return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-i", str(self.client_key),
                "-p", str(board.port), f"{board.user}@{board.host}", *command]

    def close(self) -> None:
        for board in self.boards:
            self.stop(board)
