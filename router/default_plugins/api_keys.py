"""Built-in authentication: the ``--api-key`` and ``--admin-api-key`` keys."""

from __future__ import annotations

import hmac

from router.hooks.hookspecs import hookimpl
from router.hooks.plugin_types import Denial, Principal, RequestInfo
from router.settings import RouterSettings


class ApiKeys:
    name = "api_keys"

    def __init__(self, settings: RouterSettings) -> None:
        self._keys = [key.encode() for key in settings.api_keys]
        self._admin_keys = [key.encode() for key in settings.admin_api_keys]

    @hookimpl(trylast=True)
    def authenticate(self, request: RequestInfo) -> Principal | Denial:
        """No keys set: everyone is let in, as an administrator of their own machine. Keys
        set: the request must carry one, compared with every key in constant time."""
        if not self._keys and not self._admin_keys:
            return Principal(name="anonymous", is_admin=True)
        offered = request.bearer_token().encode()
        is_admin = any([hmac.compare_digest(offered, key) for key in self._admin_keys])
        is_user = any([hmac.compare_digest(offered, key) for key in self._keys])
        if is_admin:
            return Principal(name="admin", is_admin=True)
        if is_user:
            return Principal(name="api-key")
        return Denial("invalid or missing API key: send 'Authorization: Bearer KEY'", status=401)
