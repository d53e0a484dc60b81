"""Every inventory Ansible reads, llmtpu reads the same: hosts, groups and merged host vars
agree with real `ansible-inventory -i FILE --list` (ansible-core from PyPI, the test extra).
The corpus is Ansible's documented examples plus tricky ones (inventories/valid); the ones
Ansible refuses (inventories/invalid) llmtpu refuses too, with a line naming the file."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llmtpu.inventory import Inventory, InventoryError, _plain, _text, load_inventory
from tests.conftest import require

CORPUS = Path(__file__).parent / "inventories"
VALID = sorted((CORPUS / "valid").iterdir())
INVALID = sorted((CORPUS / "invalid").iterdir())
ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")


def ansible_list(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """`ansible-inventory --list` with no user config, unparsed inventories an error."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "ANSIBLE_HOME": str(home),
           "ANSIBLE_CONFIG": str(home / "ansible.cfg"), "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
           "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True", "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "LC_ALL": "C.UTF-8"}
    return subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(path), "--list"], capture_output=True, text=True,
                          env=env, timeout=240, check=False)


@pytest.fixture(scope="module")
def listings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    require(ANSIBLE_INVENTORY.exists() or shutil.which("ansible-inventory") is not None,
            "ansible-inventory (pip install ansible-core)")
    home = tmp_path_factory.mktemp("ansible-home")
    (home / "ansible.cfg").write_text("[defaults]\n")
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = pool.map(lambda p: (p.name, ansible_list(p, home)), VALID + INVALID)
        return dict(runs)


def ansible_view(listing: dict[str, Any]) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """(group -> all its hosts, transitively; host -> merged vars as text) from --list JSON."""
    def members(group: str, seen: frozenset[str] = frozenset()) -> set[str]:
        body = listing.get(group, {})
        found = set(body.get("hosts", []))
        for child in body.get("children", []):
            if child not in seen:
                found |= members(child, seen | {child})
        return found

    groups = {g: sorted(members(g)) for g in listing if g not in ("_meta", "all")}
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    hosts = members("all")
    return ({g: m for g, m in groups.items() if m},
            {h: {k: _text(_plain(v)) for k, v in hostvars.get(h, {}).items()} for h in sorted(hosts)})


def llmtpu_view(inv: Inventory) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    groups = {g: sorted(inv.members(g)) for g in inv.groups if g != "all"}
    return ({g: m for g, m in groups.items() if m}, {h: inv.host_vars(h) for h in sorted(inv.hosts)})


def test_the_corpus_is_big_enough() -> None:
    assert len(VALID) >= 20 and len(INVALID) >= 5


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_llmtpu_reads_what_ansible_reads(path: Path, listings: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = listings[path.name]
    assert run.returncode == 0, f"ansible-inventory refused {path.name}: {run.stderr}"
    listing = json.loads(run.stdout)
    expected = ansible_view(listing)
    assert llmtpu_view(load_inventory(path)) == expected
    # the same inventory through Ansible and a pipe: `ansible-inventory --list | llmtpu -i -`
    assert llmtpu_view(load_inventory("-", io.StringIO(run.stdout))) == expected


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_llmtpu_refuses_what_ansible_refuses(path: Path, listings: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert listings[path.name].returncode != 0, f"ansible-inventory accepted {path.name}"
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(path) in str(caught.value)
