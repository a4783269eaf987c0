"""Models served elsewhere: a conf.d ``url`` model (any OpenAI-compatible server) and the
models of peer routers (``--peer``, ``[[peers]]``), listed here as ``PEER/model``.

The pool never starts, stops, evicts or counts them (``Status.REMOTE``); a request is forwarded
over a pool of keep-alive connections (``processes/wire.py``, which speaks TLS for ``https``),
with the upstream's key (``api_key_env``) as ``Authorization: Bearer`` and the body's
``"model"`` rewritten to the upstream's id. The key is read from the router's environment
when connections are made, and never kept in a spec, shown or logged.

``RemoteUpstreams.run`` (a task of the server's nursery) checks every remote model's server
and lists every peer's models each ``--remote-interval`` seconds, and at once when asked
(``rescan``: ``GET /models?reload=1``, ``POST /models/reload``, SIGHUP). A server or peer that
does not answer keeps its models listed with ``available: false`` and the reason; they come
back by themselves at the first check that succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import trio

from router.errors import InvalidRequest, Unavailable, WireError
from router.models.events import STATUS_CHANGE, Event, EventHub
from router.models.state import ModelState, UpstreamHealth
from router.processes.wire import ChildConnections, RequestBody
from router.spec import ModelSpec, Peer, Upstream

log = logging.getLogger("router.models.remote")

MAX_LISTING_BYTES = 4 * 1024 * 1024  # a peer's /v1/models answer
MAX_PEER_MODELS = 1000
PEER_SOURCE = "peer"  # a peer's model's "source" in GET /models; not listed again by peers


def tls_context(upstream: Upstream) -> ssl.SSLContext | None:
    """How an ``https`` upstream is verified (``tls_verify``); None for ``http``."""
    if not upstream.url.startswith("https://"):
        return None
    if upstream.tls_verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if upstream.tls_verify is True:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(upstream.tls_verify))


def connections_to(upstream: Upstream) -> ChildConnections:
    """Keep-alive connections to ``upstream``, each request carrying its key (if it has one).

    A missing variable is not an error here (confd checks it when the file is read): the
    upstream then answers 401, which the client sees as is.
    """
    headers: list[tuple[str, str]] = []
    key = os.environ.get(upstream.api_key_env) if upstream.api_key_env else None
    if key:
        headers.append(("Authorization", f"Bearer {key}"))
    return ChildConnections(
        upstream.url,
        tls=tls_context(upstream),
        host_header=urllib.parse.urlsplit(upstream.url).netloc,
        headers=headers,
        connect_timeout_s=upstream.connect_timeout_s,
    )


def upstream_request(
    upstream: Upstream, body: RequestBody, query: bytes
) -> tuple[RequestBody, bytes]:
    """``body`` and ``query`` as the upstream must see them: ``"model"`` (in a JSON object
    body, and ``?model=``) names the model by the upstream's id, not ours."""
    if query:
        pairs = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if any(name == "model" for name, _ in pairs):
            pairs = [(n, upstream.model if n == "model" else v) for n, v in pairs]
            query = urllib.parse.urlencode(pairs).encode("latin-1")
    if not body or not bytes(body[:64]).lstrip().startswith(b"{"):
        return body, query
    try:
        parsed = json.loads(bytes(body))
    except ValueError:
        return body, query  # the upstream says what is wrong with it
    if not isinstance(parsed, dict):
        return body, query
    parsed["model"] = upstream.model
    return json.dumps(parsed, ensure_ascii=False).encode(), query


def unavailable_reason(state: ModelState) -> str | None:
    """Why a remote model cannot take requests now (its last check failed), or None."""
    health = state.health
    if health is None or health.is_ok:
        return None
    peer = state.spec.upstream.peer if state.spec.upstream is not None else None
    where = "its server" if peer is None else f"peer {peer!r}"
    ago = max(0.0, time.time() - health.checked_at)
    return f"{where} did not answer its last check ({ago:.0f} s ago): {health.error}"


def refuse_if_unavailable(state: ModelState) -> None:
    """Raise Unavailable (503) with the reason if ``state``'s server failed its last check:
    at once, rather than after a connect timeout to a server known to be away."""
    reason = unavailable_reason(state)
    if reason is not None:
        raise Unavailable(
            f"remote model {state.spec.id!r} is unavailable: {reason}; it is listed again "
            "(GET /models) as soon as a check succeeds"
        )


