"""The router's HTTP surface, compatible with llama-server's router mode.

Routes decide nothing: they authenticate, read which model a request names, and hand it to
the pool (model management) or the proxy (everything else). Errors leave as OpenAI bodies.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from router.child_options import effective_child_options
from router.edge.access import HostCheck, require_json
from router.edge.config_api import config_path_for, delete_config, read_config, write_config
from router.edge.downloads_api import DOWNLOAD_ENDPOINTS, register_downloads_api
from router.edge.events_api import register_events_api
from router.edge.extra_args import ExtraArgLimits, checked_extra_args
from router.edge.gate import Gate, is_autoload
from router.edge.jsonbody import parse_json_object
from router.edge.metrics import register_metrics
from router.edge.ollama_api import register_ollama_api
from router.edge.page import PAGE_ENDPOINTS, register_page
from router.edge.proxy import (
    CORS_PREFIX,
    BrokenOff,
    ForwardRequest,
    owning_forwards,
    start_forward,
)
from router.edge.web import PUBLIC_PATHS, json_response, new_app, request_body
from router.errors import (
    Conflict,
    CutConnection,
    InvalidField,
    ModelNotFound,
    PermissionDenied,
)
from router.hooks.plugin_types import RequestInfo
from router.hooks.plugins import Plugins, call_each_now
from router.models.downloads import Downloads
from router.models.pool import ModelPool
from router.models.remote import remote_status
from router.models.state import ModelState
from router.processes.resident import resident_tree_bytes
from router.settings import RouterSettings
from router.version import BUILD_INFO

log = logging.getLogger("router.edge.app")

FORWARDED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# The routes that change the router's state (by endpoint: the view's name). They take only
# JSON bodies, which no web page can send to another origin unasked (router/edge/access.py).
STATE_CHANGING_ENDPOINTS = (
    frozenset({"reload", "load", "unload", "pin", "put_config", "delete_model_config"})
    | DOWNLOAD_ENDPOINTS
)


def create_app(
    pool: ModelPool,
    settings: RouterSettings,
    plugins: Plugins,
    *,
    rescan: Callable[[], None],
    spares: Callable[[], list[dict[str, int | None]]] = list,
    downloads: Downloads | None = None,
) -> QuartTrio:
    """The router's app. ``spares`` reports the waiting spare children (``GET /models``);
    ``downloads``, when given, serves ``POST``/``DELETE /models`` (downloads_api.py)."""
    app = new_app("router")
    # A forward ends with its request, read or not (proxy.start_forward).
    app.asgi_app = owning_forwards(app.asgi_app)  # type: ignore[method-assign,assignment,arg-type]
    started = int(time.time())
    gate = Gate(pool, plugins, HostCheck.for_address(settings.host, settings.allowed_hosts))
    app.extensions["llama_router_gate"] = gate  # the raw path in front checks the same way

    @app.before_request
    async def authenticate() -> None:
        """The Host check, the caller's key, then JSON only where state changes."""
        if request.path in PUBLIC_PATHS:
            return
        if request.endpoint in PAGE_ENDPOINTS:  # no data, so no key; a rebinding page gets none
            gate.hosts.check(request.headers.get("Host"))
            return
        g.principal = await gate.authenticate(request.headers.get("Host"), _request_info())
        if request.endpoint in STATE_CHANGING_ENDPOINTS:
            has_body = bool(request.content_length) or "Transfer-Encoding" in request.headers
            require_json(request.method, request.headers.get("Content-Type"), has_body)

    @app.after_request
    async def no_cross_origin_reads(response: Response) -> Response:
        """No page of another origin may read an answer: a backend's own CORS headers
        (llama-server reflects any ``Origin``) do not pass."""
        for name in {
            name for name, _ in response.headers.items() if name.lower().startswith(CORS_PREFIX)
        }:
            del response.headers[name]
        return response

    async def resolve(requested: str) -> ModelState:
        """The model for ``requested`` (plugins may route it), if the caller may use it."""
        return await gate.resolve(requested, g.principal, _request_info())

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/models")
    @app.get("/v1/models")
    async def models() -> Response:
        if request.args.get("reload") in ("1", "true"):
            rescan()
        pids = [state.pid for state in pool.models.values() if state.pid is not None]
        memory = await trio.to_thread.run_sync(resident_tree_bytes, pids)  # reads /proc
        clocks = _Clocks(unix=time.time(), pool=trio.current_time())
        data = [
            _model_entry(
                state, started, settings, waiting=pool.waiting(model_id), clocks=clocks,
                memory=memory.get(state.pid) if state.pid is not None else None,
            )
            for model_id, state in pool.models.items()
            if state.spec.is_listed
        ]  # fmt: skip
        data += [
            _invalid_entry(model_id, str(problem), started, problem.source)
            for model_id, problem in pool.problems.items()
            if model_id not in pool.models
        ]
        return json_response({"object": "list", "data": data, "spares": spares()})

    @app.post("/models/reload")
    async def reload() -> Response:
        rescan()
        return json_response({"success": True})

    @app.post("/models/load")
    async def load() -> Response:
        body = parse_json_object(await request_body())
        model = _model_field(body)
        if body.get("args") is not None and not settings.models_allow_extra_args:
            raise PermissionDenied(
                "this router takes no child arguments from clients; its operator can "
                "allow a safe set with --models-allow-extra-args"
            )
        state = await resolve(model)
        extra_args: tuple[str, ...] = ()
        if body.get("args") is not None:
            options = effective_child_options(
                state.spec, settings.child_defaults, settings.child_options
            )
            # Reading the GGUF's header can touch the disk: not on the event loop.
            limits = await trio.to_thread.run_sync(
                ExtraArgLimits.for_model, state.spec.path, options
            )
            extra_args = checked_extra_args(body["args"], limits)
        pool.request_load(state, app.nursery, extra_args=extra_args)
        return json_response({"success": True})

    @app.post("/models/unload")
    async def unload() -> Response:
        model = _model_field(parse_json_object(await request_body()))
        if downloads is not None and downloads.cancel(model):  # llama.cpp: stops its download
            return json_response({"success": True})
        pool.request_unload(await resolve(model))
        return json_response({"success": True})

    @app.post("/models/pin")
    async def pin() -> Response:
        body = parse_json_object(await request_body())
        model = _model_field(body)
        pinned = body.get("pinned")
        if not isinstance(pinned, bool):
            raise InvalidField("pinned", "is required: true to pin the model, false to unpin it")
        state = await resolve(model)
        pool.set_pinned(state, pinned)
        return json_response({"success": True, "model": state.spec.id, "pinned": state.is_pinned})

    def require_admin(action: str) -> None:
        if not g.principal.is_admin:
            raise PermissionDenied(f"{action} needs an admin key (--admin-api-key)")

    def config_file(model_id: str) -> Path | None:
        """The conf.d file of ``model_id`` (by id, listed or invalid), if it has one."""
        state = pool.models.get(model_id)
        if state is not None and state.spec.source_file is not None:
            return state.spec.source_file
        problem = pool.problems.get(model_id)
        return problem.path if problem is not None else None

    async def config_target(model_id: str) -> Path:
        if not settings.allow_config_writes:
            raise PermissionDenied(
                "config writes are off; start the router with --allow-config-writes"
            )
        require_admin("changing a model's configuration")
        if settings.conf_dir is None:
            raise Conflict("the router has no conf.d folder (--conf-dir) to write to")
        existing = config_file(model_id)
        if existing is None and model_id not in pool.models:
            with contextlib.suppress(ModelNotFound):  # else: a new model's file
                state = await resolve(model_id)  # an alias writes its model's file
                model_id, existing = state.spec.id, state.spec.source_file
        return config_path_for(settings.conf_dir, model_id, existing)

    @app.get("/models/<path:model_id>/config")
    async def get_config(model_id: str) -> Response:
        # A file may hold secrets ([env], a command's own keys): admins only, writes on or off.
        require_admin("reading a model's configuration")
        path = config_file(model_id)
        if path is None:
            path = (await resolve(model_id)).spec.source_file  # an alias, or a folder model
        if path is None:
            raise ModelNotFound(f"model {model_id!r} has no conf.d file")
        return json_response(read_config(path))

    @app.route("/models/<path:model_id>/config", methods=["PUT", "PATCH"])
    async def put_config(model_id: str) -> Response:
        path = await config_target(model_id)
        values = parse_json_object(await request_body())
        text = write_config(path, values, replace_all=request.method == "PUT")
        rescan()
        return json_response({"success": True, "file": str(path), "toml": text})

    @app.delete("/models/<path:model_id>/config")
    async def delete_model_config(model_id: str) -> Response:
        path = await config_target(model_id)
        delete_config(path if path.exists() else None)
        rescan()
        return json_response({"success": True})

    @app.get("/props")
    async def props() -> Response:
        if request.args.get("model"):
            return await forward("props")
        return json_response(
            {
                "role": "router",
                "max_instances": settings.models_max,
                "models_autoload": settings.models_autoload,
                "build_info": BUILD_INFO,
            }
        )

    @app.route("/<path:path>", methods=FORWARDED_METHODS)
    async def forward(path: str) -> Response:
        received = await request_body()  # the one copy of a large body, forwarded as it is
        requested = await gate.requested_model(request.args.get("model"), request.method, received)
        state = await resolve(requested)
        body = await gate.transformed(state.spec.id, received, g.principal)
        autoload = is_autoload(settings.models_autoload, request.args.get("autoload"))
        forwarded = await start_forward(
            request.scope,
            pool,
            plugins,
            ForwardRequest(
                state=state,
                principal=g.principal,
                autoload=autoload,
                method=request.method,
                path=_forwarded_path(),
                query=request.query_string,
                headers=list(request.headers.items()),
                body=body,
                timeout_s=settings.timeout_s,
            ),
        )

        async def chunks() -> AsyncIterator[bytes]:
            with forwarded.body:
                async for chunk in forwarded.body:
                    if isinstance(chunk, BrokenOff):
                        raise CutConnection(chunk.reason)
                    yield chunk

        return Response(chunks(), status=forwarded.status, headers=Headers(forwarded.headers))

    register_page(app)
    register_ollama_api(app, settings, _request_info)
    register_metrics(app, pool)
    register_events_api(app, pool, resolve)
    if downloads is not None:
        register_downloads_api(app, pool, settings, downloads, rescan)
    call_each_now(plugins, "register_routes", app=app)
    return app


