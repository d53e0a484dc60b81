"""`llmtpu engine build|smoke`, `llmtpu chat` and `llmtpu run`: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmtpu.clikit import Exit, UsageError

#: Exit codes shared with the doctor: 0 ok, 2 a failure.
#: How this machine starts a cross-built engine to check it (Debian's qemu-user).
QEMU_BY_CROSS = {"aarch64": ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu")}
#: The engine on a board, relative to the login's home: where `llmtpu engine build` of an
#: installed llmtpu puts it. Override with --engine.
REMOTE_ENGINE = ".cache/llmtpu/engine/llmtpu-engine"
#: Where `llmtpu run` keeps downloaded models, one folder per model name.
DEFAULT_MODELS_DIR = Path(os.environ.get("LLMTPU_MODELS_DIR") or Path.home() / ".cache" / "llmtpu" / "models")


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
    build.add_argument("--build-dir", default=None, metavar="DIR",
                       help=f"where to build (default {DEFAULT_BUILD_DIR}, or {DEFAULT_BUILD_DIR}-ARCH "
                            "with --cross ARCH: one folder per target)")
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
                       help="comma-separated prompt token ids (needed with --model, unless --reference)")
    smoke.add_argument("--reference", default=None, metavar="FILE",
                       help="a reference.json (runtime/testmodel/): its first prompt, and its tokens as "
                            "the exact expected answer")
    smoke.add_argument("--lib-dir", default=None, metavar="DIR",
                       help="folder holding libbmrt.so/libbmlib.so (default: the engine's own "
                            "default, /opt/sophon/libsophon-current/lib or $LLMTPU_BMRT_LIB_DIR)")
    smoke.add_argument("--engine", default=None, metavar="FILE",
                       help="engine binary (default $LLMTPU_ENGINE or the build folder's)")
    smoke.add_argument("--tokenizer", default=None, metavar="PATH",
                       help="tokenizer.json or .model to decode the tokens with, so output that is only "
                            "punctuation ('!!!!') fails (default: the test model's, or the one beside --model)")
    smoke.add_argument("--max-new", type=int, default=8, help="tokens to generate (default 8)")
    smoke.add_argument("--timeout", type=float, default=300.0,
                       help="seconds before the TPU counts as hung (default 300)")
    smoke.set_defaults(run=run_smoke)

    chat = commands.add_parser(
        "chat", help="chat with a model folder, here or on a board over SSH",
        description="Chat with an LLM-TPU bmodel: DIR holds the bmodel and its tokenizer (tokenizer.json "
                    "or a sentencepiece .model), and optionally llmtpu-model.toml (family, bmodel, "
                    "tokenizer, system_prompt). Reads one message per line from stdin (a prompt on a "
                    "terminal; piped text works too), streams the answer and shows tokens/s. "
                    "/clear forgets the conversation, /exit ends it.",
    )
    chat.add_argument("--model", required=True, metavar="DIR", help="folder with the bmodel and tokenizer")
    _add_chat_arguments(chat)
    remote = chat.add_argument_group("on a board over SSH (the tokenizer stays here; only ids travel)")
    remote.add_argument("--host", metavar="HOST", help="[user@]host[:port] or ssh alias to run the engine on")
    remote.add_argument("--inventory", "-i", metavar="FILE", help="Ansible-style inventory; with --limit, one host")
    remote.add_argument("--limit", "-l", metavar="PATTERN", help="the one inventory host to use")
    remote.add_argument("--remote-model", metavar="PATH",
                        help="the bmodel's path on the board (default: the same path as here)")
    remote.add_argument("--accept-new", action="store_true", help="record the key of a host never seen before")
    remote.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to connect")
    remote.add_argument("--ssh-config", metavar="FILE", help="OpenSSH client config (default ~/.ssh/config)")
    remote.add_argument("--ask-pass", action="store_true", help="prompt for an SSH password or key passphrase")
    chat.set_defaults(run=run_chat)

    run = commands.add_parser(
        "run", help="download a model of the table if missing, build the engine if needed, chat",
        description="The seed's `run.sh --model NAME`: look NAME up in the model table (llmtpu models), "
                    "download its bmodel into --models-dir/NAME unless it is there (dfss, or --mirror), "
                    "build the engine unless it is built, then chat as `llmtpu chat` does.",
    )
    run.add_argument("--model", required=True, metavar="NAME", help="a name from `llmtpu models`")
    run.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR), metavar="DIR",
                     help=f"where models are kept (default $LLMTPU_MODELS_DIR or {DEFAULT_MODELS_DIR})")
    run.add_argument("--mirror", metavar="URL", help="download from a mirror made by `llmtpu mirror create` "
                                                    "(http(s)://, file://, sftp://) instead of dfss")
    run.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR), metavar="DIR",
                     help=f"where the engine is built when missing (default {DEFAULT_BUILD_DIR})")
    _add_chat_arguments(run)
    run.set_defaults(run=run_run)


def _add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or .model (default: the one in the folder)")
    parser.add_argument("--family", metavar="NAME",
                        help="chat template: plain, llama2, chatglm3, qwen, qwen1.5, wizardcoder "
                             "(default: llmtpu-model.toml, else the model table)")
    parser.add_argument("--system", metavar="TEXT", help="system prompt (default: the template's)")
    parser.add_argument("--engine", metavar="FILE", help="engine binary (default $LLMTPU_ENGINE or the build folder's)")
    parser.add_argument("--lib-dir", metavar="DIR", help="folder holding libbmrt.so (default: the engine's own)")
    parser.add_argument("--device", type=int, default=0, help="TPU device id (default 0)")
    parser.add_argument("--max-new", type=int, default=256, help="most tokens per answer (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default 0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--load-timeout", type=float, default=300.0, metavar="S",
                        help="seconds the engine may take to load the model (default 300)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait for each token before the TPU counts as hung (default 120)")
    parser.add_argument("--json", action="store_true", help="one JSON line per answer instead of streamed text")


def _missing_action(parser: argparse.ArgumentParser) -> int:
    raise UsageError("engine: give an action, build or smoke (see `llmtpu engine --help`)")


def run_build(args: argparse.Namespace) -> int:
    from llmtpu.runtime.build import EngineBuildError, build_engine
    from llmtpu.runtime.engine import default_build_dir
    from llmtpu.target import LocalTarget

    if args.jobs < 1:
        raise UsageError(f"--jobs: {args.jobs} must be 1 or more")
    source = os.path.abspath(args.source)
    if not os.path.isfile(os.path.join(source, "CMakeLists.txt")):
        raise UsageError(f"--source: {source} has no CMakeLists.txt; give the engine's csrc/ folder")
    emulator = QEMU_BY_CROSS[args.cross] if args.cross else ()
    try:
        build_dir = os.path.abspath(args.build_dir or default_build_dir(args.cross))
        built = build_engine(LocalTarget(), source, build_dir, args.jobs, cross=args.cross, emulator=emulator)
    except EngineBuildError as exc:
        print(f"llmtpu: engine build failed: {exc}", file=sys.stderr)
        return Exit.FAILED
    print(f"built {built.binary} ({built.version})")
    return Exit.OK


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
    from llmtpu.runtime.tokenizer import TokenizerError, find_tokenizer, load_tokenizer
    from llmtpu.target import LocalTarget

    if args.max_new < 1:
        raise UsageError(f"--max-new: {args.max_new} must be 1 or more")
    expected: list[int] | None = None
    if args.model is None:
        case = testmodel.reference_cases()[0]
        model, prompt, expected = str(testmodel.bmodel_path("f16")), case.prompt, case.tokens
        max_new = len(expected)
    else:
        model = os.path.abspath(args.model)
        if not os.path.isfile(model):
            raise UsageError(f"--model: {model} is not a file; give an LLM-TPU .bmodel")
        if args.reference is not None:
            if args.prompt is not None:
                raise UsageError("--prompt: the prompt comes from --reference; give one of them")
            try:
                case = testmodel.reference_cases(Path(args.reference))[0]
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                raise UsageError(f"--reference: {args.reference} is not a reference.json with cases "
                                 f"({exc})") from exc
            prompt, expected, max_new = case.prompt, case.tokens, len(case.tokens)
        elif args.prompt is None:
            raise UsageError("--prompt: give the prompt's token ids when --model is given (or --reference)")
        else:
            prompt, max_new = _prompt_ids(args.prompt), args.max_new
    tokenizer_path = Path(args.tokenizer) if args.tokenizer else find_tokenizer(Path(model).parent)
    try:
        decode = load_tokenizer(tokenizer_path).decode if tokenizer_path else None
    except TokenizerError as exc:
        raise UsageError(f"--tokenizer: {exc}") from exc
    binary = args.engine or str(default_binary())
    argv = engine_argv(binary, model, args.lib_dir)
    with _progress_line("engine smoke test") as progress:
        result = smoke_test(LocalTarget(), argv, prompt, max_new, args.timeout, expected,
                            decode=decode, progress=progress)
    if result.ok:
        print(f"ok    engine smoke test: {result.message}")
        return Exit.OK
    print(f"fail  engine smoke test: {result.message}")
    print(f"      fix: {result.fix}")
    return Exit.FAILED


@contextlib.contextmanager
def _progress_line(what: str) -> Iterator[Callable[[str], None] | None]:
    """On a terminal, one status line on stderr that each phase replaces; elsewhere nothing."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.markup import escape

    with Console(stderr=True).status(escape(f"{what}: starting")) as status:
        yield lambda text: status.update(escape(f"{what}: {text}"))


