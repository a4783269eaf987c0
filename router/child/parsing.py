"""Turn request bodies into typed requests, or an error that names the field at fault.

Field names and defaults follow OpenAI, with llama-server's extras (``n_predict``,
``ignore_eos``, ``grammar``, ``json_schema``, ``repeat_penalty``...). Nothing here touches
the model; tokenizing and the context check happen in the app, which has the engine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.child.engine import SamplingParams
from router.child.grammar_limits import grammar_limit_exceeded
from router.child.multimodal import (
    MEDIA_MARKER,
    ImageInput,
    image_of_part,
    is_media_part,
    media_refused,
)
from router.child.reasoning import ReasoningFormat
from router.child.tools import NO_TOOLS, ToolRequest, parse_reasoning_format, parse_tool_request
from router.edge.jsonbody import kind_of
from router.errors import InvalidField, InvalidRequest, NotSupported

_MISSING: Any = object()

# The most alternatives a token's log-probabilities may list: OpenAI's bound for chat's
# ``top_logprobs`` (its legacy ``logprobs`` stops at 5; llama-server's ``n_probs`` has none).
# Each costs some 60 bytes per generated token; unbounded, one request could ask for the
# whole vocabulary (262k tokens for Gemma 3) at every token.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class RequestDefaults:
    """What a generation request that does not say gets: the child's ``--temp`` and
    ``--n-predict``, as llama-server's command line sets its default sampling parameters."""

    temperature: float = 0.8
    max_tokens: int | None = None  # None: until end-of-generation or a full context


LLAMA_SERVER_DEFAULTS = RequestDefaults()


@dataclass(frozen=True)
class GenerationSettings:
    """What completions and chat completions share."""

    max_tokens: int | None
    stop: tuple[str, ...]
    sampling: SamplingParams
    ignore_eos: bool
    stream: bool
    include_usage: bool
    cache_prompt: bool = True
    n: int = 1  # choices: generations of the same prompt, each in a slot of its own
    n_field: str = "n"  # the field ``n`` came from, for error messages
    # None: no log-probabilities; k >= 0: each token's, with the k likeliest alternatives.
    logprobs: int | None = None


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | list[int]
    settings: GenerationSettings
    echo: bool


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    template_args: dict[str, Any]  # tools, tool_choice, chat_template_kwargs
    settings: GenerationSettings
    tools: ToolRequest = NO_TOOLS
    reasoning_format: ReasoningFormat | None = None  # None: the model's --reasoning-format
    # Its image parts, in order; each stands in its message's text as ``MEDIA_MARKER``.
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: list[str | list[int]]
    encoding_format: str


def parse_completion(
    body: Mapping[str, Any], *, defaults: RequestDefaults = LLAMA_SERVER_DEFAULTS
) -> CompletionRequest:
    prompt = body.get("prompt", _MISSING)
    if prompt is _MISSING:
        raise InvalidField("prompt", "is required")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        parsed: str | list[int] = prompt
    elif _is_token_list(prompt):
        parsed = prompt
    elif isinstance(prompt, list):
        raise NotSupported("'prompt' holds several prompts; send one prompt per request")
    else:
        raise InvalidField(
            "prompt", f"must be a string or a list of token ids, not {kind_of(prompt)}"
        )
    settings = _generation_settings(
        body,
        max_tokens_names=("max_tokens", "n_predict"),
        logprobs=_completion_logprobs(body),
        defaults=defaults,
    )
    echo = _bool(body, "echo", False)
    if echo and settings.logprobs is not None:
        raise NotSupported(
            "'echo' with 'logprobs' asks for the prompt's log-probabilities, which this server "
            "does not compute; ask for the completion's alone (no 'echo')"
        )
    return CompletionRequest(prompt=parsed, settings=settings, echo=echo)


def parse_chat(
    body: Mapping[str, Any], *, defaults: RequestDefaults = LLAMA_SERVER_DEFAULTS
) -> ChatRequest:
    messages = body.get("messages", _MISSING)
    if messages is _MISSING:
        raise InvalidField("messages", "is required")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages", "must be a non-empty list of messages")
    images: list[ImageInput] = []
    normalized = [_message(index, message, images) for index, message in enumerate(messages)]
    template_args: dict[str, Any] = {}
    for name in ("tools", "tool_choice"):
        if body.get(name) is not None:
            template_args[name] = body[name]
    if "tools" in template_args and not isinstance(template_args["tools"], list):
        raise InvalidField("tools", "must be a list")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise InvalidField("chat_template_kwargs", "must be an object")
        template_args.update(kwargs)
    return ChatRequest(
        messages=normalized,
        template_args=template_args,
        settings=_generation_settings(
            body,
            max_tokens_names=("max_completion_tokens", "max_tokens", "n_predict"),
            logprobs=_chat_logprobs(body),
            defaults=defaults,
        ),
        tools=parse_tool_request(body),
        reasoning_format=parse_reasoning_format(body),
        images=tuple(images),
    )


