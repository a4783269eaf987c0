"""A chat generation's output as the Responses and Anthropic APIs show it: thoughts, text and
tool calls, in the order they come.

The chat route's own reader (``tools.ChatOutput``) reads it, so a model's tool-call format and
its ``<think>`` tags are read alike on every route; this only sorts its deltas by kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from router.child.tool_formats import ToolCall
from router.child.tools import ChatOutput, ChatPlan

# What a piece of output is: the model's thoughts, or the reply's text.
Kind = Literal["reasoning", "text"]
Part = tuple[Kind, str]


@dataclass
class OutputReader:
    """One generation's output read as it comes: :meth:`feed` each piece, then :meth:`finish`.
    Text that may start a tool call is held until the end, as the chat route holds it."""

    plan: ChatPlan
    _output: ChatOutput = field(init=False)

    def __post_init__(self) -> None:
        self._output = self.plan.output()

    def feed(self, text: str) -> list[Part]:
        return _parts(self._output.feed(text))

    def finish(self) -> tuple[list[Part], tuple[ToolCall, ...]]:
        """The output's last parts, and the tool calls it made."""
        deltas, _ = self._output.finish()
        return _parts(deltas), self._output.calls


@dataclass(frozen=True)
class WholeOutput:
    reasoning: str
    text: str
    calls: tuple[ToolCall, ...]


def read_whole(plan: ChatPlan, text: str) -> WholeOutput:
    """A whole output at once (a request that does not stream)."""
    reader = OutputReader(plan)
    parts = reader.feed(text)
    last, calls = reader.finish()
    parts += last
    return WholeOutput(
        reasoning="".join(piece for kind, piece in parts if kind == "reasoning"),
        text="".join(piece for kind, piece in parts if kind == "text"),
        calls=calls,
    )


def call_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as an object (Anthropic's ``input``); ``{}`` when they are not one,
    as llama-server does."""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        return {}
    return arguments if isinstance(arguments, dict) else {}


def _parts(deltas: list[dict[str, Any]]) -> list[Part]:
    parts: list[Part] = []
    for delta in deltas:
        if delta.get("reasoning_content"):
            parts.append(("reasoning", delta["reasoning_content"]))
        elif delta.get("content"):
            parts.append(("text", delta["content"]))
    return parts
