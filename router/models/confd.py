"""conf.d: one TOML file per model, and router.toml; read, validated, turned into ModelSpecs.

A model file (``conf.d/NAME.toml``)::

    name = "NAME"                 # default: the file's stem
    model = "models/x.gguf"       # a GGUF, relative to this file's folder; or:
    command = ["llama-server", "-m", "{model}", "--host", "{socket}"]  # any OpenAI server,
                                  # run in this file's folder
    health = "/health"            # polled until it answers 200 (command models)
    aliases = ["x"]
    description = "..."
    ttl = 300                     # seconds idle before it is unloaded; 0: never
    load_on_startup = false
    pinned = false                # never evicted
    stop_timeout = 10
    max_queue = 64                # requests waiting for it before 429
    [args]                        # child options (router/options_table.py)
    ctx_size = 8192
    [env]                         # environment for its process
    CUDA_VISIBLE_DEVICES = "0"

A model served elsewhere, by any OpenAI-compatible server (no 'model', 'command', [args]...)::

    url = "https://host:port"     # its root (or a base path): a request's path is appended
    remote_model = "its-id"       # the id it knows the model by (default: this model's name)
    api_key_env = "UPSTREAM_KEY"  # the variable holding its key, sent as Authorization: Bearer
    tls_verify = true             # https: true (the system's CAs), false, or "ca.pem"
    connect_timeout = 5           # seconds; also bounds each health check
    timeout = 600                 # seconds of silence before a request fails (default: -to)
    health = "/health"            # checked every --remote-interval seconds

Nothing here raises for a bad file: every problem becomes a ``ConfigProblem`` with the file,
the line where it can be found, and a message that says how to fix it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from router.errors import ConfigInvalid, RouterFileError
from router.options_table import OPTIONS_BY_KEY, check_bounds
from router.spec import ModelSpec, Peer, Upstream

# Sizes past which a value is a mistake, not a configuration. Linux refuses any single argv or
# environment string over 128 KiB (MAX_ARG_STRLEN), and all of them together over ARG_MAX.
MAX_FILE_BYTES = 1024 * 1024  # a conf.d file or router.toml
MAX_ARGUMENT_BYTES = 64 * 1024  # one string that reaches a child's argv or environment
MAX_ID_BYTES = 200  # a model id or alias: "<id>.toml" and its temporary stay under 255 bytes
MAX_DESCRIPTION_CHARS = 4096
MAX_SECONDS = 10**9  # ttl, stop_timeout: finite (JSON has no infinity) and below 31 years
MAX_QUEUE = 10**6
# [env] names as POSIX defines portable ones: what every shell and program can read back.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEALTH_PATH = re.compile(r"/[\x21-\x7e]*")  # an HTTP path: printable ASCII, no spaces
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

# A server elsewhere: a conf.d 'url' model's keys, and a router.toml [[peers]] table's.
UPSTREAM_KEYS: dict[str, type | tuple[type, ...]] = {
    "url": str,
    "name": str,
    "api_key_env": str,
    "tls_verify": (bool, str),
    "connect_timeout": (int, float),
    "timeout": (int, float),
}
CONFD_SOURCE = "conf.d"  # a conf.d model's "source" in GET /models
_PEER_NAME = re.compile(r"[\w.:-]{1,64}")

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
    **{key: kind for key, kind in UPSTREAM_KEYS.items() if key != "name"},
    "remote_model": str,
}
# Not for a 'url' model, which runs elsewhere: nothing here starts, stops or queues for it.
LOCAL_ONLY_KEYS = ("model", "command", "args", "env", "ttl", "load_on_startup", "pinned",
                   "stop_timeout", "max_queue")  # fmt: skip


@dataclass(frozen=True)
class ConfigProblem:
    """Why a config file cannot be used, where, and for which model id."""

    path: Path
    line: int | None
    message: str
    model_id: str
    source: str = CONFD_SOURCE  # the kind of file, as GET /models' "source" names it

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ConfdScan:
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    problems: dict[str, ConfigProblem] = field(default_factory=dict)  # by model id


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
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            message = f"it is {size} bytes long; a model's file may hold {MAX_FILE_BYTES} at most"
            return ConfigProblem(path, None, message, path.stem)
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
    model_id = name if isinstance(name, str) and _is_model_id(name) else path.stem
    try:
        return model_spec_from(data, path)
    except ConfigInvalid as exc:
        line = _line_of_key(text, exc.key, exc.table)
        return ConfigProblem(path, line, exc.message, model_id)


def model_spec_from(data: Mapping[str, Any], path: Path) -> ModelSpec:
    """Validate one model's table; raise ConfigInvalid naming the key at fault."""
    for key, value in data.items():
        expected = MODEL_KEYS.get(key)
        if expected is None:
            raise ConfigInvalid(f"unknown key {key!r}{_suggestion(key, MODEL_KEYS)}", key)
        _check_type(key, value, expected)
    model_id = data.get("name", path.stem)
    if not _is_model_id(model_id):
        raise ConfigInvalid(
            f"'name' {_shown(model_id)} may hold only letters, digits and . _ - : /, "
            f"{MAX_ID_BYTES} bytes at most",
            "name",
        )
    if "url" in data:
        return _remote_spec_from(data, path, model_id)
    for key in ("remote_model", *UPSTREAM_KEYS):
        if key in data and key != "name":
            raise ConfigInvalid(f"{key!r} is for a model served elsewhere: set 'url' too", key)
    has_model, has_command = "model" in data, "command" in data
    model_path = None  # neither: it configures the --models-dir model of the same id
    if has_model:
        _check_argument(data["model"], "'model'", "model")
        model_path = (path.parent / data["model"]).resolve()
        if not model_path.is_file():
            raise ConfigInvalid(f"'model' {data['model']!r}: no such file ({model_path})", "model")
    command = None
    if has_command:
        command = tuple(data["command"])
        if not command or not all(isinstance(part, str) for part in command):
            raise ConfigInvalid("'command' must be a non-empty list of strings", "command")
        for part in command:
            _check_argument(part, "every part of 'command'", "command")
        joined = " ".join(command)
        if "{port}" not in joined and "{socket}" not in joined:
            raise ConfigInvalid(
                "'command' must pass the address it gets, as {port} (or {socket}, a Unix "
                "socket path, if the server can listen on one)",
                "command",
            )
        if "{model}" in joined and model_path is None:
            raise ConfigInvalid("'command' uses {model}, so set 'model' too", "command")
    health, aliases = _checked_listing(data)
    env = checked_environment(data.get("env", {}))
    for key in ("ttl", "stop_timeout"):
        value = data.get(key, 0)
        if not 0 <= value <= MAX_SECONDS:  # NaN fails both comparisons
            raise ConfigInvalid(f"{key!r} must be 0 or more seconds, up to {MAX_SECONDS}", key)
    if not 0 <= data.get("max_queue", 1) <= MAX_QUEUE:
        raise ConfigInvalid(f"'max_queue' must be 0 or more, up to {MAX_QUEUE}", "max_queue")
    return ModelSpec(
        id=model_id,
        path=model_path,
        aliases=aliases,
        source=CONFD_SOURCE,
        source_file=path,
        description=data.get("description", ""),
        command=command,
        health=health,
        ttl_s=float(data.get("ttl", 0)),
        load_on_startup=data.get("load_on_startup", False),
        is_pinned=data.get("pinned", False),
        stop_timeout_s=float(data["stop_timeout"]) if "stop_timeout" in data else None,
        max_queue=data.get("max_queue"),
        args=_with_mmproj_found(checked_child_options(data.get("args", {})), path.parent),
        env=env,
    )


