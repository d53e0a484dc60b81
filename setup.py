"""Build guard: llmtpu/doctor, llmtpu/provision, ... are symlinks to the top-level folders.

A checkout that turned those links into small text files (Windows' default, some archive tools)
would otherwise build a wheel holding only the core modules, silently. All metadata is in
pyproject.toml; this file only refuses such a tree with one line saying what to do.
"""

import os

from setuptools import setup

LINKED = ("doctor", "provision", "runtime", "playbooks", "csrc")

here = os.path.dirname(os.path.abspath(__file__))
for name in LINKED:
    if not os.path.isfile(os.path.join(here, "llmtpu", name, "__init__.py" if name != "csrc" else "engine.cpp")):
        raise SystemExit(f"llmtpu/{name} is not a link to ../{name}: this checkout lost its symlinks; clone "
                         "with symlinks enabled (git config core.symlinks true) and build again")
setup()
