"""The application's settings: one frozen value, validated in one place, read from the
arguments of ``serve run`` or of a RayService's ``args``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from router.errors import SettingsError


@dataclass(frozen=True)
class AppSettings:
    """How the replicas run their routers and how Ray places and scales them.

    ``models_per_replica`` is one number with two uses: Ray Serve's
    ``max_num_models_per_replica`` (its multiplex LRU) and the router's ``--models-max``, so
    Ray never places on a replica more models than its router will hold.
    """

    conf_dir: str | None = "conf.d"  # relative to the replica's working directory (working_dir)
    models_dir: str | None = None  # optional: a --models-dir, also relative to it
    models_per_replica: int = 2
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 16
    replica_cpus: float = 1.0  # Ray's num_cpus for each replica (its router and models)
    router_args: tuple[str, ...] = ()  # more `llama-router serve` flags (--spares 0, -t 2...)
    start_timeout_s: float = 60.0  # the router's start, to its "listening on" line
    load_timeout_s: float = 600.0  # one model's load, as the router's --load-timeout
    request_timeout_s: float = 600.0  # silence from the router during one answer
    stop_timeout_s: float = 10.0  # the router's stop, before it is killed
    health_check_period_s: float = 2.0  # Ray's health check; also how often /models is told
    runtime_env: Mapping[str, Any] = field(default_factory=dict)  # the replicas' (working_dir)

    def __post_init__(self) -> None:
        if self.models_per_replica < 1:
            raise SettingsError("models_per_replica must be 1 or more (a router's --models-max)")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise SettingsError(
                "replicas: need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                f"{self.min_replicas} and {self.max_replicas}"
            )
        if self.target_ongoing_requests <= 0:
            raise SettingsError("target_ongoing_requests must be more than 0")
        for name in ("start_timeout_s", "load_timeout_s", "request_timeout_s", "stop_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be more than 0")

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> AppSettings:
        """Settings from ``serve run MODULE:app key=value`` or a RayService's ``args``; an
        unknown key is refused by name rather than ignored."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise SettingsError(f"unknown settings {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in args.items():
            default = known[name].default
            if name == "router_args":
                values[name] = tuple(value.split() if isinstance(value, str) else value)
            elif isinstance(value, str) and isinstance(default, int | float):
                values[name] = type(default)(value)  # `serve run` passes every value as text
            else:
                values[name] = value
        return cls(**values)

    def router_command_args(self) -> list[str]:
        """The ``llama-router serve`` flags every replica's router gets (after host and port)."""
        args = ["--models-max", str(self.models_per_replica)]
        if self.conf_dir is not None:
            args += ["--conf-dir", self.conf_dir]
        if self.models_dir is not None:
            args += ["--models-dir", self.models_dir]
        args += ["--load-timeout", str(self.load_timeout_s)]
        args += ["--timeout", str(self.request_timeout_s)]
        return [*args, *self.router_args]
