"""Every error of the router, as types, in one tree; and the one function that turns an error
a client can see into a body.

The tree::

    LlamaRouterError                    the base of everything below
    ├── RouterError                     what a client can see (HTTP status, OpenAI error.type)
    ├── StartupError                    the router cannot start as asked: one line, exit 2
    ├── ConfigInvalid                   a conf.d table breaks a rule: the file is listed invalid
    ├── WireError                       a child's connection failed, or it spoke no HTTP/1.1
    │   ├── ClosedBeforeAnswer          it closed a reused connection before answering
    │   └── ChildTimeout                it was silent for the request's -to/--timeout
    ├── CutConnection                   an answer ends by closing the client's connection
    └── ControlError                    a command for a running router (ps, load...) failed
        ├── RouterRefused               the router answered with an error: its message, exit 1
        └── RouterUnreachable           nothing answered at --url: exit 2

A client's errors (HTTP status, OpenAI ``error.type``)::

    RouterError                         500 server_error
    ├── InvalidRequest                  400 invalid_request_error
    │   ├── InvalidJSON                 400   the body is not JSON, or not an object
    │   ├── InvalidField                400   one field has a wrong type or value; names the field
    │   ├── ContextLengthExceeded       400   the prompt does not fit the model's context
    │   │   └── PromptTooLarge          400     known from its size in bytes, before tokenizing
    │   ├── NotSupported                400   not_supported_error: the server does not do it
    │   └── UnsupportedMediaType        415   a body that is not the JSON the route takes
    ├── AuthenticationFailed            401 authentication_error
    ├── PermissionDenied                403 permission_error
    ├── ModelNotFound                   404 not_found_error
    ├── Conflict                        409 conflict_error
    ├── PluginFailed                    500 server_error: names the plugin and its hook
    ├── QueueFull                       429 rate_limit_error (carries Retry-After)
    └── Unavailable                     503 unavailable_error
        ├── ModelLoadFailed             503   a child could not load its model
        └── ModelStopping               503   a child that is stopping takes no new request

Start-up errors::

    StartupError
    ├── SettingsError                   a flag, variable or router.toml value is unusable
    ├── RouterFileError                 router.toml cannot be read or has unknown tables
    ├── CannotListen                    the address and port cannot be bound
    ├── PluginLoadError                 a plugin cannot be loaded, or implements what no hook has
    └── ExposureRefused                 config writes open to the network without an admin key

Code raises these; the HTTP layer calls :func:`error_body` once. Errors from dependencies are
translated where they cross into our code, never matched by message text. The body follows
llama-server (``code`` is the HTTP status), which is what OpenAI's clients parse.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class LlamaRouterError(Exception):
    """The base of every error the router defines."""


class RouterError(LlamaRouterError):
    """Base of every error that reaches a client; also an unexpected failure (500)."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers this error needs (Retry-After, WWW-Authenticate)."""
        return {}


class InvalidRequest(RouterError):
    status = 400
    error_type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    """The request body could not be read as a JSON object."""


class InvalidField(InvalidRequest):
    """One field of the body is missing, of the wrong type, or out of range."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"'{field}' {problem}", param=field)


class ContextLengthExceeded(InvalidRequest):
    """The prompt alone needs more tokens than the model's context holds."""

    def __init__(self, field: str, n_prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"'{field}' is {n_prompt_tokens} tokens long, but the model's context holds "
            f"{n_ctx} tokens (including the reply): shorten it, or start the model with a "
            "larger --ctx-size",
            param=field,
        )
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx


