"""How each model family writes tool calls: which family a chat template belongs to, and the
calls read back out of what the model wrote.

The families and their markers follow llama.cpp's ``common/chat.cpp``: the template's source
names the format (``<tool_call>`` for Hermes 2 Pro and Qwen, ``[TOOL_CALLS]`` for Mistral,
``>>>all`` for Functionary v3.2, ``<function=`` for Functionary v3.1, the ``ipython`` role
for Llama 3.x). A template that names none of them, or does not render ``tools`` at all
(Gemma 3's), gets the generic format, as llama.cpp's: the tools are described in the system
prompt and the model answers in JSON (``{"tool_call": {...}}``). Reading the output never
raises: text that is not a well-formed call stays plain content.
"""

from __future__ import annotations

import ast
import enum
import json
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any


class ToolFormat(enum.StrEnum):
    HERMES = "hermes"  # <tool_call>{"name": ..., "arguments": ...}</tool_call>
    LLAMA3 = "llama3"  # {"name": ..., "parameters": ...}, or <|python_tag|> and the same
    MISTRAL = "mistral"  # [TOOL_CALLS][{"name": ..., "arguments": ...}, ...]
    FUNCTIONARY_V3_2 = "functionary-v3.2"  # >>>name\n{...}, >>>all\ntext
    FUNCTIONARY_V3_1 = "functionary-v3.1"  # <function=name>{...}</function>
    GENERIC = "generic"  # {"tool_call": {...}} / {"tool_calls": [...]} / {"response": "..."}


def detect_format(template: str) -> ToolFormat:
    """The tool-call format of the family whose chat template is ``template`` (its source)."""
    if ">>>all" in template:
        return ToolFormat.FUNCTIONARY_V3_2
    if "<function=" in template and "<|start_header_id|>" in template:
        return ToolFormat.FUNCTIONARY_V3_1
    if "[TOOL_CALLS]" in template:
        return ToolFormat.MISTRAL
    if "<tool_call>" in template:
        return ToolFormat.HERMES
    if "<|start_header_id|>ipython<|end_header_id|>" in template or (
        "<|start_header_id|>" in template and "<|python_tag|>" in template
    ):
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for; ``arguments`` is JSON text, as OpenAI sends it."""

    name: str
    arguments: str
    id: str

    @classmethod
    def of(cls, name: str, arguments: Any, call_id: Any = None) -> ToolCall:
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        if not isinstance(call_id, str) or not call_id:
            call_id = new_call_id()
        return cls(name=name, arguments=text, id=call_id)

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ParsedOutput:
    """What the model wrote, split: the text for the user and the calls it asked for."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()


# Where a format's calls may begin in the output; from there on, a stream holds text back
# until the end, when the whole is parsed. None: calls only stand at the start of the output.
START_MARKERS: dict[ToolFormat, tuple[str, ...] | None] = {
    ToolFormat.HERMES: ("<tool_call>",),
    ToolFormat.MISTRAL: ("[TOOL_CALLS]",),
    ToolFormat.FUNCTIONARY_V3_1: ("<function=", "<|python_tag|>"),
    ToolFormat.FUNCTIONARY_V3_2: (">>>",),
    ToolFormat.LLAMA3: None,
    ToolFormat.GENERIC: None,
}


def parse_output(format: ToolFormat, text: str, tool_names: Collection[str]) -> ParsedOutput:
    """The calls in ``text`` written in ``format``; never raises (malformed: plain content)."""
    try:
        parsed = _PARSERS[format](text, tool_names)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        parsed = None
    return parsed if parsed is not None else ParsedOutput(content=text)


def _call_of(
    obj: Any, *, arguments_keys: tuple[str, ...] = ("arguments", "parameters")
) -> ToolCall:
    """A call from ``{"name": ..., "arguments": ...}``; ValueError when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise ValueError("not a call")
    if isinstance(obj.get("function"), dict):  # OpenAI's own shape
        return _call_of(obj["function"])
    for key in ("arguments", "parameters"):
        if key in obj:
            arguments = obj[key]
            if isinstance(arguments, str):
                json.loads(arguments)  # a string must hold JSON
            elif not isinstance(arguments, dict):
                raise ValueError("arguments are not an object")
            return ToolCall.of(obj["name"], arguments, obj.get("id"))
    return ToolCall.of(obj["name"], {}, obj.get("id"))


def _json_values(text: str) -> list[Any]:
    """The JSON values ``text`` holds one after another (separated by blanks, commas or
    semicolons); ValueError when anything else is there."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,;":
            position += 1
        if position == len(text):
            return values
        value, position = decoder.raw_decode(text, position)
        values.append(value)


def _parse_hermes(text: str, tool_names: Collection[str]) -> ParsedOutput | None:
    calls: list[ToolCall] = []
    content: list[str] = []
    position = 0
    for match in re.finditer(r"<tool_call>(.*?)(?:</tool_call>|$)", text, re.DOTALL):
        body = match.group(1).strip()
        if body.startswith("```"):
            body = _unfenced(body)
        values = _json_values(body)
        if len(values) != 1:
            return None
        calls.append(_call_of(values[0]))
        content.append(text[position : match.start()])
        position = match.end()
    if not calls:
        return None
    content.append(text[position:])
    return ParsedOutput(content="".join(content).strip(), tool_calls=tuple(calls))