def _request_info() -> RequestInfo:
    return RequestInfo(
        method=request.method,
        path=request.path,
        headers={name.lower(): value for name, value in request.headers.items()},
        query=dict(request.args.items()),
        client=request.remote_addr or "",
    )


def _forwarded_path() -> str:
    """The path as the client sent it, its %-escapes kept: ``request.path`` is decoded, and may
    hold characters that no request line can carry (``/v1/%E2%82%AC`` is ``/v1/€``)."""
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes) and raw_path.startswith(b"/"):
        return raw_path.decode("latin-1")  # ASCII: the HTTP parser took nothing else
    return urllib.parse.quote(request.path, safe="/:@!$&'()*+,;=-._~")


def _model_field(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidField("model", "is required and must be a string")
    return model


@dataclass(frozen=True)
class _Clocks:
    """The time now on the wall (Unix seconds) and on the pool's clock (trio's), read once per
    ``GET /models``: the pool keeps its times on trio's clock, which means nothing outside
    this process, so they leave it converted."""

    unix: float
    pool: float

    def unix_time(self, pool_time: float) -> float | None:
        """``pool_time`` as Unix seconds; None for never (the pool's 0.0)."""
        if pool_time <= 0:
            return None
        return round(self.unix - (self.pool - pool_time), 3)


def _model_entry(
    state: ModelState,
    created: int,
    settings: RouterSettings,
    *,
    waiting: int,
    clocks: _Clocks,
    memory: int | None,
) -> dict[str, Any]:
    """One model in ``GET /models``: llama-server's fields, then ours. ``memory``: its child's
    resident bytes with its descendants' (None while no child of it runs)."""
    spec = state.spec
    status: dict[str, Any] = {"value": state.status.value}
    if state.args is not None:
        status["args"] = state.args
    if state.pid is not None:
        status["pid"] = state.pid
    if state.is_failed:
        status["failed"] = True
        status["exit_code"] = state.exit_code
        status["error"] = state.last_error
    if state.config_error:
        status["config_error"] = state.config_error
    if spec.upstream is not None:
        status |= remote_status(state)  # available or why not, its last check; never its key
    if state.pending_spec is not None:
        status["settings_pending"] = True  # new settings wait for its requests to finish
    entry: dict[str, Any] = {
        "id": spec.id,
        "object": "model",
        "owned_by": "llama-router",
        "created": created,
        "path": str(spec.path) if spec.path else None,
        "aliases": list(spec.aliases),
        "source": spec.source,
        "in_flight": state.in_flight,
        "last_used": clocks.unix_time(state.last_used),  # Unix seconds; None: never
        "memory": memory,  # bytes, resident (RSS), its child's and their children's
        "pinned": state.is_pinned,  # now, by its file's ``pinned`` or POST /models/pin
        "waiting": waiting,  # requests queued for it (for a slot, or for its load)
        "status": status,
        "settings": {
            "ttl": spec.ttl_s,
            "pinned": spec.is_pinned,
            "load_on_startup": spec.load_on_startup,
            "stop_timeout": spec.stop_timeout_s or settings.stop_timeout_s,
            "max_queue": spec.max_queue,
            "args": effective_child_options(spec, settings.child_defaults, settings.child_options),
        },
    }
    if spec.source_file is not None:
        entry["file"] = str(spec.source_file)
    if spec.description:
        entry["description"] = spec.description
    if spec.command is not None:
        entry["command"] = list(spec.command)
    return entry


def _invalid_entry(model_id: str, error: str, created: int, source: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "owned_by": "llama-router",
        "created": created,
        "source": source,
        "status": {"value": "invalid", "error": error},
    }
