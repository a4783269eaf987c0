"""Who may send a request, and to which model: the checks every forwarded request passes,
whichever path serves it (the Quart-Trio app, or the raw ASGI path in front of it).

Each function takes what it needs as plain values (no framework's request object), so that
both paths call the very same code, in the same order: the Host check and the caller's key
(``authenticate``), the model the request names (``requested_model``), whether the caller may
use it (``resolve``), and the plugins' rewriting of the body (``transformed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from router.edge import observe
from router.edge.access import HostCheck
from router.edge.jsonbody import is_blank, parse_json_object, top_level_field
from router.errors import (
    AuthenticationFailed,
    InvalidField,
    InvalidRequest,
    PermissionDenied,
    QueueFull,
    RouterError,
)
from router.hooks.plugin_types import Denial, Principal, RequestInfo
from router.hooks.plugins import Plugins, call_each, call_first, has_implementations
from router.models.pool import ModelPool
from router.models.state import ModelState


@dataclass(frozen=True)
class Gate:
    pool: ModelPool
    plugins: Plugins
    hosts: HostCheck

    async def authenticate(self, host: str | None, info: RequestInfo) -> Principal:
        """The caller, once its ``Host`` header and its key (a plugin's ``authenticate``) pass.

        Raises PermissionDenied (a foreign host name, a denial) or AuthenticationFailed.
        """
        self.hosts.check(host)
        result = await call_first(self.plugins, "authenticate", request=info)
        if isinstance(result, Denial):
            raise denial_error(result)
        if not isinstance(result, Principal):
            raise AuthenticationFailed("no plugin recognized this caller")
        return result

    async def resolve(self, requested: str, principal: Principal, info: RequestInfo) -> ModelState:
        """The model for ``requested`` (plugins may route it), if ``principal`` may use it."""
        observe.note_requested(requested)
        model_id = await call_first(
            self.plugins,
            "resolve_model",
            requested=requested,
            request=info,
            catalog=self.pool.hooks.catalog(),
        )
        state = self.pool.resolve(model_id if isinstance(model_id, str) else requested)
        observe.note_model(state.spec.id)
        denial = await call_first(
            self.plugins, "authorize", principal=principal, model=state.spec.id, request=info
        )
        if isinstance(denial, Denial):
            raise denial_error(denial)
        return state

    async def requested_model(self, query_model: str | None, method: str, body: bytearray) -> str:
        """The model a request names: ``?model=``, or ``"model"`` in a JSON body; else the
        only one. A large body is scanned for its top-level ``"model"``, never parsed whole."""
        model: Any = query_model
        if model is None and method != "GET" and not is_blank(body):
            model = await top_level_field(body, "model")
        if model is None:
            models = self.pool.models
            if len(models) == 1:
                return next(iter(models))
            known = ", ".join(sorted(models)) or "none"
            raise InvalidRequest(
                f'name a model with "model" in the body (or ?model= on GET); known models: {known}',
                param="model",
            )
        if not isinstance(model, str) or not model:
            raise InvalidField("model", "must be a non-empty string")
        return model

    async def transformed(
        self, model: str, body: bytearray, principal: Principal
    ) -> bytes | bytearray:
        """``body`` after every ``transform_request`` hook (JSON object bodies only).

        Only then is a body parsed whole and written anew: without such a hook, it goes as it
        came.
        """
        if not has_implementations(self.plugins, "transform_request") or is_blank(body):
            return body
        parsed = parse_json_object(body)
        for result in await call_each(
            self.plugins, "transform_request", model=model, body=parsed, principal=principal
        ):
            if isinstance(result, dict):  # or None: the body was changed in place, if at all
                parsed = result
        return json.dumps(parsed).encode()


def denial_error(denial: Denial) -> RouterError:
    if denial.status == 401:
        return AuthenticationFailed(denial.message)
    if denial.status == 429:
        return QueueFull(denial.message, retry_after_s=denial.retry_after_s or 1)
    return PermissionDenied(denial.message)


def is_autoload(default: bool, query_value: str | None) -> bool:
    """Whether a request loads its model if needed: ``?autoload=`` over the router's setting."""
    if query_value is None:
        return default
    return query_value.lower() in ("1", "true", "yes")