@asynccontextmanager
async def remote_lease(
    state: ModelState, clock: Callable[[], float]
) -> AsyncIterator[ChildConnections]:
    """The pool's lease of a remote model: its connections (made on first use), counted in
    ``in_flight`` for the block; no queue and no slot. Raises Unavailable when its server
    failed its last check. Cancellation: the count is given back."""
    refuse_if_unavailable(state)
    upstream = state.spec.upstream
    assert upstream is not None
    if state.client is None:
        state.client = connections_to(upstream)
    state.in_flight += 1
    try:
        yield state.client
    finally:
        state.in_flight -= 1
        state.last_used = clock()


def refuse_remote(state: ModelState, action: str) -> None:
    """Raise InvalidRequest (400) for ``POST /models/load`` or ``unload`` of a remote model."""
    upstream = state.spec.upstream
    if upstream is None:
        return
    where = f"by peer {upstream.peer!r}" if upstream.peer else f"at {upstream.url}"
    raise InvalidRequest(
        f"model {state.spec.id!r} is remote (served {where}): the router does not {action} "
        "it; its server does",
        param="model",
    )


def remote_status(state: ModelState) -> dict[str, Any]:
    """What ``GET /models`` adds to a remote model's ``status``: availability, the reason, the
    last check. Never the key, nor the URL's parts beyond scheme, host, port and path."""
    upstream = state.spec.upstream
    assert upstream is not None
    reason = unavailable_reason(state)
    status: dict[str, Any] = {"available": reason is None, "url": upstream.url}
    if reason is not None:
        status["reason"] = status["error"] = reason  # "error": what the page and ps show
    if upstream.peer is not None:
        status["peer"] = upstream.peer
        status["upstream_model"] = upstream.model
    if state.health is not None:
        status["health"] = {
            "time": round(state.health.checked_at, 3),
            "ok": state.health.is_ok,
            "error": state.health.error,
        }
    return status


@dataclass
class _PeerListing:
    model_ids: tuple[str, ...] = ()  # the last good listing: kept while the peer is away
    health: UpstreamHealth | None = None


class RemoteUpstreams:
    """The peers and the health of every remote model: refreshed by ``run``."""

    def __init__(self, peers: Sequence[Peer], interval_s: float) -> None:
        self.peers = tuple(peers)
        self.interval_s = interval_s
        self._listings = {peer.name: _PeerListing() for peer in self.peers}
        self._wanted = trio.Event()  # a refresh now (rescan)

    def specs(self, taken: Collection[str] = ()) -> dict[str, ModelSpec]:
        """Every peer's models as ``PEER/model`` specs (from their last good listing), but
        for ids in ``taken`` (a local model of the same name wins)."""
        specs: dict[str, ModelSpec] = {}
        for peer in self.peers:
            for upstream_id in self._listings[peer.name].model_ids:
                model_id = f"{peer.name}/{upstream_id}"
                if model_id in taken or model_id in specs:
                    continue
                specs[model_id] = ModelSpec(
                    id=model_id,
                    path=None,
                    source=PEER_SOURCE,
                    description=f"{upstream_id!r} of peer {peer.name!r}",
                    health="/v1/models",
                    upstream=replace(peer.upstream, model=upstream_id, peer=peer.name),
                )
        return specs

    def refresh_soon(self) -> None:
        """Check every upstream and list every peer now, not at the next interval."""
        self._wanted.set()

    async def run(
        self,
        models: Callable[[], Mapping[str, ModelState]],
        relist: Callable[[], None],
        events: EventHub | None = None,
    ) -> None:
        """Check and list every ``interval_s`` (or when asked) until cancelled.

        ``models`` are the pool's; ``relist`` is called when a peer's list of models changed
        (it rescans, so that ``specs`` reach the pool). A model that became available or
        unavailable is published on ``events`` (``status_change``, status ``remote``), so the
        page and ``/models/sse`` readers see it without polling. Every check is bounded by its
        upstream's ``connect_timeout``. Cancellation: returns; checks under way are dropped.
        """
        while True:
            before = {model_id: unavailable_reason(state) for model_id, state in models().items()}
            await self.refresh(models, relist)
            if events is not None:
                for model_id, state in models().items():
                    if state.spec.upstream is None:
                        continue
                    reason = unavailable_reason(state)
                    if model_id in before and (before[model_id] is None) == (reason is None):
                        continue
                    data: dict[str, Any] = {"status": "remote", "available": reason is None}
                    if reason is not None:
                        data["reason"] = reason
                    events.publish(Event(model_id, STATUS_CHANGE, data))
            with trio.move_on_after(self.interval_s):
                await self._wanted.wait()
            self._wanted = trio.Event()

    async def refresh(
        self, models: Callable[[], Mapping[str, ModelState]], relist: Callable[[], None]
    ) -> None:
        """One round: every peer listed and every ``url`` model checked, concurrently."""
        url_models = [
            state
            for state in models().values()
            if state.spec.upstream is not None and state.spec.upstream.peer is None
        ]
        changed = False

        async def list_peer(peer: Peer) -> None:
            nonlocal changed
            listing = self._listings[peer.name]
            previous = listing.health
            was_ok = previous is not None and previous.is_ok
            try:
                model_ids = await _peer_models(peer.upstream)
            except WireError as exc:
                listing.health = UpstreamHealth(time.time(), False, str(exc))
                if was_ok or previous is None:  # logged once, not every round
                    log.warning("peer %s is unavailable: %s", peer.name, exc)
                return
            listing.health = UpstreamHealth(time.time(), True)
            if not was_ok:
                log.info("peer %s: %d models", peer.name, len(model_ids))
            if model_ids != listing.model_ids:
                listing.model_ids, changed = model_ids, True

        async def check(state: ModelState) -> None:
            upstream = state.spec.upstream
            assert upstream is not None
            health = await _check(upstream, state.spec.health)
            if state.health is not None and state.health.is_ok != health.is_ok:
                if health.is_ok:
                    log.info("remote model %s is available again", state.spec.id)
                else:
                    log.warning("remote model %s is unavailable: %s", state.spec.id, health.error)
            state.health = health

        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                nursery.start_soon(list_peer, peer)
            for state in url_models:
                nursery.start_soon(check, state)
        if changed:
            relist()
        for state in models().values():
            upstream = state.spec.upstream
            if upstream is not None and upstream.peer in self._listings:
                state.health = self._listings[upstream.peer].health


