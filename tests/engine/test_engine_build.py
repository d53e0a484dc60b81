"""`llmtpu engine build`, native and cross-built for aarch64 boards (checked under qemu-user)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llmtpu.clikit import Parser
from llmtpu.runtime import command
from llmtpu.runtime.build import SOURCE_DIR, EngineBuildError, build_engine
from llmtpu.target import LocalTarget
from tests.conftest import require

ELF_MACHINE_AARCH64 = 183  # e_machine EM_AARCH64


def engine_parser() -> Parser:
    parser = Parser(prog="llmtpu")
    command.add_parser(parser.add_subparsers(dest="command", parser_class=Parser))
    return parser


def test_cli_engine_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require(shutil.which("cmake") is not None and shutil.which("g++") is not None,
            "cmake and g++ are needed to build the engine (bash .ci/engine-deps.sh installs them)")
    args = engine_parser().parse_args(["engine", "build", "--build-dir", str(tmp_path / "b")])
    assert args.run(args) == 0
    assert capsys.readouterr().out.startswith(f"built {tmp_path / 'b' / 'llmtpu-engine'} (llmtpu-engine ")


def test_cli_engine_build_reports_compile_errors(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    require(shutil.which("cmake") is not None, "cmake is needed (bash .ci/engine-deps.sh)")
    broken = tmp_path / "src"
    shutil.copytree(SOURCE_DIR, broken)
    (broken / "engine.cpp").write_text("int main() { return undeclared_name; }\n")
    args = engine_parser().parse_args(["engine", "build", "--source", str(broken),
                                       "--build-dir", str(tmp_path / "b")])
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert "cmake build failed" in err and "undeclared_name" in err


def test_cross_built_engine_starts_under_qemu(tmp_path: Path) -> None:
    require(shutil.which("aarch64-linux-gnu-g++") is not None and shutil.which("qemu-aarch64") is not None,
            "aarch64 cross build needs g++-aarch64-linux-gnu and qemu-user (bash .ci/engine-deps.sh)")
    qemu = list(command.QEMU_BY_CROSS["aarch64"])
    built = build_engine(LocalTarget(), str(SOURCE_DIR), str(tmp_path / "b"), cross="aarch64",
                         emulator=qemu)
    assert "protocol=1" in built.version
    header = Path(built.binary).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == ELF_MACHINE_AARCH64

    no_lib = subprocess.run([*qemu, built.binary, "--model", "x.bmodel", "--lib-dir", str(tmp_path)],  # noqa: S603
                            capture_output=True, text=True, timeout=60)
    assert no_lib.returncode == 3
    assert no_lib.stdout.startswith(f"error no_runtime bmruntime not found in {tmp_path}")


def test_unknown_cross_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="no cross toolchain for 'riscv'"):
        build_engine(LocalTarget(), str(SOURCE_DIR), str(tmp_path), cross="riscv")


def test_native_then_cross_build_use_their_own_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14 item 9: `engine build --cross aarch64` right after a native build said "Invalid ELF image"."""
    require(shutil.which("aarch64-linux-gnu-g++") is not None and shutil.which("qemu-aarch64") is not None
            and shutil.which("cmake") is not None,
            "needs cmake, g++-aarch64-linux-gnu and qemu-user (bash .ci/engine-deps.sh)")
    from llmtpu.runtime import engine

    monkeypatch.setattr(engine, "DEFAULT_BUILD_DIR", tmp_path / "build" / "engine")
    parser = engine_parser()
    for argv in (["engine", "build"], ["engine", "build", "--cross", "aarch64"]):
        args = parser.parse_args(argv)
        assert args.run(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"built {tmp_path / 'build' / 'engine' / 'llmtpu-engine'} ")
    assert out[1].startswith(f"built {tmp_path / 'build' / 'engine-aarch64' / 'llmtpu-engine'} ")
    cross = (tmp_path / "build" / "engine-aarch64" / "llmtpu-engine").read_bytes()[:20]
    assert int.from_bytes(cross[18:20], "little") == ELF_MACHINE_AARCH64

    # One folder given for both targets: refused before cmake runs, with what to do.
    same = str(tmp_path / "build" / "engine")
    args = parser.parse_args(["engine", "build", "--cross", "aarch64", "--build-dir", same])
    assert args.run(args) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'build' / 'engine'} was configured for this machine's compiler; --cross aarch64 " \
           "needs its own folder: give another --build-dir, or remove" in err