def parse_embedding(body: Mapping[str, Any]) -> EmbeddingRequest:
    raw = body.get("input", body.get("content", _MISSING))
    if raw is _MISSING:
        raise InvalidField("input", "is required")
    inputs: list[str | list[int]]
    if isinstance(raw, str) or (_is_token_list(raw) and raw):
        inputs = [raw]  # one text, or one text as token ids
    elif (
        isinstance(raw, list)
        and raw
        and all(isinstance(item, str) or _is_token_list(item) for item in raw)
    ):
        inputs = list(raw)
    else:
        raise InvalidField(
            "input", "must be a string, a list of strings, or token ids, and not empty"
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidField("encoding_format", "must be 'float' or 'base64'")
    return EmbeddingRequest(inputs=inputs, encoding_format=encoding)


def _message(index: int, message: Any, images: list[ImageInput]) -> dict[str, Any]:
    """``message`` with its content as one text; its images go to ``images``, each leaving
    ``MEDIA_MARKER`` in its place."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidField(where, f"must be an object, not {kind_of(message)}")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidField(f"{where}.role", "is required and must be a string")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            part_where = f"{where}.content[{part_index}]"
            if isinstance(part, dict) and part.get("type") == "image_url":
                images.append(image_of_part(part_where, part))
                texts.append(MEDIA_MARKER)
                continue
            if is_media_part(part):
                raise media_refused(part_where, part)
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else kind_of(part)
                raise InvalidField(part_where, f"is of type {kind!r}; only 'text' parts are read")
            if not isinstance(part.get("text"), str):
                raise InvalidField(f"{part_where}.text", "must be a string")
            texts.append(part["text"])
        content = "".join(texts)
    elif content is None:
        if not message.get("tool_calls"):
            raise InvalidField(f"{where}.content", "is required")
        content = ""
    elif not isinstance(content, str):
        raise InvalidField(
            f"{where}.content", f"must be a string or a list, not {kind_of(content)}"
        )
    return {**message, "content": content}


def _chat_logprobs(body: Mapping[str, Any]) -> int | None:
    """OpenAI's ``logprobs: true`` with ``top_logprobs`` alternatives (default none), else
    llama-server's ``n_probs`` (0: none)."""
    if body.get("top_logprobs") is not None and not _bool(body, "logprobs", False):
        raise InvalidField("top_logprobs", "needs 'logprobs': true")
    if _bool(body, "logprobs", False):
        for name in ("top_logprobs", "n_probs"):
            if body.get(name) is not None:
                return _int(body, name, 0, minimum=0, maximum=MAX_TOP_LOGPROBS)
        return 0
    return _n_probs(body)


def _completion_logprobs(body: Mapping[str, Any]) -> int | None:
    """OpenAI's legacy ``logprobs``: an integer, how many alternatives (0: the chosen token's
    alone); else llama-server's ``n_probs`` (0: none)."""
    if body.get("logprobs") is not None:
        return _int(body, "logprobs", 0, minimum=0, maximum=MAX_TOP_LOGPROBS)
    return _n_probs(body)


def _n_probs(body: Mapping[str, Any]) -> int | None:
    n_probs = _int(body, "n_probs", 0, minimum=0, maximum=MAX_TOP_LOGPROBS)
    return n_probs or None


def _generation_settings(
    body: Mapping[str, Any],
    *,
    max_tokens_names: tuple[str, ...],
    logprobs: int | None,
    defaults: RequestDefaults,
) -> GenerationSettings:
    # llama-server's name first, as it reads them; the model's slots bound it (in the app).
    n_field = "n_cmpl" if body.get("n_cmpl") is not None else "n"
    n = _int(body, n_field, 1, minimum=1)
    max_tokens = defaults.max_tokens
    for name in max_tokens_names:
        value = body.get(name)
        if value is not None:
            max_tokens = _int(body, name, 0, minimum=-1)
            max_tokens = None if max_tokens == -1 else max_tokens
            break
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        stops = tuple(stop)
    else:
        raise InvalidField("stop", "must be a string or a list of strings")
    stream = _bool(body, "stream", False)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidField("stream_options", "must be an object")
    include_usage = bool(stream_options.get("include_usage", False))
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise InvalidField("seed", f"must be an integer, not {kind_of(seed)}")
    sampling = SamplingParams(
        temperature=_number(body, "temperature", defaults.temperature, minimum=0.0),
        top_k=_int(body, "top_k", 40, minimum=0),
        top_p=_number(body, "top_p", 0.95, minimum=0.0, maximum=1.0),
        min_p=_number(body, "min_p", 0.05, minimum=0.0, maximum=1.0),
        typical_p=_number(body, "typical_p", 1.0, minimum=0.0, maximum=1.0),
        repeat_penalty=_number(body, "repeat_penalty", 1.0, minimum=0.0),
        repeat_last_n=_int(body, "repeat_last_n", 64, minimum=-1),
        presence_penalty=_number(body, "presence_penalty", 0.0, minimum=-2.0, maximum=2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, minimum=-2.0, maximum=2.0),
        seed=seed,
        logit_bias=_logit_bias(body.get("logit_bias")),
        grammar=_grammar(body),
        grammar_field=_grammar_field(body),
    )
    ignore_eos = _bool(body, "ignore_eos", False)
    if ignore_eos and sampling.grammar is not None and sampling.grammar_field != "grammar":
        # A JSON value always ends; a GBNF grammar may go on forever ("[a-z]+"), so it may.
        raise InvalidField("ignore_eos", grammar_ends_generation(sampling.grammar_field))
    return GenerationSettings(
        max_tokens=max_tokens,
        stop=stops,
        sampling=sampling,
        ignore_eos=ignore_eos,
        stream=stream,
        include_usage=include_usage,
        cache_prompt=_bool(body, "cache_prompt", True),
        n=n,
        n_field=n_field,
        logprobs=logprobs,
    )


def grammar_ends_generation(field: str) -> str:
    """Why ``ignore_eos`` is refused beside a JSON schema or a required tool call: once the
    grammar's text is complete only an end-of-generation token may follow (the sampler then
    ends the generation whatever ``ignore_eos`` says), so asking for it means nothing."""
    return (
        f"cannot be combined with '{field}': once the grammar's text is complete, only the "
        "end of the generation may follow"
    )


def _logit_bias(raw: Any) -> dict[int, float]:
    if raw is None:
        return {}
    pairs: list[tuple[Any, Any]]
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(p, list) and len(p) == 2 for p in raw):
        pairs = [(p[0], p[1]) for p in raw]  # llama-server's [[token, bias], ...] form
    else:
        raise InvalidField("logit_bias", "must map token ids to numbers")
    bias: dict[int, float] = {}
    for token, value in pairs:
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            raise InvalidField(
                "logit_bias", f"has key {token!r}, which is not a token id"
            ) from None
        if value is False:
            value = -math.inf
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidField("logit_bias", f"has a non-numeric bias for token {token_id}")
        bias[token_id] = float(value)
    return bias


