"""The options a model's child takes, defined once: the conf.d ``[args]`` key, the child's
command-line flag, and the kind of value.

conf.d and router.toml validate values by kind, the router's command line offers the flags,
and ``own_children.py`` turns options into the child's argv; all of them read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.spec import ModelSpec

# Child options: conf.d key -> (llama-router child flag, kind). Kinds: int, str, bool (a flag
# that is present or not), "negated" (a bool whose false is the flag), or a tuple of choices.
CHILD_OPTIONS: dict[str, tuple[str, Any]] = {
    "ctx_size": ("--ctx-size", int),
    "n_gpu_layers": ("--n-gpu-layers", int),
    "threads": ("--threads", int),
    "threads_batch": ("--threads-batch", int),
    "batch_size": ("--batch-size", int),
    "ubatch_size": ("--ubatch-size", int),
    "parallel": ("--parallel", int),
    "chat_template": ("--chat-template", str),
    "embeddings": ("--embeddings", bool),
    "pooling": ("--pooling", ("model", "none", "mean", "cls", "last", "rank")),
    "reranking": ("--reranking", bool),  # /v1/rerank: --embeddings --pooling rank
    "flash_attn": ("--flash-attn", ("on", "off", "auto")),
    "mmap": ("--no-mmap", "negated"),
    "mlock": ("--mlock", bool),
    "seed": ("--seed", int),
    "max_queue": ("--max-queue", int),
}


# Every spelling of an option's flag that the router's command line and a client's
# ``POST /models/load`` args accept: llama-server's short form first.
FLAG_SPELLINGS: dict[str, tuple[str, ...]] = {
    "ctx_size": ("-c", "--ctx-size"),
    "n_gpu_layers": ("-ngl", "--n-gpu-layers", "--gpu-layers"),
    "threads": ("-t", "--threads"),
    "threads_batch": ("-tb", "--threads-batch"),
    "batch_size": ("-b", "--batch-size"),
    "ubatch_size": ("-ub", "--ubatch-size"),
    "parallel": ("-np", "--parallel"),
    "flash_attn": ("-fa", "--flash-attn"),
    "chat_template": ("--chat-template",),
    "max_queue": ("--max-queue",),
    "embeddings": ("--embeddings",),
    "mmap": ("--no-mmap",),
    "mlock": ("--mlock",),
}


def child_argv(options: Mapping[str, Any]) -> list[str]:
    """The child flags for ``options`` (keys of CHILD_OPTIONS)."""
    argv: list[str] = []
    for key, value in options.items():
        flag, kind = CHILD_OPTIONS[key]
        if kind is bool:
            argv += [flag] if value else []
        elif kind == "negated":
            argv += [] if value else [flag]
        elif key == "flash_attn" and isinstance(value, bool):
            argv += [flag, "on" if value else "off"]
        else:
            argv += [flag, str(value)]
    return argv


def effective_child_options(
    spec: ModelSpec, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Lowest first: router.toml [defaults] < the model's [args] < command-line flags."""
    return {**defaults, **spec.args, **overrides}
