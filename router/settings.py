"""The router's settings: typed, frozen, validated in one place; where they came from is the
command line's business (``cli.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.errors import RouterError


class SettingsError(RouterError):
    """A setting has a value the router cannot work with."""


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    models_dirs: tuple[Path, ...] = ()
    models_max: int = 4  # models loaded at once; 0 = unlimited
    models_autoload: bool = True
    api_keys: tuple[str, ...] = ()
    models_allow_extra_args: bool = False  # POST /models/load may carry allowlisted "args"
    # Child options (confd.CHILD_OPTIONS keys), lowest precedence first: router.toml's
    # [defaults], then each model's [args], then these from the command line.
    child_defaults: Mapping[str, Any] = field(default_factory=dict)
    child_options: Mapping[str, Any] = field(default_factory=dict)
    conf_dir: Path | None = None
    allow_config_writes: bool = False  # PUT/PATCH/DELETE /models/{id}/config
    admin_api_keys: tuple[str, ...] = ()  # required for config writes when keys are set
    plugins: tuple[str, ...] = ()  # modules or .py files (--plugin, router.toml plugins)
    load_installed_plugins: bool = True  # the llama_router entry points (--no-plugins: off)
    stop_timeout_s: float = 10.0
    load_timeout_s: float = 600.0
    graceful_timeout_s: float = 10.0  # how long running requests may finish on shutdown

    def __post_init__(self) -> None:
        if self.models_max < 0:
            raise SettingsError(
                f"--models-max must be 0 (unlimited) or more, not {self.models_max}"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"--port must be between 0 and 65535, not {self.port}")
        for key in (*self.api_keys, *self.admin_api_keys):
            if not key or key != key.strip():
                raise SettingsError("an API key is empty or has surrounding spaces")
        for folder in self.models_dirs:
            if not folder.is_dir():
                raise SettingsError(f"--models-dir {folder} is not a folder")
