"""The ``llama-router`` command: its subcommands and their flags; no serving logic.

Every ``serve`` flag can also come from an environment variable, ``LLAMA_ROUTER_`` plus the
flag's name in capitals (``--models-max`` is ``LLAMA_ROUTER_MODELS_MAX``); repeatable flags
take several values separated by ``os.pathsep`` (``:``). llama-server's variables work too
(``LLAMA_ARG_PORT``, ``LLAMA_API_KEY``, ``LLAMA_ARG_CTX_SIZE``...: ``options_table``), below
the ``LLAMA_ROUTER_*`` one of the same flag.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from router.control import COMMANDS as CONTROL_COMMANDS
from router.control import add_control_commands, run_control
from router.errors import RouterFileError, SettingsError, StartupError
from router.logs import LOG_FORMATS
from router.options_table import (
    MODEL_OPTIONS,
    OPTIONS_BY_KEY,
    ROUTER_FLAG_ENV,
    OptionParser,
    add_compat_flags,
    add_model_option,
    options_from_env,
    parse_bool,
)
from router.spec import Peer
from router.version import __version__

ENV_PREFIX = "LLAMA_ROUTER_"
COMMANDS = ("serve", "child", "plugins", *CONTROL_COMMANDS)


def _env(name: str) -> str | None:
    return os.environ.get(_env_name(name))


def _env_name(name: str) -> str:
    """The variable that sets flag ``name``: ``LLAMA_ROUTER_<FLAG>``, else llama-server's."""
    ours = ENV_PREFIX + name.upper().replace("-", "_")
    theirs = ROUTER_FLAG_ENV.get(name)
    if theirs is not None and ours not in os.environ and theirs in os.environ:
        return theirs
    return ours


def _env_list(name: str) -> list[str]:
    """A repeatable flag's values: ``os.pathsep`` between them; llama-server's variables hold
    one value, but for LLAMA_API_KEY's keys, which are separated by commas."""
    value = _env(name)
    if not value:
        return []
    if _env_name(name).startswith(ENV_PREFIX):
        return [item for item in value.split(os.pathsep) if item]
    return [item for item in value.split(",") if item] if name == "api-key" else [value]


