"""Tool calls and thoughts in chat completions: the request's ``tools`` checked, the prompt
rendered with them, the output constrained when a call is required, and the output read back
as an assistant message (whole, or as a stream's deltas).

The formats live in ``tool_formats.py``, the grammars in ``tool_grammar.py``, the thoughts in
``reasoning.py``; this module decides which apply to one request (:func:`prepare_chat`) and
shapes what the model wrote (:func:`assistant_message`, :class:`ChatOutput`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.child.engine import Engine
from router.child.reasoning import (
    ReasoningFormat,
    ReasoningSplitter,
    partial_tag_length,
    prompt_opens_thoughts,
    template_thinks,
)
from router.child.tool_formats import (
    START_MARKERS,
    ParsedOutput,
    ToolCall,
    ToolFormat,
    detect_format,
    parse_output,
)
from router.child.tool_grammar import tool_call_grammar
from router.edge.jsonbody import kind_of
from router.errors import InvalidField, InvalidRequest

TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class ToolRequest:
    """A request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked."""

    tools: tuple[dict[str, Any], ...]
    choice: Any  # as sent: "auto", "none", "required" or {"type": "function", ...}
    forced_name: str | None  # the function a named tool_choice asks for
    parallel: bool

    @property
    def is_active(self) -> bool:
        """Whether the model is offered the tools (``tool_choice`` is not ``none``)."""
        return bool(self.tools) and self.choice != "none"

    @property
    def is_required(self) -> bool:
        return self.is_active and (self.choice == "required" or self.forced_name is not None)

    @property
    def offered(self) -> tuple[dict[str, Any], ...]:
        """The tools the output may call: the named one alone, when one is named."""
        if self.forced_name is None:
            return self.tools
        return tuple(t for t in self.tools if t["function"]["name"] == self.forced_name)


NO_TOOLS = ToolRequest(tools=(), choice="auto", forced_name=None, parallel=False)


def parse_tool_request(body: Mapping[str, Any]) -> ToolRequest:
    """The request's tool fields; InvalidField names the one at fault."""
    raw_tools = body.get("tools")
    if raw_tools is None:
        raw_tools = []
    if not isinstance(raw_tools, list):
        raise InvalidField("tools", f"must be a list, not {kind_of(raw_tools)}")
    tools = tuple(_tool(index, tool) for index, tool in enumerate(raw_tools))
    names = [tool["function"]["name"] for tool in tools]
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto"
    forced_name: str | None = None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidField(
                "tool_choice",
                'must be "auto", "none", "required" or '
                '{"type": "function", "function": {"name": ...}}',
            )
        if name not in names:
            raise InvalidField("tool_choice", f"names {name!r}, which is not one of 'tools'")
        forced_name = name
    elif choice not in TOOL_CHOICES:
        raise InvalidField(
            "tool_choice", f'must be "auto", "none", "required" or a function, not {choice!r}'
        )
    elif choice == "required" and not tools:
        raise InvalidField("tool_choice", "is 'required', but 'tools' lists no tool")
    parallel = body.get("parallel_tool_calls", False)
    if not isinstance(parallel, bool):
        raise InvalidField("parallel_tool_calls", f"must be true or false, not {kind_of(parallel)}")
    return ToolRequest(tools=tools, choice=choice, forced_name=forced_name, parallel=parallel)


def _tool(index: int, tool: Any) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise InvalidField(where, 'must be {"type": "function", "function": {...}}')
    function = tool.get("function")
    if not isinstance(function, dict):
        raise InvalidField(f"{where}.function", "is required and must be an object")
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise InvalidField(f"{where}.function.name", "is required and must be a string")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidField(f"{where}.function.parameters", "must be a JSON schema object")
    return {"type": "function", "function": function}


def parse_reasoning_format(body: Mapping[str, Any]) -> ReasoningFormat | None:
    """The request's ``reasoning_format`` (llama-server's field), or None for the model's."""
    raw = body.get("reasoning_format")
    if raw is None:
        return None
    try:
        return ReasoningFormat(raw)
    except ValueError:
        known = ", ".join(repr(f.value) for f in ReasoningFormat)
        raise InvalidField("reasoning_format", f"must be one of {known}") from None


# ---- the prompt --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatPlan:
    """How one chat request is rendered, constrained and read back."""

    prompt: str
    tool_format: ToolFormat | None = None  # None: the output is not read for calls
    tool_names: frozenset[str] = frozenset()
    grammar: str | None = None  # a tool call is required: the output must be one
    reasoning: ReasoningFormat | None = None  # None: thoughts are not looked for
    thoughts_opened: bool = False  # the prompt ends inside <think>

    @property
    def reads_output(self) -> bool:
        """Whether the output is read for calls or thoughts (else it is all content)."""
        return self.tool_format is not None or self.reasoning is not None

    def output(self) -> ChatOutput:
        return ChatOutput(self)