def _checked_listing(data: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The keys every model has, local or remote: its health path and aliases (returned) and
    its description (checked), each by one rule."""
    health = data.get("health", "/health")
    if not _HEALTH_PATH.fullmatch(health) or len(health) > 2048:
        raise ConfigInvalid(
            f"'health' {_shown(health)} must be an HTTP path: it starts with / and holds no "
            "spaces or control characters",
            "health",
        )
    aliases = tuple(data.get("aliases", ()))
    if not all(isinstance(alias, str) and alias for alias in aliases):
        raise ConfigInvalid("'aliases' must be a list of names", "aliases")
    for alias in aliases:
        if len(alias.encode()) > MAX_ID_BYTES or _CONTROL_CHARACTER.search(alias):
            raise ConfigInvalid(
                f"alias {_shown(alias)} must be at most {MAX_ID_BYTES} bytes, with no control "
                "characters",
                "aliases",
            )
    if len(data.get("description", "")) > MAX_DESCRIPTION_CHARS:
        raise ConfigInvalid(
            f"'description' may be {MAX_DESCRIPTION_CHARS} characters long at most", "description"
        )
    return health, aliases


def _check_type(key: str, value: Any, expected: type | tuple[type, ...]) -> None:
    allows_bool = expected is bool or (isinstance(expected, tuple) and bool in expected)
    if not isinstance(value, expected) or (not allows_bool and isinstance(value, bool)):
        raise ConfigInvalid(f"{key!r} must be {_type_name(expected)}, not {_toml_type(value)}", key)


def _remote_spec_from(data: Mapping[str, Any], path: Path, model_id: str) -> ModelSpec:
    """A 'url' model: served elsewhere, so none of the keys that start or queue it apply."""
    for key in LOCAL_ONLY_KEYS:
        if key in data:
            raise ConfigInvalid(
                f"{key!r} does not apply to a 'url' model, which runs on its own server: "
                "remove one of them",
                key,
            )
    remote_model = data.get("remote_model", model_id)
    if not remote_model or len(remote_model) > MAX_ID_BYTES or not remote_model.isprintable():
        raise ConfigInvalid("'remote_model' must be the id the server knows it by", "remote_model")
    health, aliases = _checked_listing(data)
    return ModelSpec(
        id=model_id,
        path=None,
        aliases=aliases,
        source=CONFD_SOURCE,
        source_file=path,
        description=data.get("description", ""),
        health=health,
        upstream=upstream_from(data, path.parent, model=remote_model),
    )


def upstream_from(data: Mapping[str, Any], folder: Path, *, model: str = "") -> Upstream:
    """A server elsewhere (a 'url' model, a [[peers]] table), checked; raise ConfigInvalid
    naming the key at fault. A relative ``tls_verify`` CA file is found in ``folder``."""
    for key, expected in UPSTREAM_KEYS.items():
        if key in data:
            _check_type(key, data[key], expected)
    url = checked_url(data.get("url"))
    key_env = data.get("api_key_env")
    if key_env is not None:
        if not _ENV_NAME.fullmatch(key_env):
            raise ConfigInvalid(
                f"'api_key_env' {_shown(key_env)} must name an environment variable (letters, "
                "digits and _): the key itself never goes in a file",
                "api_key_env",
            )
        if not os.environ.get(key_env):
            raise ConfigInvalid(
                f"'api_key_env' names {key_env}, which is not set (or empty) in the router's "
                "environment: set it before starting the router",
                "api_key_env",
            )
    given = data.get("tls_verify", True)
    tls_verify: bool | Path = given
    if isinstance(given, str):
        tls_verify = (folder / given).resolve()
        if not tls_verify.is_file():
            raise ConfigInvalid(
                f"'tls_verify' {data['tls_verify']!r}: no such CA file ({tls_verify}); give "
                "true, false or the path of a PEM file",
                "tls_verify",
            )
    seconds: dict[str, float] = {}
    for key in ("connect_timeout", "timeout"):
        if key in data:
            if not 0 < data[key] <= MAX_SECONDS:
                raise ConfigInvalid(f"{key!r} must be a number of seconds above 0", key)
            seconds[key] = float(data[key])
    return Upstream(
        url=url,
        model=model,
        api_key_env=key_env,
        tls_verify=tls_verify,
        connect_timeout_s=seconds.get("connect_timeout", Upstream.connect_timeout_s),
        timeout_s=seconds.get("timeout"),
    )


def checked_url(url: Any) -> str:
    """``url`` if it is ``http(s)://host[:port][/base]``; else ConfigInvalid saying why."""
    if not isinstance(url, str) or not url:
        raise ConfigInvalid("'url' must be a string: http://host:port or https://host:port", "url")
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError as exc:
        raise ConfigInvalid(f"'url' {_shown(url)} is not a URL: {exc}", "url") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigInvalid(
            f"'url' {_shown(url)} must start with http:// or https:// and name a host", "url"
        )
    if parsed.username is not None or parsed.password is not None:
        raise ConfigInvalid(
            "'url' must not hold a user or password: put the key in the variable that "
            "'api_key_env' names",
            "url",
        )
    if parsed.query or parsed.fragment or not _HEALTH_PATH.fullmatch(parsed.path or "/"):
        raise ConfigInvalid(
            f"'url' {_shown(url)} may have a base path, but no query, fragment or spaces", "url"
        )
    del port  # read only to check it
    return url.rstrip("/")


def peer_from(data: Mapping[str, Any], folder: Path) -> Peer:
    """One ``[[peers]]`` table (or ``--peer [NAME=]URL``); raise ConfigInvalid."""
    unknown = set(data) - set(UPSTREAM_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        hint = _suggestion(key, UPSTREAM_KEYS)
        raise ConfigInvalid(f"unknown key {key!r} in [[peers]]{hint}", key)
    upstream = upstream_from(data, folder)
    name = data.get("name") or urllib.parse.urlsplit(upstream.url).hostname or ""
    if not _PEER_NAME.fullmatch(name):
        raise ConfigInvalid(
            f"peer name {_shown(name)} may hold only letters, digits and . _ - : (its models "
            "are listed as NAME/model)",
            "name",
        )
    return Peer(name=name, upstream=upstream)


def checked_environment(env: Mapping[str, Any]) -> dict[str, str]:
    """``[env]`` as a child's environment can hold it; raise ConfigInvalid naming the bad key.

    A name with ``=`` or NUL, or a value with NUL, would make the spawn itself fail; other
    names than the portable ``[A-Za-z_][A-Za-z0-9_]*`` are refused too, as no shell can use them.
    """
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ConfigInvalid(
                f"[env] name {_shown(name)} is not a usable variable name: letters, digits "
                "and _, not starting with a digit",
                name,
                "env",
            )
        if not isinstance(value, str):
            raise ConfigInvalid(f"[env] {name!r} must be a string", name, "env")
        _check_argument(value, f"[env] {name!r}", name, "env")
    return dict(env)


def _check_argument(value: str, what: str, key: str, table: str | None = None) -> None:
    """Raise ConfigInvalid unless ``value`` can be one string of a process's argv or env."""
    if "\0" in value:
        raise ConfigInvalid(f"{what} holds a NUL character, which no program can receive", key,
                            table)  # fmt: skip
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ARGUMENT_BYTES:
        raise ConfigInvalid(f"{what} is longer than {MAX_ARGUMENT_BYTES} bytes", key, table)


def _is_model_id(value: Any) -> bool:
    return (
        isinstance(value, str)
        and re.fullmatch(r"[\w.:/-]+", value) is not None
        and len(value.encode()) <= MAX_ID_BYTES
    )


def _shown(value: Any) -> str:
    """``value`` for an error message: its repr, cut short when it is long."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} characters)"


def checked_child_options(options: Mapping[str, Any], *, table: str = "args") -> dict[str, Any]:
    """Child options as the known keys, kinds and bounds (``options_table``); raise
    ConfigInvalid naming the first bad one."""
    for key, value in options.items():
        option = OPTIONS_BY_KEY.get(key)
        if option is None:
            raise ConfigInvalid(
                f"unknown key {key!r} in [{table}]{_suggestion(key, OPTIONS_BY_KEY)}", key, table
            )
        where = f"[{table}] {key!r}"
        if option.kind == "choice":
            if key == "flash_attn" and isinstance(value, bool):
                continue
            if value not in option.choices:
                raise ConfigInvalid(f"{where} must be one of {', '.join(option.choices)}", key,
                                    table)  # fmt: skip
        elif option.kind in ("bool", "negated"):
            if not isinstance(value, bool):
                raise ConfigInvalid(f"{where} must be true or false", key, table)
        elif option.kind in ("str", "path"):
            if not isinstance(value, str):
                raise ConfigInvalid(f"{where} must be a string", key, table)
            _check_argument(value, where, key, table)
        else:
            kinds = int if option.kind == "int" else (int, float)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ConfigInvalid(f"{where} must be {_type_name(kinds)}", key, table)
            try:
                check_bounds(option, value)
            except ValueError as exc:
                raise ConfigInvalid(f"{where} is out of range: {exc}", key, table) from None
    return dict(options)


def _with_mmproj_found(args: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``args`` with ``mmproj`` found from the file's folder, as ``model`` is: the child runs
    elsewhere, so a relative path would name another file there."""
    if "mmproj" not in args:
        return args
    found = (folder / args["mmproj"]).resolve()
    if not found.is_file():
        raise ConfigInvalid(f"'mmproj' {args['mmproj']!r}: no such file ({found})", "mmproj",
                            "args")  # fmt: skip
    return {**args, "mmproj": str(found)}


@dataclass(frozen=True)
class RouterFile:
    """router.toml: ``[router]`` settings by flag name, ``[defaults]`` for every model."""

    router: dict[str, Any]
    defaults: dict[str, Any]
    plugins: list[str] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)  # [[peers]]: routers whose models we list


def read_router_file(path: Path) -> RouterFile:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RouterFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RouterFileError(f"{path}: {exc}") from exc
    unknown = set(data) - {"router", "defaults", "plugins", "peers"}
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
    tables = data.get("peers", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RouterFileError(f"{path}: 'peers' must be tables: [[peers]] with url = \"...\"")
    peers = []
    for number, table in enumerate(tables, start=1):
        try:
            peers.append(peer_from(table, path.parent))
        except ConfigInvalid as exc:
            raise RouterFileError(f"{path}: [[peers]] number {number}: {exc.message}") from exc
    return RouterFile(router=router, defaults=defaults, plugins=plugins, peers=peers)


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
        return "true, false or a string" if bool in expected else "a number"
    return names.get(expected, str(expected))


def _toml_type(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def _line_from_decode_error(exc: tomllib.TOMLDecodeError) -> int | None:
    match = re.search(r"at line (\d+)", str(exc))
    return int(match.group(1)) if match else None


def _line_of_key(text: str, key: str | None, table: str | None = None) -> int | None:
    """The line that sets ``key`` (bare or quoted), in ``[table]`` if given; else the line
    of ``[table]`` itself, or of the key as a table (``[args]`` for key ``args``)."""
    if key is None:
        return None
    lines = text.splitlines()
    names = "|".join(re.escape(form) for form in (key, f'"{key}"', f"'{key}'"))
    in_table = table is None
    for number, line in enumerate(lines, start=1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            in_table = header.group(1) == (table or key)
            if table is None and in_table:
                return number
            continue
        if in_table and re.match(rf"\s*(?:{names})\s*=", line):
            return number
    if table is not None:
        return _line_of_key(text, table)
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
        if spec.path is None and spec.command is None and spec.upstream is None:
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
