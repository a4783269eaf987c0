"""``POST /models`` (download a model into the cache) and ``DELETE /models?model=ID`` (remove
one), as llama-server's router has them.

Both write to the disk and the first reaches the network, so when admin keys are set
(``--admin-api-key``) they need one, as config writes do; without admin keys, any caller the
router lets in may use them (llama.cpp has no admin role: its ``--api-key`` is enough). Both
are state-changing routes (``app.STATE_CHANGING_ENDPOINTS``): JSON bodies only.

Only models of the cache can be removed; a ``--models-dir`` or conf.d model is the
operator's file, and the answer says so (400).
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from router.edge.jsonbody import parse_json_object
from router.edge.web import json_response, request_body
from router.errors import InvalidField, ModelNotFound, PermissionDenied
from router.models.downloads import Downloads
from router.models.hf_cache import CACHE_SOURCE, remove_cached
from router.models.pool import ModelPool
from router.settings import RouterSettings

DOWNLOAD_ENDPOINTS = frozenset({"download_model", "delete_model"})  # the views below, by name
_WHERE = {"models_dir": "--models-dir", "conf.d": "a conf.d file", "preset": "the preset file",
          "peer": "a peer router"}  # fmt: skip


def register_downloads_api(
    app: QuartTrio,
    pool: ModelPool,
    settings: RouterSettings,
    downloads: Downloads,
    rescan: Callable[[], None],
) -> None:
    """Add the two routes to ``app``; ``rescan`` lists the models again after a removal."""

    def require_admin(action: str) -> None:
        if settings.admin_api_keys and not g.principal.is_admin:
            raise PermissionDenied(f"{action} needs an admin key (--admin-api-key)")

    @app.post("/models")
    async def download_model() -> Response:
        require_admin("downloading a model")
        model = parse_json_object(await request_body()).get("model")
        if not isinstance(model, str) or not model:
            raise InvalidField("model", "is required: a Hugging Face repository, ORG/REPO[:QUANT]")
        model_id = await downloads.start(model)
        return json_response({"success": True, "model": model_id})

    @app.delete("/models")
    async def delete_model() -> Response:
        require_admin("removing a model")
        model = request.args.get("model")
        if not model:
            raise InvalidField("model", "is required: DELETE /models?model=ORG/REPO:QUANT")
        if downloads.cancel(model):
            return json_response({"success": True})
        state = pool.models.get(model)
        if state is None:
            raise ModelNotFound(f"model {model!r} is not listed")
        if state.spec.source != CACHE_SOURCE:
            where = _WHERE.get(state.spec.source, state.spec.source)
            raise InvalidField(
                "model",
                f"{model!r} comes from {where}, not from the model cache: only downloaded "
                "models can be removed here",
            )
        if state.pid is not None:
            pool.request_unload(state)
        await trio.to_thread.run_sync(remove_cached, downloads.cache, model)
        rescan()  # delists it: model_remove
        return json_response({"success": True})
