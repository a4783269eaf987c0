"""The ingress deployment: the OpenAI API in front of the router replicas.

It reads ``"model"`` from a request's body and calls the replicas' handle with that name as the
multiplexed model id, so Ray Serve routes it to a replica that already holds the model (or, if
none does, to the replica holding the fewest). ``GET /models`` (and ``/v1/models``) lists the
models of the conf.d files with the replicas that hold each, from the registry.

Asyncio, as every Ray Serve deployment: Ray runs ``__call__`` on its own asyncio loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llama_router_ray_serve.replica import Answer, RouterGone
from router.edge.fast_path import FAST_PATHS
from router.edge.jsonbody import parse_json_object
from router.errors import InvalidField, ModelNotFound, RouterError, Unavailable, error_body

MODELS_PATHS = frozenset({"/models", "/v1/models"})
HEALTH_PATHS = frozenset({"/health", "/v1/health"})
CATALOG_TRIES = 4  # replicas asked for the model list before /models answers 503


class OpenAIIngress:
    """Routes each OpenAI request to a replica by its model; answers ``/models`` itself."""

    def __init__(self, replicas: DeploymentHandle[Any], registry: DeploymentHandle[Any]) -> None:
        self._replicas = replicas
        self._registry = registry

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        try:
            return await self._answer(request, path)
        except RouterError as error:
            return _error_response(error, path)
        except RayError as error:  # the replica died under the request: Ray replaces it
            unavailable = Unavailable(
                f"the replica serving this request failed ({type(error).__name__}); "
                "Ray is replacing it: try again",
                retry_after_s=1,
            )
            return _error_response(unavailable, path)

    async def _answer(self, request: Request, path: str) -> Response:
        if request.method == "GET" and path in MODELS_PATHS:
            return JSONResponse(await self.models())
        if request.method == "GET" and path in HEALTH_PATHS:
            return JSONResponse({"status": "ok"})
        if request.method != "POST" or path not in FAST_PATHS:
            raise ModelNotFound(
                f"{request.method} {path} is not served here: the OpenAI routes "
                "(POST /v1/chat/completions, /v1/completions, /v1/embeddings...) and "
                "GET /v1/models are"
            )
        body = await request.body()
        fields = parse_json_object(body)
        model = fields.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidField("model", "is required and must be a string")
        replicas = self._replicas.options(multiplexed_model_id=model)
        if fields.get("stream") is not True:
            answer: Answer = await replicas.relay.remote(path, body)
            return Response(answer.body, answer.status, media_type=answer.content_type)
        parts = replicas.options(stream=True).relay_stream.remote(path, body)
        assert isinstance(parts, DeploymentResponseGenerator)
        head = await parts.__anext__()
        assert isinstance(head, Answer), head
        if head.body:  # refused before the router answered: a whole error
            return Response(head.body, head.status, media_type=head.content_type)
        return StreamingResponse(_rest(parts), head.status, media_type=head.content_type)

    async def models(self) -> dict[str, Any]:
        """The router's model list (of any replica: they share the conf.d files), each entry
        with ``replicas``: where it is held, by status; and ``replicas`` at the top: each live
        replica's node, router pid and models."""
        catalog = await self._catalog()
        reports: list[dict[str, Any]] = await self._registry.snapshot.remote()
        data = []
        for entry in catalog:
            held = {
                report["replica"]: report["models"][entry["id"]]
                for report in reports
                if entry["id"] in report["models"]
            }
            data.append(
                {
                    "id": entry["id"],
                    "object": "model",
                    "owned_by": "llama-router",
                    "created": entry.get("created"),
                    "aliases": entry.get("aliases", []),
                    "replicas": held,
                }
            )
        return {"object": "list", "data": data, "replicas": reports}

    async def _catalog(self) -> list[dict[str, Any]]:
        """The model list of the first replica whose router answers (Ray picks one at random
        each time; one whose router died answers RouterGone until Ray replaces it)."""
        for _ in range(CATALOG_TRIES):
            try:
                catalog: list[dict[str, Any]] = await self._replicas.catalog.remote()
            except RouterGone:
                continue
            return catalog
        raise Unavailable(
            f"no replica's router answered in {CATALOG_TRIES} tries; Ray is replacing them",
            retry_after_s=1,
        )


def _error_response(error: RouterError, path: str) -> Response:
    return JSONResponse(error_body(error, path), error.status, headers=error.headers())


async def _rest(parts: DeploymentResponseGenerator[Any]) -> AsyncIterator[bytes]:
    async for chunk in parts:
        yield chunk


Ingress = serve.deployment(name="OpenAIIngress")(OpenAIIngress)
