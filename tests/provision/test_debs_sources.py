"""`llmtpu debs plan|apply` takes the shared source options (--debs, --mirror, --deb-version,
--scripts-on-this-machine): without --debs it plans the download, and fetches only after the yes."""

from __future__ import annotations

import json

import pytest

from llmtpu.cli import build_parser
from llmtpu.provision.registry import debs_source_from_args, operation_for
from llmtpu.target import LocalTarget
from tests.provision.conftest import fingerprint
from tests.provision.http_server import FileServer
from tests.provision.test_offline_flows import Llmtpu, files, llmtpu, mirror  # noqa: F401 (fixtures)


def test_debs_dry_run_with_a_mirror_plans_the_download_and_fetches_nothing(sysroot, llmtpu: Llmtpu,  # noqa: F811
                                                                          mirror: FileServer) -> None:  # noqa: F811
    root = sysroot("pcie-host-old-driver")
    before = fingerprint(root)
    for action in (["plan"], ["apply", "--dry-run"]):
        result = llmtpu("debs", *action, "--root", str(root), "--mirror", mirror.url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"(--root {root})" in result.stdout.splitlines()[0]
        assert "download sophon-driver_0.5.1_amd64.deb, " in result.stdout and mirror.url in result.stdout
    assert mirror.requests == [] and llmtpu.dfss_calls() == [] and llmtpu.downloads() == []
    assert fingerprint(root) == before


def test_debs_apply_with_a_mirror_fetches_after_the_yes_then_installs(debroot, llmtpu: Llmtpu,  # noqa: F811
                                                                     mirror: FileServer) -> None:  # noqa: F811
    root = debroot("pcie-host-old-driver")
    refused = llmtpu("debs", "apply", "--root", str(root), "--mirror", mirror.url)  # no terminal, no --yes
    assert refused.returncode == 64 and mirror.requests == [], refused.stdout + refused.stderr
    result = llmtpu("debs", "apply", "--root", str(root), "--mirror", mirror.url, "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout and llmtpu.dfss_calls() == []
    assert any(r.startswith("/sophon-driver_0.5.1_amd64.deb") for r in mirror.requests), mirror.requests
    doctor = json.loads(llmtpu("doctor", "--root", str(root), "--json").stdout)
    assert {c["id"]: c["status"] for c in doctor["checks"]}["driver.date"] == "ok"


def test_debs_without_a_source_plans_dfss_and_calls_it_not(sysroot, llmtpu: Llmtpu) -> None:  # noqa: F811
    root = sysroot("pcie-host-old-driver")
    result = llmtpu("debs", "plan", "--root", str(root), "--deb-version", "0.5.0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sophon-driver_0.5.0_amd64.deb" in result.stdout and "dfss" in result.stdout
    assert llmtpu.dfss_calls() == [] and llmtpu.downloads() == []


def test_fetch_takes_deb_version_as_an_alias_of_version() -> None:
    args = build_parser().parse_args(["fetch", "debs", "--deb-version", "0.5.0"])
    assert args.version == "0.5.0"


@pytest.mark.parametrize("command", [["doctor", "--fix"], ["play", "fresh-pcie-host"], ["debs", "plan"]])
def test_scripts_on_this_machine_reaches_the_debs_install(command: list[str], sysroot, release) -> None:
    """A root without /bin/sh: refused unless opted in, then the plan says where the scripts run."""
    root = sysroot("pcie-host-old-driver")
    target = LocalTarget(str(root))
    plain = build_parser().parse_args([*command, "--debs", str(release("0.5.1"))])
    opted = build_parser().parse_args([*command, "--debs", str(release("0.5.1")), "--scripts-on-this-machine"])
    from llmtpu.provision.debs import RefusedInput

    operation = operation_for("debs.install", target, debs_source_from_args(plain).as_args())
    assert operation is not None
    with pytest.raises(RefusedInput, match="--scripts-on-this-machine"):
        operation.plan(target)
    operation = operation_for("debs.install", target, debs_source_from_args(opted).as_args())
    assert operation is not None
    assert any("maintainer scripts run on THIS machine" in line for line in operation.plan(target).lines())
