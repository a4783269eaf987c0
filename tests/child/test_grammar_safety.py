"""No grammar, bias or schema a client sends can kill the child: each is a 400 that names the
field at fault, or a normal answer; and the other requests of the batch go on.

llama.cpp throws a C++ exception (or aborts) when its grammar is handed a token it does not
allow, and overflows its stack on grammars nested too deep; through ctypes either ends the
process. Each test here killed the child before the fix in ``sampling.py`` and
``grammar_limits.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import ChildProcess, running_child

COMPLETION = "/v1/completions"
# The tiny model's vocabulary: <unk>, <s>, </s>, the SentencePiece space, then bytes 0-255.
EOS = 2
N_VOCAB = 260


def token_of(character: str) -> int:
    return 4 + ord(character)


@pytest.fixture(scope="module")
def child(tiny_model: Path) -> Iterator[ChildProcess]:
    with running_child(tiny_model, "--ctx-size", "1024", "--parallel", "2") as child:
        yield child


def _post(child: ChildProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{child.base_url}{COMPLETION}", json={"prompt": "x", "max_tokens": 8, **body}, timeout=60
    )


def _assert_alive(child: ChildProcess) -> None:
    assert child.process.poll() is None, child.stderr_text()[-2000:]
    assert httpx.get(f"{child.base_url}/health", timeout=10).status_code == 200


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("stream", [False, True])
def test_a_finite_grammar_under_ignore_eos_ends_with_stop(
    child: ChildProcess, stream: bool
) -> None:
    """Once ``root ::= "a"`` is complete only the end of generation is allowed, which
    ``ignore_eos`` bans: the grammar wins, and the generation stops."""
    response = _post(child, {"grammar": 'root ::= "a"', "ignore_eos": True, "stream": stream})
    assert response.status_code == 200, response.text
    if stream:
        events = [
            json.loads(line.removeprefix("data: "))
            for line in response.text.splitlines()
            if line.startswith("data: {")
        ]
        text = "".join(event["choices"][0]["text"] for event in events)
        reason = events[-1]["choices"][0]["finish_reason"]
    else:
        choice = response.json()["choices"][0]
        text, reason = choice["text"], choice["finish_reason"]
    assert (text, reason) == ("a", "stop")
    _assert_alive(child)


def test_ignore_eos_still_holds_while_the_grammar_can_go_on(child: ChildProcess) -> None:
    response = _post(child, {"grammar": 'root ::= "a"+', "ignore_eos": True})
    choice = response.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("a" * 8, "length")


@pytest.mark.parametrize("temperature", [0, 0.8])
@pytest.mark.parametrize("ban", ["false", "-1e400"])  # llama-server's ban; JSON's -inf
def test_banning_every_token_the_grammar_allows_is_a_400(
    child: ChildProcess, temperature: float, ban: str
) -> None:
    body = {"prompt": "x", "max_tokens": 8, "grammar": 'root ::= "a"', "temperature": temperature,
            "logit_bias": {token_of("a"): "BAN"}}  # fmt: skip
    response = httpx.post(
        f"{child.base_url}{COMPLETION}",
        content=json.dumps(body).replace('"BAN"', ban),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    error = _error(response)
    assert error["param"] == "logit_bias"
    assert "'grammar' allows" in error["message"]
    _assert_alive(child)


def test_a_ban_met_mid_stream_ends_the_stream_with_an_error_event(child: ChildProcess) -> None:
    """``root ::= "ab"`` with "b" banned: "a" goes out, then nothing may follow it."""
    body = {"grammar": 'root ::= "ab"', "logit_bias": {token_of("b"): False}, "stream": True}
    response = _post(child, body)
    assert response.status_code == 200
    events = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    assert events[0]["choices"][0]["text"] == "a"
    assert events[-1]["error"]["param"] == "logit_bias"
    _assert_alive(child)


def test_a_finite_bias_leaves_the_token_the_grammar_allows(child: ChildProcess) -> None:
    response = _post(child, {"grammar": 'root ::= "a"', "logit_bias": {token_of("a"): -100}})
    assert response.json()["choices"][0]["text"] == "a"


def test_banning_the_end_of_a_complete_grammar_ends_it_all_the_same(child: ChildProcess) -> None:
    response = _post(child, {"grammar": 'root ::= "ab"', "logit_bias": {EOS: False}})
    choice = response.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("ab", "stop")


@pytest.mark.parametrize("temperature", [0, 0.8])
def test_banning_every_token_without_a_grammar_is_a_400(
    child: ChildProcess, temperature: float
) -> None:
    bias = {token: False for token in range(N_VOCAB)}
    error = _error(_post(child, {"logit_bias": bias, "temperature": temperature}))
    assert error["param"] == "logit_bias"
    assert "every token" in error["message"]
    _assert_alive(child)


def test_a_grammar_no_token_can_spell_is_a_400(child: ChildProcess) -> None:
    error = _error(_post(child, {"grammar": "root ::= [\\x00]"}))
    assert error["param"] == "grammar"
    _assert_alive(child)


def _rule_chain(length: int) -> str:
    rules = [f"r{index} ::= r{index + 1}" for index in range(length)]
    return "\n".join(["root ::= r0", *rules, f'r{length} ::= "a"'])


@pytest.mark.parametrize(
    ("grammar", "words"),
    [
        ("root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000, "nests groups 100000 deep"),
        (_rule_chain(100_000), "bytes long"),
        ("root ::= " + " | ".join(f'"w{index}"' for index in range(200_000)), "bytes long"),
        ("\n".join(f'x{index} ::= "a"' for index in range(25_000)) + '\nroot ::= "a"', "rules"),
    ],
    ids=["deep-groups", "rule-chain", "huge", "many-rules"],
)
def test_a_grammar_too_deep_or_large_for_llama_cpp_is_a_400(
    child: ChildProcess, grammar: str, words: str
) -> None:
    """The first two overflowed llama.cpp's stack (a segmentation fault); the third stalled
    the model for over a minute a token."""
    error = _error(_post(child, {"grammar": grammar}))
    assert error["param"] == "grammar"
    assert words in error["message"]
    _assert_alive(child)


def test_a_shallow_grammar_within_the_bounds_still_works(child: ChildProcess) -> None:
    grammar = "root ::= " + "(" * 500 + '"a"' + ")" * 500
    assert _post(child, {"grammar": grammar}).json()["choices"][0]["text"] == "a"


def _schema_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
        {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}},
        {"$ref": "#/$defs/missing"},
        {"$ref": "https://127.0.0.1:1/schema.json"},
        {"type": ["integer", {"not": "a type"}]},
        {"type": "array", "items": False},
        {
            "type": "object",
            "properties": {f"p{index}": {"type": "string"} for index in range(5_000)},
        },
    ],
    ids=["ref-loop", "ref-cycle", "ref-missing", "ref-remote", "bad-type", "items-false", "wide"],
)
def test_a_schema_that_makes_no_usable_grammar_is_a_400(
    child: ChildProcess, schema: dict[str, Any]
) -> None:
    error = _error(_post(child, _schema_body(schema)))
    assert error["param"] == "response_format"
    _assert_alive(child)


def test_a_schema_whose_grammar_is_too_large_is_a_400(child: ChildProcess) -> None:
    schema = {"enum": [f"value number {index}" for index in range(40_000)]}
    error = _error(_post(child, {"json_schema": schema}))
    assert error["param"] == "json_schema"
    assert "makes a grammar that is" in error["message"]
    _assert_alive(child)


def test_tools_whose_grammar_is_too_large_are_a_400(child: ChildProcess) -> None:
    properties = {f"p{index}": {"type": "string", "description": "x"} for index in range(40)}
    tools = [
        {"type": "function", "function": {"name": f"tool_{index}", "parameters": {
            "type": "object", "properties": properties, "required": list(properties)}}}
        for index in range(128)
    ]  # fmt: skip
    response = httpx.post(
        f"{child.base_url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "tools": tools,
            "tool_choice": "required",
            "max_tokens": 4,
        },
        timeout=60,
    )
    error = _error(response)
    assert error["param"] == "tools"
    assert "bytes long" in error["message"]
    _assert_alive(child)


def test_a_hostile_request_leaves_the_other_generation_of_the_batch_alone(
    child: ChildProcess,
) -> None:
    """A normal stream runs in one slot while a request whose bias leaves its grammar no
    token fails in the other: the stream gets all its tokens."""
    outcome: dict[str, Any] = {}

    async def main() -> None:
        with trio.fail_after(120):
            await both()

    async def both() -> None:
        async with httpx.AsyncClient(base_url=child.base_url, timeout=60) as client:
            normal = {"prompt": "x", "max_tokens": 40, "ignore_eos": True, "stream": True}
            async with client.stream("POST", COMPLETION, json=normal) as stream:
                lines = stream.aiter_lines()
                events: list[dict[str, Any]] = []
                async for line in lines:
                    if line.startswith("data: {"):
                        events.append(json.loads(line.removeprefix("data: ")))
                        break  # the normal generation runs
                hostile = {"prompt": "y", "grammar": 'root ::= "a"', "max_tokens": 8,
                           "logit_bias": {token_of("a"): False}}  # fmt: skip
                outcome["hostile"] = await client.post(COMPLETION, json=hostile)
                async for line in lines:
                    if line.startswith("data: {"):
                        events.append(json.loads(line.removeprefix("data: ")))
                outcome["events"] = events

    trio.run(main)
    assert outcome["hostile"].status_code == 400
    events = outcome["events"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert len(events) >= 2
    _assert_alive(child)


_LITERALS = st.text(alphabet="abc", min_size=0, max_size=3).map(json.dumps)
_ATOMS = st.one_of(_LITERALS, st.sampled_from(["[a-c]", "[^a]", "[ab]"]))
_ITEMS = st.tuples(_ATOMS, st.sampled_from(["", "?", "*", "+", "{1,2}"])).map("".join)
_SEQUENCES = st.lists(_ITEMS, min_size=1, max_size=3).map(" ".join)
_GRAMMARS = st.lists(_SEQUENCES, min_size=1, max_size=3).map(
    lambda alternatives: "root ::= " + " | ".join(alternatives)
)
_BANNABLE = [token_of(c) for c in "abc"] + [EOS]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    grammar=_GRAMMARS,
    banned=st.lists(st.sampled_from(_BANNABLE), unique=True),
    ignore_eos=st.booleans(),
    temperature=st.sampled_from([0.0, 0.8]),
    n_probs=st.sampled_from([0, 3]),
    top_k=st.sampled_from([0, 40]),
    repeat_penalty=st.sampled_from([1.0, 0.0]),
)
def test_no_small_grammar_or_bias_kills_the_child(
    child: ChildProcess,
    grammar: str,
    banned: list[int],
    ignore_eos: bool,
    temperature: float,
    n_probs: int,
    top_k: int,
    repeat_penalty: float,
) -> None:
    body = {
        "grammar": grammar,
        "logit_bias": {token: False for token in banned},
        "ignore_eos": ignore_eos,
        "temperature": temperature,
        "n_probs": n_probs,
        "top_k": top_k,
        "repeat_penalty": repeat_penalty,
    }
    response = _post(child, body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["param"] in ("logit_bias", "grammar")
    assert child.process.poll() is None, child.stderr_text()[-2000:]
