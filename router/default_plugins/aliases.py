"""Built-in model resolution: a model's id, or one of its aliases."""

from __future__ import annotations

from collections.abc import Mapping

from router.hooks.hookspecs import hookimpl
from router.hooks.plugin_types import ModelInfo
from router.settings import RouterSettings


class Aliases:
    name = "aliases"

    def __init__(self, settings: RouterSettings) -> None:
        # -m: one model answers every name, as llama-server -m ignores "model".
        self.is_single_model = settings.model_file is not None

    @hookimpl(trylast=True)
    def resolve_model(self, requested: str, catalog: Mapping[str, ModelInfo]) -> str | None:
        if self.is_single_model and len(catalog) == 1:
            return next(iter(catalog))
        if requested in catalog:
            return requested
        for model_id, model in catalog.items():
            if requested in model.aliases:
                return model_id
        return None
