"""The package layout has one import name per module and fails loudly when its links are lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINKED = ("doctor", "provision", "runtime", "playbooks", "csrc")


def test_each_code_folder_is_linked_into_the_package() -> None:
    for name in LINKED:
        link = REPO / "llmtpu" / name
        assert link.is_symlink() and os.readlink(link) == f"../{name}", name


def test_top_level_import_names_are_refused() -> None:
    """`import doctor` from the repo root would be a second module object with other classes."""
    for name in ("doctor", "provision", "runtime", "playbooks"):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode != 0, name
        assert f"import llmtpu.{name}, not {name}" in done.stderr, done.stderr


def test_a_checkout_without_symlinks_refuses_to_build(tmp_path: Path) -> None:
    tree = tmp_path / "checkout"
    shutil.copytree(REPO, tree, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__", "tests",
                                                  "benchmarks"))
    for name in LINKED:  # what git writes for a link with core.symlinks=false
        link = tree / "llmtpu" / name
        link.unlink()
        link.write_text(f"../{name}")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "this checkout lost its symlinks" in done.stdout + done.stderr
    assert not list(tmp_path.glob("dist/*.whl"))
