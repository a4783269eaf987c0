"""``--models-preset FILE.ini``: llama-server's preset files, read into the ModelSpecs conf.d
files make.

The format is llama.cpp's (``common/preset.cpp``, "Model presets" in tools/server/README.md)::

    version = 1
    [*]                           ; every model: the models folders', the cache's, the file's
    c = 8192
    [ggml-org/MY-MODEL-GGUF:Q8_0] ; a model already listed: these settings are its own
    n-gpu-layers = 123
    [custom_model]                ; a new model: name its file (or a cached repository)
    model = /abs/path/model.gguf  ; relative paths: to the router's working folder
    load-on-startup = true
    stop-timeout = 5

Keys are llama-server's option names without dashes, short or long (``c``, ``ctx-size``), or
their ``LLAMA_ARG_*`` variables; the options themselves come from ``router/options_table.py``.
Precedence, lowest first: ``[*]``, the model's section, the command line. Each section becomes
the same table a conf.d file holds and goes through ``confd.model_spec_from``: one checker.
A section that breaks a rule is a ``ConfigProblem`` (listed as invalid in ``GET /models``), as
is every section when the file itself cannot be read or parsed.

A conf.d file for the same id wins over the preset's section (conf.d is this router's own,
richer format); the section is then skipped, with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from router.errors import ConfigInvalid
from router.models.confd import (
    MAX_FILE_BYTES,
    ConfdScan,
    ConfigProblem,
    merge_catalog,
    model_spec_from,
)
from router.models.hf_cache import CACHE_SOURCE, cache_dir, scan_cache, split_repo_tag
from router.options_table import (
    COMPAT_FLAGS,
    MODEL_OPTIONS,
    ROUTER_FLAG_ENV,
    ModelOption,
    checked_value,
    nearest,
    parse_bool,
)
from router.spec import ModelSpec

log = logging.getLogger(__name__)

PRESET_SOURCE = "preset"  # a preset model's "source" in GET /models, as llama.cpp names it
GLOBAL_SECTION = "*"
_DEFAULT_SECTION = "default"  # llama.cpp's name for keys above the first section
# llama.cpp's grammar (common/preset.cpp): header, key = value, comment and blank lines.
_HEADER = re.compile(r"[ \t]*\[[ \t]*([^\]]+?)[ \t]*\][ \t]*(?:[;#].*)?")
_KEY_VALUE = re.compile(
    r"[ \t]*([A-Za-z_][A-Za-z0-9_.-]*)[ \t]*=[ \t]*([^;#\r\n]*?)[ \t]*(?:[;#].*)?"
)
_BLANK_OR_COMMENT = re.compile(r"[ \t]*(?:[;#].*)?")
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class _Key:
    """What a preset key sets: a child option, a key of a conf.d table, or (neither) nothing
    here: a flag that changes nothing, or one the router sets itself, as llama-server's does."""

    option: ModelOption | None = None
    # model, hf_repo, aliases, load_on_startup, stop_timeout, spec_draft_hf, dedup_cache_models
    table_key: str | None = None


# The COMPAT_FLAGS whose preset value is kept (in the table key named), though a child ignores it.
_COMPAT_TABLE_KEYS = {"alias": "aliases", "spec_draft_hf": "spec_draft_hf"}


def _key_table() -> dict[str, _Key]:
    """Every key a preset may use, by each of its spellings (llama.cpp's ``get_map_key_opt``)."""
    keys: dict[str, _Key] = {}
    for option in MODEL_OPTIONS:
        for name in (*option.flags, option.env):
            if name:
                keys[name.lstrip("-")] = _Key(option=option)
    for flag in COMPAT_FLAGS:
        target = _Key(table_key=_COMPAT_TABLE_KEYS.get(flag.key))
        for name in (*flag.flags, *flag.negative, flag.env):
            if name:
                keys[name.lstrip("-")] = target
    for router_flag, env in ROUTER_FLAG_ENV.items():  # host, port, keys: the router's own
        keys[router_flag] = keys[env] = _Key()
    for names, table_key in (
        (("m", "model", "LLAMA_ARG_MODEL"), "model"),
        (("hf", "hfr", "hf-repo", "LLAMA_ARG_HF_REPO"), "hf_repo"),
        (("load-on-startup",), "load_on_startup"),
        (("stop-timeout",), "stop_timeout"),
        (("dedup-cache-models",), "dedup_cache_models"),
    ):
        for name in names:
            keys[name] = _Key(table_key=table_key)
    return keys


