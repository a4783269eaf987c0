"""Request parsing: defaults as llama-server has them, and errors that name the field."""

from __future__ import annotations

import math

import pytest

from router.child.parsing import parse_chat, parse_completion
from router.edge.jsonbody import parse_json_object
from router.errors import InvalidField, InvalidJSON, NotSupported


def test_defaults_match_llama_server() -> None:
    settings = parse_completion({"prompt": "x"}).settings
    assert settings.max_tokens is None
    assert settings.sampling.temperature == 0.8
    assert settings.sampling.top_k == 40
    assert settings.stream is False


def test_max_tokens_names_in_order_of_preference() -> None:
    chat = parse_chat(
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 3,
            "max_tokens": 9,
        }
    )
    assert chat.settings.max_tokens == 3
    assert parse_completion({"prompt": "x", "n_predict": 4}).settings.max_tokens == 4
    assert parse_completion({"prompt": "x", "n_predict": -1}).settings.max_tokens is None


def test_text_parts_are_joined_and_tools_reach_the_template() -> None:
    chat = parse_chat(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    )
    assert chat.messages[0]["content"] == "ab"
    assert chat.template_args["tools"][0]["function"]["name"] == "f"


def test_logit_bias_false_bans_a_token() -> None:
    bias = parse_completion({"prompt": "x", "logit_bias": [[5, False]]}).settings.sampling
    assert bias.logit_bias == {5: -math.inf}


def test_json_object_response_format_becomes_a_grammar() -> None:
    settings = parse_completion({"prompt": "x", "response_format": {"type": "json_object"}})
    assert settings.settings.sampling.grammar is not None
    assert "root" in settings.settings.sampling.grammar


@pytest.mark.parametrize("raw", [b"", b"   ", b"[1]", b"nul", b"\xff"])
def test_bodies_that_are_not_json_objects(raw: bytes) -> None:
    with pytest.raises(InvalidJSON):
        parse_json_object(raw)


def test_several_prompts_are_refused_as_unsupported() -> None:
    with pytest.raises(NotSupported):
        parse_completion({"prompt": ["a", "b"]})


def test_nan_is_not_a_number_here() -> None:
    with pytest.raises(InvalidField) as caught:
        parse_completion({"prompt": "a", "temperature": float("nan")})
    assert caught.value.param == "temperature"