_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "llama_router_probe_tool",
        "description": "probe",
        "parameters": {"type": "object", "properties": {}},
    },
}
_DESCRIBES_TOOLS: dict[str, bool] = {}  # by template source; a child serves one template


def template_describes_tools(engine: Engine) -> bool:
    """Whether the model's template puts ``tools`` in the prompt (llama.cpp finds it the same
    way: it renders a probe tool and looks for its name). Blocking: call it off the loop."""
    template = engine.info.chat_template
    if template not in _DESCRIBES_TOOLS:
        try:
            probe = engine.format_chat(
                [{"role": "user", "content": "x"}], tools=[_PROBE_TOOL], tool_choice="auto"
            )
        except InvalidRequest:
            probe = ""
        _DESCRIBES_TOOLS[template] = "llama_router_probe_tool" in probe
    return _DESCRIBES_TOOLS[template]


def prepare_chat(
    engine: Engine,
    messages: list[dict[str, Any]],
    template_args: Mapping[str, Any],
    tools: ToolRequest,
    reasoning: ReasoningFormat,
) -> ChatPlan:
    """The prompt for ``messages`` and how to read the output. Blocking (it renders the
    template): call it off the loop. Raises InvalidRequest when the template cannot render
    them, or when a required call's grammar cannot be built from the tools' schemas."""
    template = engine.info.chat_template
    args = {k: v for k, v in template_args.items() if k not in ("tools", "tool_choice")}
    uses_tools = tools.is_active or any(_has_tool_parts(message) for message in messages)
    native = uses_tools and template_describes_tools(engine)
    tool_format = detect_format(template) if native else ToolFormat.GENERIC
    if native:
        messages = [_native_message(message) for message in messages]
        if tools.is_active:
            args.update(tools=list(tools.tools), tool_choice=tools.choice)
    elif uses_tools:
        messages = [_generic_message(message) for message in messages]
        if tools.is_active:
            messages = _with_tool_instructions(messages, tools)
    prompt = engine.format_chat(messages, **args)
    grammar = None
    if tools.is_required:
        try:
            grammar = tool_call_grammar(
                tool_format,
                tools.offered,
                parallel=tools.parallel,
                prompt_ends_with_recipient=prompt.endswith(">>>"),
            )
        except Exception as exc:  # the converter raises plain Exceptions (KeyError...)
            raise InvalidRequest(
                f"'tools' holds a parameters schema that cannot be turned into a grammar: "
                f"{type(exc).__name__}: {exc}",
                param="tools",
            ) from exc
    thinks = reasoning is not ReasoningFormat.NONE and (
        template_thinks(template) or prompt_opens_thoughts(prompt)
    )
    return ChatPlan(
        prompt=prompt,
        tool_format=tool_format if tools.is_active else None,
        tool_names=frozenset(t["function"]["name"] for t in tools.tools),
        grammar=grammar,
        reasoning=reasoning if thinks else None,
        thoughts_opened=thinks and prompt_opens_thoughts(prompt),
    )


