"""``/infill``: fill-in-the-middle with the model's FIM tokens, as llama-server's
``post_infill``.

The prompt is llama.cpp's ``format_prompt_infill``: the ``input_extra`` files first (the
repo-level pattern when the model has FIM_REP and FIM_SEP tokens, else each file after a
``--- snippet ---`` line), then ``FIM_PRE prefix FIM_SUF suffix FIM_MID prompt``; the prefix is
cut from its start and the suffix from its end to fit one batch, and the files take what the
context has left. The answer has llama-server's own ``/completion`` shape (``content``,
``tokens_predicted``, ``stop_type``, ``timings``...), streamed as its SSE events when asked.
Sampling and stopping take every ``/completion`` option.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from functools import partial
from typing import Any

import trio
from quart import Response
from quart_trio import QuartTrio

from router.child import generations, responses
from router.child.engine import Finished, FinishReason, ModelInfo, SpecialTokens
from router.child.parsing import parse_completion
from router.child.responses import StreamItem
from router.child.service import ModelService
from router.edge.jsonbody import kind_of, parse_json_object
from router.edge.web import json_response, request_body
from router.errors import InvalidField, NotSupported

# What llama.cpp puts before each extra file when the model has no FIM_SEP token.
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"
REPOSITORY_NAME = "myproject\n"
CURRENT_FILE_NAME = "filename\n"
EXTRA_FILE_NAME = "tmp"  # a file of input_extra without a name


def register_infill(app: QuartTrio, service: ModelService, model_id: str) -> None:
    """Add ``POST /infill`` to the child's ``app``."""

    @app.post("/infill")
    async def infill() -> Response:
        check_fim_tokens(service.engine.info.special_tokens)
        body = parse_json_object(await request_body())
        answer = await infill_answer(service, model_id, body, app.nursery)
        if isinstance(answer, dict):
            return json_response(answer)
        return Response(answer, headers=generations.SSE_HEADERS)


def check_fim_tokens(special: SpecialTokens) -> None:
    """Raise NotSupported, naming them, when the model lacks a FIM token infill needs."""
    missing = [
        name
        for name, token in (
            ("prefix (tokenizer.ggml.fim_pre_token_id)", special.fim_pre),
            ("suffix (tokenizer.ggml.fim_suf_token_id)", special.fim_suf),
            ("middle (tokenizer.ggml.fim_mid_token_id)", special.fim_mid),
        )
        if token is None
    ]
    if missing:
        raise NotSupported(
            f"this model cannot infill: it has no fill-in-the-middle {', '.join(missing)} "
            "token; use a code model trained for FIM (Qwen2.5-Coder, CodeLlama, StarCoder...)"
        )


async def infill_answer(
    service: ModelService, model_id: str, body: dict[str, Any], nursery: trio.Nursery
) -> generations.Answer:
    """The answer's body, or its SSE events (run as tasks of ``nursery``).

    Raises RouterError for anything wrong with the request.
    """
    engine = service.engine
    info = engine.info
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise InvalidField("prompt", f"must be a string, not {kind_of(prompt)}")
    for name in ("input_prefix", "input_suffix"):
        if name not in body:
            raise InvalidField(name, "is required")
    extra = _extra_files(body.get("input_extra", []))
    parsed = parse_completion({**body, "prompt": prompt}, defaults=service.request_defaults)
    if parsed.settings.n != 1:
        raise InvalidField(parsed.settings.n_field, "must be 1 for /infill")
    engine.check_sampling(parsed.settings.sampling)
    tokens = await _infill_tokens(service, info, body, extra, parsed.settings.max_tokens)
    (request,) = generations.generation_requests(tokens, parsed.settings, "input_prefix", info)
    prompt_text = await service.off_loop(partial(engine.detokenize, tokens), size=len(tokens))
    final = _FinalFields(model_id, prompt_text, parsed.settings.stop)
    if not parsed.settings.stream:
        ((pieces, finished),) = await service.complete([request])
        return final.body("".join(piece.text for piece in pieces), finished)
    channel = await service.start_stream(nursery, [request])
    return _events(channel, final, len(tokens))


def _extra_files(raw: Any) -> list[tuple[str, str]]:
    """``input_extra`` as (file name, text) pairs."""
    if not isinstance(raw, list):
        raise InvalidField("input_extra", 'must be a list of {"filename": string, "text": string}')
    files = []
    for index, chunk in enumerate(raw):
        where = f"input_extra[{index}]"
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise InvalidField(f"{where}.text", "is required and must be a string")
        filename = chunk.get("filename", EXTRA_FILE_NAME)
        if not isinstance(filename, str):
            raise InvalidField(f"{where}.filename", f"must be a string, not {kind_of(filename)}")
        files.append((filename, chunk["text"]))
    return files


