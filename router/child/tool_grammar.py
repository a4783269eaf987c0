"""GBNF grammars that let a model write nothing but a valid call of the given tools.

With ``tool_choice`` ``required`` or a named function, the output is constrained, as
llama.cpp's does: the family's markers around JSON whose ``name`` is one of the tools and whose
arguments match that tool's ``parameters`` schema. The JSON part is llama-cpp-python's
converter (``json_schema_to_gbnf``, a port of llama.cpp's); this module only wraps it in each
format's markers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from router.child.grammar_limits import grammar_limit_exceeded
from router.child.tool_formats import ToolFormat

_JSON_RULE = "tool-json"
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z0-9-]+|\s+|.')


def tool_call_grammar(
    format: ToolFormat,
    tools: Sequence[dict[str, Any]],
    *,
    parallel: bool,
    prompt_ends_with_recipient: bool = False,
) -> str:
    """A grammar for one call (several, with ``parallel``) of one of ``tools`` (OpenAI's
    ``{"type": "function", "function": {...}}``), written as ``format`` writes calls.

    ``prompt_ends_with_recipient``: the prompt already ends with Functionary's ``>>>``.
    Raises ValueError (or the converter's exceptions) for a schema it cannot convert, or for
    tools whose grammar would be too large or deep for llama.cpp (``grammar_limits.py``).
    """
    grammar = _grammar(format, tools, parallel, prompt_ends_with_recipient)
    reason = grammar_limit_exceeded(grammar)
    if reason is not None:
        raise ValueError(f"the grammar made from them {reason}; offer fewer or smaller tools")
    return grammar


def _grammar(
    format: ToolFormat,
    tools: Sequence[dict[str, Any]],
    parallel: bool,
    prompt_ends_with_recipient: bool,
) -> str:
    functions = [tool["function"] for tool in tools]
    if format is ToolFormat.FUNCTIONARY_V3_2:
        return _functionary_v3_2(functions, parallel, prompt_ends_with_recipient)
    if format is ToolFormat.FUNCTIONARY_V3_1:
        return _functionary_v3_1(functions, parallel)
    arguments_key = "parameters" if format is ToolFormat.LLAMA3 else "arguments"
    calls = [_call_schema(function, arguments_key) for function in functions]
    if format is ToolFormat.MISTRAL:
        id_schema = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}
        for call in calls:
            call["properties"]["id"] = id_schema
            call["required"].append("id")
        array = _array_of(calls, parallel)
        return _wrapped(array, f'root ::= "[TOOL_CALLS]" {_JSON_RULE}')
    if format is ToolFormat.HERMES:
        one = f'"<tool_call>\\n" {_JSON_RULE} "\\n</tool_call>"'
        more = f' ("\\n" {one})*' if parallel else ""
        return _wrapped({"anyOf": calls}, f"root ::= {one}{more}")
    if format is ToolFormat.LLAMA3:
        return _wrapped({"anyOf": calls}, f"root ::= {_JSON_RULE}")
    if parallel:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {"tool_calls": _array_of(calls, True)},
            "required": ["tool_calls"],
        }
    else:
        schema = {
            "type": "object",
            "properties": {"tool_call": {"anyOf": calls}},
            "required": ["tool_call"],
        }
    return _wrapped(schema, f"root ::= {_JSON_RULE}")


def _call_schema(function: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            arguments_key: _parameters(function),
        },
        "required": ["name", arguments_key],
    }


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}


def _array_of(calls: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    array: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if not parallel:
        array["maxItems"] = 1
    return array


def _functionary_v3_2(
    functions: list[dict[str, Any]], parallel: bool, prompt_ends_with_recipient: bool
) -> str:
    alternatives = " | ".join(
        f"{_literal(function['name'] + chr(10))} alternative-{index}"
        for index, function in enumerate(functions)
    )
    first = "call" if prompt_ends_with_recipient else '">>>" call'
    more = ' (">>>" call)*' if parallel else ""
    return _wrapped(
        {"anyOf": [_parameters(function) for function in functions]},
        f"root ::= {first}{more}\ncall ::= {alternatives}",
    )


def _functionary_v3_1(functions: list[dict[str, Any]], parallel: bool) -> str:
    alternatives = " | ".join(
        f'{_literal("<function=" + function["name"] + ">")} alternative-{index} "</function>"'
        for index, function in enumerate(functions)
    )
    more = " call*" if parallel else ""
    return _wrapped(
        {"anyOf": [_parameters(function) for function in functions]},
        f"root ::= call{more}\ncall ::= {alternatives}",
    )


def _wrapped(schema: dict[str, Any], root_rules: str) -> str:
    """The converter's grammar for ``schema`` with its root renamed ``tool-json``, under
    ``root_rules`` (which define ``root`` and may refer to it)."""
    grammar = str(json_schema_to_gbnf(json.dumps(schema)))
    return "\n".join([root_rules, *(_renamed_root(line) for line in grammar.splitlines())])


def _renamed_root(line: str) -> str:
    """``line`` with every reference to the rule ``root`` (outside literals) made ``tool-json``."""
    return "".join(_JSON_RULE if piece == "root" else piece for piece in _TOKEN.findall(line))


def _literal(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid GBNF literal