def _env_flag(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise SettingsError(f"{_env_name(name)}={value!r}: {exc}") from None


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise SettingsError(f"{_env_name(name)}={value!r} is not a whole number") from None


def _env_float(name: str, default: float) -> float:
    value = _env(name)
    try:
        return float(default) if value is None else float(value)
    except ValueError:
        raise SettingsError(f"{_env_name(name)}={value!r} is not a number") from None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("router")
    add = server.add_argument
    add("--host", default=_env("host") or "127.0.0.1", help="address to bind (default: 127.0.0.1)")
    add("--port", type=int, default=_env_int("port", 8080), help="port (default: 8080)")
    add(
        "--models-dir",
        type=Path,
        action="append",
        default=[Path(p) for p in _env_list("models-dir")],
        help="folder of GGUF models, as llama.cpp lays them out (repeatable)",
    )
    add(
        "-m",
        "--model",
        type=Path,
        default=_env("model"),
        metavar="FILE.gguf",
        help="serve this one model, as llama-server -m: loaded at start, never unloaded, "
        "answering whatever model a request names (its id: --alias, else the file's name)",
    )
    add(
        "-hf",
        "--hf-repo",
        default=_env("hf-repo"),
        metavar="ORG/REPO[:QUANT]",
        help="download this Hugging Face model into llama.cpp's model cache before serving",
    )
    add(
        "--config",
        type=Path,
        default=_env("config"),
        help="router.toml: [router] settings and [defaults] for every model "
        "(default: router.toml beside conf.d/, if there)",
    )
    add(
        "--conf-dir",
        type=Path,
        default=_env("conf-dir"),
        help="folder of per-model TOML files, watched for changes (default: ./conf.d, if there)",
    )
    add(
        "--models-preset",
        type=Path,
        default=_env("models-preset"),
        metavar="FILE.ini",
        help="llama-server's preset file: [*] settings for every model, a section per model "
        "(re-read on POST /models/reload and SIGHUP)",
    )
    add(
        "--models-max",
        type=int,
        default=_env_int("models-max", 4),
        help="models loaded at once; the least recently used idle one is unloaded to make "
        "room (default: 4; 0: no limit)",
    )
    add(
        "--spares",
        type=int,
        default=_env_int("spares", 1),
        help="child processes kept started (Python and llama.cpp imported, about 60 MiB each) "
        "so that a load need not start one; another starts as soon as one is used "
        "(default: 1; 0: none)",
    )
    add(
        "--models-autoload",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("models-autoload", True),
        help="load a model when a request names it (default: on)",
    )
    add(
        "--sleep-idle-seconds",
        type=int,
        default=_env_int("sleep-idle-seconds", -1),
        metavar="SECONDS",
        help="a model idle this long sleeps: its process stops, freeing its memory, until the "
        "next request wakes it (the ttl of models without their own; default: -1, never)",
    )
    add(
        "--api-key",
        action="append",
        default=_env_list("api-key"),
        help="require this key as 'Authorization: Bearer KEY' (repeatable, or KEY1,KEY2 as "
        "llama-server; other local users can read a command line: prefer --api-key-file)",
    )
    add(
        "--api-key-file",
        type=Path,
        default=_env("api-key-file"),
        help="file with one API key per line ('#' starts a comment line)",
    )
    add(
        "--admin-api-key",
        action="append",
        default=_env_list("admin-api-key"),
        help="a key that may also read and change model configs (repeatable). With "
        "--allow-config-writes it can add a 'command' model or an [env] LD_PRELOAD: run any "
        "program as this user. See SECURITY.md",
    )
    add(
        "--admin-api-key-file",
        type=Path,
        default=_env("admin-api-key-file"),
        help="file with one admin key per line, so that none appears in the command line",
    )
    add(
        "--models-allow-extra-args",
        action="store_true",
        default=_env_flag("models-allow-extra-args", False),
        help="let POST /models/load pass child arguments (only "
        + ", ".join(o.flags[0] for o in MODEL_OPTIONS if o.is_client_settable)
        + "; default: off)",
    )
    add(
        "--stream-load-progress",
        action="store_true",
        default=_env_flag("stream-load-progress", False),
        help="while a streaming request waits for its model to load, send it an SSE comment "
        "(': loading MODEL (1.2 s)') about once a second instead of silence (default: off)",
    )
    add(
        "--allow-config-writes",
        action="store_true",
        default=_env_flag("allow-config-writes", False),
        help="let PUT/PATCH/DELETE /models/{id}/config edit conf.d files (default: off). "
        "Whoever may write configs may run any program as this user (a 'command' model, "
        "[env] LD_PRELOAD); without an admin key the router starts only on a loopback address",
    )
    add(
        "--plugin",
        action="append",
        default=_env_list("plugin"),
        help="load a plugin: a module name or a path to a .py file (repeatable)",
    )
    add(
        "--no-plugins",
        action="store_true",
        default=_env_flag("no-plugins", False),
        help="do not load installed plugin packages (entry points)",
    )
    add(
        "--stop-timeout",
        type=float,
        default=_env_float("stop-timeout", 10),
        help="seconds a stopping model may finish its requests (default: 10)",
    )
    add(
        "-to",
        "--timeout",
        type=float,
        default=_env_float("timeout", 600),
        help="seconds a request may wait for the next byte from its model before it fails "
        "(default: 600, as llama-server)",
    )
    add(
        "--load-timeout",
        type=float,
        default=_env_float("load-timeout", 600),
        help="seconds a model may take to load before it is stopped and marked failed "
        "(default: 600)",
    )
    add(
        "--health-interval",
        type=float,
        default=_env_float("health-interval", 5),
        help="seconds between liveness pings to each running model (default: 5)",
    )
    add(
        "--health-misses",
        type=int,
        default=_env_int("health-misses", 3),
        help="pings a model may miss in a row before it is declared hung, killed and "
        "restarted on the next request (default: 3)",
    )
    add(
        "--slot-timeout",
        type=float,
        default=_env_float("slot-timeout", 60),
        help="seconds a request may wait for a free model slot (--models-max) before it gets "
        "503 with Retry-After (default: 60)",
    )
    add(
        "--max-connections",
        type=int,
        default=_env_int("max-connections", 1024),
        help="client connections served at once; more wait to be accepted (default: 1024)",
    )
    add(
        "--allowed-host",
        action="append",
        default=_env_list("allowed-host"),
        help="a Host header name to accept besides the bound address, localhost and "
        "127.0.0.1 (repeatable; protects against DNS rebinding)",
    )
    add(
        "--peer",
        action="append",
        default=[p for p in os.environ.get(ENV_PREFIX + "PEERS", "").replace(",", " ").split()],
        metavar="[NAME=]URL",
        help="another llama-router (or llama.cpp router) whose models are listed here as "
        "NAME/model and forwarded there (repeatable; LLAMA_ROUTER_PEERS: several, separated "
        "by commas; one that needs a key: router.toml [[peers]] with api_key_env)",
    )
    add(
        "--remote-interval",
        type=float,
        default=_env_float("remote-interval", 30),
        help="seconds between listing the peers' models and checking the servers of 'url' "
        "models (default: 30)",
    )
    add(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env("log-format") or "text",
        help="log lines (one access line per request among them) as text, or as one JSON "
        "object a line (default: text)",
    )
    add(
        "--log-file",
        type=Path,
        default=_env("log-file"),
        help="also append log lines to this file (created mode 0600)",
    )
    add(
        "-v",
        "--verbose",
        action="count",
        default=_env_int("verbose", 0),
        help="more log lines: -v the router's debug lines, -vv its libraries' too",
    )
    children = parser.add_argument_group(
        "defaults passed to every model",
        description="llama-server's flags, as 'llama-router child --help' describes them "
        "(and their LLAMA_ARG_* variables); they override router.toml [defaults] and conf.d "
        "[args]",
    )
    for option in MODEL_OPTIONS:
        variable = f" [{option.env}]" if option.env else ""
        add_model_option(children, option, default=None, help_suffix=variable)
    add_compat_flags(
        parser.add_argument_group("llama-server flags accepted for a drop-in"), is_router=True
    )


def child_options_from(args: argparse.Namespace) -> dict[str, Any]:
    """The child options given as flags, or else as ``LLAMA_ARG_*`` variables, by [args] key."""
    try:
        options = options_from_env(os.environ)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    for option in MODEL_OPTIONS:
        value = getattr(args, option.key)
        if value is not None:
            options[option.key] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    from router.model_options import add_child_arguments

    parser = OptionParser(
        prog="llama-router",
        description="One OpenAI-compatible endpoint for many local GGUF models. "
        "Without a command, runs 'serve'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the router (the default command)",
        description="Serve every model of --models-dir from one endpoint, each in its own "
        "process, started on demand. Every flag also reads LLAMA_ROUTER_<FLAG>, and "
        "llama-server's LLAMA_ARG_* variables work as in llama-server.",
    )
    add_serve_arguments(serve)
    listing = commands.add_parser(
        "plugins",
        help="list the plugins that serve would load, with versions and hooks",
        description="List the plugins that 'serve' would load, with versions and hooks.",
    )
    add_serve_arguments(listing)
    child = commands.add_parser(
        "child",
        help="serve one model (like llama-server -m); the router runs one per model",
        description="Serve one GGUF model over the OpenAI API, as llama-server -m does.",
    )
    add_child_arguments(child)
    add_control_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; an ordinary mistake (a bad value, a port in use) is one line, exit 2."""
    try:
        return _main(argv)
    except StartupError as exc:
        print(f"llama-router: error: {exc.message}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["child"]:  # the child parses its own flags and imports no settings
        from router.child.main import main as child_main

        _exit_now(child_main(arguments[1:]))
    if not arguments or arguments[0] not in (*COMMANDS, "-h", "--help", "--version"):
        arguments.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command in CONTROL_COMMANDS:
        return run_control(args)
    return _serve(parser, args, arguments)


def _exit_now(code: int) -> NoReturn:
    """End a child without the interpreter's teardown (tens of milliseconds of freeing
    llama.cpp and numpy that nobody waits for): it has closed everything it opened."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    from router.errors import SettingsError
    from router.models.confd import read_router_file
    from router.server import run_router
    from router.settings import RouterSettings

    conf_dir = args.conf_dir
    if conf_dir is None and args.model is None:  # -m serves its one model, and no conf.d
        conf_dir = _default_conf_dir()
    config_path = args.config
    if config_path is None and conf_dir is not None and (conf_dir.parent / "router.toml").is_file():
        config_path = conf_dir.parent / "router.toml"
    defaults: dict[str, Any] = {}
    file_plugins: list[str] = []
    peers: list[Peer] = []
    if config_path is not None:
        try:
            router_file = read_router_file(config_path)
        except RouterFileError as exc:
            parser.error(str(exc))
        defaults = router_file.defaults
        file_plugins = router_file.plugins
        peers = router_file.peers
        args = _with_router_file(parser, args, router_file.router, config_path, argv)
    # --api-key k1,k2 holds two keys, as llama-server splits it (and LLAMA_API_KEY).
    given = [key for value in args.api_key for key in value.split(",") if key]
    keys = [*given, *_keys_from_file(parser, "--api-key-file", args.api_key_file)]
    admin_keys = [
        *args.admin_api_key,
        *_keys_from_file(parser, "--admin-api-key-file", args.admin_api_key_file),
    ]
    peers = [*peers, *(_peer(parser, text) for text in args.peer)]
    try:
        settings = RouterSettings(
            host=args.host,
            port=args.port,
            models_dirs=tuple(Path(p) for p in args.models_dir),
            hf_repo=args.hf_repo,
            model_file=args.model,
            model_alias=args.compat_alias,
            models_max=args.models_max,
            models_autoload=args.models_autoload,
            sleep_idle_seconds=args.sleep_idle_seconds,
            api_keys=tuple(keys),
            admin_api_keys=tuple(admin_keys),
            models_allow_extra_args=args.models_allow_extra_args,
            child_defaults=defaults,
            child_options=child_options_from(args),
            conf_dir=conf_dir,
            models_preset=Path(args.models_preset) if args.models_preset else None,
            allow_config_writes=args.allow_config_writes,
            stop_timeout_s=args.stop_timeout,
            load_timeout_s=args.load_timeout,
            timeout_s=args.timeout,
            health_interval_s=args.health_interval,
            health_misses=args.health_misses,
            slot_timeout_s=args.slot_timeout,
            max_connections=args.max_connections,
            spares=args.spares,
            stream_load_progress=args.stream_load_progress,
            allowed_hosts=tuple(args.allowed_host),
            log_format=args.log_format,
            log_file=Path(args.log_file) if args.log_file else None,
            verbosity=args.verbose,
            plugins=(*file_plugins, *args.plugin),
            load_installed_plugins=not args.no_plugins,
            peers=tuple(peers),
            remote_interval_s=args.remote_interval,
        )
    except SettingsError as exc:
        parser.error(exc.message)
    if args.command == "plugins":
        return _list_plugins(settings)
    return run_router(settings)


