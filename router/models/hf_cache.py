"""llama.cpp's model cache: where it is, what is in it, and how a file of a repository is chosen.

llama-server's router lists the models of its cache beside those of ``--models-dir`` and its
presets; users bring that cache with them, so we read it as llama.cpp does
(``common/hf-cache.cpp``, ``common/download.cpp``) and write it with ``huggingface_hub``, which
lays it out the same way:

* the folder is ``LLAMA_CACHE``, else ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
  ``HF_HOME/hub``, ``XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``;
* in it, the Hugging Face hub layout: ``models--ORG--REPO/refs/main`` names a commit,
  ``snapshots/COMMIT/FILE`` links to ``blobs/ETAG``;
* each model is ``ORG/REPO:TAG``, the tag read from the file name (``…-Q4_K_M.gguf`` is
  ``Q4_K_M``, upper case), loaded from its first split file (``…-00001-of-00003.gguf``), with
  an ``mmproj`` file of the same folder as its projector.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from router.spec import ModelSpec

CACHE_SOURCE = "cache"  # a cache model's "source" in GET /models, as llama.cpp names it
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # llama.cpp's choice when a repository is named without a tag
# Files beside a model that are not models themselves (llama.cpp's gguf_filename_is_model).
_NOT_MODELS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_REPO_ID = re.compile(r"^[A-Za-z0-9_]+(?:[/.-][A-Za-z0-9_]+)*$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder llama.cpp keeps downloaded models in (``hf_cache::get_cache_directory``)."""
    env = os.environ if env is None else env
    for variable, below in (
        ("LLAMA_CACHE", ()),
        ("HF_HUB_CACHE", ()),
        ("HUGGINGFACE_HUB_CACHE", ()),
        ("HF_HOME", ("hub",)),
        ("XDG_CACHE_HOME", ("huggingface", "hub")),
    ):
        if env.get(variable):
            return Path(env[variable]).joinpath(*below)
    return Path.home() / ".cache" / "huggingface" / "hub"


@dataclass(frozen=True)
class SplitInfo:
    """What a GGUF file name says: its name without split suffix, its tag, which split it is."""

    prefix: str
    tag: str
    index: int = 1
    count: int = 1


def split_info(path: str) -> SplitInfo | None:
    """llama.cpp's ``get_gguf_split_info``; None for a file that is not a GGUF."""
    if not path.endswith(".gguf"):
        return None
    prefix = path.removesuffix(".gguf")
    index = count = 1
    split = _SPLIT.match(prefix)
    if split is not None:
        prefix, index, count = split.group(1), int(split.group(2)), int(split.group(3))
    tag = _TAG.search(prefix)
    return SplitInfo(prefix, tag.group(1).upper() if tag else "", index, count)


