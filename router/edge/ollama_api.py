"""Ollama's API on the router (``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/chat``,
``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/version``), for the many tools
that speak it.

A request passes the checks the OpenAI routes pass (the app's ``authenticate``; ``gate.resolve``
for aliases, plugins' routing and the caller's right to the model; ``gate.transformed`` on the
translated body) and goes to the child with ``proxy.start_forward``: the same queue, autoload,
usage report and errors. The child's answer is translated as it streams
(``ollama_answers.py``): a slow client slows the child, and a client that leaves closes the
channel, which cancels the child's generation. Errors leave in Ollama's shape,
``{"error": "message"}``, with the status of the router's error.

``keep_alive`` becomes the idle ttl of the child that serves the request (``pool.keep_alive``),
for as long as that child runs, unless the operator pinned the model. As in Ollama, a
``/api/generate`` (or ``/api/chat``) with nothing to generate loads the model, or with
``keep_alive: 0`` unloads it once idle.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from quart import Blueprint, Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from router.child_options import effective_child_options
from router.edge.gate import Gate, is_autoload
from router.edge.jsonbody import parse_json_object
from router.edge.ollama_answers import Answer, Durations, embeddings_answer, error_message
from router.edge.ollama_models import idle_time_left, listed, read_model_file, running, shown
from router.edge.ollama_requests import (
    ChildCall,
    chat_call,
    embed_call,
    generate_call,
    keep_alive_seconds,
)
from router.edge.proxy import BrokenOff, ForwardedResponse, ForwardRequest, start_forward
from router.edge.sse import EventStream, is_event_stream, json_payloads
from router.edge.web import internal_error, json_response, request_body
from router.errors import (
    AuthenticationFailed,
    Conflict,
    CutConnection,
    InvalidField,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    QueueFull,
    RouterError,
    Unavailable,
    UnsupportedMediaType,
)
from router.hooks.plugin_types import RequestInfo
from router.models.scheduler import HOLDS_NO_CHILD, Status
from router.models.state import ModelState
from router.settings import RouterSettings

# The Ollama API version these routes follow (``GET /api/version``); some clients check it.
OLLAMA_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"
MAX_WHOLE_ANSWER_BYTES = 256 * 1024 * 1024  # an embeddings answer, read whole to translate it
MAX_ERROR_BYTES = 64 * 1024  # of a child's error body, for its message
# A child's error status, as the error the router answers with. A 501 (a feature the model
# lacks, such as embeddings) is the caller's to fix: a 400, which clients do not retry.
_CHILD_ERRORS: dict[int, type[RouterError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: ModelNotFound,
    409: Conflict,
    415: UnsupportedMediaType,
    429: QueueFull,
    501: InvalidRequest,
    503: Unavailable,
}


def register_ollama_api(
    app: QuartTrio, settings: RouterSettings, request_info: Callable[[], RequestInfo]
) -> None:
    """Add Ollama's routes to the router's ``app``; ``request_info`` is the request as hooks
    see it. Its ``authenticate`` (the caller's key) runs before these as before any route."""
    gate: Gate = app.extensions["llama_router_gate"]
    pool = gate.pool
    api = Blueprint("ollama", __name__)

    @api.errorhandler(RouterError)
    async def router_error(error: RouterError) -> Response:
        return _error_response(error.message, error.status, error.headers())

    @api.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        return _error_response(f"{request.method} {request.path}: {error.description}", status)

    @api.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        return _error_response(internal_error(error, request.method, request.path).message, 500)

    async def resolve(requested: str) -> ModelState:
        """The model ``requested`` names, as Ollama's clients name them (``NAME:latest`` is
        ``NAME`` here), with Ollama's message when there is none."""
        names = [requested]
        if requested.endswith(":latest"):
            names.append(requested.removesuffix(":latest"))
        for name in names:
            try:
                return await gate.resolve(name, g.principal, request_info())
            except ModelNotFound:
                continue
        known = ", ".join(sorted(pool.models)) or "none"
        raise ModelNotFound(
            f'model "{requested}" not found, try pulling it first (this router cannot pull: '
            f"it serves the GGUF files of its models folder; known models: {known})"
        )

    def options_of(state: ModelState) -> dict[str, Any]:
        return effective_child_options(state.spec, settings.child_defaults, settings.child_options)

    def keep(state: ModelState, keep_alive_s: float | None) -> None:
        if keep_alive_s is not None and not state.is_pinned:  # the operator's pin wins
            pool.keep_alive(state, keep_alive_s)

    async def forward(state: ModelState, call: ChildCall) -> ForwardedResponse:
        """Send ``call`` to ``state``'s child; its answer once its head is in, or the error."""
        body = await gate.transformed(
            state.spec.id, bytearray(json.dumps(call.body).encode()), g.principal
        )
        forwarded = await start_forward(
            request.scope,
            pool,
            gate.plugins,
            ForwardRequest(
                state=state,
                principal=g.principal,
                autoload=is_autoload(settings.models_autoload, request.args.get("autoload")),
                method="POST",
                path=call.path,
                query=b"",
                headers=[("Content-Type", "application/json")],
                body=body,
                timeout_s=settings.timeout_s,
            ),
        )
        if forwarded.status != 200:
            raise await _child_error(forwarded)
        return forwarded

    @api.get("/api/version")
    async def version() -> Response:
        return json_response({"version": OLLAMA_VERSION})

    @api.get("/api/tags")
    async def tags() -> Response:
        specs = [s.spec for s in pool.models.values() if not s.is_retired and s.spec.is_listed]
        files = await trio.to_thread.run_sync(lambda: [read_model_file(s) for s in specs])
        return json_response({"models": [listed(s, f) for s, f in zip(specs, files, strict=True)]})

    @api.get("/api/ps")
    async def ps() -> Response:
        states = [s for s in pool.models.values() if s.status is Status.LOADED]
        files = await trio.to_thread.run_sync(lambda: [read_model_file(s.spec) for s in states])
        now = trio.current_time()
        models = [
            running(
                state.spec,
                file,
                idle_time_left(state.idle_ttl_s, state.last_used, state.in_flight, now),
                options_of(state),
            )
            for state, file in zip(states, files, strict=True)
        ]
        return json_response({"models": models})

    @api.post("/api/show")
    async def show() -> Response:
        body = await _json_body()
        state = await resolve(_model_field(body, "model", "name"))
        file = await trio.to_thread.run_sync(read_model_file, state.spec)
        return json_response(shown(state.spec, file, options_of(state)))

    @api.post("/api/chat")
    async def chat() -> Response:
        body = await _json_body()
        requested = _model_field(body)
        state = await resolve(requested)
        keep_alive_s = keep_alive_seconds(body.get("keep_alive"))
        if not body.get("messages"):
            return await load_or_unload(state, requested, keep_alive_s, "message")
        call = chat_call(body, state.spec.id, has_projector=state.spec.mmproj is not None)
        return await generation(state, call, Answer(requested, "message"), body, keep_alive_s)

    @api.post("/api/generate")
    async def generate() -> Response:
        body = await _json_body()
        requested = _model_field(body)
        state = await resolve(requested)
        keep_alive_s = keep_alive_seconds(body.get("keep_alive"))
        if not body.get("prompt") and not body.get("images"):
            return await load_or_unload(state, requested, keep_alive_s, "response")
        call = generate_call(body, state.spec.id, has_projector=state.spec.mmproj is not None)
        return await generation(state, call, Answer(requested, "response"), body, keep_alive_s)

    async def load_or_unload(
        state: ModelState, requested: str, keep_alive_s: float | None, key: str
    ) -> Response:
        """Ollama's answer to nothing to generate: ``keep_alive: 0`` unloads the model once
        idle; anything else loads it (and waits for the load) and keeps it as asked."""
        if keep_alive_s == 0:
            if state.is_pinned:
                raise Conflict(f"model {state.spec.id!r} is pinned by the operator: not unloaded")
            if state.status not in HOLDS_NO_CHILD:
                keep(state, 0)
            reason = "unload"
        else:
            async with pool.lease(state, autoload=True):
                keep(state, keep_alive_s)
            reason = "load"
        return json_response(Answer(requested, key).bare_ending(reason))

    async def generation(
        state: ModelState,
        call: ChildCall,
        answer: Answer,
        body: dict[str, Any],
        keep_alive_s: float | None,
    ) -> Response:
        """The child's streamed answer to ``call``, as Ollama's objects: a line each as they
        come (``stream`` is Ollama's default), or one object for ``stream: false``."""
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise InvalidField("stream", "must be true or false")
        started = time.perf_counter_ns()
        was_loaded = state.status is Status.LOADED
        forwarded = await forward(state, call)
        load_ns = 0 if was_loaded else time.perf_counter_ns() - started
        keep(state, keep_alive_s)
        events = EventStream()

        def durations() -> Durations:
            return Durations(total_ns=time.perf_counter_ns() - started, load_ns=load_ns)

        def translated(chunk: bytes | BrokenOff) -> list[dict[str, Any]]:
            if isinstance(chunk, BrokenOff):
                raise CutConnection(chunk.reason)
            payloads = json_payloads(events.feed(chunk))
            return [made for payload in payloads for made in answer.take(payload)]

        if not _is_event_stream(forwarded):  # a backend that answered whole, unasked
            answer.take_whole(await _whole_json(forwarded, state.spec.id))
            if answer.error is not None:
                raise RouterError(answer.error)
            return json_response(answer.final(durations(), whole=True))
        if not stream:
            with forwarded.body:
                async for chunk in forwarded.body:
                    translated(chunk)
                    if answer.error is not None:
                        raise RouterError(answer.error)
            return json_response(answer.final(durations(), whole=True))

        async def lines() -> AsyncIterator[bytes]:
            with forwarded.body:
                async for chunk in forwarded.body:
                    for made in translated(chunk):
                        yield _line(made)
                    if answer.error is not None:
                        yield _line({"error": answer.error})
                        return
            yield _line(answer.final(durations(), whole=False))

        return Response(lines(), status=200, content_type=NDJSON)

    async def embeddings(field_name: str) -> dict[str, Any]:
        """``/api/embed``'s answer, for the texts in ``field_name``."""
        body = await _json_body()
        requested = _model_field(body)
        state = await resolve(requested)
        keep_alive_s = keep_alive_seconds(body.get("keep_alive"))
        started = time.perf_counter_ns()
        was_loaded = state.status is Status.LOADED
        forwarded = await forward(state, embed_call(body, state.spec.id, field_name=field_name))
        load_ns = 0 if was_loaded else time.perf_counter_ns() - started
        keep(state, keep_alive_s)
        payload = await _whole_json(forwarded, state.spec.id)
        durations = Durations(total_ns=time.perf_counter_ns() - started, load_ns=load_ns)
        return embeddings_answer(requested, payload, durations)

    @api.post("/api/embed")
    async def embed() -> Response:
        return json_response(await embeddings("input"))

    @api.post("/api/embeddings")
    async def embeddings_of_one() -> Response:
        answer = await embeddings("prompt")
        return json_response({"embedding": answer["embeddings"][0]})

    @api.route("/api/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    async def not_offered(rest: str) -> Response:
        methods = {
            method
            for rule in app.url_map.iter_rules()
            if rule.endpoint.startswith("ollama.") and rule.rule == request.path
            for method in rule.methods or ()
        }
        if methods:  # a route of ours, asked with another method
            raise MethodNotAllowed(sorted(methods))
        raise NotFound(
            f"llama-router does not offer /api/{rest}: its models are the GGUF files of its "
            "models folder and conf.d, not pulled, pushed, copied or created through the API"
        )

    app.register_blueprint(api)


async def _json_body() -> dict[str, Any]:
    return parse_json_object(await request_body())


def _model_field(body: dict[str, Any], *names: str) -> str:
    for name in names or ("model",):
        model = body.get(name)
        if isinstance(model, str) and model:
            return model
    raise InvalidField((names or ("model",))[0], "is required and must be a string")


def _is_event_stream(forwarded: ForwardedResponse) -> bool:
    return any(
        name.lower() == "content-type" and is_event_stream(value)
        for name, value in forwarded.headers
    )


def _line(made: dict[str, Any]) -> bytes:
    return json.dumps(made, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _error_response(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """An error in Ollama's shape: ``{"error": "message"}``."""
    return json_response({"error": message}, status, headers)


async def _whole(forwarded: ForwardedResponse, limit: int) -> bytes:
    """The rest of ``forwarded``'s body, up to ``limit`` bytes (past it, a 500 that says so)."""
    received = bytearray()
    with forwarded.body:
        async for chunk in forwarded.body:
            if isinstance(chunk, BrokenOff):
                raise Unavailable(chunk.reason)
            received += chunk
            if len(received) > limit:
                raise RouterError(f"the model's answer is larger than {limit} bytes")
    return bytes(received)


async def _whole_json(forwarded: ForwardedResponse, model: str) -> Any:
    """The rest of ``forwarded``'s body, parsed (a child's answer that is not JSON: a 500)."""
    raw = await _whole(forwarded, MAX_WHOLE_ANSWER_BYTES)
    try:
        return json.loads(raw)
    except ValueError:
        raise RouterError(f"model {model!r} answered with something that is not JSON") from None


async def _child_error(forwarded: ForwardedResponse) -> RouterError:
    """A child's error answer as the router's error, its message kept."""
    try:
        raw = await _whole(forwarded, MAX_ERROR_BYTES)
    except RouterError as exc:
        raw = exc.message.encode()
    kind = _CHILD_ERRORS.get(
        forwarded.status, InvalidRequest if forwarded.status < 500 else RouterError
    )
    return kind(error_message(raw))