def _peer(parser: argparse.ArgumentParser, text: str) -> Peer:
    """``--peer [NAME=]URL`` as a peer (named after its host when NAME is left out)."""
    from router.errors import ConfigInvalid
    from router.models.confd import peer_from

    name, is_named, url = text.partition("=")
    table = {"name": name, "url": url} if is_named and "://" not in name else {"url": text}
    try:
        return peer_from(table, Path.cwd())
    except ConfigInvalid as exc:
        parser.error(f"--peer {text}: {exc.message}")


def _keys_from_file(parser: argparse.ArgumentParser, flag: str, path: Any) -> list[str]:
    """The keys in a key file: one a line; blank lines and lines starting with # skipped.

    A file that holds no key is an error, not a router left open to everyone.
    """
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        parser.error(f"{flag} {path}: {exc.strerror}")
    except UnicodeDecodeError:
        parser.error(f"{flag} {path}: not UTF-8 text")
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        parser.error(f"{flag} {path} holds no key")
    with contextlib.suppress(OSError):
        if Path(path).stat().st_mode & 0o077:
            print(
                f"warning: {flag} {path} may be read by other users: chmod 600 it", file=sys.stderr
            )
    return keys


def _list_plugins(settings: Any) -> int:
    """What the router would load; a plugin that cannot load is a StartupError (exit 2)."""
    from router.hooks.plugins import describe
    from router.server import load_router_plugins

    plugins = load_router_plugins(settings)
    for plugin in describe(plugins):
        version = f" ({plugin['version']})" if plugin["version"] else ""
        print(f"{plugin['name']}{version}: {', '.join(plugin['hooks'])}")
    return 0


