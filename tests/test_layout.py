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


def _project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (function-level imports too)."""
    import ast

    modules: dict[str, Path] = {}
    for folder, _, files in os.walk(REPO / "llmtpu", followlinks=True):
        for file in files:
            if file.endswith(".py"):
                path = Path(folder) / file
                parts = path.relative_to(REPO).with_suffix("").parts
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycle_among_the_projects_modules() -> None:
    graph = _project_imports()
    assert len(graph) > 50
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            assert state.get(other) != 1, "import cycle: " + " -> ".join([*path, name, other])
            if other not in state:
                visit(other, [*path, name])
        state[name] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_nothing_imports_the_cli_assembler() -> None:
    """llmtpu.cli imports every command; commands use the leaf llmtpu.clikit instead."""
    users = sorted(m for m, deps in _project_imports().items() if "llmtpu.cli" in deps and m != "llmtpu.__main__")
    assert users == []
