"""Which Operation carries out each operation or fix id: the one table `doctor --fix`,
playbooks and `llmtpu undo` share. A factory gets the target and the step's arguments.

Building an operation never downloads or changes anything: an operation that needs Sophgo's
debs first (``debs.install`` without ``--debs``) says in its plan where it will fetch them
from, and fetches only in ``apply``, after the user agreed to that plan.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmtpu.provision.operation import Change, Journal, JournalRecord, Operation, OperationError, Plan
from llmtpu.target import Target

Factory = Callable[[Target, dict[str, Any]], Operation]

#: Sophgo's rule for a container (libsophon doc/guide/4_docker_usage.rst): sophon-driver is
#: installed on the host; the container gets sophon-libsophon and -dev of the same release
#: (1_install.rst installs the three debs of one |ver|; LLM-TPU FAQ Q2 pairs driver and
#: libsophon 0.5.0), so the release to install is the one of the host's loaded driver.
DOCKER_RULE_SOURCE = "https://github.com/sophgo/libsophon/blob/master/doc/guide/4_docker_usage.rst"
CONTAINER_PARTS = ("libsophon", "libsophon-dev")


@dataclass(frozen=True)
class FixSources:
    """Where fixes get the debs they install: a folder, a mirror, or Sophgo's dfss (the default)."""

    debs_dir: str | None = None
    mirror: str | None = None
    version: str | None = None
    download_dir: str = field(default_factory=lambda: os.path.expanduser("~/.cache/llmtpu/downloads"))
    #: opt-in: a sysroot without /bin/sh (or without root here) runs the debs' scripts on this machine
    scripts_here: bool = False

    def as_args(self) -> dict[str, Any]:
        """The arguments the registry's factories take."""
        return {"debs_dir": self.debs_dir, "mirror": self.mirror, "version": self.version,
                "download_dir": self.download_dir, "scripts_here": self.scripts_here}


def add_debs_source_arguments(parser: Any) -> None:
    """The one "source of debs" option set: `doctor --fix`, `play` (and `fetch`, `debs`) share it."""
    parser.add_argument("--debs", metavar="DIR", help="install the sophon debs from this folder (offline)")
    parser.add_argument("--mirror", metavar="URL",
                        help="fetch the sophon debs from this mirror (http://, file://, sftp://) instead of dfss")
    parser.add_argument("--deb-version", metavar="V",
                        help="sophon deb release to fetch (default: the loaded driver's release in a "
                             "container, else sources.toml's default)")
    parser.add_argument("--scripts-on-this-machine", action="store_true", dest="scripts_here",
                        help="with --root and no way to run the debs' maintainer scripts inside it (no /bin/sh "
                             "in it, or not root): run them on this machine with $DPKG_ROOT set; a script that "
                             "ignores $DPKG_ROOT then changes this machine")


def debs_source_from_args(args: Any) -> FixSources:
    """FixSources from the shared options; --debs with --mirror is a usage error."""
    from llmtpu.clikit import UsageError

    if args.debs and args.mirror:
        raise UsageError("--debs and --mirror both name where the debs come from: give one")
    if args.debs and not os.path.isdir(args.debs):
        raise UsageError(f"--debs {args.debs}: not a folder; fetch the debs into it with `llmtpu fetch debs`")
    return FixSources(debs_dir=args.debs, mirror=args.mirror, version=args.deb_version,
                      scripts_here=bool(getattr(args, "scripts_here", False)))


def _container_driver_release(target: Target, known: Sequence[str]) -> str | None:
    """In a container: the loaded (host) driver's release, which libsophon must match; None elsewhere."""
    from llmtpu.doctor import facts

    if not facts.in_container(target).value:
        return None
    driver = facts.driver_version(target)
    if driver.value is None:
        raise OperationError(f"{facts.DRIVER_VERSION}: {driver.problem}; install sophon-driver on the host first, "
                             f"then libsophon of the same release in this container ({DOCKER_RULE_SOURCE})")
    release = driver.value.version
    if release not in known:
        raise OperationError(f"the host's driver is {release} and sources.toml knows no libsophon {release}; "
                             f"put the sophon-libsophon {release} debs in a folder and pass --debs DIR")
    return release


