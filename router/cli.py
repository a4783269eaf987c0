"""The ``llama-router`` command: its subcommands and their flags; no serving logic.

Every ``serve`` flag can also come from an environment variable, ``LLAMA_ROUTER_`` plus the
flag's name in capitals (``--models-max`` is ``LLAMA_ROUTER_MODELS_MAX``); repeatable flags
take several values separated by ``os.pathsep`` (``:``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import router

ENV_PREFIX = "LLAMA_ROUTER_"
COMMANDS = ("serve", "child")

# Child options the router passes on to every model: (flags, takes a value).
CHILD_DEFAULTS: list[tuple[tuple[str, ...], bool]] = [
    (("-c", "--ctx-size"), True),
    (("-ngl", "--n-gpu-layers"), True),
    (("-t", "--threads"), True),
    (("-tb", "--threads-batch"), True),
    (("-b", "--batch-size"), True),
    (("-ub", "--ubatch-size"), True),
    (("-np", "--parallel"), True),
    (("-fa", "--flash-attn"), True),
    (("--chat-template",), True),
    (("--max-queue",), True),
    (("--embeddings",), False),
    (("--no-mmap",), False),
    (("--mlock",), False),
]


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _env_list(name: str) -> list[str]:
    value = _env(name)
    return [item for item in value.split(os.pathsep) if item] if value else []


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("router")
    server.add_argument(
        "--host", default=_env("host") or "127.0.0.1", help="address to bind (default: 127.0.0.1)"
    )
    server.add_argument(
        "--port", type=int, default=int(_env("port") or 8080), help="port (default: 8080)"
    )
    server.add_argument(
        "--models-dir",
        type=Path,
        action="append",
        default=[Path(p) for p in _env_list("models-dir")],
        help="folder of GGUF models, as llama.cpp lays them out (repeatable)",
    )
    server.add_argument(
        "--models-max",
        type=int,
        default=int(_env("models-max") or 4),
        help="models loaded at once; the least recently used idle one is "
        "unloaded to make room (default: 4; 0: no limit)",
    )
    server.add_argument(
        "--models-autoload",
        action=argparse.BooleanOptionalAction,
        default=(_env("models-autoload") or "1").lower() in ("1", "true", "yes"),
        help="load a model when a request names it (default: on)",
    )
    server.add_argument(
        "--api-key",
        action="append",
        default=_env_list("api-key"),
        help="require this key as 'Authorization: Bearer KEY' (repeatable)",
    )
    server.add_argument(
        "--api-key-file",
        type=Path,
        default=_env("api-key-file"),
        help="file with one API key per line",
    )
    server.add_argument(
        "--models-allow-extra-args",
        action="store_true",
        default=(_env("models-allow-extra-args") or "").lower() in ("1", "true"),
        help="let POST /models/load pass child arguments (only -c, -ngl, -t, -tb, -b, -ub, "
        "-np, -fa; default: off)",
    )
    server.add_argument(
        "--stop-timeout",
        type=float,
        default=float(_env("stop-timeout") or 10),
        help="seconds a stopping model may finish its requests (default: 10)",
    )
    children = parser.add_argument_group(
        "defaults passed to every model",
        description="the child's flags, as 'llama-router child --help' describes them",
    )
    for flags, takes_value in CHILD_DEFAULTS:
        if takes_value:
            children.add_argument(*flags, dest=_dest(flags), default=_env(_dest(flags)))
        else:
            children.add_argument(
                *flags, dest=_dest(flags), action="store_true", default=bool(_env(_dest(flags)))
            )


def _dest(flags: tuple[str, ...]) -> str:
    return flags[-1].lstrip("-").replace("-", "_")


def child_args_from(args: argparse.Namespace) -> tuple[str, ...]:
    passed: list[str] = []
    for flags, takes_value in CHILD_DEFAULTS:
        value = getattr(args, _dest(flags))
        if takes_value and value is not None:
            passed += [flags[-1], str(value)]
        elif not takes_value and value:
            passed.append(flags[-1])
    return tuple(passed)


def build_parser() -> argparse.ArgumentParser:
    from router.child.options import add_child_arguments

    parser = argparse.ArgumentParser(
        prog="llama-router",
        description="One OpenAI-compatible endpoint for many local GGUF models. "
        "Without a command, runs 'serve'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {router.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the router (the default command)",
        description="Serve every model of --models-dir from one endpoint, each in its own "
        "process, started on demand. Every flag also reads LLAMA_ROUTER_<FLAG>.",
    )
    add_serve_arguments(serve)
    child = commands.add_parser(
        "child",
        help="serve one model (like llama-server -m); the router runs one per model",
        description="Serve one GGUF model over the OpenAI API, as llama-server -m does.",
    )
    add_child_arguments(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in (*COMMANDS, "-h", "--help", "--version"):
        arguments.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "child":
        from router.child.main import run_child
        from router.child.options import options_from_arguments

        engine_options, serve_options = options_from_arguments(args)
        return run_child(engine_options, serve_options)
    return _serve(parser, args)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from router.server import run_router
    from router.settings import RouterSettings, SettingsError

    keys = list(args.api_key)
    if args.api_key_file is not None:
        try:
            keys += [
                line.strip()
                for line in Path(args.api_key_file).read_text().splitlines()
                if line.strip() and not line.startswith("#")
            ]
        except OSError as exc:
            parser.error(f"--api-key-file {args.api_key_file}: {exc.strerror}")
    try:
        settings = RouterSettings(
            host=args.host,
            port=args.port,
            models_dirs=tuple(args.models_dir),
            models_max=args.models_max,
            models_autoload=args.models_autoload,
            api_keys=tuple(keys),
            models_allow_extra_args=args.models_allow_extra_args,
            child_args=child_args_from(args),
            stop_timeout_s=args.stop_timeout,
        )
    except SettingsError as exc:
        parser.error(exc.message)
    return run_router(settings)


if __name__ == "__main__":
    sys.exit(main())
