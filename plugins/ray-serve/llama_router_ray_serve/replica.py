"""One Ray Serve replica: a llama-router process, and Ray's model multiplexing mapped onto the
router's own model API.

A request reaches this replica with its model as the multiplexed model id (the ingress sets
it), so Ray sends it to a replica that already holds that model when one exists. Here
``serve.multiplexed`` keeps an LRU of at most ``models_per_replica`` ids; a miss loads the model
with ``POST /models/load`` and waits until the router says it is loaded, and an id that Ray's LRU
evicts is unloaded with ``POST /models/unload``. The router runs with ``--models-max`` equal to
that bound, so the two agree, and with autoload on, so that a request that reaches a router
between Ray's view and the router's (an alias, a model the router evicted itself) is still
served by the router's own rules rather than refused.

Asyncio here, not Trio: a Ray Serve replica runs its methods on Ray's asyncio loop, and that is
the only place in the repository where asyncio is used; the router in the child process is the
usual Trio program.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from llama_router_ray_serve.registry import ReplicaReport
from llama_router_ray_serve.router_process import RouterProcess, start_router
from llama_router_ray_serve.settings import AppSettings
from router.errors import LlamaRouterError, ModelLoadFailed, RouterError, Unavailable, error_body

log = logging.getLogger("ray.serve")

LOAD_POLL_S = 0.05  # how often a load's status is read from the router's /models
CONTROL_TIMEOUT_S = 10.0  # one call to the router's model API (/models, load, unload)
HOLDING = frozenset({"loading", "loaded", "unloading"})  # statuses that hold a --models-max slot


@dataclass(frozen=True)
class Answer:
    """A router's answer, or its first part when streamed (``body`` then empty): what crosses
    from a replica to the ingress."""

    status: int
    content_type: str
    body: bytes = b""


class RouterRefused(LlamaRouterError):
    """The router refused or failed a load: its answer is passed on to the client unchanged."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"the router answered {answer.status}")
        self.answer = answer


class RouterGone(LlamaRouterError):
    """The replica's router exited: Ray's health check fails and Ray replaces the replica."""


@dataclass
class LoadedModel:
    """A model this replica's router holds for Ray's multiplex LRU. Ray calls ``__del__`` when
    it evicts the id (in a thread: it is synchronous); that unloads it from the router, once."""

    model_id: str
    router: RouterProcess
    is_unloaded: bool = False

    def __del__(self) -> None:
        if self.is_unloaded or not self.router.is_running():
            return
        self.is_unloaded = True
        try:
            httpx.post(
                f"{self.router.base_url}/models/unload",
                json={"model": self.model_id},
                timeout=CONTROL_TIMEOUT_S,
            )
        except httpx.HTTPError as error:  # the router then evicts it itself, by --models-max
            log.warning("could not unload %s from the router: %s", self.model_id, error)