def is_model_file(path: str) -> bool:
    """A GGUF that holds a model, not a projector or a draft beside one."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".gguf") and not any(word in name for word in _NOT_MODELS)


def split_repo_tag(text: str) -> tuple[str, str]:
    """``ORG/REPO[:TAG]`` as (repo, tag); ValueError, saying the form, for anything else."""
    repo, _, tag = text.partition(":")
    if not _REPO_ID.match(repo) or repo.count("/") != 1 or ":" in tag:
        raise ValueError(f"{text!r} is not a Hugging Face repository: expected ORG/REPO[:QUANT]")
    return repo, tag.upper()


def find_best_model(files: Iterable[str], tag: str) -> str | None:
    """The repository's file for ``tag`` (llama.cpp's ``find_best_model``): the first model
    file whose name holds the tag (case-insensitive); without a tag Q4_K_M, then Q8_0, then
    any model. Split files answer with their first split."""
    candidates = [
        f for f in files if is_model_file(f) and (split_info(f) or SplitInfo("", "")).index == 1
    ]
    for wanted in (tag,) if tag else DEFAULT_TAGS:
        pattern = re.compile(re.escape(wanted) + r"[.-]", re.IGNORECASE)
        for name in candidates:
            if pattern.search(name):
                return name
    if not tag and candidates:
        return candidates[0]
    return None


def files_of(files: Iterable[str], primary: str) -> list[str]:
    """Every file the model of ``primary`` needs: its splits, then an mmproj of its folder."""
    files = list(files)
    info = split_info(primary)
    needed = [primary]
    if info is not None and info.count > 1:
        needed = [
            f
            for f in files
            if (other := split_info(f)) is not None
            and (other.prefix, other.count) == (info.prefix, info.count)
        ]
    folder = primary.rpartition("/")[0]
    mmproj = sorted(
        f for f in files if f.endswith(".gguf") and "mmproj" in f and f.rpartition("/")[0] == folder
    )
    return sorted(needed) + mmproj[:1]


def repo_folder(cache: Path, repo: str) -> Path:
    """Where ``repo`` is kept in ``cache``: ``models--ORG--REPO``."""
    return cache / ("models--" + repo.replace("/", "--"))


def scan_cache(cache: Path) -> dict[str, ModelSpec]:
    """Every model in the cache, by id ``ORG/REPO:TAG`` (llama.cpp's
    ``common_list_cached_models``)."""
    specs: dict[str, ModelSpec] = {}
    if not cache.is_dir():
        return specs
    for folder in sorted(cache.iterdir()):
        repo = _repo_of(folder)
        snapshot = _snapshot(folder) if repo is not None else None
        if repo is None or snapshot is None:
            continue
        files = _snapshot_files(snapshot)
        for name in files:
            info = split_info(name)
            if info is None or info.index != 1 or not info.tag or not is_model_file(name):
                continue
            model_id = f"{repo}:{info.tag}"
            if model_id in specs:
                continue
            needed = files_of(files, name)
            mmproj = [f for f in needed if "mmproj" in f.rsplit("/", 1)[-1]]
            if len(needed) - len(mmproj) < info.count:
                continue  # a split set still downloading, or left incomplete
            specs[model_id] = ModelSpec(
                id=model_id,
                path=snapshot / name,
                mmproj=snapshot / mmproj[0] if mmproj else None,
                source=CACHE_SOURCE,
            )
    return specs


def remove_cached(cache: Path, model_id: str) -> bool:
    """Delete the files of ``ORG/REPO:TAG`` (its snapshot links, and each blob no other file
    of the repository still links to); the whole repository's folder when that was its last
    model. Whether anything was removed."""
    repo, tag = split_repo_tag(model_id)
    folder = repo_folder(cache, repo)
    snapshot = _snapshot(folder)
    if snapshot is None:
        return False
    files = _snapshot_files(snapshot)
    doomed = {f for f in files if (info := split_info(f)) is not None and info.tag == tag and tag}
    if not doomed:
        return False
    blobs = {(snapshot / f).resolve() for f in doomed}
    for name in doomed:
        (snapshot / name).unlink(missing_ok=True)
    kept = {(snapshot / f).resolve() for f in files if f not in doomed}
    for blob in blobs - kept:
        if blob.is_relative_to(folder.resolve()):
            blob.unlink(missing_ok=True)
    if not any(is_model_file(f) for f in files if f not in doomed):
        shutil.rmtree(folder, ignore_errors=True)
    return True


def _repo_of(folder: Path) -> str | None:
    if not folder.is_dir() or not folder.name.startswith("models--"):
        return None
    repo = folder.name.removeprefix("models--").replace("--", "/")
    return repo if _REPO_ID.match(repo) and repo.count("/") == 1 else None


def _snapshot(folder: Path) -> Path | None:
    """The snapshot ``refs/main`` names (else another ref's), as llama.cpp's get_cached_ref."""
    refs = folder / "refs"
    if not refs.is_dir():
        return None
    commits = []
    for ref in sorted(refs.iterdir(), key=lambda p: p.name != "main"):
        if not ref.is_file():
            continue
        lines = ref.read_text(errors="replace").splitlines()
        if lines and _COMMIT.match(lines[0]):
            commits.append(lines[0])
    for commit in commits[:1]:
        snapshot = folder / "snapshots" / commit
        if snapshot.is_dir():
            return snapshot
    return None


def _snapshot_files(snapshot: Path) -> list[str]:
    """The files of a snapshot, as paths inside the repository (``sub/dir/name.gguf``)."""
    return sorted(
        p.relative_to(snapshot).as_posix()
        for p in snapshot.rglob("*")
        if p.is_file() or p.is_symlink()
    )