def _has_tool_parts(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "tool" or bool(message.get("tool_calls"))


def _native_message(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` for a template that knows tools: the calls' arguments as objects, which
    is what templates write with ``tojson`` (llama.cpp does the same)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    return {**message, "tool_calls": [_with_object_arguments(call) for call in calls]}


def _with_object_arguments(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return call
    return {**call, "function": {**call["function"], "arguments": arguments}}


def _generic_message(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` for a template that knows no tools, as llama.cpp's generic format writes
    it: calls as the JSON the model is asked to answer with, results as a user's message."""
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        written = [_with_object_arguments(call) for call in calls]
        functions = [c.get("function", c) if isinstance(c, dict) else c for c in written]
        payload = {"tool_call": functions[0]} if len(functions) == 1 else {"tool_calls": functions}
        return {"role": "assistant", "content": json.dumps(payload, ensure_ascii=False)}
    if message.get("role") == "tool":
        response: dict[str, Any] = {"content": message.get("content", "")}
        if message.get("tool_call_id") is not None:
            response["tool_call_id"] = message["tool_call_id"]
        if message.get("name") is not None:
            response["tool"] = message["name"]
        return {"role": "user", "content": json.dumps({"tool_response": response})}
    return message


def _with_tool_instructions(
    messages: list[dict[str, Any]], tools: ToolRequest
) -> list[dict[str, Any]]:
    """``messages`` with the tools described in the system prompt (added if there is none)."""
    described = json.dumps([tool["function"] for tool in tools.offered], ensure_ascii=False)
    call = '{"tool_call": {"name": "<the tool\'s name>", "arguments": {<its arguments>}}}'
    text = (
        f"You can call these tools:\n{described}\n\nTo call a tool, answer with JSON alone: {call}"
    )
    if tools.parallel:
        text += ', or {"tool_calls": [...]} for several calls'
    if not tools.is_required:
        text += '. To answer the user directly, answer {"response": "<your answer>"}'
    text += "."
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


# ---- the output --------------------------------------------------------------------------


def _openai_call_deltas(calls: Sequence[ToolCall], first_index: int) -> list[dict[str, Any]]:
    """OpenAI's stream of calls: each call's id and name, then its arguments."""
    deltas: list[dict[str, Any]] = []
    for offset, call in enumerate(calls):
        index = first_index + offset
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        deltas.append({"tool_calls": [head]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})
    return deltas


def assistant_message(plan: ChatPlan, text: str) -> tuple[dict[str, Any], bool]:
    """The assistant message for a whole output, and whether it holds tool calls."""
    output = plan.output()
    deltas = output.feed(text)
    end_deltas, has_calls = output.finish()
    message: dict[str, Any] = {"role": "assistant"}
    content = "".join(d.get("content", "") for d in [*deltas, *end_deltas])
    reasoning = "".join(d.get("reasoning_content", "") for d in [*deltas, *end_deltas])
    message["content"] = None if has_calls and not content else content
    if reasoning:
        message["reasoning_content"] = reasoning
    if has_calls:
        message["tool_calls"] = [call.to_openai() for call in output.calls]
    return message, has_calls


@dataclass
class ChatOutput:
    """One choice's output read as it comes: :meth:`feed` gives the deltas (``content``,
    ``reasoning_content``) now certain; :meth:`finish` the rest, tool calls included.

    Text from where a call may begin (the format's marker, or the start of the output for
    formats whose calls are bare JSON) is held until the end, then parsed whole: a call is
    never half sent, and text that turns out not to be one is sent as content then.
    """

    plan: ChatPlan
    calls: tuple[ToolCall, ...] = ()
    _splitter: ReasoningSplitter | None = field(init=False, default=None)
    _scanned: str = field(init=False, default="")  # content not yet sent, not yet held
    _held: str | None = field(init=False, default=None)  # from a possible call's start
    _sent_content: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.plan.reasoning is not None:
            self._splitter = ReasoningSplitter(
                self.plan.reasoning, opened=self.plan.thoughts_opened
            )

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self._splitter is None:
            return self._content(text)
        reasoning, content = self._splitter.feed(text)
        deltas = [{"reasoning_content": reasoning}] if reasoning else []
        return deltas + self._content(content)

    def finish(self) -> tuple[list[dict[str, Any]], bool]:
        deltas: list[dict[str, Any]] = []
        if self._splitter is not None:
            reasoning, content = self._splitter.finish()
            if reasoning:
                deltas.append({"reasoning_content": reasoning})
            deltas += self._content(content)
        text = self._scanned + (self._held or "")
        self._scanned, self._held = "", None
        if not text:
            return deltas, False
        parsed = (
            parse_output(self.plan.tool_format, text, self.plan.tool_names)
            if self.plan.tool_format is not None
            else ParsedOutput(content=text)
        )
        if parsed.content:
            deltas.append({"content": parsed.content})
        self.calls = parsed.tool_calls
        return deltas + _openai_call_deltas(parsed.tool_calls, 0), bool(parsed.tool_calls)

    def _content(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        tool_format = self.plan.tool_format
        if tool_format is None:
            return [{"content": text}]
        if self._held is not None:
            self._held += text
            return []
        scanned = self._scanned + text
        markers = START_MARKERS[tool_format]
        if markers is None or tool_format is ToolFormat.FUNCTIONARY_V3_2:
            if self._sent_content:
                self._scanned = ""
                return [{"content": scanned}]
            if not scanned.strip():
                self._scanned = scanned
                return []
            if tool_format is ToolFormat.FUNCTIONARY_V3_2 or scanned.lstrip()[0] in "{`<[":
                self._scanned, self._held = "", scanned
                return []
            self._scanned = ""
            self._sent_content = True
            return [{"content": scanned}]
        starts = [scanned.find(marker) for marker in markers if marker in scanned]
        if starts:
            start = min(starts)
            self._scanned, self._held = "", scanned[start:]
            return [{"content": scanned[:start]}] if start else []
        keep = max(partial_tag_length(scanned, marker) for marker in markers)
        sure = scanned[: len(scanned) - keep]
        self._scanned = scanned[len(sure) :]
        return [{"content": sure}] if sure else []
