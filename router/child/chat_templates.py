"""Chat templates: which template a model's chat requests use, and rendering messages with it.

It owns the choice (``--chat-template``, else the GGUF's ``tokenizer.chat_template``, else the
format of the model's family, else chatml) and the rendering of a ``messages`` list into one
prompt. It knows nothing of slots, sampling or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import jinja2
import llama_cpp
from llama_cpp.llama_chat_format import (
    CHATML_CHAT_TEMPLATE,
    LLAMA3_INSTRUCT_CHAT_TEMPLATE,
    MISTRAL_INSTRUCT_CHAT_TEMPLATE,
    Jinja2ChatFormatter,
)

from router.errors import InvalidRequest, ModelLoadFailed

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
BUILTIN_CHAT_TEMPLATES = {
    "chatml": CHATML_CHAT_TEMPLATE,
    "gemma": GEMMA_CHAT_TEMPLATE,
    "llama3": LLAMA3_INSTRUCT_CHAT_TEMPLATE,
    "mistral": MISTRAL_INSTRUCT_CHAT_TEMPLATE,
}
# For a GGUF without tokenizer.chat_template: llama-server always falls back to chatml, which
# turns a Gemma model's answers into nonsense; we pick the family's own format where we know it.
FALLBACK_BY_ARCHITECTURE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}
FALLBACK_CHAT_TEMPLATE = "chatml"


def choose_template(asked: str | None, metadata: dict[str, str]) -> tuple[str, str]:
    """The Jinja template for chat requests, and where it came from (a built-in name,
    ``command line`` or ``gguf``).

    ``asked`` is ``--chat-template``: a built-in name or a Jinja template. Raises
    ModelLoadFailed for a name that is neither.
    """
    if asked is not None and asked in BUILTIN_CHAT_TEMPLATES:
        return BUILTIN_CHAT_TEMPLATES[asked], asked
    if asked is not None and ("{{" in asked or "{%" in asked):
        return asked, "command line"
    if asked is not None:
        known = ", ".join(sorted(BUILTIN_CHAT_TEMPLATES))
        raise ModelLoadFailed(
            f"unknown --chat-template {asked!r}: use one of {known}, or a Jinja template",
            kind="bad_template",
        )
    model_template = metadata.get("tokenizer.chat_template")
    if model_template:
        return model_template, "gguf"
    architecture = metadata.get("general.architecture", "")
    name = FALLBACK_BY_ARCHITECTURE.get(architecture, FALLBACK_CHAT_TEMPLATE)
    return BUILTIN_CHAT_TEMPLATES[name], name


@dataclass(frozen=True)
class ChatTemplate:
    """The template a loaded model renders chat requests with; build it with :meth:`for_model`."""

    formatter: Jinja2ChatFormatter
    source: str  # a built-in name, "command line" or "gguf"

    @classmethod
    def for_model(cls, llama: llama_cpp.Llama, asked: str | None) -> ChatTemplate:
        """The template for ``llama`` (see :func:`choose_template`), with its BOS and EOS text.

        Raises ModelLoadFailed when the template is not valid Jinja.
        """
        template, source = choose_template(asked, llama.metadata)
        model = llama._model
        bos, eos = model.token_bos(), model.token_eos()
        try:
            formatter = Jinja2ChatFormatter(
                template=template,
                bos_token=model.token_get_text(bos) if bos >= 0 else "",
                eos_token=model.token_get_text(eos) if eos >= 0 else "",
                add_generation_prompt=True,
            )
        except jinja2.TemplateError as exc:
            where = "--chat-template" if source == "command line" else f"the {source} template"
            raise ModelLoadFailed(
                f"{where} is not a valid Jinja template: {exc}", kind="bad_template"
            ) from exc
        return cls(formatter=formatter, source=source)

    @property
    def template(self) -> str:
        return self.formatter.template

    @property
    def bos_token(self) -> str:
        return self.formatter.bos_token

    @property
    def eos_token(self) -> str:
        return self.formatter.eos_token

    def render(self, messages: list[dict[str, Any]], **template_args: Any) -> str:
        """The prompt for ``messages``; InvalidRequest when the template cannot render them."""
        try:
            response = self.formatter(messages=cast(Any, messages), **template_args)
        except Exception as exc:  # jinja2 raises many types; all mean "these messages"
            raise InvalidRequest(
                f"the model's chat template could not render 'messages': {exc}", param="messages"
            ) from exc
        prompt: str = response.prompt
        return prompt
