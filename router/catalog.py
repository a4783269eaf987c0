"""Which models exist: a scan of the ``--models-dir`` folders, laid out as llama.cpp lays them.

* ``DIR/NAME.gguf`` is model ``NAME``.
* ``DIR/NAME/`` holding a multi-shard set (``*-00001-of-0000N.gguf``) is model ``NAME``, loaded
  from its first shard; holding one model file plus ``mmproj*.gguf`` it is model ``NAME`` with
  that projector. Other folders and non-GGUF files are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass(frozen=True)
class ModelSpec:
    """One model the router can serve: found in a models folder, or defined in conf.d."""

    id: str
    path: Path | None  # None only for a conf.d 'command' model that takes no file
    mmproj: Path | None = None
    aliases: tuple[str, ...] = ()
    source: str = "dir"  # "dir" or "file"
    source_file: Path | None = None
    description: str = ""
    command: tuple[str, ...] | None = None  # an OpenAI-compatible server to run instead
    health: str = "/health"  # for 'command' models: polled until it answers 200
    ttl_s: float = 0.0  # idle seconds before unloading; 0: never
    load_on_startup: bool = False
    is_pinned: bool = False
    stop_timeout_s: float | None = None  # None: the router's --stop-timeout
    max_queue: int | None = None  # requests that may wait for it; None: no limit
    args: Mapping[str, Any] = field(
        default_factory=dict
    )  # child options (child_options.CHILD_OPTIONS)
    env: Mapping[str, str] = field(default_factory=dict)


def scan_models_dirs(folders: Iterable[Path]) -> dict[str, ModelSpec]:
    """Every model found in ``folders``; on a repeated id, the first folder wins."""
    specs: dict[str, ModelSpec] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            spec = _spec_for(entry)
            if spec is not None and spec.id not in specs:
                specs[spec.id] = spec
    return specs


def _spec_for(entry: Path) -> ModelSpec | None:
    if entry.is_file() and entry.suffix == ".gguf" and not entry.name.startswith("mmproj"):
        if _SHARD.search(entry.name):
            return None  # a shard outside a folder of its own is ambiguous
        return ModelSpec(id=entry.stem, path=entry.resolve())
    if not entry.is_dir():
        return None
    ggufs = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix == ".gguf")
    mmprojs = [p for p in ggufs if p.name.startswith("mmproj")]
    weights = [p for p in ggufs if not p.name.startswith("mmproj")]
    shards = [p for p in weights if _SHARD.search(p.name)]
    if shards and len(shards) == len(weights):
        first = [p for p in shards if _SHARD.search(p.name).group(1) == "00001"]  # type: ignore[union-attr]
        if first:
            return ModelSpec(id=entry.name, path=first[0].resolve())
        return None
    if len(weights) == 1:
        mmproj = mmprojs[0].resolve() if mmprojs else None
        return ModelSpec(id=entry.name, path=weights[0].resolve(), mmproj=mmproj)
    return None