PRESET_KEYS: dict[str, _Key] = _key_table()


@dataclass(frozen=True)
class _Section:
    name: str
    line: int
    values: dict[str, tuple[str, int]]  # key -> (value, line)


class _SyntaxProblem(Exception):
    """A line of the file that is not INI: nothing in the file can be trusted then."""

    def __init__(self, line: int, message: str, sections: list[str]) -> None:
        super().__init__(message)
        self.line, self.message, self.sections = line, message, sections


def parse_ini(text: str) -> dict[str, _Section]:
    """The sections of a preset file, as llama.cpp parses them: a repeated section starts
    over, a repeated key keeps its last value, ``;`` or ``#`` starts a comment (in a value
    too). Raise _SyntaxProblem at the first line that is none of header, key = value,
    comment or blank."""
    sections: dict[str, _Section] = {}
    current = _Section(_DEFAULT_SECTION, 0, {})
    sections[current.name] = current
    for number, line in enumerate(text.splitlines(), start=1):
        if (header := _HEADER.fullmatch(line)) is not None:
            current = _Section(_canonical_name(header.group(1)), number, {})
            sections[current.name] = current
        elif (pair := _KEY_VALUE.fullmatch(line)) is not None:
            current.values[pair.group(1)] = (pair.group(2), number)
        elif not _BLANK_OR_COMMENT.fullmatch(line):
            message = "not a [section], a key = value line or a comment"
            raise _SyntaxProblem(number, message, [s for s in sections if s != _DEFAULT_SECTION])
    return sections


def _canonical_name(name: str) -> str:
    """A section's model id with its tag as llama.cpp writes it (``repo:q4_k_m`` is
    ``repo:Q4_K_M``)."""
    if name == GLOBAL_SECTION or ":" not in name:
        return name
    repo, _, tag = name.rpartition(":")
    found = _TAG.search(tag)
    return f"{repo}:{(found.group(1) if found else tag).upper()}"


@dataclass(frozen=True)
class PresetScan:
    """A preset file read: its models' specs, its broken sections, and its ``[*]`` table
    (for the models of the folders and the cache)."""

    specs: dict[str, ModelSpec]
    problems: dict[str, ConfigProblem]
    globals: dict[str, Any]
    # The cache's files a section with dedup-cache-models names (its hf-repo and
    # spec-draft-hf): their cache entries are hidden from the listings, as llama-server's are.
    deduplicated: frozenset[Path] = frozenset()


