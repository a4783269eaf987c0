"""conf.d: one TOML file per model, and router.toml; read, validated, turned into ModelSpecs.

A model file (``conf.d/NAME.toml``)::

    name = "NAME"                 # default: the file's stem
    model = "models/x.gguf"       # a GGUF, relative to this file's folder; or:
    command = ["llama-server", "-m", "{model}", "--port", "{port}"]   # any OpenAI server,
                                  # run in this file's folder
    health = "/health"            # polled until it answers 200 (command models)
    aliases = ["x"]
    description = "..."
    ttl = 300                     # seconds idle before it is unloaded; 0: never
    load_on_startup = false
    pinned = false                # never evicted
    stop_timeout = 10
    max_queue = 64                # requests waiting for it before 429
    [args]                        # child options (see CHILD_OPTIONS)
    ctx_size = 8192
    [env]                         # environment for its process
    CUDA_VISIBLE_DEVICES = "0"

Nothing here raises for a bad file: every problem becomes a ``ConfigProblem`` with the file,
the line where it can be found, and a message that says how to fix it.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from router.catalog import ModelSpec

PLACEHOLDERS = ("{port}", "{host}", "{model}")

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
    "pooling": ("--pooling", ("model", "none", "mean", "cls", "last")),
    "flash_attn": ("--flash-attn", ("on", "off", "auto")),
    "mmap": ("--no-mmap", "negated"),
    "mlock": ("--mlock", bool),
    "seed": ("--seed", int),
    "max_queue": ("--max-queue", int),
}

MODEL_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "model": str,
    "command": list,
    "health": str,
    "aliases": list,
    "description": str,
    "ttl": (int, float),
    "load_on_startup": bool,
    "pinned": bool,
    "stop_timeout": (int, float),
    "max_queue": int,
    "args": dict,
    "env": dict,
}


@dataclass(frozen=True)
class ConfigProblem:
    """Why a config file cannot be used, where, and for which model id."""

    path: Path
    line: int | None
    message: str
    model_id: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ConfdScan:
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    problems: dict[str, ConfigProblem] = field(default_factory=dict)  # by model id


class ConfigInvalid(Exception):
    """A model table breaks a rule; ``key`` is the key at fault, when there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


def scan_conf_dir(folder: Path | None) -> ConfdScan:
    """Every ``*.toml`` in ``folder``: the valid ones as specs, the others as problems.

    Duplicate ids or aliases make both files' models invalid, each message naming the other.
    """
    scan = ConfdScan()
    if folder is None or not folder.is_dir():
        return scan
    owners: dict[str, Path] = {}  # every id and alias -> the file that claims it
    for path in sorted(folder.glob("*.toml")):
        result = read_model_file(path)
        if isinstance(result, ConfigProblem):
            scan.problems[result.model_id] = result
            continue
        clash = next((n for n in (result.id, *result.aliases) if n in owners), None)
        if clash is not None:
            other = owners[clash]
            message = f"the name {clash!r} is also claimed by {other}; rename one of them"
            scan.problems[result.id] = ConfigProblem(path, None, message, result.id)
            other_id = next((i for i, s in scan.specs.items() if s.source_file == other), None)
            if other_id is not None:
                del scan.specs[other_id]
                scan.problems[other_id] = ConfigProblem(
                    other, None, f"the name {clash!r} is also claimed by {path}", other_id
                )
            continue
        for name in (result.id, *result.aliases):
            owners[name] = path
        scan.specs[result.id] = result
    return scan


def read_model_file(path: Path) -> ModelSpec | ConfigProblem:
    """One conf.d file as a spec, or the problem that stops it."""
    text = ""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        return ConfigProblem(path, None, f"cannot read it: {exc.strerror}", path.stem)
    except UnicodeDecodeError:
        return ConfigProblem(path, None, "it is not UTF-8 text", path.stem)
    except tomllib.TOMLDecodeError as exc:
        line = _line_from_decode_error(exc)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        return ConfigProblem(path, line, f"not valid TOML: {message}", path.stem)
    name = data.get("name")
    model_id = name if isinstance(name, str) else path.stem
    try:
        return model_spec_from(data, path)
    except ConfigInvalid as exc:
        return ConfigProblem(path, _line_of_key(text, exc.key), exc.message, model_id)