class PromptTooLarge(ContextLengthExceeded):
    """The prompt has more bytes than the context could hold whatever its tokens; found
    before tokenizing it, which takes seconds to minutes for megabytes of text."""

    def __init__(self, field: str, n_bytes: int, n_ctx: int, max_token_bytes: int) -> None:
        InvalidRequest.__init__(
            self,
            f"'{field}' is {n_bytes} bytes long, more than the model's context of {n_ctx} "
            f"tokens can hold whatever its tokens (none stands for more than {max_token_bytes} "
            f"bytes, so {n_ctx * max_token_bytes} bytes at most): shorten it, or start the "
            "model with a larger --ctx-size",
            param=field,
        )
        self.n_prompt_tokens = -(-n_bytes // max_token_bytes)  # at least
        self.n_ctx = n_ctx


class UnsupportedMediaType(InvalidRequest):
    """The body is not declared as the media type the route takes."""

    status = 415


class AuthenticationFailed(RouterError):
    status = 401
    error_type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PermissionDenied(RouterError):
    """The router was not started to allow this."""

    status = 403
    error_type = "permission_error"


class Conflict(RouterError):
    """The request contradicts the model's current state."""

    status = 409
    error_type = "conflict_error"


class ModelNotFound(RouterError):
    status = 404
    error_type = "not_found_error"


class PluginFailed(RouterError):
    """A plugin raised while handling a request: a 500 that names it."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        super().__init__(
            f"plugin {plugin!r} failed in its {hook} hook: {type(error).__name__}: {error}"
        )
        self.plugin = plugin


class QueueFull(RouterError):
    """More requests wait for the model than its queue holds."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotSupported(InvalidRequest):
    """The server does not do what the request asks (several prompts in one, an image part,
    a model's missing feature): a 400 with the reason, never a 501, which clients such as
    openai's retry in vain. Its own ``error.type`` says which kind of 400 it is."""

    error_type = "not_supported_error"


class ModelNotLoaded(InvalidRequest):
    """Autoload is off and the model is not loaded: a 400, as llama-server's router answers
    ("model is not loaded"), since only a load (POST /models/load) changes the answer; a
    retry as it is never would."""


class Unavailable(RouterError):
    """The model cannot serve now; with ``retry_after_s``, it is worth retrying after that."""

    status = 503
    error_type = "unavailable_error"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class ModelStopping(Unavailable):
    """A child that is stopping takes no new request (its running ones may end)."""

    def __init__(self) -> None:
        super().__init__("the model is stopping and takes no new requests")


class ModelLoadFailed(Unavailable):
    """A model could not be loaded: missing or corrupt file, not enough memory.

    ``kind`` names the cause in a word (``not_found``, ``not_gguf``, ``llama_error``,
    ``out_of_memory``...): a child sends it to the router on its lifeline (``lifeline.py``).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "internal",
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, param=param, retry_after_s=retry_after_s)
        self.kind = kind


# ---- start-up ----------------------------------------------------------------------------------


class StartupError(LlamaRouterError):
    """The router cannot start as asked; ``message`` says what is wrong and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SettingsError(StartupError):
    """A setting (flag, ``LLAMA_ROUTER_*`` variable, router.toml value) is unusable."""


class RouterFileError(StartupError):
    """router.toml is unusable: the router does not start (conf.d files never stop it)."""


class CannotListen(StartupError):
    """The router's address and port cannot be bound (in use, not this machine's...)."""


class PluginLoadError(StartupError):
    """A plugin could not be loaded (missing, a hook or argument that does not exist)."""


class ExposureRefused(StartupError):
    """The settings would let anyone who can reach the router run programs: it does not start."""


# ---- conf.d --------------------------------------------------------------------------------------


class ConfigInvalid(LlamaRouterError):
    """A model table breaks a rule; ``key`` is the key at fault, when there is one, and
    ``table`` the table that holds it (``args``, ``env``), if not the top level."""

    def __init__(self, message: str, key: str | None = None, table: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.table = table


# ---- talking to children -------------------------------------------------------------------------


class WireError(LlamaRouterError):
    """The child's connection failed or it answered something that is not HTTP/1.1."""


class ClosedBeforeAnswer(WireError):
    """The connection ended before any byte of an answer (a reused one the child had closed)."""


class ChildTimeout(WireError):
    """The child sent nothing, and took nothing, for the request's ``timeout_s``."""


class CutConnection(LlamaRouterError):
    """Raised by a response's body to end it by closing the connection: a chunked answer then
    lacks its last chunk, so the client knows it is incomplete (``http_server`` catches it)."""


# ---- commands for a running router (router/control.py) ----------------------------------------


class ControlError(LlamaRouterError):
    """``llama-router ps``, ``load``... could not do what was asked; ``exit_code`` is the
    command's exit status, ``message`` one line for a person."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RouterRefused(ControlError):
    """The router answered with an error (its message), or a load or unload did not end as
    asked."""


class RouterUnreachable(ControlError):
    """No router answered at the URL: not running, another address, or another program."""

    exit_code = 2


# ---- the body of a client's error ----------------------------------------------------------------


def error_body(error: RouterError, path: str = "") -> dict[str, Any]:
    """The body for ``error`` on the route ``path``: OpenAI's shape, ``{"error": {"message",
    "type", "code"}}``, but on Anthropic's routes (see :func:`shaped_for`)."""
    body: dict[str, Any] = {
        "message": error.message,
        "type": error.error_type,
        "code": error.status,
    }
    if error.param is not None:
        body["param"] = error.param
    return shaped_for(path, {"error": body})


# The routes of Anthropic's Messages API. Its clients read an error's message and type from
# Anthropic's shape, so errors on these routes take it, from the child and the router alike.
ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})

# Anthropic's error type for an HTTP status; another 4xx is an invalid_request_error, another
# 5xx an api_error.
_ANTHROPIC_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def shaped_for(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style error ``body`` as the route ``path`` answers it: on Anthropic's routes,
    ``{"type": "error", "error": {"type", "message"}}``, the type from the HTTP status."""
    if path not in ANTHROPIC_PATHS:
        return body
    error = body["error"]
    status = error["code"]
    default = "invalid_request_error" if status < 500 else "api_error"
    kind = _ANTHROPIC_TYPES.get(status, default)
    return {"type": "error", "error": {"type": kind, "message": error["message"]}}


def sse_error_event(error: RouterError, path: str = "") -> bytes:
    """``error`` as a Server-Sent Event, to end a stream that cannot go on; on Anthropic's
    routes, the ``error`` event its clients raise on."""
    return sse_error_body_event(error_body(error, path), path)


def sse_error_body_event(body: dict[str, Any], path: str = "") -> bytes:
    """An error ``body`` already in ``path``'s shape (:func:`shaped_for`) as the Server-Sent
    Event that ends a stream (a child's own refusal, passed on)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    event = b"event: error\n" if path in ANTHROPIC_PATHS else b""
    return event + b"data: " + data + b"\n\n"
