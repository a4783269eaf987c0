"""What Ollama's ``/api/tags``, ``/api/ps`` and ``/api/show`` say of a model, read from its
GGUF file's header and its state in the pool.

The ``digest`` is the SHA-256 of the file's path, size and modification time, not of its bytes:
hashing gigabytes on every listing would take minutes, and a client only compares digests to
notice that a model changed, which a new size or mtime says. Reading a header touches the disk
(and is cached per version of the file, ``gguf_header.py``): callers run these in a thread.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gguf

from router.edge.ollama_answers import rfc3339
from router.models.gguf_header import Scalar, parameter_count, scalar_metadata
from router.spec import ModelSpec

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
MAX_INFO_KEYS = 256  # model_info keys shown by /api/show
MAX_INFO_CHARS = 1024  # a longer string value is cut to this
_TEMPLATE_KEY = "tokenizer.chat_template"
# Ollama's expires_at for a model kept loaded for ever: its time.Duration's longest (~292 y).
_FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)


@dataclass(frozen=True)
class ModelFile:
    """A model's weights on disk: every shard's bytes, the newest mtime, and a digest."""

    size: int
    modified: datetime
    digest: str
    metadata: Mapping[str, Scalar]
    n_parameters: int | None


def read_model_file(spec: ModelSpec) -> ModelFile | None:
    """What the files of ``spec`` say; None for a model without one (a ``command`` model), or
    whose file cannot be read now (it is listed, with what is known)."""
    if spec.path is None:
        return None
    try:
        shards = _shards(spec.path)
        stats = [shard.stat() for shard in shards]
        metadata = scalar_metadata(spec.path)
        n_parameters: int | None = sum(parameter_count(shard) for shard in shards)
    except (OSError, ValueError):
        return None
    size = sum(stat.st_size for stat in stats)
    mtime_ns = max(stat.st_mtime_ns for stat in stats)
    fingerprint = f"{spec.path}\0{size}\0{mtime_ns}".encode()
    return ModelFile(
        size=size,
        modified=datetime.fromtimestamp(mtime_ns / 1e9, UTC),
        digest=hashlib.sha256(fingerprint).hexdigest(),
        metadata=metadata,
        n_parameters=n_parameters or None,
    )


def _shards(path: Path) -> list[Path]:
    """``path``, or every shard of the set whose first shard it is."""
    match = _SHARD.search(path.name)
    if match is None:
        return [path]
    stem, count = path.name[: match.start()], int(match.group(2))
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def details(file: ModelFile | None) -> dict[str, Any]:
    """Ollama's ``details``: format, family, parameter size and quantization."""
    metadata = file.metadata if file is not None else {}
    family = str(metadata.get("general.architecture", ""))
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": _parameter_size(file),
        "quantization_level": _quantization(metadata.get("general.file_type")),
    }


def _parameter_size(file: ModelFile | None) -> str:
    """As Ollama writes it (``270.00M``, ``8.0B``): the header's size label, else the count."""
    if file is None:
        return ""
    label = file.metadata.get("general.size_label")
    if isinstance(label, str) and label:
        return label
    if file.n_parameters is None:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if file.n_parameters >= scale:
            return f"{file.n_parameters / scale:.2f}{unit}"
    return str(file.n_parameters)


def _quantization(file_type: Scalar | None) -> str:
    if not isinstance(file_type, int) or isinstance(file_type, bool):
        return ""
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"unknown ({file_type})"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def listed(spec: ModelSpec, file: ModelFile | None) -> dict[str, Any]:
    """One model of ``/api/tags``."""
    return {
        "name": spec.id,
        "model": spec.id,
        "modified_at": rfc3339(file.modified if file else datetime.now(UTC)),
        "size": file.size if file else 0,
        "digest": file.digest if file else "",
        "details": details(file),
    }


def running(
    spec: ModelSpec, file: ModelFile | None, idle_for_s: float | None, options: Mapping[str, Any]
) -> dict[str, Any]:
    """One model of ``/api/ps``. ``idle_for_s``: how long it may still stay idle (None: for
    ever). ``size_vram`` is 0: the router does not know what a child put on a GPU."""
    now = datetime.now(UTC)
    expires = now + (_FOREVER if idle_for_s is None else timedelta(seconds=max(0.0, idle_for_s)))
    entry = listed(spec, file)
    entry.pop("modified_at")
    entry.update(expires_at=rfc3339(expires), size_vram=0)
    context_length = context_size(file, options)
    if context_length:
        entry["context_length"] = context_length
    return entry


def context_size(file: ModelFile | None, options: Mapping[str, Any]) -> int | None:
    """The context a child of this model gets: its ``ctx_size``, else the model's own."""
    if isinstance(options.get("ctx_size"), int) and options["ctx_size"] > 0:
        return int(options["ctx_size"])
    if file is None:
        return None
    trained = file.metadata.get(f"{file.metadata.get('general.architecture')}.context_length")
    return trained if isinstance(trained, int) and not isinstance(trained, bool) else None


def shown(spec: ModelSpec, file: ModelFile | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """``/api/show``: details, template, parameters, the header's scalars and capabilities."""
    metadata = file.metadata if file is not None else {}
    template = options.get("chat_template") or metadata.get(_TEMPLATE_KEY) or ""
    model_info: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith(_TEMPLATE_KEY):
            continue
        if len(model_info) >= MAX_INFO_KEYS:
            break
        model_info[key] = value[:MAX_INFO_CHARS] if isinstance(value, str) else value
    if file is not None and file.n_parameters is not None:
        model_info.setdefault("general.parameter_count", file.n_parameters)
    capabilities = ["completion"]
    if options.get("embeddings"):
        capabilities.append("embedding")
    if spec.mmproj is not None:
        capabilities.append("vision")
    context = context_size(file, options)
    parameters = f"num_ctx {context}" if context else ""
    source = spec.path if spec.path is not None else " ".join(spec.command or ())
    result: dict[str, Any] = {
        "license": str(metadata.get("general.license", "")),
        "modelfile": f"# served by llama-router\nFROM {source}\n",
        "parameters": parameters,
        "template": str(template),
        "details": details(file),
        "model_info": model_info,
        "capabilities": capabilities,
    }
    if file is not None:
        result["modified_at"] = rfc3339(file.modified)
    return result


def idle_time_left(ttl_s: float, last_used: float, in_flight: int, now: float) -> float | None:
    """How long a loaded model may still wait idle before its ttl unloads it (None: never)."""
    if ttl_s <= 0 or math.isinf(ttl_s):
        return None
    if in_flight > 0:
        return ttl_s
    return last_used + ttl_s - now
