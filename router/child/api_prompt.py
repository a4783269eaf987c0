"""What prompt a chat request makes, and how many tokens: ``/apply-template`` and the
``input_tokens`` routes, as llama-server answers them, without generating anything.

The prompt and its tokens come from the functions the chat route runs
(``generations.chat_prompt``, ``generations.chat_tokens``), so a count is what a generation of
the same request reports as its prompt tokens.
"""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from router.child import generations
from router.child.parsing import ChatRequest, parse_chat
from router.child.service import ModelService
from router.edge.jsonbody import parse_json_object
from router.edge.web import json_response, request_body


def register_prompt_routes(app: QuartTrio, service: ModelService) -> None:
    """``/apply-template`` and ``/chat/completions/input_tokens`` (also under ``/v1``)."""

    @app.post("/apply-template")
    async def apply_template() -> Response:
        parsed = parse_chat(parse_json_object(await request_body()))
        return json_response({"prompt": await generations.chat_prompt(service, parsed)})

    @app.post("/v1/chat/completions/input_tokens")
    @app.post("/chat/completions/input_tokens")
    async def chat_input_tokens() -> Response:
        parsed = parse_chat(parse_json_object(await request_body()))
        n_tokens = await input_tokens(service, parsed)
        return json_response({"object": "response.input_tokens", "input_tokens": n_tokens})


async def input_tokens(service: ModelService, parsed: ChatRequest) -> int:
    """How many tokens the prompt of ``parsed`` is, as its generation would count them.

    Raises PromptTooLarge for a prompt too long to tokenize for this model.
    Cancellation: as ``ModelService.off_loop``.
    """
    prompt = await generations.chat_prompt(service, parsed)
    if parsed.images:
        tokens, _ = await generations.media_tokens(service, prompt, parsed.images)
        return len(tokens)
    return len(await generations.chat_tokens(service, prompt))
