"""Reading a request body as a JSON object, with an error that says where it went wrong."""

from __future__ import annotations

import json
from typing import Any

from router.errors import InvalidJSON


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidJSON that says where it went wrong."""
    if not raw.strip():
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"the request body is not UTF-8: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidJSON(f"the request body must be a JSON object, not {kind_of(body)}")
    return body


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
