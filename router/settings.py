"""The router's settings: typed, frozen, validated in one place; where they came from is the
command line's business (``cli.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.errors import SettingsError
from router.hosts import host_name
from router.logs import LOG_FORMATS
from router.spec import Peer


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    models_dirs: tuple[Path, ...] = ()
    hf_repo: str | None = None  # -hf ORG/REPO[:QUANT]: downloaded into the model cache at start-up
    # -m FILE.gguf: that one model is served (llama-server -m), by --alias or its file's name.
    model_file: Path | None = None
    model_alias: str | None = None
    models_max: int = 4  # models loaded at once; 0 = unlimited
    models_autoload: bool = True
    sleep_idle_seconds: int = -1  # the ttl of models without their own ttl; -1: none
    api_keys: tuple[str, ...] = ()
    models_allow_extra_args: bool = False  # POST /models/load may carry allowlisted "args"
    # Child options (child_options.CHILD_OPTIONS keys), lowest precedence first: router.toml's
    # [defaults], then each model's [args], then these from the command line.
    child_defaults: Mapping[str, Any] = field(default_factory=dict)
    child_options: Mapping[str, Any] = field(default_factory=dict)
    conf_dir: Path | None = None
    models_preset: Path | None = None  # --models-preset FILE.ini (models/presets.py)
    allow_config_writes: bool = False  # PUT/PATCH/DELETE /models/{id}/config
    admin_api_keys: tuple[str, ...] = ()  # required for config writes when keys are set
    plugins: tuple[str, ...] = ()  # modules or .py files (--plugin, router.toml plugins)
    load_installed_plugins: bool = True  # the llama_router entry points (--no-plugins: off)
    stop_timeout_s: float = 10.0
    load_timeout_s: float = 600.0  # a child not ready by then is stopped and marked failed
    graceful_timeout_s: float = 10.0  # how long running requests may finish on shutdown
    # -to/--timeout, as llama-server: seconds without a byte from a child before its request
    # fails (503, or an SSE error event once the answer has begun).
    timeout_s: float = 600.0
    health_interval_s: float = 5.0  # how often each running child is pinged
    health_misses: int = 3  # pings missed in a row before a child is declared hung and killed
    slot_timeout_s: float = 60.0  # how long a request may wait for a free model slot: then 503
    max_connections: int = 1024  # client connections open at once; more wait to be accepted
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides the bound address
    spares: int = 1  # child processes kept started, waiting for the next load; 0 = none
    # A streaming request that waits for its model's load gets ": loading M (1.2 s)" comments.
    stream_load_progress: bool = False
    log_format: str = "text"  # LOG_FORMATS: how every log line looks (logs.py)
    log_file: Path | None = None  # log lines also appended here (created mode 0600)
    verbosity: int = 0  # -v: 1 adds the router's DEBUG lines, 2 its libraries' too
    peers: tuple[Peer, ...] = ()  # --peer, router.toml [[peers]]: their models listed as NAME/m
    # How often peers are listed again and remote models' servers checked (models/remote.py).
    remote_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.models_max < 0:
            raise SettingsError(
                f"--models-max must be 0 (unlimited) or more, not {self.models_max}"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"--port must be between 0 and 65535, not {self.port}")
        for name in ("stop_timeout_s", "load_timeout_s", "timeout_s", "health_interval_s",
                     "slot_timeout_s", "graceful_timeout_s", "remote_interval_s"):  # fmt: skip
            value = getattr(self, name)
            if not 0 < value < 10**7:
                flag = "--" + name.removesuffix("_s").replace("_", "-")
                raise SettingsError(f"{flag} must be a number of seconds above 0, not {value}")
        names = [peer.name for peer in self.peers]
        for name in sorted({name for name in names if names.count(name) > 1}):
            raise SettingsError(
                f"two peers are named {name!r}: name them apart (--peer NAME=URL, or 'name' "
                "in [[peers]])"
            )
        if self.sleep_idle_seconds == 0 or self.sleep_idle_seconds < -1:
            raise SettingsError(
                "--sleep-idle-seconds must be -1 (never) or 1 or more, "
                f"not {self.sleep_idle_seconds}"
            )
        if self.model_file is not None:
            _check_model_file(self)
        if self.health_misses < 1:
            raise SettingsError(f"--health-misses must be 1 or more, not {self.health_misses}")
        if self.max_connections < 1:
            raise SettingsError(f"--max-connections must be 1 or more, not {self.max_connections}")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}"
            )
        if not 0 <= self.spares <= 16:
            raise SettingsError(f"--spares must be between 0 and 16, not {self.spares}")
        for key in (*self.api_keys, *self.admin_api_keys):
            if not key or key != key.strip():
                raise SettingsError("an API key is empty or has surrounding spaces")
            if not (key.isascii() and key.isprintable()):
                raise SettingsError(
                    "an API key holds a character an HTTP header cannot carry: use printable ASCII"
                )
        for name in self.allowed_hosts:
            if host_name(name) is None:
                raise SettingsError(
                    f"--allowed-host {name!r} is not a host name or an IP address (give it "
                    "without scheme or port: example.com, 192.0.2.7, [2001:db8::1])"
                )
        if self.conf_dir is not None and not self.conf_dir.is_dir():
            raise SettingsError(
                f"--conf-dir {self.conf_dir} is not a folder: create it, or leave the flag out"
            )
        if self.models_preset is not None and not self.models_preset.is_file():
            raise SettingsError(
                f"--models-preset {self.models_preset} is not a file: give a preset .ini file"
            )
        for folder in self.models_dirs:
            if not folder.is_dir():
                raise SettingsError(f"--models-dir {folder} is not a folder")


def _check_model_file(settings: RouterSettings) -> None:
    """``-m`` serves one model instead of a router's folders: refuse what says otherwise."""
    if not settings.model_file or not settings.model_file.is_file():
        raise SettingsError(f"-m {settings.model_file}: no such file; give a GGUF model file")
    if settings.models_dirs or settings.hf_repo or settings.models_preset or settings.conf_dir:
        raise SettingsError(
            "-m serves one model, as llama-server -m does: leave out --models-dir, -hf, "
            "--models-preset and --conf-dir (or leave out -m to serve many)"
        )