async def _get(upstream: Upstream, path: str, limit: int) -> tuple[int, bytes]:
    """``GET path`` on a connection of its own (never one that carries requests), bounded
    by the upstream's ``connect_timeout`` as a whole. Raises WireError."""
    connections = connections_to(upstream)
    timeout_s = upstream.connect_timeout_s
    try:
        with trio.fail_after(timeout_s):
            response = await connections.request(
                "GET", path, [("Accept", "application/json")], b"", timeout_s=timeout_s
            )
            try:
                body = b""
                async for piece in response.aiter_raw():
                    body += piece
                    if len(body) > limit:
                        raise WireError(f"its answer to GET {path} is larger than {limit} bytes")
            finally:
                await response.aclose()
            return response.status_code, body
    except trio.TooSlowError:
        raise WireError(f"no answer to GET {path} within {timeout_s:g} s") from None
    finally:
        await connections.aclose()


async def _check(upstream: Upstream, path: str) -> UpstreamHealth:
    try:
        status, _ = await _get(upstream, path, MAX_LISTING_BYTES)
    except WireError as exc:
        return UpstreamHealth(time.time(), False, str(exc))
    if 200 <= status < 300:
        return UpstreamHealth(time.time(), True)
    return UpstreamHealth(time.time(), False, f"GET {path} answered HTTP {status}")


async def _peer_models(upstream: Upstream) -> tuple[str, ...]:
    """The ids a peer lists at ``GET /v1/models``, but the ones it has from its own peers
    (two routers that list each other would otherwise list each other's lists for ever)."""
    status, body = await _get(upstream, "/v1/models", MAX_LISTING_BYTES)
    if status != 200:
        hint = " (check the peer's api_key_env)" if status in (401, 403) else ""
        raise WireError(f"GET /v1/models answered HTTP {status}{hint}")
    try:
        data = json.loads(body)["data"]
        entries = [entry for entry in data if isinstance(entry, dict)]
    except (ValueError, KeyError, TypeError):
        raise WireError("GET /v1/models did not answer an OpenAI model list") from None
    ids = [
        entry["id"]
        for entry in entries
        if isinstance(entry.get("id"), str)
        and entry["id"]
        and entry["id"].isprintable()
        and len(entry["id"].encode()) <= 200
        and entry.get("source") != PEER_SOURCE
        and not _is_invalid(entry.get("status"))
    ]
    return tuple(sorted(set(ids))[:MAX_PEER_MODELS])


def _is_invalid(status: Any) -> bool:
    """Whether a listed model's status says its configuration is broken (nothing to use)."""
    return isinstance(status, dict) and status.get("value") == "invalid"
