"""The completion routes' work, apart from HTTP: a request body in, an answer out.

Both the Quart routes (``app.py``) and the raw fast path in front of them (``fast_path.py``)
call these, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import trio

from router.child import responses, tools
from router.child.engine import GenerationRequest, ModelInfo, PromptMedia
from router.child.multimodal import ImageInput
from router.child.parsing import (
    ChatRequest,
    GenerationSettings,
    grammar_ends_generation,
    parse_chat,
    parse_completion,
)
from router.child.reasoning import ReasoningFormat
from router.child.responses import StreamItem
from router.child.service import ModelService
from router.errors import ContextLengthExceeded, InvalidField, InvalidRequest

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_SEEDS = 0xFFFFFFFF  # llama.cpp's seeds are 32 bits, and 0xFFFFFFFF means "random"

# A JSON body, or the SSE events of a stream.
Answer = dict[str, Any] | AsyncGenerator[bytes, None]


async def text_completion(
    service: ModelService, model_id: str, body: dict[str, Any], nursery: trio.Nursery
) -> Answer:
    """``/v1/completions``: the answer's body, or its SSE events (run as tasks of ``nursery``).

    Raises RouterError for anything wrong with the request or the model.
    """
    engine = service.engine
    info = engine.info
    parsed = parse_completion(body, defaults=service.request_defaults)
    check_choices(parsed.settings, info)
    engine.check_sampling(parsed.settings.sampling)
    echo = ""
    if isinstance(parsed.prompt, str):
        tokens = await service.tokenize_prompt(parsed.prompt, field="prompt", add_special=True)
        echo = parsed.prompt if parsed.echo else ""
    else:
        tokens = checked_token_ids(parsed.prompt, "prompt", info.n_ctx - 1, info)
        if parsed.echo:
            echo = await service.off_loop(partial(engine.detokenize, tokens), size=len(tokens))
    requests = generation_requests(tokens, parsed.settings, "prompt", info)
    ids = responses.ResponseIds(model=model_id, prefix="cmpl")
    with_logprobs = parsed.settings.logprobs is not None
    if not parsed.settings.stream:
        outputs = await service.complete(requests)
        choices = [responses.Choice.of(pieces, finished) for pieces, finished in outputs]
        return responses.text_completion(ids, choices, echo=echo, with_logprobs=with_logprobs)
    channel = await service.start_stream(nursery, requests)
    events = responses.sse_events(
        _drain(channel),
        responses.text_stream(ids, echo, with_logprobs=with_logprobs),
        n_choices=len(requests),
        include_usage=parsed.settings.include_usage,
    )
    return events


async def chat_completion(
    service: ModelService, model_id: str, body: dict[str, Any], nursery: trio.Nursery
) -> Answer:
    """``/v1/chat/completions``, as :func:`text_completion`."""
    parsed = parse_chat(body, defaults=service.request_defaults)
    plan, requests = await planned_chat(service, parsed)
    ids = responses.ResponseIds(model=model_id, prefix="chatcmpl")
    with_logprobs = parsed.settings.logprobs is not None
    if not parsed.settings.stream:
        outputs = await service.complete(requests)
        choices = [responses.Choice.of(pieces, finished) for pieces, finished in outputs]
        return responses.chat_completion(ids, choices, with_logprobs=with_logprobs, plan=plan)
    channel = await service.start_stream(nursery, requests)
    events = responses.sse_events(
        _drain(channel),
        responses.chat_stream(ids, with_logprobs=with_logprobs, plan=plan),
        n_choices=len(requests),
        include_usage=parsed.settings.include_usage,
    )
    return events


async def planned_chat(
    service: ModelService, parsed: ChatRequest
) -> tuple[tools.ChatPlan, list[GenerationRequest]]:
    """The generations a chat request runs, one per choice, and how their output is read
    back (tool calls, thoughts); a required tool call constrains the sampling with its
    grammar. The Responses and Anthropic routes (``api_responses.py``, ``api_anthropic.py``)
    convert their requests to chat and run them through this too, so all three build their
    prompts and read their outputs alike."""
    engine = service.engine
    check_choices(parsed.settings, engine.info)
    engine.check_sampling(parsed.settings.sampling)
    plan = await chat_plan(service, parsed)
    settings = parsed.settings
    if plan.grammar is not None:
        sampling = replace(settings.sampling, grammar=plan.grammar, grammar_field="tools")
        engine.check_sampling(sampling)
        settings = replace(settings, sampling=sampling)
    if parsed.images:
        tokens, media = await media_tokens(service, plan.prompt, parsed.images)
        return plan, generation_requests(tokens, settings, "messages", engine.info, media=media)
    tokens = await chat_tokens(service, plan.prompt)
    return plan, generation_requests(tokens, settings, "messages", engine.info)


async def chat_prompt(service: ModelService, parsed: ChatRequest) -> str:
    """A chat request's prompt: its messages through the model's chat template (what
    ``/apply-template`` answers)."""
    return (await chat_plan(service, parsed)).prompt


async def chat_plan(service: ModelService, parsed: ChatRequest) -> tools.ChatPlan:
    """The prompt of a chat request (tools included) and how to read its output."""
    engine = service.engine
    if parsed.tools.is_required and parsed.settings.sampling.grammar is not None:
        raise InvalidRequest(
            f"'{parsed.settings.sampling.grammar_field}' cannot be combined with a required "
            "tool call ('tool_choice'), which constrains the output itself",
            param="tool_choice",
        )
    if parsed.tools.is_required and parsed.settings.ignore_eos:
        raise InvalidField("ignore_eos", grammar_ends_generation("tool_choice"))
    reasoning = parsed.reasoning_format or ReasoningFormat(engine.info.reasoning_format)
    return await service.off_loop(
        partial(
            tools.prepare_chat,
            engine,
            parsed.messages,
            parsed.template_args,
            parsed.tools,
            reasoning,
        ),
        size=sum(len(message["content"]) for message in parsed.messages),
    )


async def chat_tokens(service: ModelService, prompt: str) -> list[int]:
    """The tokens of a chat prompt, a BOS token first unless the template wrote one."""
    info = service.engine.info
    starts_with_bos = bool(info.bos_token) and prompt.startswith(info.bos_token)
    return await service.tokenize_prompt(prompt, field="messages", add_special=not starts_with_bos)


async def media_tokens(
    service: ModelService, prompt: str, images: Sequence[ImageInput]
) -> tuple[list[int], PromptMedia]:
    """The tokens of a chat prompt with images (placeholders where they go), as
    :func:`chat_tokens`, and the images for the engine to evaluate."""
    engine = service.engine
    starts_with_bos = bool(engine.info.bos_token) and prompt.startswith(engine.info.bos_token)
    return await service.off_loop(
        partial(engine.media_prompt, prompt, images, add_special=not starts_with_bos),
        size=len(prompt) + sum(len(image.data) for image in images),
    )


async def _drain(
    channel: trio.MemoryReceiveChannel[StreamItem],
) -> AsyncIterator[StreamItem]:
    """Iterate ``channel``, and close it however the iteration ends (client gone included)."""
    with channel:
        async for item in channel:
            yield item


def generation_requests(
    tokens: list[int],
    settings: GenerationSettings,
    field: str,
    info: ModelInfo,
    *,
    media: PromptMedia | None = None,
) -> list[GenerationRequest]:
    """One request per choice. With a seed, choice ``i`` samples with ``seed + i``: the
    answer is reproducible, and its choices differ."""
    if not tokens:
        raise InvalidField(field, "is empty: there is nothing to continue")
    if len(tokens) >= info.n_ctx:
        raise ContextLengthExceeded(field, len(tokens), info.n_ctx)
    request = GenerationRequest(
        prompt_tokens=tokens,
        max_tokens=settings.max_tokens,
        stop=settings.stop,
        sampling=settings.sampling,
        ignore_eos=settings.ignore_eos,
        logprobs=settings.logprobs,
        cache_prompt=settings.cache_prompt,
        incremental=settings.stream,
        media=media,
        choices=settings.n,
    )
    seed = settings.sampling.seed
    if seed is None or seed < 0:
        return [request] * settings.n
    return [request] + [
        replace(request, sampling=replace(settings.sampling, seed=(seed + index) % _SEEDS))
        for index in range(1, settings.n)
    ]


def check_choices(settings: GenerationSettings, info: ModelInfo) -> None:
    """Refuse more choices than slots, as llama-server does: they run together, one a slot."""
    if settings.n > info.total_slots:
        raise InvalidField(
            settings.n_field,
            f"must be between 1 and {info.total_slots}, got {settings.n}: each choice takes "
            f"one of the model's {info.total_slots} slot(s) (more with a larger --parallel)",
        )


def checked_token_ids(tokens: list[int], field: str, most: int, info: ModelInfo) -> list[int]:
    """``tokens``, once known to be at most ``most`` ids of the vocabulary (length first: a
    list too long for the context is refused without a look at its millions of ids)."""
    if len(tokens) > most:
        raise ContextLengthExceeded(field, len(tokens), info.n_ctx)
    for token in tokens:
        if not 0 <= token < info.n_vocab:
            raise InvalidField(field, f"holds token id {token}, outside the vocabulary")
    return tokens
