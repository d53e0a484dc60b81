"""`llmtpu engine build`: compile csrc/ with CMake on the machine that will run it.

The engine links no Sophgo library (it dlopens bmruntime), so a C++17 compiler and CMake are
all the build needs, on a board or on a host.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from llmtpu.runtime.engine import ENGINE_NAME, PACKAGE_DIR, PROTOCOL
from llmtpu.target import CommandResult, Target, TargetError

SOURCE_DIR = PACKAGE_DIR / "csrc"  # shipped in the wheel; a symlink to csrc/ in a checkout
#: CMake toolchain files in csrc/ for cross builds (offline bundles for boards), by target arch.
CROSS_TOOLCHAINS = {"aarch64": "aarch64-linux-gnu.cmake"}
#: Both cores of a small board, and no more: other work shares the machine.
DEFAULT_JOBS = 2


class EngineBuildError(Exception):
    """The build failed; the message says which step and ends with what to do."""


@dataclass(frozen=True)
class BuiltEngine:
    binary: str  # machine path
    version: str  # what `llmtpu-engine --version` printed


def _step(target: Target, argv: list[str], what: str, timeout: float) -> CommandResult:
    try:
        result = target.run(argv, timeout=timeout)
    except TargetError as exc:
        raise EngineBuildError(f"{what}: {exc}; install it (Debian: apt-get install cmake g++)") from exc
    if result.timed_out:
        raise EngineBuildError(f"{what}: no result within {timeout:.0f} s on {target.name}")
    if not result.ok:
        output = (result.stdout + result.stderr).decode("utf-8", errors="replace").strip()
        tail = "\n".join(output.splitlines()[-15:])
        raise EngineBuildError(f"{what} failed on {target.name} (exit {result.returncode}):\n{tail}")
    return result


#: What a build folder's CMakeCache.txt records about the target it was configured for.
_CACHED_TOOLCHAIN = "CMAKE_TOOLCHAIN_FILE:"


def _configured_toolchain(target: Target, build_dir: str) -> str | None:
    """The toolchain file a build folder was configured with ("" for native), or None if new."""
    cache = posixpath.join(build_dir, "CMakeCache.txt")
    try:
        text = target.read_text(cache)
    except (OSError, TargetError):
        return None
    for line in text.splitlines():
        if line.startswith(_CACHED_TOOLCHAIN):
            return line.split("=", 1)[1].strip()
    return ""


def build_engine(target: Target, source_dir: str, build_dir: str, jobs: int = DEFAULT_JOBS,
                 timeout: float = 600.0, cross: str | None = None,
                 emulator: Sequence[str] = ()) -> BuiltEngine:
    """Configure, compile, then run ``--version`` to prove the binary starts (no bmruntime needed).

    ``cross`` names a key of CROSS_TOOLCHAINS; ``emulator`` is how to start a cross-built binary
    on this machine for that proof (``qemu-aarch64 -L /usr/aarch64-linux-gnu``).
    """
    configure = ["cmake", "-S", source_dir, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"]
    toolchain = ""
    if cross is not None:
        if cross not in CROSS_TOOLCHAINS:
            raise EngineBuildError(f"no cross toolchain for {cross!r}; there is {', '.join(CROSS_TOOLCHAINS)}")
        toolchain = posixpath.join(source_dir, CROSS_TOOLCHAINS[cross])
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={toolchain}")
    configured = _configured_toolchain(target, build_dir)
    if configured is not None and posixpath.basename(configured) != posixpath.basename(toolchain):
        was = f"the cross toolchain {configured}" if configured else "this machine's compiler"
        wanted = f"--cross {cross}" if cross else "a native build"
        raise EngineBuildError(f"{build_dir} was configured for {was}; {wanted} needs its own folder: "
                               f"give another --build-dir, or remove {build_dir}")
    _step(target, configure, "cmake configure", timeout)
    _step(target, ["cmake", "--build", build_dir, "-j", str(jobs)], "cmake build", timeout)
    binary = posixpath.join(build_dir, ENGINE_NAME)
    version = _step(target, [*emulator, binary, "--version"], f"{binary} --version",
                    30.0).text().strip()
    if f"protocol={PROTOCOL}" not in version:
        raise EngineBuildError(f"{binary} reports {version!r}, this llmtpu needs protocol {PROTOCOL}")
    return BuiltEngine(binary, version)
