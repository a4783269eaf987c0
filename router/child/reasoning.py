"""Thoughts apart from the answer: ``<think>...</think>`` at the start of a model's output
goes to ``reasoning_content``, as llama-server's ``--reasoning-format``.

Formats (llama-server's names): ``none`` leaves the text as the model wrote it; ``deepseek``
(and ``auto``, the default) moves the thoughts to ``reasoning_content``; ``deepseek-legacy``
fills ``reasoning_content`` and leaves the tags and thoughts in the content too. Thoughts are
only looked for at the start of the output, or from the start when the prompt already opened
them (templates that end the generation prompt with ``<think>``).
"""

from __future__ import annotations

import enum

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


class ReasoningFormat(enum.StrEnum):
    NONE = "none"
    AUTO = "auto"
    DEEPSEEK = "deepseek"
    DEEPSEEK_LEGACY = "deepseek-legacy"


def template_thinks(template: str) -> bool:
    """Whether a chat template's model writes its thoughts in ``<think>`` tags."""
    return OPEN_TAG in template or CLOSE_TAG in template


def prompt_opens_thoughts(prompt: str) -> bool:
    return prompt.rstrip().endswith(OPEN_TAG)


class ReasoningSplitter:
    """Splits a stream of text into thoughts and answer; :meth:`feed` each piece, then
    :meth:`finish`. Each returns ``(reasoning, content)`` text that is now certain; text that
    may still turn out to be part of a tag is held back until it is known."""

    def __init__(self, format: ReasoningFormat, *, opened: bool) -> None:
        self._is_legacy = format is ReasoningFormat.DEEPSEEK_LEGACY
        self._state = "thinking" if opened else "start"
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            held = self._held
            if self._state == "start":
                stripped = held.lstrip()
                if stripped.startswith(OPEN_TAG):
                    self._held = stripped[len(OPEN_TAG) :]
                    self._state = "thinking"
                    if self._is_legacy:
                        content.append(held[: len(held) - len(self._held)])
                    continue
                if OPEN_TAG.startswith(stripped):  # blank, or a tag not yet whole
                    break
                self._state = "answering"
                continue
            if self._state == "thinking":
                before, tag, after = held.partition(CLOSE_TAG)
                if tag:
                    reasoning.append(before)
                    if self._is_legacy:
                        content.append(before + tag)
                    self._held = after.lstrip() if not self._is_legacy else after
                    self._state = "answering"
                    continue
                keep = partial_tag_length(held, CLOSE_TAG)
                sure = held[: len(held) - keep]
                reasoning.append(sure)
                if self._is_legacy:
                    content.append(sure)
                self._held = held[len(sure) :]
                break
            content.append(held)
            self._held = ""
            break
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        """What is still held: thoughts never closed stay thoughts, as llama.cpp's."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held, held if self._is_legacy else ""
        return "", held


def partial_tag_length(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag`` (to hold them back)."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


def split(text: str, format: ReasoningFormat, *, opened: bool) -> tuple[str, str]:
    """``(reasoning, content)`` of a whole output."""
    splitter = ReasoningSplitter(format, opened=opened)
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.finish()
    return reasoning + more_reasoning, content + more_content