def model_spec_from(data: Mapping[str, Any], path: Path) -> ModelSpec:
    """Validate one model's table; raise ConfigInvalid naming the key at fault."""
    for key, value in data.items():
        expected = MODEL_KEYS.get(key)
        if expected is None:
            raise ConfigInvalid(f"unknown key {key!r}{_suggestion(key, MODEL_KEYS)}", key)
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigInvalid(
                f"{key!r} must be {_type_name(expected)}, not {_toml_type(value)}", key
            )
    model_id = data.get("name", path.stem)
    if not model_id or not re.fullmatch(r"[\w.:/-]+", model_id):
        raise ConfigInvalid(
            f"'name' {model_id!r} may hold only letters, digits and . _ - : /", "name"
        )
    has_model, has_command = "model" in data, "command" in data
    model_path = None  # neither: it configures the --models-dir model of the same id
    if has_model:
        model_path = (path.parent / data["model"]).resolve()
        if not model_path.is_file():
            raise ConfigInvalid(f"'model' {data['model']!r}: no such file ({model_path})", "model")
    command = None
    if has_command:
        command = tuple(data["command"])
        if not command or not all(isinstance(part, str) for part in command):
            raise ConfigInvalid("'command' must be a non-empty list of strings", "command")
        if "{port}" not in " ".join(command):
            raise ConfigInvalid("'command' must pass the port it gets, as {port}", "command")
        if "{model}" in " ".join(command) and model_path is None:
            raise ConfigInvalid("'command' uses {model}, so set 'model' too", "command")
    aliases = tuple(data.get("aliases", ()))
    if not all(isinstance(alias, str) and alias for alias in aliases):
        raise ConfigInvalid("'aliases' must be a list of names", "aliases")
    env = data.get("env", {})
    if not all(isinstance(value, str) for value in env.values()):
        raise ConfigInvalid("every value in [env] must be a string", "env")
    for key in ("ttl", "stop_timeout"):
        if data.get(key, 0) < 0:
            raise ConfigInvalid(f"{key!r} must be 0 or more", key)
    if data.get("max_queue", 1) < 0:
        raise ConfigInvalid("'max_queue' must be 0 or more", "max_queue")
    return ModelSpec(
        id=model_id,
        path=model_path,
        aliases=aliases,
        source="file",
        source_file=path,
        description=data.get("description", ""),
        command=command,
        health=data.get("health", "/health"),
        ttl_s=float(data.get("ttl", 0)),
        load_on_startup=data.get("load_on_startup", False),
        is_pinned=data.get("pinned", False),
        stop_timeout_s=float(data["stop_timeout"]) if "stop_timeout" in data else None,
        max_queue=data.get("max_queue"),
        args=checked_child_options(data.get("args", {})),
        env=dict(env),
    )


def checked_child_options(options: Mapping[str, Any], *, table: str = "args") -> dict[str, Any]:
    """Child options as the known keys and types; raise ConfigInvalid naming the first bad one."""
    for key, value in options.items():
        known = CHILD_OPTIONS.get(key)
        if known is None:
            raise ConfigInvalid(
                f"unknown key {key!r} in [{table}]{_suggestion(key, CHILD_OPTIONS)}", key
            )
        kind = known[1]
        if isinstance(kind, tuple):
            if key == "flash_attn" and isinstance(value, bool):
                continue
            if value not in kind:
                raise ConfigInvalid(f"[{table}] {key!r} must be one of {', '.join(kind)}", key)
        elif kind in (bool, "negated"):
            if not isinstance(value, bool):
                raise ConfigInvalid(f"[{table}] {key!r} must be true or false", key)
        elif not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigInvalid(f"[{table}] {key!r} must be {_type_name(kind)}", key)
    return dict(options)


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


@dataclass(frozen=True)
class RouterFile:
    """router.toml: ``[router]`` settings by flag name, ``[defaults]`` for every model."""

    router: dict[str, Any]
    defaults: dict[str, Any]
    plugins: list[str] = field(default_factory=list)


class RouterFileError(Exception):
    """router.toml is unusable: the router does not start (conf.d files never stop it)."""


def read_router_file(path: Path) -> RouterFile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RouterFileError(f"{path}: {exc}") from exc
    unknown = set(data) - {"router", "defaults", "plugins"}
    if unknown:
        raise RouterFileError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    try:
        defaults = checked_child_options(data.get("defaults", {}), table="defaults")
    except ConfigInvalid as exc:
        raise RouterFileError(f"{path}: {exc.message}") from exc
    router = {key.replace("-", "_"): value for key, value in data.get("router", {}).items()}
    plugins = data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise RouterFileError(f"{path}: 'plugins' must be a list of module names or .py paths")
    return RouterFile(router=router, defaults=defaults, plugins=plugins)


def _suggestion(key: str, known: Iterable[str]) -> str:
    names = list(known)
    close = difflib.get_close_matches(key, names, n=1) or [
        name for name in names if name.startswith(key) or key in name
    ]
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(expected: Any) -> str:
    names = {str: "a string", list: "a list", bool: "true or false", dict: "a table",
             int: "an integer", float: "a number"}  # fmt: skip
    if isinstance(expected, tuple):
        return "a number"
    return names.get(expected, str(expected))


def _toml_type(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def _line_from_decode_error(exc: tomllib.TOMLDecodeError) -> int | None:
    match = re.search(r"at line (\d+)", str(exc))
    return int(match.group(1)) if match else None


def _line_of_key(text: str, key: str | None) -> int | None:
    if key is None:
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"\s*{re.escape(key)}\s*=|\s*\[{re.escape(key)}\]", line):
            return number
    return None


def merge_catalog(
    dir_specs: Mapping[str, ModelSpec], scan: ConfdScan
) -> tuple[dict[str, ModelSpec], dict[str, ConfigProblem]]:
    """The models of ``--models-dir`` and ``conf.d`` together.

    A conf.d file with the id of a folder model gives that model its settings; if the file
    names no 'model' or 'command', the folder's file is used.
    """
    specs = dict(dir_specs)
    problems = dict(scan.problems)
    for model_id, spec in scan.specs.items():
        if spec.path is None and spec.command is None:
            found = dir_specs.get(model_id)
            if found is None:
                problems[model_id] = ConfigProblem(
                    spec.source_file or Path(model_id), None,
                    "set 'model' (a GGUF file) or 'command' (a server to run); no model of "
                    "that name is in --models-dir either", model_id,
                )  # fmt: skip
                continue
            spec = replace(spec, path=found.path, mmproj=found.mmproj)
        specs[model_id] = spec
    for model_id in problems:
        specs.pop(model_id, None)  # an invalid file hides the folder model it would configure
    return specs, problems