def _default_conf_dir() -> Path | None:
    candidate = Path("conf.d")
    return candidate if candidate.is_dir() else None


def _with_router_file(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    values: dict[str, Any],
    path: Path,
    argv: list[str],
) -> argparse.Namespace:
    """``args`` with router.toml's [router] values where the command line gave none.

    Precedence: command-line flags, then environment variables, then router.toml.
    """
    for key, value in values.items():
        if (
            not hasattr(args, key)
            or key in ("config", "conf_dir", "command")
            or key in OPTIONS_BY_KEY
        ):
            parser.error(
                f"{path}: [router] has no setting {key!r} (child options go in [defaults])"
            )
        flag = "--" + key.replace("_", "-")
        if any(a == flag or a.startswith(flag + "=") for a in argv) or _env(key) is not None:
            continue
        current = getattr(args, key)
        if isinstance(current, list):
            value = list(value) if isinstance(value, list) else [value]
        expected = _expected_kind(current)
        items = value if isinstance(current, list) else [value]
        if not all(_is_of_kind(item, expected) for item in items):
            parser.error(f"{path}: [router] {key} must be {expected}")
        setattr(args, key, float(value) if expected == "a number" else value)
    return args


def _expected_kind(current: Any) -> str:
    """What a router.toml value must be, judged by the flag's value so far."""
    if isinstance(current, bool):
        return "true or false"
    if isinstance(current, int):
        return "an integer"
    if isinstance(current, float):
        return "a number"
    return "a string" if not isinstance(current, list) else "a string or a list of strings"


def _is_of_kind(value: Any, kind: str) -> bool:
    if kind == "true or false":
        return isinstance(value, bool)
    if kind == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


if __name__ == "__main__":
    sys.exit(main())