class FetchAndInstallDebs(Operation):
    """``debs.install`` from dfss or a mirror: the plan names the download; apply fetches, then installs."""

    id = "debs.install"
    summary = "fetch the sophon debs, then install them with dpkg"

    def __init__(self, version: str, parts: Sequence[str], folder: str, mirror: str | None,
                 scripts_here: bool = False) -> None:
        from llmtpu.provision import fetch

        self.scripts_here = scripts_here
        self.version = version
        self.artifacts = [a for a in fetch.artifacts("debs", version) if a.part in parts]
        self.folder = folder
        self.mirror = mirror

    def _source_label(self) -> str:
        return f"the mirror {self.mirror}" if self.mirror else "Sophgo's servers with dfss (open@sophgo.com)"

    def _present(self) -> bool:
        return all(os.path.isfile(os.path.join(self.folder, a.name)) for a in self.artifacts)

    def _install(self) -> Operation:
        from llmtpu.provision import debs

        wanted = {f"sophon-{a.part}" for a in self.artifacts}
        return debs.InstallDebs([d for d in debs.debs_in(self.folder) if d.package in wanted],
                                scripts_here=self.scripts_here)

    def plan(self, target: Target) -> Plan:
        if self._present():
            return self._install().plan(target)
        from llmtpu.provision.debs import installed_packages

        installed = installed_packages(target)
        plan = Plan(self.id, target.name, needs_root=not target.is_sysroot)
        plan.changes.append(Change(f"download {', '.join(a.name for a in self.artifacts)} from "
                                   f"{self._source_label()} into {self.folder}"))
        for artifact in self.artifacts:
            package = f"sophon-{artifact.part}"
            before = installed.get(package)
            plan.changes.append(Change(f"dpkg -i {artifact.name}",
                                       f"{package} {before.version} ({before.status})" if before else None,
                                       f"{package} {self.version}"))
        plan.notes.append("old sophon packages are removed first; the exact dpkg steps are planned again once "
                          "the debs are here")
        return plan

    def apply(self, target: Target, plan: Plan, journal: Journal) -> None:
        from llmtpu.provision import fetch

        if not self._present():
            source: fetch.DfssSource | fetch.MirrorSource = (fetch.MirrorSource(self.mirror) if self.mirror
                                                             else fetch.DfssSource())
            try:
                fetch.fetch(self.artifacts, source, self.folder)
            except fetch.FetchError as exc:
                raise OperationError(f"debs.install: {exc}") from exc
        install = self._install()
        install.apply(target, install.plan(target), journal)

    def verify(self, target: Target) -> list[str]:
        if not self._present():
            return [f"the debs were not fetched into {self.folder}"]
        return self._install().verify(target)

    def undo(self, target: Target, entry: JournalRecord) -> Plan:
        from llmtpu.provision.debs import undo_install

        return undo_install(target, entry)


def _install_debs(target: Target, args: dict[str, Any]) -> Operation:
    """Debs from a folder, or fetched at apply time (a mirror when given, else Sophgo's dfss).

    In a container only libsophon and -dev are installed, of the host driver's release.
    """
    from llmtpu.provision import debs, fetch

    releases = fetch.load_sources()["debs"]
    container_release = _container_driver_release(target, list(releases))
    folder = args.get("debs_dir")
    scripts_here = bool(args.get("scripts_here"))
    if folder is not None:
        found = debs.debs_in(folder)
        if container_release is None:
            return debs.InstallDebs(found, scripts_here=scripts_here)
        if found[0].version != container_release:
            raise OperationError(f"--debs {folder} holds libsophon {found[0].version} but the host's driver is "
                                 f"{container_release}; in a container libsophon must match the host's driver "
                                 f"({DOCKER_RULE_SOURCE}): give a folder with the {container_release} debs")
        return debs.InstallDebs([d for d in found if d.package != "sophon-driver"], scripts_here=scripts_here)
    version = args.get("version") or container_release or fetch.load_sources()["defaults"]["debs"]
    if container_release is not None and version != container_release:
        raise OperationError(f"--deb-version {version}: the host's driver is {container_release}, and in a container "
                             f"libsophon must match it ({DOCKER_RULE_SOURCE}); leave --deb-version out")
    if version not in releases:
        raise OperationError(f"--deb-version {version}: no such release in sources.toml; known: "
                             f"{', '.join(sorted(releases))}")
    download_dir = args.get("download_dir") or os.path.expanduser("~/.cache/llmtpu/downloads")
    parts = CONTAINER_PARTS if container_release is not None else fetch.DEB_PARTS
    return FetchAndInstallDebs(version, parts, os.path.join(download_dir, f"debs-{version}"), args.get("mirror"),
                               scripts_here)


def _configure_debs(target: Target, args: dict[str, Any]) -> Operation:
    from llmtpu.provision.debs import ConfigureDebs

    return ConfigureDebs()


def _heaps(target: Target, args: dict[str, Any]) -> Operation:
    from llmtpu.provision.heaps import ResizeHeaps

    return ResizeHeaps(sizes_mib=args.get("sizes_mib"), script=args.get("script"))


def _clock_apply(target: Target, args: dict[str, Any]) -> Operation:
    from llmtpu.provision.clock import ClockApply

    return ClockApply(args.get("rates"))


def _clock_persist(target: Target, args: dict[str, Any]) -> Operation:
    """Persist the given rates, or the ones running now (the doctor's 'reduced, not persistent')."""
    from llmtpu.provision.clock import ClockPersist, read_rates

    return ClockPersist(args.get("rates") or read_rates(target))


FACTORIES: dict[str, Factory] = {
    "debs.install": _install_debs,
    "debs.configure": _configure_debs,
    "heaps.resize": _heaps,
    "clock.apply": _clock_apply,
    "clock.persist": _clock_persist,
}


def operation_ids() -> set[str]:
    return set(FACTORIES)


def operation_for(op_id: str, target: Target, args: dict[str, Any]) -> Operation | None:
    """The operation for an id, built for this target with its arguments; None when llmtpu has none."""
    factory = FACTORIES.get(op_id)
    return factory(target, args) if factory else None
