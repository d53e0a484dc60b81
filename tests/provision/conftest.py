"""Fixtures for the provisioning tests: test-built debs, tree fingerprints, a CLI with our commands."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.provision.debfactory import build_release, make_runnable

#: llmtpu's own state (journal, kept debs, snapshots, dpkg log of its runs) is left by undo on
#: purpose: it is the history. Everything else must come back byte for byte.
STATE = "var/lib/llmtpu"


@pytest.fixture
def release(tmp_path: Path):
    """Factory: release("0.5.1") -> a folder holding the three test-built debs of that release."""
    require(shutil.which("dpkg-deb") is not None and shutil.which("dpkg") is not None, "dpkg is not installed")

    def make(version: str) -> Path:
        out = tmp_path / f"debs-{version}"
        if not out.exists():
            build_release(tmp_path / f"build-{version}", out, version)
        return out

    return make


@pytest.fixture
def debroot(sysroot):
    """Factory: debroot("pcie-host-old-driver") -> a sample sysroot with a /bin/sh, as dpkg needs.

    dpkg --root runs the maintainer scripts chrooted into the root: that needs a shell in the
    tree (a static busybox here) and root, or a user namespace when the tests run unprivileged."""
    require(shutil.which("busybox") is not None, "busybox is not installed (apt-get install busybox-static)")
    require(os.geteuid() == 0 or subprocess.run(["unshare", "--map-root-user", "true"], capture_output=True,
                                                check=False).returncode == 0,
            "not root and no user namespaces (unshare --map-root-user): dpkg cannot chroot into a sysroot")

    def make(name: str | None) -> Path:
        return make_runnable(sysroot(name))

    return make


def fingerprint(root: Path) -> dict[str, tuple]:
    """Every path under root: kind, permission bits, and content or link text."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == STATE or rel_dir.startswith(STATE + "/"):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel == STATE:
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), Path(full).read_bytes())
    return found


def cli(argv: list[str]) -> int:
    """`llmtpu ARGV` in this process: its exit code (usage errors are 64, as on the command line)."""
    from llmtpu.cli import main

    return main(argv)