def _grammar_field(body: Mapping[str, Any]) -> str:
    for name in ("grammar", "json_schema", "response_format"):
        if body.get(name) is not None:
            return name
    return "grammar"


def _grammar(body: Mapping[str, Any]) -> str | None:
    """A GBNF grammar from ``grammar``, ``json_schema`` or ``response_format``, within the
    bounds llama.cpp survives (``grammar_limits.py``)."""
    grammar = _unchecked_grammar(body)
    if grammar is not None:
        reason = grammar_limit_exceeded(grammar)
        if reason is not None:
            field = _grammar_field(body)
            if field != "grammar":
                reason = f"makes a grammar that {reason}; simplify the schema"
            raise InvalidField(field, reason)
    return grammar


def _unchecked_grammar(body: Mapping[str, Any]) -> str | None:
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if body.get("grammar") is not None:
        if not isinstance(body["grammar"], str):
            raise InvalidField("grammar", "must be a GBNF string")
        return str(body["grammar"])
    schema: Any = body.get("json_schema")
    field = "json_schema"
    response_format = body.get("response_format")
    if schema is None and response_format is not None:
        if not isinstance(response_format, dict):
            raise InvalidField("response_format", "must be an object")
        kind = response_format.get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            schema = response_format.get("schema")
            if schema is None:
                return str(JSON_GBNF)
        elif kind == "json_schema":
            wrapper = response_format.get("json_schema")
            if not isinstance(wrapper, dict) or not isinstance(wrapper.get("schema"), dict):
                raise InvalidField(
                    "response_format.json_schema.schema", "is required and must be an object"
                )
            schema = wrapper["schema"]
        else:
            raise InvalidField(
                "response_format.type", "must be 'text', 'json_object' or 'json_schema'"
            )
        field = "response_format"
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise InvalidField(field, "must hold a JSON schema object")
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises plain Exceptions for unsupported schemas
        raise InvalidRequest(
            f"'{field}' holds a JSON schema that cannot be turned into a grammar: "
            f"{type(exc).__name__}: {exc}",
            param=field,
        ) from exc


def _is_token_list(value: Any) -> bool:
    """Whether ``value`` is a list of integers (not booleans): a list of token ids.

    ``map(type, ...)`` runs in C: a body of 30 million ids is checked in 0.7 s, not 1.8 s,
    on the event loop.
    """
    return isinstance(value, list) and set(map(type, value)) <= {int}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidField(name, f"must be true or false, not {kind_of(value)}")
    return value


def _int(
    body: Mapping[str, Any], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise InvalidField(name, f"must be an integer, not {kind_of(value)}")
    if maximum is not None and not minimum <= value <= maximum:
        raise InvalidField(name, f"must be between {minimum} and {maximum}, got {value}")
    if value < minimum:
        raise InvalidField(name, f"must be at least {minimum}, got {value}")
    return int(value)


def _number(
    body: Mapping[str, Any],
    name: str,
    default: float,
    *,
    minimum: float,
    maximum: float = math.inf,
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        raise InvalidField(name, f"must be a number, not {kind_of(value)}")
    if not minimum <= value <= maximum:
        bounds = f"between {minimum:g} and {maximum:g}" if maximum < math.inf else f">= {minimum:g}"
        raise InvalidField(name, f"must be {bounds}, got {value}")
    return float(value)
