"""llama-router on a Ray cluster: a Ray Serve application whose replicas each run a
llama-router process, with requests placed by model (Ray Serve's model multiplexing).

``serve run llama_router_ray_serve:app conf_dir=conf.d`` runs it; docs/ray-serve.md says how,
and how on KubeRay. The modules: ``settings`` (what can be set), ``router_process`` (a replica's
router process), ``parent_death`` (the router ends with its guard), ``replica`` (the
multiplexed replica), ``registry`` (which replica holds which model), ``ingress`` (the OpenAI
API), ``app`` (the deployments bound together).

The deployments use asyncio, Ray Serve's model: it is the one place in the repository that does;
the router each replica runs stays a Trio program in its own process.
"""

from __future__ import annotations

from llama_router_ray_serve.app import app, build_app
from llama_router_ray_serve.settings import AppSettings

__all__ = ["AppSettings", "app", "build_app"]
