"""Which models exist: a scan of the ``--models-dir`` folders, laid out as llama.cpp lays them.

* ``DIR/NAME.gguf`` is model ``NAME``.
* ``DIR/NAME/`` holding a multi-shard set (``*-00001-of-0000N.gguf``) is model ``NAME``, loaded
  from its first shard; holding one model file plus ``mmproj*.gguf`` it is model ``NAME`` with
  that projector. Other folders and non-GGUF files are ignored.

Without ``--models-dir`` (or once a model was downloaded, ``-hf``), llama.cpp's model cache is
read too (``hf_cache.py``): its models are ``ORG/REPO:TAG``, with ``source: "cache"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from router.models.hf_cache import scan_cache
from router.spec import ModelSpec

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass
class ModelFolders:
    """The folders the router lists models from: ``--models-dir``, and the cache when it is
    served (no ``--models-dir``, or a model was downloaded into it: from then on, for good)."""

    models_dirs: tuple[Path, ...]
    cache: Path
    is_cache_served: bool
    single_model: ModelSpec | None = None  # -m: this model alone, whatever the folders hold

    def scan(self) -> dict[str, ModelSpec]:
        """Every model in them; a ``--models-dir`` model wins over a cache model of its id
        (llama.cpp's order)."""
        if self.single_model is not None:
            return {self.single_model.id: self.single_model}
        specs = scan_models_dirs(self.models_dirs)
        if self.is_cache_served:
            for model_id, spec in scan_cache(self.cache).items():
                specs.setdefault(model_id, spec)
        return specs

    def describe(self) -> str:
        """The folders scanned, for the start-up log line."""
        if self.single_model is not None:
            return f"{self.single_model.path} (-m)"
        folders = [str(folder) for folder in self.models_dirs]
        if self.is_cache_served:
            folders.append(f"{self.cache} (cache)")
        return ", ".join(folders) or "none"


def single_model_spec(path: Path, alias: str | None) -> ModelSpec:
    """The model ``-m`` serves, as llama-server -m does: loaded at start and never unloaded
    (pinned), named by ``--alias``, else by its file's name."""
    return ModelSpec(
        id=alias or path.stem, path=path.resolve(), load_on_startup=True, is_pinned=True
    )


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
