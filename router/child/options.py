"""The child's settings and its command line, named as llama-server names them."""

from __future__ import annotations

import argparse
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router.child.cpu import physical_core_count
from router.child.reasoning import ReasoningFormat


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
    mmproj: Path | None = None  # a multimodal projector (not used yet: images are refused)
    flash_attn: FlashAttention = FlashAttention.AUTO
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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def add_child_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``llama-router child`` flags (a subset of llama-server's, same spellings)."""
    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model", type=Path, required=True, help="GGUF file to serve")
    model.add_argument("-a", "--alias", help="model id to report (default: the file's stem)")
    model.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=4096,
        help="context size in tokens, split evenly between the --parallel slots "
        "(default: 4096; 0: the model's)",
    )
    model.add_argument(
        "-ngl",
        "--n-gpu-layers",
        "--gpu-layers",
        type=int,
        default=-1,
        help="layers to offload to the GPU (default: -1, all)",
    )
    model.add_argument(
        "-t",
        "--threads",
        type=int,
        default=0,
        help="generation threads (default: physical cores, as llama-server)",
    )
    model.add_argument(
        "-tb",
        "--threads-batch",
        type=int,
        default=0,
        help="prompt-processing threads (default: same as --threads)",
    )
    model.add_argument(
        "-b",
        "--batch-size",
        type=_positive,
        default=2048,
        help="logical batch size (default: 2048)",
    )
    model.add_argument(
        "-ub",
        "--ubatch-size",
        type=_positive,
        default=512,
        help="physical batch size (default: 512)",
    )
    model.add_argument(
        "-np",
        "--parallel",
        type=_positive,
        default=1,
        help="requests decoded at once, in one batch; each slot gets --ctx-size / N tokens "
        "(default: 1)",
    )
    model.add_argument(
        "-sps",
        "--slot-prompt-similarity",
        type=_fraction,
        default=0.1,
        help="a request goes to the slot whose cached tokens start its prompt, when they are "
        "more than this part of it; else to the slot used longest ago (default: 0.1; 0: never)",
    )
    model.add_argument(
        "--chat-template",
        help="built-in template name (chatml, llama3, mistral) or a Jinja "
        "template (default: the GGUF's, else chatml)",
    )
    model.add_argument(
        "--reasoning-format",
        choices=[f.value for f in ReasoningFormat],
        default="auto",
        help="where <think> thoughts go: none leaves them in the content; deepseek and auto "
        "move them to reasoning_content; deepseek-legacy copies them there (default: auto)",
    )
    model.add_argument(
        "--embeddings", action="store_true", help="serve /v1/embeddings (for embedding models)"
    )
    model.add_argument(
        "--pooling",
        choices=[p.value for p in Pooling],
        default="model",
        help="pooling for embeddings (default: what the model says)",
    )
    model.add_argument(
        "--rerank",
        "--reranking",
        dest="reranking",
        action="store_true",
        help="serve /v1/rerank (for reranker models): --embeddings --pooling rank",
    )
    model.add_argument(
        "--mmproj",
        type=Path,
        help="the model's multimodal projector (the router passes its folder's mmproj*.gguf)",
    )
    model.add_argument(
        "-fa",
        "--flash-attn",
        choices=[f.value for f in FlashAttention],
        default="auto",
        help="flash attention (default: auto)",
    )
    model.add_argument("--no-mmap", action="store_true", help="read the file instead of mmap")
    model.add_argument("--mlock", action="store_true", help="keep the model in RAM")
    model.add_argument(
        "-s", "--seed", type=int, default=-1, help="default sampling seed (default: -1, random)"
    )
    serve = parser.add_argument_group("server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    serve.add_argument(
        "--unix-socket", type=Path, help="listen on this Unix socket instead of TCP (mode 0600)"
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests that may wait for a free slot before 429 (default: 64)",
    )
    serve.add_argument("--api-key", help="require this bearer key (except on /health)")


DESCRIPTION = "Serve one GGUF model over the OpenAI API, as llama-server -m does."


def parse_child_arguments(argv: Sequence[str]) -> tuple[EngineOptions, ServeOptions]:
    """The options of ``llama-router child ARGV``; exits 2 with a usage line when they are bad.

    The child parses its own command line, so that it never imports the router's settings.
    """
    parser = argparse.ArgumentParser(prog="llama-router child", description=DESCRIPTION)
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
        mmproj=args.mmproj,
        flash_attn=FlashAttention(args.flash_attn),
        use_mmap=not args.no_mmap,
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
    )
    return engine, serve