class RouterReplica:
    """The deployment class: one router, the model multiplexing, and the relays."""

    def __init__(self, settings: AppSettings, registry: DeploymentHandle[Any]) -> None:
        self._settings = settings
        self._registry = registry
        self._router = start_router(
            settings.router_command_args(), timeout_s=settings.start_timeout_s
        )
        self._client = httpx.AsyncClient(
            base_url=self._router.base_url,
            timeout=httpx.Timeout(settings.request_timeout_s, connect=CONTROL_TIMEOUT_S),
        )
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._node = ray.get_runtime_context().get_node_id()

        async def load(model_id: str) -> LoadedModel:
            return await self._load(model_id)

        # Made here rather than as a decorated method: the bound comes from the settings.
        self._model: Callable[[str], Awaitable[LoadedModel]] = serve.multiplexed(
            max_num_models_per_replica=settings.models_per_replica
        )(load)

    def __del__(self) -> None:
        """Ray's graceful stop of this replica: the router stops too (the guard covers the
        other ways a replica ends)."""
        router = getattr(self, "_router", None)
        if router is not None:
            router.stop(timeout_s=self._settings.stop_timeout_s)

    async def _load(self, model_id: str) -> LoadedModel:
        """Ask the router to load ``model_id`` and wait until it is loaded; RouterRefused with
        the router's answer when it refuses (unknown model) or the load fails."""
        try:
            answer = await self._client.post(
                "/models/load", json={"model": model_id}, timeout=CONTROL_TIMEOUT_S
            )
            if answer.status_code != 200:
                raise RouterRefused(_answer_of(answer))
            deadline = time.monotonic() + self._settings.load_timeout_s
            while (status := await self._status_of(model_id)) not in ("loaded", None):
                if status == "failed" or time.monotonic() > deadline:
                    why = "it failed (GET /models says why)" if status == "failed" else "timed out"
                    failure = ModelLoadFailed(
                        f"model '{model_id}' did not load on replica {self._replica_id}: {why}"
                    )
                    raise RouterRefused(_error_answer(failure))
                await asyncio.sleep(LOAD_POLL_S)
            await self._report()
        except httpx.HTTPError as error:
            raise RouterRefused(self._gone_answer(error)) from error
        return LoadedModel(model_id, self._router)

    def _gone_answer(self, error: httpx.HTTPError) -> Answer:
        """A failed call to the router (it died, or hung) as the client's 503: Ray's health
        check will replace this replica, so the request is worth sending again."""
        return _error_answer(
            Unavailable(
                f"the router of replica {self._replica_id} did not answer ({error!r}); "
                "it is being replaced: try again",
                retry_after_s=1,
            )
        )

    async def _status_of(self, model_id: str) -> str | None:
        """The router's status for ``model_id`` (by id or alias), ``failed`` for a failed
        load, or None when no entry names it (a plugin routed the name elsewhere)."""
        for entry in await self._router_models():
            if model_id == entry["id"] or model_id in entry.get("aliases", ()):
                status = entry["status"]
                return "failed" if status.get("failed") else str(status["value"])
        return None

    async def _router_models(self) -> list[dict[str, Any]]:
        answer = await self._client.get("/models", timeout=CONTROL_TIMEOUT_S)
        answer.raise_for_status()
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    async def _report(self) -> None:
        models = {
            entry["id"]: entry["status"]["value"]
            for entry in await self._router_models()
            if entry["status"]["value"] in HOLDING
        }
        report = ReplicaReport(self._replica_id, self._node, self._router.process.pid, models)
        await self._registry.report.remote(report)

    async def check_health(self) -> None:
        """Ray's periodic health check: fails when the router is gone, so that Ray replaces
        this replica; otherwise tells the registry what the router holds (the heartbeat)."""
        if not self._router.is_running():
            raise RouterGone(
                f"the router of replica {self._replica_id} exited with code "
                f"{self._router.process.returncode}; last lines:\n"
                + "\n".join(self._router.stderr_tail[-10:])
            )
        await self._report()

    async def catalog(self) -> list[dict[str, Any]]:
        """The router's ``/models`` entries: every model the conf.d files define; RouterGone
        when the router does not answer (the ingress then asks another replica)."""
        try:
            return await self._router_models()
        except httpx.HTTPError as error:
            raise RouterGone(f"the router of replica {self._replica_id}: {error!r}") from error

    async def relay(self, path: str, body: bytes) -> Answer:
        """One whole answer from the router for a request on ``path`` naming the multiplexed
        model. Cancellation: the request to the router is abandoned (its connection closed)."""
        try:
            await self._model(serve.get_multiplexed_model_id())
        except RouterRefused as refused:
            return refused.answer
        try:
            answer = await self._client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as error:
            return self._gone_answer(error)
        return _answer_of(answer)

    async def relay_stream(self, path: str, body: bytes) -> AsyncIterator[Answer | bytes]:
        """A streamed answer: first its ``Answer`` (status, content type), then its bytes as the
        router sends them. Cancellation (the client left): the router's stream is closed, and
        the router stops generating."""
        try:
            await self._model(serve.get_multiplexed_model_id())
        except RouterRefused as refused:
            yield refused.answer
            return
        request = self._client.build_request(
            "POST", path, content=body, headers={"content-type": "application/json"}
        )
        try:
            answer = await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            yield self._gone_answer(error)
            return
        try:
            yield Answer(answer.status_code, answer.headers.get("content-type", ""))
            async for chunk in answer.aiter_raw():  # a failure now cuts the client's stream
                yield chunk
        finally:
            await answer.aclose()


def _answer_of(answer: httpx.Response) -> Answer:
    return Answer(answer.status_code, answer.headers.get("content-type", ""), answer.content)


def _error_answer(error: RouterError) -> Answer:
    return Answer(error.status, "application/json", json.dumps(error_body(error)).encode())


Replica = serve.deployment(name="RouterReplica")(RouterReplica)