def read_presets(path: Path, listed: Mapping[str, ModelSpec]) -> PresetScan:
    """The preset file at ``path``; a section named like a model of ``listed`` (the folders'
    and the cache's) configures that model. Never raises for a bad file."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return _whole_file_problem(
                path, None, f"it is {size} bytes; {MAX_FILE_BYTES} at most", []
            )
        text = path.read_text(encoding="utf-8")
        sections = parse_ini(text)
    except OSError as exc:
        return _whole_file_problem(path, None, f"cannot read it: {exc.strerror}", [])
    except UnicodeDecodeError:
        return _whole_file_problem(path, None, "it is not UTF-8 text", [])
    except _SyntaxProblem as exc:
        return _whole_file_problem(path, exc.line or None, exc.message, exc.sections)
    problems: dict[str, ConfigProblem] = {}
    models = {n: s for n, s in sections.items() if n not in (GLOBAL_SECTION, _DEFAULT_SECTION)}
    default = sections[_DEFAULT_SECTION]
    default.values.pop("version", None)
    if default.values:  # llama.cpp makes these a model named "default"
        models[_DEFAULT_SECTION] = default
    base: dict[str, Any] = {}
    if GLOBAL_SECTION in sections:
        try:
            base = _table_of(sections[GLOBAL_SECTION])
        except ConfigInvalid as exc:
            line = _line_of(sections[GLOBAL_SECTION], exc.key)
            names = list(models) or [path.stem]
            message = f"[*]: {exc.message}"
            return PresetScan(
                {}, {n: ConfigProblem(path, line, message, n, PRESET_SOURCE) for n in names}, {}
            )
    specs: dict[str, ModelSpec] = {}
    deduplicated: set[Path] = set()
    for name, section in models.items():
        try:
            own = _table_of(section)
            table = {**base, **own, "args": {**base.get("args", {}), **own.get("args", {})}}
            draft: str | None = table.pop("spec_draft_hf", None)
            is_dedup: bool = table.pop("dedup_cache_models", False)
            repos = (table.get("hf_repo"), draft)
            specs[name] = _spec_of(name, table, path, listed.get(name))
            if draft is not None:
                _warn_draft_ignored(name, draft)
            if is_dedup:
                deduplicated |= _cache_files(r for r in repos if r is not None)
        except ConfigInvalid as exc:
            glob = sections.get(GLOBAL_SECTION)
            is_global = (
                glob is not None and exc.key in glob.values and exc.key not in section.values
            )
            where = glob if is_global and glob is not None else section
            problems[name] = ConfigProblem(
                path, _line_of(where, exc.key), exc.message, name, PRESET_SOURCE
            )
    return PresetScan(specs, problems, base, frozenset(deduplicated))


# (model, draft) pairs warned about: the preset is read again on every rescan, the warning
# is said once per model and draft in the process's life.
_warned_drafts: set[tuple[str, str]] = set()


def _warn_draft_ignored(name: str, draft: str) -> None:
    """Say once that a section's ``spec-draft-hf`` does nothing: it is accepted so that
    llama-server's presets load unchanged, and never reaches a child (which would refuse it)."""
    if (name, draft) not in _warned_drafts:
        _warned_drafts.add((name, draft))
        log.warning(
            "preset [%s]: speculative decoding is not supported by the built-in child: the "
            "draft model is ignored (spec-draft-hf = %s)", name, draft,
        )  # fmt: skip


def _cache_files(repos: Iterable[str]) -> set[Path]:
    """The cache's files for ``repos`` (ORG/REPO[:QUANT]), resolved as llama-server compares
    them; a repository not in the cache names none (it hides nothing)."""
    files: set[Path] = set()
    for repo in repos:
        try:
            found = _cached(repo).path
        except ConfigInvalid:
            continue
        if found is not None:
            files.add(found.resolve())
    return files


def _whole_file_problem(
    path: Path, line: int | None, message: str, names: Iterable[str]
) -> PresetScan:
    """A file that cannot be read: each section found before the fault is invalid (or one
    entry named after the file, when none was)."""
    listed = list(names) or [path.stem]
    return PresetScan(
        {}, {n: ConfigProblem(path, line, message, n, PRESET_SOURCE) for n in listed}, {}
    )


def _line_of(section: _Section, key: str | None) -> int | None:
    if key is not None and key in section.values:
        return section.values[key][1]
    return section.line or None


def _table_of(section: _Section) -> dict[str, Any]:
    """A section's keys as a conf.d table (``args`` for the child options); raise
    ConfigInvalid naming the key at fault, with the nearest known key."""
    table: dict[str, Any] = {}
    args: dict[str, Any] = {}
    for key, (value, _line) in section.values.items():
        if key == "version":
            continue
        known = PRESET_KEYS.get(key)
        if known is None:
            hint = nearest(key, PRESET_KEYS)
            suffix = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigInvalid(f"unknown key {key!r}{suffix}", key)
        try:
            if known.option is not None:
                args[known.option.key] = checked_value(known.option, value)
            elif known.table_key in ("load_on_startup", "dedup_cache_models"):
                table[known.table_key] = parse_bool(value)
            elif known.table_key == "stop_timeout":
                table["stop_timeout"] = int(value)
            elif known.table_key == "aliases":
                table["aliases"] = [a.strip() for a in value.split(",") if a.strip()]
            elif known.table_key is not None:
                table[known.table_key] = value
        except ValueError as exc:
            reason = "must be a whole number" if known.table_key == "stop_timeout" else str(exc)
            raise ConfigInvalid(f"{key!r} = {value!r}: {reason}", key) from None
    if args:
        table["args"] = args
    return table


