"""Reading a request body as a JSON object, with an error that says where it went wrong.

Any body a client can send gets a 400 here, never a crash: JSON nested deeper than Python's
parser goes (``RecursionError``), an integer longer than Python converts (``ValueError``),
bytes that are not UTF-8.

``top_level_field`` finds one field of a large body without building the whole document, so a
60 MB prompt costs the router its 60 MB and not several times that: it walks the top-level
object with regular expressions (C speed) and steps over each value, strings whole, and only
the field's own value is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import trio

from router.errors import InvalidField, InvalidJSON, InvalidRequest

FULL_PARSE_BYTES = 1024 * 1024  # below this, a body is simply parsed whole
MAX_SCANNED_DEPTH = 512  # nesting past this is not JSON any client means to send
MAX_SCANNED_CONTAINERS = 1_000_000  # lists and objects stepped over in one body
MAX_FIELD_BYTES = 64 * 1024  # the field looked for, as JSON text

_MISSING: Any = object()
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_WHITESPACE = re.compile(rb"[ \t\r\n]*+")
# A run of anything but brackets, where strings (which may hold brackets) count as a whole.
_NO_BRACKETS = re.compile(rb'(?:[^"\[\]{}]++|' + _STRING + rb")*+", re.DOTALL)
_KEY = re.compile(rb"(" + _STRING + rb")[ \t\r\n]*+:[ \t\r\n]*+", re.DOTALL)
_STRING_VALUE = re.compile(_STRING, re.DOTALL)
_SCALAR = re.compile(rb"[^,}\]\s]++")


def parse_json_object(raw: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object, or InvalidJSON that says where it went wrong."""
    if is_blank(raw):
        raise InvalidJSON("the request body is empty; send a JSON object")
    body = _loads(raw, "the request body")
    if not isinstance(body, dict):
        raise InvalidJSON(f"the request body must be a JSON object, not {kind_of(body)}")
    return body


def is_blank(raw: bytes | bytearray) -> bool:
    """Whether ``raw`` holds nothing but whitespace (without copying it, as ``strip`` would)."""
    return not raw or raw.isspace()


async def top_level_field(raw: bytes | bytearray, key: str) -> Any:
    """The value of ``key`` in the JSON object ``raw``, or None if it has no such key.

    A small body is parsed whole; a large one is scanned, in a worker thread so that the event
    loop goes on serving, and only the field's value is parsed. Raises InvalidJSON when the body
    is not a JSON object (a large body is checked only as far as finding the field needs: its
    reader, the model, checks the rest).
    Cancellation: the scan of a large body runs to its end in its thread, unwaited for.
    """
    if len(raw) <= FULL_PARSE_BYTES:
        return parse_json_object(raw).get(key)
    value = await trio.to_thread.run_sync(scan_top_level_field, raw, key, abandon_on_cancel=True)
    return None if value is _MISSING else value


def scan_top_level_field(raw: bytes | bytearray, key: str) -> Any:
    """``key``'s value in the top-level object of ``raw``, found without parsing the rest.

    Returns ``_MISSING`` when the object has no such key; when it has several, the last one
    counts, as it does for ``json.loads``.
    """
    found = _MISSING
    position = _skip_whitespace(raw, 0)
    if raw[position : position + 1] != b"{":
        raise InvalidJSON("the request body must be a JSON object, starting with '{'")
    position = _skip_whitespace(raw, position + 1)
    if raw[position : position + 1] == b"}":
        return _at_end(raw, position + 1, found)
    while True:
        match = _KEY.match(raw, position)
        if match is None:
            raise _not_json(f"expected a key at byte {position}")
        name, position = match.group(1), match.end()
        end = _value_end(raw, position)
        if len(name) <= 6 * len(key) + 2 and _loads(name, "a key") == key:  # \uXXXX escapes
            if end - position > MAX_FIELD_BYTES:
                raise InvalidField(key, f"is longer than {MAX_FIELD_BYTES} bytes")
            found = _loads(raw[position:end], f"'{key}'")
        position = _skip_whitespace(raw, end)
        separator = raw[position : position + 1]
        if separator == b"}":
            return _at_end(raw, position + 1, found)
        if separator != b",":
            raise _not_json(f"expected ',' or '}}' at byte {position}")
        position = _skip_whitespace(raw, position + 1)


def _value_end(raw: bytes | bytearray, start: int) -> int:
    """Where the JSON value that starts at ``start`` ends, stepping over its insides."""
    first = raw[start : start + 1]
    if first == b'"':
        string = _STRING_VALUE.match(raw, start)
        if string is None:
            raise _not_json(f"a string at byte {start} never ends")
        return string.end()
    if first not in (b"[", b"{"):
        scalar = _SCALAR.match(raw, start)
        if scalar is None:
            raise _not_json(f"expected a value at byte {start}")
        return scalar.end()
    depth = containers = 0
    position = start
    while True:
        bracket = raw[position : position + 1]
        if bracket in (b"[", b"{"):
            depth += 1
            containers += 1
            if depth > MAX_SCANNED_DEPTH:
                raise InvalidJSON(f"the request body is nested more than {MAX_SCANNED_DEPTH} deep")
            if containers > MAX_SCANNED_CONTAINERS:
                raise InvalidRequest(
                    f"the request body holds more than {MAX_SCANNED_CONTAINERS} lists and "
                    "objects; name the model in the query (?model=) to send it"
                )
        elif bracket in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                return position + 1
        elif bracket:
            raise _not_json(f"a string at byte {position} never ends")
        else:
            raise _not_json("it ends inside a list or an object")
        position = _end_of(_NO_BRACKETS, raw, position + 1)


def _skip_whitespace(raw: bytes | bytearray, position: int) -> int:
    return _end_of(_WHITESPACE, raw, position)


def _end_of(pattern: re.Pattern[bytes], raw: bytes | bytearray, position: int) -> int:
    """Where ``pattern``, which matches even nothing, stops matching from ``position``."""
    match = pattern.match(raw, position)
    assert match is not None
    return match.end()


def _at_end(raw: bytes | bytearray, position: int, found: Any) -> Any:
    if _skip_whitespace(raw, position) != len(raw):
        raise _not_json(f"extra data after byte {position}")
    return found


def _not_json(problem: str) -> InvalidJSON:
    return InvalidJSON(f"the request body is not valid JSON: {problem}")


def _loads(raw: bytes | bytearray, what: str) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"{what} is not UTF-8: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError:
        raise InvalidJSON(f"{what} is nested too deeply to read") from None
    except ValueError as exc:  # an integer too long to convert (sys.get_int_max_str_digits)
        raise InvalidJSON(f"{what} is not JSON this server can read: {exc}") from exc


def kind_of(value: Any) -> str:
    """How to name ``value``'s JSON type in an error message."""
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
