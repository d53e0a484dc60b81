"""`llmtpu play fresh-soc-board` on sysroot boards over real sshd: plans per host, stops for the
manual steps (reflash, reboot), continues on rerun, and ends in a passing doctor on every board."""

from __future__ import annotations

import json
from pathlib import Path

from tests.provision_heaps.test_heaps import install_stand_in

HEAP = "sys/kernel/debug/ion/bm_npu_heap_dump/total_mem"


def test_fresh_soc_board_over_ssh_ends_in_a_passing_doctor(sshd_farm, home: Path, tmp_path: Path, sysroot,
                                                           cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # plan lines unwrapped, so they can be searched
    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    small_heap = sysroot("soc-board-ok")
    (small_heap / HEAP).write_text(f"{3950 << 20}\n")
    install_stand_in(small_heap)
    old_kernel = sysroot("soc-board-old-kernel")
    install_stand_in(old_kernel)
    boards = {"airbox-1": (sshd_farm.add("airbox-1"), small_heap),
              "airbox-2": (sshd_farm.add("airbox-2"), old_kernel)}
    inventory = tmp_path / "boards.ini"
    inventory.write_text("[soc]\n" + "".join(
        f"{name} ansible_host=127.0.0.1 ansible_port={board.port} ansible_user={board.user} root={root} "
        f"ansible_ssh_private_key_file={sshd_farm.client_key}\n" for name, (board, root) in boards.items()))
    play = ["play", "fresh-soc-board", "--inventory", str(inventory), "--state-dir", str(tmp_path / "state"),
            "--timeout", "120"]

    assert cli(*play)[0] == 64  # many hosts: --dry-run or --yes, never a silent guess
    code, out, _ = cli(*play, "--dry-run")
    assert code == 0 and "-npu 7615 -vpu 3072 -vpp 3072" in out and "planned" in out
    assert (small_heap / "boot/emmcboot.itb").read_bytes() == b""  # the sample's empty image, untouched

    code, out, _ = cli(*play, "--yes")
    assert code == 1, out  # both stopped for a manual step
    assert "reboot the machine now" in out and "flash a newer SDK image" in out

    (small_heap / HEAP).write_text(f"{7615 << 20}\n")  # airbox-1 rebooted with the new layout
    (old_kernel / "proc/sys/kernel/version").write_text("#1 SMP Thu Aug 15 10:20:28 CST 2024\n")  # reflashed
    code, out, _ = cli(*play, "--yes")
    assert code == 1, out  # airbox-1 complete; airbox-2 now needs its heaps resized and a reboot
    assert "complete" in out and "condition not met" in out  # re-verified, not "done earlier" (issue 14.6)

    (old_kernel / HEAP).write_text(f"{7615 << 20}\n")
    code, out, _ = cli(*play, "--yes")
    assert code == 0, out

    code, out, _ = cli("doctor", "--inventory", str(inventory), "--json")
    document = json.loads(out)
    for host in document["hosts"]:
        statuses = {c["id"]: c["status"] for c in host["report"]["checks"]}
        assert "fail" not in statuses.values(), (host["name"], statuses)


def test_offline_push_playbook_deploys_the_bundle_on_every_board(sshd_farm, home: Path, tmp_path: Path, sysroot,
                                                                cli, monkeypatch) -> None:
    from tests.push.helpers import make_tree

    monkeypatch.setenv("COLUMNS", "250")
    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    tree = make_tree(tmp_path / "LLM-TPU", big=1 << 16)
    bundle = tmp_path / "bundle"
    assert cli("bundle", "create", str(bundle), "--from", str(tree), "--json")[0] == 0
    roots = {"pcie-1": sysroot("pcie-host-ok"), "soc-1": sysroot("soc-board-ok")}
    boards = {name: sshd_farm.add(name) for name in roots}
    inventory = tmp_path / "boards.ini"
    inventory.write_text("[boards]\n" + "".join(
        f"{name} ansible_host=127.0.0.1 ansible_port={b.port} ansible_user={b.user} root={roots[name]} "
        f"ansible_ssh_private_key_file={sshd_farm.client_key}\n" for name, b in boards.items()))
    play = ["play", "offline-push", "--inventory", str(inventory), "--state-dir", str(tmp_path / "state"),
            "--timeout", "120"]
    code, out, _ = cli(*play, "--dry-run")
    assert code == 2 and "needs --set bundle=..." in out  # the variable is required
    code, out, _ = cli(*play, "--dry-run", "--set", f"bundle={bundle}")
    assert code == 0 and "only what differs is sent" in out
    code, out, _ = cli(*play, "--yes", "--set", f"bundle={bundle}")
    assert code == 0, out
    for root in roots.values():
        assert (root / "data/llmtpu/current").is_symlink()

    empty = sysroot(None)
    board = sshd_farm.add("not-a-board")
    other = tmp_path / "other.ini"
    other.write_text(f"x ansible_host=127.0.0.1 ansible_port={board.port} ansible_user={board.user} root={empty} "
                     f"ansible_ssh_private_key_file={sshd_farm.client_key}\n")
    code, out, _ = cli("play", "offline-push", "--inventory", str(other), "--state-dir", str(tmp_path / "s2"),
                       "--yes", "--set", f"bundle={bundle}")
    assert code == 2 and "this is a none; offline-push is for soc-board, pcie-host" in out


def test_report_over_ssh_writes_one_archive_per_host(sshd_farm, home: Path, tmp_path: Path, sysroot, cli) -> None:
    import tarfile

    (home / ".ssh" / "known_hosts").symlink_to(sshd_farm.known_hosts)
    roots = {"pcie-1": sysroot("pcie-host-old-driver"), "soc-1": sysroot("soc-board-old-kernel")}
    boards = {name: sshd_farm.add(name) for name in roots}
    dead = sshd_farm.add("dead")
    sshd_farm.stop(dead)
    inventory = tmp_path / "boards.ini"
    inventory.write_text("".join(
        f"{name} ansible_host=127.0.0.1 ansible_port={b.port} ansible_user={b.user} root={roots.get(name, '/')} "
        f"ansible_ssh_private_key_file={sshd_farm.client_key}\n" for name, b in [*boards.items(), ("dead", dead)]))
    code, out, _ = cli("report", "--inventory", str(inventory), "-o", str(tmp_path / "fleet.tar.gz"),
                       "--connect-timeout", "3")
    assert code == 3 and "dead: not collected" in out
    for name in roots:
        with tarfile.open(tmp_path / f"fleet-{name}.tar.gz") as archive:
            summary = next(m for m in archive.getmembers() if m.name.endswith("summary.md"))
            text = archive.extractfile(summary).read().decode()  # type: ignore[union-attr]
        assert ("20230914" in text) if name == "pcie-1" else ("Nov 18" in text), text
