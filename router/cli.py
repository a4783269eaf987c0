"""The ``llama-router`` command: its subcommands and their flags; no serving logic."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import router


def build_parser() -> argparse.ArgumentParser:
    from router.child.options import add_child_arguments

    parser = argparse.ArgumentParser(
        prog="llama-router",
        description="One OpenAI-compatible endpoint for many local GGUF models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {router.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    child = commands.add_parser(
        "child",
        help="serve one model (like llama-server -m); the router runs one per model",
        description="Serve one GGUF model over the OpenAI API, as llama-server -m does.",
    )
    add_child_arguments(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "child":
        from router.child.main import run_child
        from router.child.options import options_from_arguments

        engine_options, serve_options = options_from_arguments(args)
        return run_child(engine_options, serve_options)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
