"""The application: the three deployments bound together, from settings.

``serve run llama_router_ray_serve:app conf_dir=conf.d models_per_replica=2`` (or a RayService's
``import_path`` and ``args``) calls :func:`app` with those arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from llama_router_ray_serve.ingress import Ingress
from llama_router_ray_serve.registry import Registry
from llama_router_ray_serve.replica import Replica
from llama_router_ray_serve.settings import AppSettings

REPORT_EXPIRY_PERIODS = 3  # health checks a replica may miss before /models drops it


def build_app(settings: AppSettings) -> Application:
    """The ingress, the router replicas (autoscaled by ongoing requests) and the registry."""
    registry = Registry.bind(settings.health_check_period_s * REPORT_EXPIRY_PERIODS)
    replica_options: dict[str, Any] = {"num_cpus": settings.replica_cpus}
    if settings.runtime_env:
        replica_options["runtime_env"] = dict(settings.runtime_env)
    replicas = Replica.options(
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        },
        max_ongoing_requests=settings.max_ongoing_requests,
        health_check_period_s=settings.health_check_period_s,
        graceful_shutdown_timeout_s=settings.stop_timeout_s,
        ray_actor_options=replica_options,
    ).bind(settings, registry)
    return Ingress.options(ray_actor_options={"num_cpus": 0}).bind(replicas, registry)


def app(args: Mapping[str, Any]) -> Application:
    """The application builder for ``serve run`` and RayService: ``args`` are AppSettings'
    fields (text is converted; ``router_args`` splits on spaces)."""
    return build_app(AppSettings.from_args(args))
