"""A small LLM-TPU-like tree, bundles built from it, and boards of the sshd farm as push targets."""

from __future__ import annotations

import os
import random
from pathlib import Path

from llmtpu.provision.bundle import collect, create_bundle
from llmtpu.provision.push import Board

DEST = "/data/llmtpu"


def make_tree(base: Path, big: int = 2 << 20, seed: int = 1) -> Path:
    """models/ (one big bmodel, a config), deploy/ (a script, a lib and its in-tree link)."""
    rng = random.Random(seed)
    (base / "models" / "qwen").mkdir(parents=True)
    (base / "models" / "qwen" / "qwen.bmodel").write_bytes(rng.randbytes(big))
    (base / "models" / "qwen" / "config.json").write_text(f'{{"seed": {seed}}}\n')
    (base / "deploy" / "lib").mkdir(parents=True)
    run = base / "deploy" / "run.sh"
    run.write_text("#!/bin/sh\necho run\n")
    run.chmod(0o755)
    (base / "deploy" / "lib" / "libchat.so").write_bytes(rng.randbytes(40_000))
    os.symlink("libchat.so", base / "deploy" / "lib" / "libchat.so.1")
    return base


def make_bundle(tmp: Path, name: str = "bundle", big: int = 2 << 20, seed: int = 1) -> Path:
    tree = make_tree(tmp / f"{name}-src", big, seed)
    out = tmp / name
    create_bundle(out, collect([tree], None, []), arch="soc")
    return out


def board_of(farm: object, sshd_board: object) -> Board:
    return Board("127.0.0.1", sshd_board.port, sshd_board.user, str(farm.client_key),  # type: ignore[attr-defined]
                 str(farm.known_hosts), "/dev/null", str(sshd_board.root))  # type: ignore[attr-defined]


def live(sshd_board: object) -> Path:
    return Path(str(sshd_board.root)) / DEST.lstrip("/") / "current"  # type: ignore[attr-defined]


def board_without_openssl(sshd_farm, name: str):
    """A board whose PATH has every tool but a working openssl, so push falls back to sha256sum."""
    shim = sshd_farm.workdir / f"{name}-bin"
    shim.mkdir()
    (shim / "openssl").write_text("#!/bin/sh\nexit 127\n")
    (shim / "openssl").chmod(0o755)
    command = f'PATH={shim}:/usr/local/bin:/usr/bin:/bin; export PATH; eval "$SSH_ORIGINAL_COMMAND"'
    return sshd_farm.add(name, extra_config=f"ForceCommand {command}\n")
