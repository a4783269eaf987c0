"""The child's settings and its command line, named as llama-server names them.

A base module, not the child's own: the router parses a model's options here too, to hand a
waiting spare typed options (``options_to_json``) rather than a command line to parse again."""

from __future__ import annotations

import argparse
import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from router.cpu import physical_core_count
from router.options_table import MODEL_OPTIONS, OptionParser, add_compat_flags, add_model_option


class FlashAttention(enum.StrEnum):
    ON = "on"
    OFF = "off"
    AUTO = "auto"


class Pooling(enum.StrEnum):
    """How per-token embeddings become one vector; ``model`` uses what the GGUF says."""

    MODEL = "model"
    NONE = "none"
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"
    RANK = "rank"  # a reranker's classifier head: one score per text (--reranking)


@dataclass(frozen=True)
class EngineOptions:
    """How to load one model; every field has llama-server's default."""

    model_path: Path
    ctx_size: int = 4096
    n_gpu_layers: int = -1  # all layers, where a GPU backend is built in
    threads: int = 0  # 0: the number of physical cores, as llama-server
    threads_batch: int = 0  # 0: same as threads
    batch_size: int = 2048
    ubatch_size: int = 512
    parallel: int = 1
    slot_prompt_similarity: float = 0.1
    chat_template: str | None = None  # a built-in name or a Jinja template; None: the GGUF's
    reasoning_format: str = "auto"  # llama-server's --reasoning-format (reasoning.py)
    embeddings: bool = False
    pooling: Pooling = Pooling.MODEL
    mmproj: Path | None = None  # a multimodal projector: chat messages may then hold images
    flash_attn: FlashAttention = FlashAttention.AUTO
    cache_type_k: str = "f16"  # the KV cache's data types, as llama.cpp's GGML type names
    cache_type_v: str = "f16"
    use_mmap: bool = True
    use_mlock: bool = False
    seed: int = -1

    @property
    def effective_threads(self) -> int:
        return self.threads if self.threads > 0 else physical_core_count()

    @property
    def effective_threads_batch(self) -> int:
        return self.threads_batch if self.threads_batch > 0 else self.effective_threads


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the child's HTTP server listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    unix_socket: Path | None = None
    alias: str | None = None
    max_queue: int = 64  # requests waiting for a slot before 429
    api_key: str | None = None
    temp: float = 0.8  # --temp: the temperature of requests that set none
    n_predict: int = -1  # --n-predict: max_tokens for requests that set none (-1: no limit)


def add_child_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``llama-router child`` flags: llama-server's spellings, from ``options_table``."""
    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model", type=Path, required=True, help="GGUF file to serve")
    model.add_argument("-a", "--alias", help="model id to report (default: the file's stem)")
    serve = parser.add_argument_group("server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    serve.add_argument(
        "--unix-socket", type=Path, help="listen on this Unix socket instead of TCP (mode 0600)"
    )
    serve.add_argument("--api-key", help="require this bearer key (except on /health)")
    for option in MODEL_OPTIONS:
        is_switch = option.default is None or option.kind in ("bool", "negated")
        shown = "" if is_switch else f" (default: {option.default})"
        group = model if option.group == "model" else serve
        add_model_option(group, option, default=option.default, help_suffix=shown)
    add_compat_flags(
        parser.add_argument_group("llama-server flags accepted for a drop-in"), is_router=False
    )


DESCRIPTION = "Serve one GGUF model over the OpenAI API, as llama-server -m does."


def parse_child_arguments(argv: Sequence[str]) -> tuple[EngineOptions, ServeOptions]:
    """The options of ``llama-router child ARGV``; exits 2 with a usage line when they are bad.

    The child parses its own command line, so that it never imports the router's settings.
    """
    parser = OptionParser(prog="llama-router child", description=DESCRIPTION)
    add_child_arguments(parser)
    return options_from_arguments(parser.parse_args(list(argv)))


def options_from_arguments(args: argparse.Namespace) -> tuple[EngineOptions, ServeOptions]:
    engine = EngineOptions(
        model_path=args.model,
        ctx_size=args.ctx_size,
        n_gpu_layers=args.n_gpu_layers,
        threads=args.threads,
        threads_batch=args.threads_batch,
        batch_size=args.batch_size,
        ubatch_size=args.ubatch_size,
        parallel=args.parallel,
        slot_prompt_similarity=args.slot_prompt_similarity,
        chat_template=args.chat_template,
        reasoning_format=args.reasoning_format,
        embeddings=args.embeddings or args.reranking,
        pooling=Pooling.RANK if args.reranking else Pooling(args.pooling),
        mmproj=None if args.mmproj is None else Path(args.mmproj),
        flash_attn=FlashAttention(args.flash_attn),
        cache_type_k=args.cache_type_k,
        cache_type_v=args.cache_type_v,
        use_mmap=args.mmap,
        use_mlock=args.mlock,
        seed=args.seed,
    )
    serve = ServeOptions(
        host=args.host,
        port=args.port,
        unix_socket=args.unix_socket,
        alias=args.alias,
        max_queue=args.max_queue,
        api_key=args.api_key,
        temp=args.temp,
        n_predict=args.n_predict,
    )
    return engine, serve


class _QuietParser(OptionParser):
    """The child's parser, raising ValueError where it would print and exit."""

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise ValueError(message or f"exit status {status}")

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def parsed_or_none(argv: Sequence[str]) -> tuple[EngineOptions, ServeOptions] | None:
    """The options of ``llama-router child ARGV``, or None when they do not parse (then a new
    child, not a spare, gets them, and says what is wrong the way a child says it)."""
    parser = _QuietParser(prog="llama-router child", add_help=False)
    add_child_arguments(parser)
    try:
        return options_from_arguments(parser.parse_args(list(argv)))
    except ValueError:
        return None


def options_to_json(engine: EngineOptions, serve: ServeOptions) -> str:
    """``engine`` and ``serve`` as one JSON line: what a spare is handed (``assign``), typed
    options rather than a command line to parse again."""
    return json.dumps({"engine": asdict(engine), "serve": asdict(serve)}, default=str)


def options_from_json(text: str | bytes) -> tuple[EngineOptions, ServeOptions]:
    """The options :func:`options_to_json` wrote."""
    data = json.loads(text)
    engine: dict[str, Any] = dict(data["engine"])
    engine["model_path"] = Path(engine["model_path"])
    engine["mmproj"] = None if engine["mmproj"] is None else Path(engine["mmproj"])
    engine["pooling"] = Pooling(engine["pooling"])
    engine["flash_attn"] = FlashAttention(engine["flash_attn"])
    serve: dict[str, Any] = dict(data["serve"])
    serve["unix_socket"] = None if serve["unix_socket"] is None else Path(serve["unix_socket"])
    return EngineOptions(**engine), ServeOptions(**serve)