def _parse_llama3(text: str, tool_names: Collection[str]) -> ParsedOutput | None:
    body = text.strip()
    body = body.removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return None
    return ParsedOutput(content="", tool_calls=tuple(_call_of(v) for v in _json_values(body)))


def _parse_mistral(text: str, tool_names: Collection[str]) -> ParsedOutput | None:
    before, marker, after = text.partition("[TOOL_CALLS]")
    if not marker:
        return None
    calls: list[ToolCall] = []
    for chunk in after.split("[TOOL_CALLS]"):
        chunk = chunk.strip()
        if "[ARGS]" in chunk:  # newer templates: [TOOL_CALLS]name[ARGS]{...}
            name, _, arguments = chunk.partition("[ARGS]")
            values = _json_values(arguments)
            if len(values) != 1:
                return None
            calls.append(_call_of({"name": name.strip(), "arguments": values[0]}))
            continue
        for value in _json_values(chunk):
            items = value if isinstance(value, list) else [value]
            calls.extend(_call_of(item) for item in items)
    if not calls:
        return None
    return ParsedOutput(content=before.strip(), tool_calls=tuple(calls))


def _parse_functionary_v3_2(text: str, tool_names: Collection[str]) -> ParsedOutput | None:
    segments = text.split(">>>")
    if segments[0] == "":
        segments = segments[1:]
    calls: list[ToolCall] = []
    content: list[str] = []
    for segment in segments:
        name, newline, body = segment.partition("\n")
        name = name.strip()
        if not newline or (name != "all" and name not in tool_names):
            if calls:
                return None
            content.append(segment)  # text before any call: the first segment only
            continue
        if name == "all":
            content.append(body)
        elif name == "python" and not body.lstrip().startswith("{"):
            calls.append(ToolCall.of(name, {"code": body}))
        else:
            values = _json_values(body)
            if len(values) != 1:
                return None
            calls.append(_call_of({"name": name, "arguments": values[0]}))
    if not calls:
        return None
    return ParsedOutput(content="".join(content).strip(), tool_calls=tuple(calls))


def _parse_functionary_v3_1(text: str, tool_names: Collection[str]) -> ParsedOutput | None:
    calls: list[ToolCall] = []
    content: list[str] = []
    position = 0
    for match in re.finditer(r"<function=([^>]+)>(.*?)(?:</function>|$)", text, re.DOTALL):
        values = _json_values(match.group(2))
        if len(values) != 1:
            return None
        calls.append(_call_of({"name": match.group(1).strip(), "arguments": values[0]}))
        content.append(text[position : match.start()])
        position = match.end()
    rest = text[position:]
    before, tag, code = rest.partition("<|python_tag|>")
    if tag:
        calls.append(ToolCall.of("python", {"code": code}))
        rest = before
    if not calls:
        return None
    content.append(rest)
    return ParsedOutput(content="".join(content).strip(), tool_calls=tuple(calls))


def _parse_generic(text: str, tool_names: Collection[str]) -> ParsedOutput | None:
    body = text.strip()
    if body.startswith("```"):
        fence = body[3:].split("\n", 1)[0].strip()
        body = _unfenced(body)
        if fence == "tool_code":  # Gemma 3's documented style: name(key=value, ...)
            return _python_calls(body, tool_names)
    values = _json_values(body)
    if len(values) != 1 or not isinstance(values[0], dict):
        return None
    value = values[0]
    if "tool_calls" in value and isinstance(value["tool_calls"], list):
        return ParsedOutput(content="", tool_calls=tuple(_call_of(c) for c in value["tool_calls"]))
    if "tool_call" in value:
        return ParsedOutput(content="", tool_calls=(_call_of(value["tool_call"]),))
    if isinstance(value.get("response"), str) and len(value) == 1:
        return ParsedOutput(content=value["response"])
    if value.get("name") in tool_names:
        return ParsedOutput(content="", tool_calls=(_call_of(value),))
    return None


def _unfenced(text: str) -> str:
    """The inside of a Markdown code fence (``` with an optional language)."""
    inside = text[3:].split("\n", 1)[1] if "\n" in text else text[3:]
    return inside.rsplit("```", 1)[0].strip()


def _python_calls(code: str, tool_names: Collection[str]) -> ParsedOutput | None:
    """Calls written as Python (``get_weather(city="Paris")``), literals only."""
    calls: list[ToolCall] = []
    for statement in ast.parse(code).body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            return None
        if call.func.id not in tool_names or call.args:
            return None
        arguments = {
            keyword.arg: ast.literal_eval(keyword.value)
            for keyword in call.keywords
            if keyword.arg is not None
        }
        calls.append(ToolCall.of(call.func.id, arguments))
    if not calls:
        return None
    return ParsedOutput(content="", tool_calls=tuple(calls))


_PARSERS = {
    ToolFormat.HERMES: _parse_hermes,
    ToolFormat.LLAMA3: _parse_llama3,
    ToolFormat.MISTRAL: _parse_mistral,
    ToolFormat.FUNCTIONARY_V3_2: _parse_functionary_v3_2,
    ToolFormat.FUNCTIONARY_V3_1: _parse_functionary_v3_1,
    ToolFormat.GENERIC: _parse_generic,
}
