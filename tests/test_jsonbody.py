"""Reading request bodies as JSON: every bad body is a 400, never a crash; the scan that finds
the model in a large body agrees with a full parse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.edge.jsonbody import (
    _MISSING,
    FULL_PARSE_BYTES,
    MAX_SCANNED_DEPTH,
    parse_json_object,
    scan_top_level_field,
    top_level_field,
)
from router.errors import InvalidField, InvalidJSON, InvalidRequest

MISSING = object()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
# Keys as JSON text: plain, escaped ("mod\u0065l" is "model"), or any string json.dumps writes.
json_keys = st.sampled_from(
    ['"model"', r'"mod\u0065l"', '"prompt"', '"models"', '""', r'"\"model\""']
) | st.text().map(lambda key: json.dumps(key, ensure_ascii=False))


def scanned(raw: bytes) -> Any:
    value = scan_top_level_field(raw, "model")
    return MISSING if value is _MISSING else value


@given(
    st.lists(st.tuples(json_keys, json_values), max_size=6),
    st.sampled_from(["", " ", "\n\t "]),
)
def test_the_scan_finds_what_a_full_parse_finds(members: list[tuple[str, Any]], space: str) -> None:
    pairs = [
        f"{key}{space}:{space}{json.dumps(value, ensure_ascii=False)}" for key, value in members
    ]
    raw = ("{" + space + f",{space}".join(pairs) + space + "}").encode()
    assert scanned(raw) == json.loads(raw).get("model", MISSING)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"model":"a"}', "a"),
        (b' { "x" : [1,{"model":"inner"},"]"] , "model" : "b" } ', "b"),
        (b'{"mod\\u0065l": "escaped key"}', "escaped key"),
        (b'{"model":"first","model":"last"}', "last"),
        (b'{"a":"\\"model\\":1"}', MISSING),
        (b'{"a":"x\\\\","model":"after a backslash"}', "after a backslash"),
        (b"{}", MISSING),
        (b'{"model":null}', None),
    ],
)
def test_scan_examples(raw: bytes, expected: Any) -> None:
    assert scanned(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[1]",
        b'{"a":',
        b'{"a":"never ends',
        b'{"a":[1,2',
        b'{"a" 1}',
        b'{"a":1,}',
        b'{"a":1} trailing',
        b'{"model":tru}',
        b'{"model":' + b"1" * 5000 + b"}",
        b'{"a":' + b"[" * (MAX_SCANNED_DEPTH + 1) + b"]" * (MAX_SCANNED_DEPTH + 1) + b"}",
    ],
)
def test_a_body_the_scan_cannot_read_is_a_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        scan_top_level_field(raw, "model")


def test_a_huge_model_value_is_refused_by_name() -> None:
    with pytest.raises(InvalidField, match="'model'"):
        scan_top_level_field(b'{"model":"' + b"m" * 100_000 + b'"}', "model")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}", "nested too deeply"),
        (b'{"n":' + b"7" * 5000 + b"}", "4300 digits"),
        (b'{"a":"\xff"}', "not UTF-8"),
        (b"  \n ", "empty"),
        (b'"a string"', "not a string"),
    ],
)
def test_any_bad_body_is_a_400_that_says_why(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidJSON) as caught:
        parse_json_object(raw)
    assert message in caught.value.message.replace("must be a JSON object, not a", "not a")


async def test_a_large_body_is_scanned_a_small_one_parsed() -> None:
    large = b'{"prompt":"' + b"x" * FULL_PARSE_BYTES + b'","model":"m"}'
    assert await top_level_field(large, "model") == "m"
    assert await top_level_field(bytearray(b'{"model": "s"}'), "model") == "s"
    assert await top_level_field(b'{"prompt": "p"}', "model") is None
    with pytest.raises(InvalidJSON):
        await top_level_field(large[:-1], "model")