def _spec_of(name: str, table: dict[str, Any], path: Path, listed: ModelSpec | None) -> ModelSpec:
    """One section's table, checked by conf.d's rules, as a spec: its file is ``model``
    (relative to the working folder, as llama-server reads it), else a cached ``hf-repo``,
    else the listed model of its name."""
    hf_repo = table.pop("hf_repo", None)
    data: dict[str, Any] = {"name": name, **table}
    if "model" in data:
        data["model"] = str(Path(data["model"]).resolve())
    elif hf_repo is not None:
        listed = _cached(hf_repo)  # its file and projector, as for a model of the cache
    elif listed is None:
        raise ConfigInvalid(
            "set 'model' (a GGUF file) or 'hf-repo' (a model of the cache): no model of "
            "this name is in --models-dir or the cache",
            None,
        )
    if "mmproj" in data.get("args", {}):
        data["args"]["mmproj"] = str(Path(data["args"]["mmproj"]).resolve())
    spec = model_spec_from(data, path)
    if listed is not None and "model" not in data:  # paths as listed: a cache's are links
        spec = replace(spec, path=listed.path, mmproj=spec.mmproj or listed.mmproj)
    return replace(spec, source=PRESET_SOURCE)


def _cached(hf_repo: str) -> ModelSpec:
    """The cache's model for ``ORG/REPO[:QUANT]``: that tag, else Q4_K_M, Q8_0, then any."""
    try:
        repo, tag = split_repo_tag(hf_repo)
    except ValueError as exc:
        raise ConfigInvalid(f"'hf-repo': {exc}", "hf-repo") from None
    cached = {i: s for i, s in scan_cache(cache_dir()).items() if i.rpartition(":")[0] == repo}
    for wanted in (tag,) if tag else ("Q4_K_M", "Q8_0", *sorted(cached)):
        found = cached.get(f"{repo}:{wanted}") or cached.get(wanted)
        if found is not None:
            return found
    raise ConfigInvalid(
        f"'hf-repo' {hf_repo!r} is not in the model cache ({cache_dir()}): download it first "
        f"(llama-router serve -hf {hf_repo}, or POST /models)",
        "hf-repo",
    )


def catalog_with_presets(
    found: Mapping[str, ModelSpec], preset_file: Path | None, confd: ConfdScan
) -> tuple[dict[str, ModelSpec], dict[str, ConfigProblem]]:
    """The models of the folders and the cache (``found``), the preset file and conf.d
    together: ``[*]`` applies to the first two, a preset section replaces the model of its
    name, and a conf.d file wins over both (``confd.merge_catalog``)."""
    if preset_file is None:
        return merge_catalog(found, confd)
    presets = read_presets(preset_file, found)
    listed = {
        model_id: _deduplicated(_with_globals(spec, presets.globals), presets.deduplicated)
        for model_id, spec in found.items()
    }
    listed |= presets.specs
    problems = dict(presets.problems)
    for model_id in confd.specs.keys() | confd.problems.keys():
        if model_id in presets.specs or model_id in problems:
            log.warning(
                "config: [%s] of %s is not used: conf.d has a file for %s", model_id,
                preset_file, model_id,
            )  # fmt: skip
            problems.pop(model_id, None)
    for model_id in problems:
        listed.pop(model_id, None)  # a broken section hides the folder model it would configure
    specs, confd_problems = merge_catalog(listed, confd)
    return specs, problems | confd_problems


def _deduplicated(spec: ModelSpec, files: frozenset[Path]) -> ModelSpec:
    """A cache's model whose file a preset with dedup-cache-models uses, unlisted: the preset's
    entry stands for it, and a request that names it still works (llama-server's rule)."""
    if spec.source != CACHE_SOURCE or spec.path is None or spec.path.resolve() not in files:
        return spec
    log.info("hiding cache model %s (deduplicated by a preset)", spec.id)
    return replace(spec, is_listed=False)


def _with_globals(spec: ModelSpec, base: Mapping[str, Any]) -> ModelSpec:
    """A folder's or the cache's model with the ``[*]`` settings it has none of its own for."""
    if not base:
        return spec
    return replace(
        spec,
        args={**base.get("args", {}), **spec.args},
        load_on_startup=base.get("load_on_startup", spec.load_on_startup),
        stop_timeout_s=float(base["stop_timeout"])
        if "stop_timeout" in base
        else spec.stop_timeout_s,
    )