# -- chat and run ---------------------------------------------------------------------------


def _check_sampling(args: argparse.Namespace) -> None:
    if args.max_new < 1:
        raise UsageError(f"--max-new: {args.max_new} must be 1 or more")
    if args.temperature < 0:
        raise UsageError(f"--temperature: {args.temperature:g} must be 0 (greedy) or more")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p: {args.top_p:g} must be in (0, 1]")
    for flag, value in (("--load-timeout", args.load_timeout), ("--timeout", args.timeout)):
        if not value > 0:
            raise UsageError(f"{flag}: {value:g} must be more than 0 seconds")


def _fail(message: str, fix: str | None = None) -> int:
    print(f"llmtpu: error: {message}", file=sys.stderr)
    if fix:
        print(f"       fix: {fix}", file=sys.stderr)
    return Exit.FAILED


def _input_lines() -> Any:
    """Piped stdin line by line; on a terminal, a prompt with line editing."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    import readline  # noqa: F401 - gives input() history and editing

    while True:
        try:
            yield input("> ")
        except EOFError:
            print(file=sys.stderr)
            return


def _remote_spec(args: argparse.Namespace) -> Any:
    """The one SSH host chat runs on, or None to run here."""
    from llmtpu.hosts_command import resolve_specs

    if not (args.host or args.inventory):
        if args.limit:
            raise UsageError("--limit: give --inventory FILE too")
        return None
    if not args.connect_timeout > 0:
        raise UsageError(f"--connect-timeout: {args.connect_timeout:g} must be more than 0 seconds")
    specs = resolve_specs(args, args.host, args.limit)
    if len(specs) != 1:
        raise UsageError(f"chat runs on one machine; the options select {len(specs)}: "
                         f"{', '.join(s.name for s in specs[:5])}{' ...' if len(specs) > 5 else ''} (use --limit)")
    return specs[0]


def chat_with(args: argparse.Namespace, model: Any, spec: Any = None) -> int:
    """Start the engine (here, or on ``spec`` over SSH) on a ModelDir and chat until stdin ends."""
    from rich.console import Console
    from rich.markup import escape

    from llmtpu.runtime.chat import Conversation, Sampling, chat_loop, load_templates
    from llmtpu.runtime.engine import EngineError, EngineSession, default_binary, engine_argv
    from llmtpu.runtime.smoke import FIX_BY_ENGINE_ERROR
    from llmtpu.runtime.tokenizer import TokenizerError, load_tokenizer
    from llmtpu.target import TargetError

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        tokenizer = load_tokenizer(model.tokenizer)
        conversation = Conversation(load_templates()[model.family], tokenizer,
                                    args.system if args.system is not None else model.system_prompt)
    except TokenizerError as exc:
        raise UsageError(str(exc)) from exc
    sampling = Sampling(args.max_new, args.temperature, args.top_p, args.seed)
    session: Any
    target: Any = None
    try:
        if spec is None:
            binary = args.engine or str(default_binary())
            if not os.path.isfile(binary):
                return _fail(f"the engine is not built ({binary} does not exist)",
                             "llmtpu engine build (or give its path with --engine)")
            argv = engine_argv(binary, str(model.bmodel.resolve()), args.lib_dir, args.device)
            session = EngineSession(argv, args.load_timeout)
            where = "this machine"
        else:
            from llmtpu.hosts_command import ssh_options
            from llmtpu.runtime.remote import RemoteEngineSession
            from llmtpu.ssh import SSHTarget

            target = SSHTarget(spec, ssh_options(args))
            argv = engine_argv(args.engine or REMOTE_ENGINE, args.remote_model or str(model.bmodel.resolve()),
                               args.lib_dir, args.device)
            session = RemoteEngineSession(target, argv, args.load_timeout)
            where = spec.name
        with session:
            ready = session.start()
            if args.temperature > 0 and not ready.can_sample:
                raise UsageError(f"--temperature: {model.bmodel.name}'s lm_head returns a token id, not "
                                 "logits (llm_convert without --do_sample), so it cannot sample; use "
                                 "--temperature 0, or a bmodel converted with --do_sample")
            console.print(escape(f"{model.bmodel.name} on {where}: {ready.layers} layers, {ready.seq} tokens "
                                 f"of context, {ready.dtype}, loaded in {ready.load_ms:.0f} ms; template "
                                 f"{model.family}. /clear forgets, /exit ends."), style="dim")
            chat_loop(session, ready, conversation, _input_lines(), sampling, args.timeout,
                      note=lambda text: console.print(escape(text), style="dim"), as_json=args.json)
    except EngineError as exc:
        return _fail(f"engine ({exc.kind}): {exc}", FIX_BY_ENGINE_ERROR.get(exc.kind))
    except TargetError as exc:
        return _fail(str(exc))
    finally:
        if target is not None:
            target.close()
    return Exit.OK


def run_chat(args: argparse.Namespace) -> int:
    from llmtpu.runtime.chat import ChatSetupError, open_model_dir

    _check_sampling(args)
    spec = _remote_spec(args)
    try:
        model = open_model_dir(Path(args.model).resolve(), Path(args.tokenizer) if args.tokenizer else None,
                               args.family)
    except ChatSetupError as exc:
        raise UsageError(str(exc)) from exc
    return chat_with(args, model, spec)


def run_run(args: argparse.Namespace) -> int:
    from llmtpu.doctor.checks import load_models
    from llmtpu.provision.command import RichReporter
    from llmtpu.provision.fetch import Artifact, DfssSource, FetchError, MirrorSource, fetch
    from llmtpu.runtime.build import SOURCE_DIR, EngineBuildError, build_engine
    from llmtpu.runtime.chat import (
        CONFIG_NAME,
        ChatSetupError,
        load_templates,
        open_model_dir,
        read_config,
        remember_tokenizer,
    )
    from llmtpu.runtime.engine import ENGINE_NAME
    from llmtpu.runtime.tokenizer import find_tokenizer
    from llmtpu.target import LocalTarget

    _check_sampling(args)
    models = load_models()
    if args.model not in models:
        raise UsageError(f"--model: no model {args.model!r} in the table; there are {', '.join(models)}")
    entry = models[args.model]
    folder = Path(args.models_dir).resolve() / entry.name
    family = args.family or entry.family
    templates = load_templates()
    if family not in templates:
        raise UsageError(f"no chat template for family {family!r}; there are {', '.join(templates)}")
    tokenizer = Path(args.tokenizer).resolve() if args.tokenizer else None
    try:
        has_tokenizer = folder.is_dir() and (find_tokenizer(folder) is not None or "tokenizer" in read_config(folder))
    except ChatSetupError as exc:
        raise UsageError(str(exc)) from exc
    if tokenizer is None and not has_tokenizer:  # said before a download of gigabytes
        raise UsageError(f"no tokenizer for {entry.name}: it needs {templates[family].tokenizer}; "
                         f"copy it into {folder} or give --tokenizer PATH")
    if tokenizer is not None and not tokenizer.exists():
        raise UsageError(f"--tokenizer: {tokenizer} does not exist")

    name = entry.file.rsplit("/", 1)[-1]
    if not (folder / name).is_file():
        source = MirrorSource(args.mirror) if args.mirror else DfssSource()
        print(f"downloading {name} from {source.describe()} into {folder}", file=sys.stderr)
        try:
            fetch([Artifact("model", name, entry.file)], source, str(folder),
                  RichReporter() if sys.stderr.isatty() else None)
        except FetchError as exc:
            return _fail(f"download failed: {exc}")
    config = folder / CONFIG_NAME
    if not config.exists():  # so `llmtpu chat --model FOLDER` works from now on
        config.write_text(f"# written by llmtpu run --model {entry.name}\n"
                          f"family = {json.dumps(entry.family)}\nbmodel = {json.dumps(name)}\n", encoding="utf-8")
    if tokenizer is not None:  # the same: chat finds it in the folder afterwards
        try:
            tokenizer = remember_tokenizer(folder, tokenizer)
        except (OSError, ChatSetupError) as exc:
            return _fail(f"cannot keep the tokenizer in {folder}: {exc}")

    if args.engine is None and not os.environ.get("LLMTPU_ENGINE"):
        args.engine = os.path.join(os.path.abspath(args.build_dir), ENGINE_NAME)
        if not os.path.isfile(args.engine):
            print(f"building the engine in {args.build_dir} (llmtpu engine build)", file=sys.stderr)
            try:
                built = build_engine(LocalTarget(), str(SOURCE_DIR), os.path.abspath(args.build_dir))
            except EngineBuildError as exc:
                return _fail(f"engine build failed: {exc}")
            args.engine = built.binary
    try:
        model = open_model_dir(folder, tokenizer, family)
    except ChatSetupError as exc:
        raise UsageError(str(exc)) from exc
    return chat_with(args, model)