async def _infill_tokens(
    service: ModelService,
    info: ModelInfo,
    body: dict[str, Any],
    extra: list[tuple[str, str]],
    max_tokens: int | None,
) -> list[int]:
    """llama.cpp's ``format_prompt_infill``, budgets included."""
    special = info.special_tokens
    assert special.fim_pre is not None and special.fim_suf is not None
    assert special.fim_mid is not None

    async def tokens_of(text: str, field: str) -> list[int]:
        return await service.tokenize_prompt(
            text, field=field, add_special=False, parse_special=False
        )

    prefix = await _mixed_tokens(service, info, body["input_prefix"], "input_prefix")
    suffix = await _mixed_tokens(service, info, body["input_suffix"], "input_suffix")
    prompt = await tokens_of(body.get("prompt", ""), "prompt")
    extra_tokens: list[int] = []
    if special.fim_rep is not None:
        extra_tokens += [special.fim_rep, *await tokens_of(REPOSITORY_NAME, "input_extra")]
    for index, (filename, text) in enumerate(extra):
        if special.fim_sep is not None:
            name = await tokens_of(filename + "\n", f"input_extra[{index}].filename")
            extra_tokens += [special.fim_sep, *name]
        else:
            extra_tokens += await tokens_of(SNIPPET_SEPARATOR, "input_extra")
        extra_tokens += await tokens_of(text, f"input_extra[{index}].text")
    if special.fim_sep is not None:
        extra_tokens += [special.fim_sep, *await tokens_of(CURRENT_FILE_NAME, "input_extra")]

    # The prefix and suffix fit one batch, 3:1; the extra files take what the context has left.
    n_batch, n_predict = info.n_batch, -1 if max_tokens is None else max_tokens
    n_prefix_take = min(len(prefix), 3 * (n_batch // 4))
    n_suffix_take = min(len(suffix), max(0, n_batch // 4 - (2 + len(prompt))))
    n_extra_take = min(max(0, info.n_ctx - n_batch - 2 * n_predict), len(extra_tokens))
    begin = [special.fim_pre, *prefix[len(prefix) - n_prefix_take :], *prompt]
    end = [special.fim_suf, *suffix[:n_suffix_take]]
    bos = [special.bos] if special.add_bos and special.bos is not None else []
    kept_extra = extra_tokens[len(extra_tokens) - n_extra_take :]
    return [*kept_extra, *bos, *begin, *end, special.fim_mid]


async def _mixed_tokens(
    service: ModelService, info: ModelInfo, value: Any, field: str
) -> list[int]:
    """llama.cpp's ``tokenize_mixed``: a string, or a list of strings and token ids."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidField(
            field, f"must be a string or a list of strings and token ids, not {kind_of(value)}"
        )
    tokens: list[int] = []
    for item in items:
        if isinstance(item, str):
            tokens += await service.tokenize_prompt(
                item, field=field, add_special=False, parse_special=False
            )
        elif isinstance(item, int) and not isinstance(item, bool):
            tokens += generations.checked_token_ids([item], field, 1, info)
        else:
            raise InvalidField(field, f"holds {kind_of(item)}: only strings and token ids")
    return tokens


class _FinalFields:
    """The last object of an answer, in llama-server's ``/completion`` shape."""

    def __init__(self, model_id: str, prompt: str, stop: Sequence[str]) -> None:
        self.model_id = model_id
        self.prompt = prompt
        self.stop = list(stop)

    def body(self, content: str, finished: Finished) -> dict[str, Any]:
        if finished.reason == FinishReason.LENGTH:
            stop_type = "limit"
        else:
            stop_type = "word" if finished.stop_word else "eos"
        return {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": -1,
            "stop": True,
            "model": self.model_id,
            "tokens_predicted": finished.completion_tokens,
            "tokens_evaluated": finished.prompt_tokens,
            "generation_settings": {"stop": self.stop},
            "prompt": self.prompt,
            "has_new_line": "\n" in content,
            "truncated": False,
            "stop_type": stop_type,
            "stopping_word": finished.stop_word or "",
            "tokens_cached": finished.prompt_tokens + finished.completion_tokens,
            "timings": responses.timings([finished]),
        }


async def _events(
    channel: trio.MemoryReceiveChannel[StreamItem], final: _FinalFields, n_prompt: int
) -> AsyncGenerator[bytes, None]:
    """llama-server's SSE for a native completion: a chunk per piece, then the final object
    (its content already sent), and no ``[DONE]``; or an error event where it failed."""
    n_predicted = 0
    with channel:
        async for item in channel:
            if isinstance(item, BaseException):
                yield responses.sse_error(item)
                return
            _, value = item
            if isinstance(value, Finished):
                yield responses.sse_event(final.body("", value))
                continue
            n_predicted += 1
            yield responses.sse_event(
                {
                    "index": 0,
                    "content": value.text,
                    "tokens": [],
                    "stop": False,
                    "id_slot": -1,
                    "tokens_predicted": n_predicted,
                    "tokens_evaluated": n_prompt,
                }
            )
