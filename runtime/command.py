"""`llmtpu engine build` and `llmtpu engine smoke`: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from llmtpu.cli import UsageError

#: Exit codes shared with the doctor: 0 ok, 2 a failure.
EXIT_OK = 0
EXIT_FAIL = 2
#: How this machine starts a cross-built engine to check it (Debian's qemu-user).
QEMU_BY_CROSS = {"aarch64": ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu")}


def add_parser(commands: Any) -> None:
    from llmtpu.runtime.build import CROSS_TOOLCHAINS, DEFAULT_JOBS, SOURCE_DIR
    from llmtpu.runtime.engine import DEFAULT_BUILD_DIR

    engine = commands.add_parser(
        "engine", help="build and check the bundled inference engine",
        description="The bundled LLM-TPU inference engine (csrc/): build it on this machine, "
                    "or run the smoke test that proves the TPU gives correct tokens.",
    )
    actions = engine.add_subparsers(dest="engine_command", metavar="ACTION",
                                    parser_class=type(engine))
    engine.set_defaults(run=lambda args: _missing_action(engine))

    build = actions.add_parser("build", help="compile csrc/ with cmake on this machine",
                               description="Compile the engine with CMake and a C++17 compiler.")
    build.add_argument("--source", default=str(SOURCE_DIR), metavar="DIR",
                       help=f"engine sources (default {SOURCE_DIR})")
    build.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR), metavar="DIR",
                       help=f"where to build (default {DEFAULT_BUILD_DIR})")
    build.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="parallel compile jobs")
    build.add_argument("--cross", choices=sorted(CROSS_TOOLCHAINS), default=None,
                       help="cross-compile for this CPU (Debian: apt-get install g++-aarch64-linux-gnu "
                            "qemu-user; qemu checks the result)")
    build.set_defaults(run=run_build)

    smoke = actions.add_parser(
        "smoke", help="run one generation and judge it",
        description="Run the engine on a model with a timeout: it loads, tokens come back, they "
                    "are not degenerate (NaN/inf, one token repeated, all '!'), and how fast. "
                    "Without --model it runs the tiny test model and checks its exact tokens.",
    )
    smoke.add_argument("--model", default=None, metavar="FILE", help="an LLM-TPU bmodel")
    smoke.add_argument("--prompt", default=None, metavar="IDS",
                       help="comma-separated prompt token ids (needed with --model)")
    smoke.add_argument("--lib-dir", default=None, metavar="DIR",
                       help="folder holding libbmrt.so/libbmlib.so (default: the engine's own "
                            "default, /opt/sophon/libsophon-current/lib or $LLMTPU_BMRT_LIB_DIR)")
    smoke.add_argument("--engine", default=None, metavar="FILE",
                       help="engine binary (default $LLMTPU_ENGINE or the build folder's)")
    smoke.add_argument("--max-new", type=int, default=8, help="tokens to generate (default 8)")
    smoke.add_argument("--timeout", type=float, default=300.0,
                       help="seconds before the TPU counts as hung (default 300)")
    smoke.set_defaults(run=run_smoke)


def _missing_action(parser: argparse.ArgumentParser) -> int:
    raise UsageError("engine: give an action, build or smoke (see `llmtpu engine --help`)")


def run_build(args: argparse.Namespace) -> int:
    from llmtpu.runtime.build import EngineBuildError, build_engine
    from llmtpu.target import LocalTarget

    if args.jobs < 1:
        raise UsageError(f"--jobs: {args.jobs} must be 1 or more")
    source = os.path.abspath(args.source)
    if not os.path.isfile(os.path.join(source, "CMakeLists.txt")):
        raise UsageError(f"--source: {source} has no CMakeLists.txt; give the engine's csrc/ folder")
    emulator = QEMU_BY_CROSS[args.cross] if args.cross else ()
    try:
        built = build_engine(LocalTarget(), source, os.path.abspath(args.build_dir), args.jobs,
                             cross=args.cross, emulator=emulator)
    except EngineBuildError as exc:
        print(f"llmtpu: engine build failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"built {built.binary} ({built.version})")
    return EXIT_OK


def _prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        raise UsageError(f"--prompt: {text!r} is not comma-separated token ids") from None
    if not ids:
        raise UsageError("--prompt: give at least one token id")
    return ids


def run_smoke(args: argparse.Namespace) -> int:
    from llmtpu.runtime import testmodel
    from llmtpu.runtime.engine import default_binary, engine_argv
    from llmtpu.runtime.smoke import smoke_test
    from llmtpu.target import LocalTarget

    if args.max_new < 1:
        raise UsageError(f"--max-new: {args.max_new} must be 1 or more")
    expected: list[int] | None = None
    if args.model is None:
        case = testmodel.reference_cases()[0]
        model, prompt, expected = str(testmodel.bmodel_path("f16")), case.prompt, case.tokens
        max_new = len(expected)
    else:
        if args.prompt is None:
            raise UsageError("--prompt: give the prompt's token ids when --model is given")
        model, prompt, max_new = os.path.abspath(args.model), _prompt_ids(args.prompt), args.max_new
        if not os.path.isfile(model):
            raise UsageError(f"--model: {model} is not a file; give an LLM-TPU .bmodel")
    binary = args.engine or str(default_binary())
    argv = engine_argv(binary, model, args.lib_dir)
    result = smoke_test(LocalTarget(), argv, prompt, max_new, args.timeout, expected)
    if result.ok:
        print(f"ok    engine smoke test: {result.message}")
        return EXIT_OK
    print(f"fail  engine smoke test: {result.message}")
    print(f"      fix: {result.fix}")
    return EXIT_FAIL
