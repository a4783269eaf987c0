"""Tool-call formats, grammars and thoughts, without a server: each family's output read back
(malformed output stays content, never an error), the family found from the template, the
grammar built from the tools' schemas checked by llama.cpp's own grammar sampler, and the
stream of deltas a choice's text becomes."""

from __future__ import annotations

import ctypes
import itertools
import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.child.engine import Finished, FinishReason, Piece, TokenLogprob
from router.child.reasoning import ReasoningFormat, split
from router.child.responses import SSE_DONE, ResponseIds, StreamItem, chat_stream, sse_events
from router.child.tool_formats import ToolFormat, detect_format, parse_output
from router.child.tool_grammar import tool_call_grammar
from router.child.tools import ChatPlan, assistant_message
from tests.tiny_models import CHATML_TEMPLATE

NAMES = {"get_weather", "get_time"}
WEATHER_ARGS = {"city": "Paris"}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


@pytest.mark.parametrize(
    ("format", "text", "content"),
    [
        (ToolFormat.HERMES,
         'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
         "</tool_call>", "Let me look."),
        (ToolFormat.HERMES,
         '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', ""),
        (ToolFormat.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
        (ToolFormat.LLAMA3,
         '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
        (ToolFormat.MISTRAL,
         'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
         '"id": "abcdefghi"}]', "Sure."),
        (ToolFormat.MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', ""),
        (ToolFormat.FUNCTIONARY_V3_2, 'get_weather\n{"city": "Paris"}', ""),
        (ToolFormat.FUNCTIONARY_V3_2, 'all\nLooking.>>>get_weather\n{"city": "Paris"}',
         "Looking."),
        (ToolFormat.FUNCTIONARY_V3_1, 'On it<function=get_weather>{"city": "Paris"}</function>',
         "On it"),
        (ToolFormat.GENERIC,
         '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}', ""),
        (ToolFormat.GENERIC,
         '```json\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}\n'
         "```", ""),
        (ToolFormat.GENERIC, '```tool_code\nget_weather(city="Paris")\n```', ""),
        (ToolFormat.GENERIC, '{"name": "get_weather", "arguments": {"city": "Paris"}}', ""),
    ],
)  # fmt: skip
def test_each_format_reads_back_its_call(format: ToolFormat, text: str, content: str) -> None:
    parsed = parse_output(format, text, NAMES)
    assert parsed.content == content
    assert [(call.name, json.loads(call.arguments)) for call in parsed.tool_calls] == [
        ("get_weather", WEATHER_ARGS)
    ]
    assert parsed.tool_calls[0].id


def test_calls_of_one_output_are_read_in_order() -> None:
    text = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    )
    parsed = parse_output(ToolFormat.HERMES, text, NAMES)
    assert [call.name for call in parsed.tool_calls] == ["get_weather", "get_time"]
    assert len({call.id for call in parsed.tool_calls}) == 2


MALFORMED = [
    "",
    "plain words",
    "<tool_call>",
    '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
    '<tool_call>{"arguments": {}}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": "not json"}</tool_call>',
    "[TOOL_CALLS]",
    "[TOOL_CALLS][{]",
    "[TOOL_CALLS]get_weather[ARGS]{",
    '{"name": 3}',
    "{" * 5000,
    "[" * 100000,
    "```tool_code\nimport os\n```",
    "```tool_code\nget_weather(city=\n```",
    "```tool_code\nos.system('x')\n```",
    "```tool_code\nunknown_tool(a=1)\n```",
    '{"tool_call": "get_weather"}',
    '{"response": 3}',
    "get_weather\nnot json",
    "<function=get_weather>{oops}</function>",
    "\x00\ud800",
]


@pytest.mark.parametrize("format", list(ToolFormat))
@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_output_is_plain_content(format: ToolFormat, text: str) -> None:
    parsed = parse_output(format, text, NAMES)
    assert parsed.tool_calls == ()
    assert parsed.content == text


@pytest.mark.parametrize(
    ("template", "format"),
    [
        ("{{ '<tool_call>' }}{{ tools | tojson }}", ToolFormat.HERMES),
        ("{%- if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", ToolFormat.MISTRAL),
        ("<|start_header_id|>ipython<|end_header_id|>", ToolFormat.LLAMA3),
        ("<|start_header_id|>{{ '>>>all' }}", ToolFormat.FUNCTIONARY_V3_2),
        ("<|start_header_id|><function=", ToolFormat.FUNCTIONARY_V3_1),
        (CHATML_TEMPLATE, ToolFormat.GENERIC),
    ],
)
def test_the_format_is_found_from_the_template(template: str, format: ToolFormat) -> None:
    assert detect_format(template) is format


# ---- grammars, checked by llama.cpp's grammar sampler on the tiny model's byte vocabulary ----


@pytest.fixture(scope="module")
def vocab(tiny_model: Path) -> Iterator[Any]:
    llama = llama_cpp.Llama(model_path=str(tiny_model), vocab_only=True, verbose=False)
    yield llama._model.vocab
    llama.close()


def accepts(vocab: Any, grammar: str, text: str) -> bool:
    """Whether llama.cpp's sampler for ``grammar`` lets ``text`` out, byte by byte, and then
    lets the generation end."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, f"llama.cpp rejects the grammar:\n{grammar}"
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    eos = llama_cpp.llama_vocab_eos(vocab)
    try:
        for token in [3 + 1 + byte for byte in text.encode()] + [eos]:
            data = (llama_cpp.llama_token_data * n_vocab)()
            for index in range(n_vocab):
                data[index].id = index
            candidates = llama_cpp.llama_token_data_array(
                data=data, size=n_vocab, selected=-1, sorted=False
            )
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
            if math.isinf(data[token].logit):
                return False
            if token != eos:
                llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


CALL = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
OUTPUTS = {
    ToolFormat.HERMES: "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>",
    ToolFormat.LLAMA3: json.dumps({"name": "get_weather", "parameters": CALL["arguments"]}),
    ToolFormat.MISTRAL: "[TOOL_CALLS]" + json.dumps([{**CALL, "id": "abcdefghi"}]),
    ToolFormat.FUNCTIONARY_V3_2: '>>>get_weather\n{"city": "Paris", "days": 2}',
    ToolFormat.FUNCTIONARY_V3_1: '<function=get_weather>{"city": "Paris", "days": 2}</function>',
    ToolFormat.GENERIC: json.dumps({"tool_call": CALL}),
}
WRONG_ARGUMENTS = {"city": 3}  # not a string


@pytest.mark.parametrize("format", list(ToolFormat))
def test_the_grammar_lets_out_a_valid_call_and_nothing_else(vocab: Any, format: ToolFormat) -> None:
    grammar = tool_call_grammar(format, TOOLS, parallel=False)
    valid = OUTPUTS[format]
    assert accepts(vocab, grammar, valid), (valid, grammar)
    assert parse_output(format, valid, NAMES).tool_calls  # and it reads back
    assert not accepts(vocab, grammar, valid.replace('"Paris"', "3")), grammar
    assert not accepts(vocab, grammar, valid.replace("get_weather", "get_wether")), grammar
    assert not accepts(vocab, grammar, "Sure! " + valid), grammar
    assert not accepts(vocab, grammar, "The weather is fine.")


def test_a_named_function_grammar_admits_that_function_alone(vocab: Any) -> None:
    grammar = tool_call_grammar(ToolFormat.GENERIC, TOOLS[1:], parallel=False)
    assert accepts(vocab, grammar, '{"tool_call": {"name": "get_time", "arguments": {}}}')
    assert not accepts(vocab, grammar, OUTPUTS[ToolFormat.GENERIC])


def test_parallel_calls_are_let_out_only_when_asked(vocab: Any) -> None:
    two = OUTPUTS[ToolFormat.HERMES] + "\n" + OUTPUTS[ToolFormat.HERMES]
    assert accepts(vocab, tool_call_grammar(ToolFormat.HERMES, TOOLS, parallel=True), two)
    assert not accepts(vocab, tool_call_grammar(ToolFormat.HERMES, TOOLS, parallel=False), two)
    generic = tool_call_grammar(ToolFormat.GENERIC, TOOLS, parallel=True)
    assert accepts(vocab, generic, json.dumps({"tool_calls": [CALL, CALL]}))


# ---- thoughts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "opened", "format", "expected"),
    [
        ("<think>hmm</think>The answer", False, ReasoningFormat.DEEPSEEK, ("hmm", "The answer")),
        ("  <think>hmm</think>\n\nIt", False, ReasoningFormat.AUTO, ("hmm", "It")),
        ("hmm</think>It", True, ReasoningFormat.AUTO, ("hmm", "It")),
        ("<think>unfinished", False, ReasoningFormat.AUTO, ("unfinished", "")),
        ("No thoughts <think>x</think>", False, ReasoningFormat.AUTO,
         ("", "No thoughts <think>x</think>")),
        ("<think>hmm</think>It", False, ReasoningFormat.DEEPSEEK_LEGACY,
         ("hmm", "<think>hmm</think>It")),
    ],
)  # fmt: skip
def test_thoughts_are_split_from_the_answer(
    text: str, opened: bool, format: ReasoningFormat, expected: tuple[str, str]
) -> None:
    assert split(text, format, opened=opened) == expected


def stream(plan: ChatPlan, pieces: list[str]) -> tuple[list[dict[str, Any]], bool]:
    output = plan.output()
    deltas = [delta for piece in pieces for delta in output.feed(piece)]
    end, has_calls = output.finish()
    return deltas + end, has_calls


def one_char_at_a_time(text: str) -> list[str]:
    return list(text)


def test_thoughts_stream_as_reasoning_deltas_whatever_the_pieces() -> None:
    plan = ChatPlan(prompt="", reasoning=ReasoningFormat.AUTO)
    text = "<think>Paris is in France.</think>It is Paris."
    for pieces in ([text], one_char_at_a_time(text)):
        deltas, has_calls = stream(plan, pieces)
        assert not has_calls
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
        content = "".join(d.get("content", "") for d in deltas)
        assert (reasoning, content) == ("Paris is in France.", "It is Paris.")


def test_a_streamed_call_comes_as_openai_deltas_after_the_content_before_it() -> None:
    plan = ChatPlan(prompt="", tool_format=ToolFormat.HERMES, tool_names=frozenset(NAMES))
    text = 'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
    deltas, has_calls = stream(plan, one_char_at_a_time(text + "</tool_call>"))
    assert has_calls
    content = "".join(d.get("content", "") for d in deltas)
    assert content == "Let me check. "
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["id"] and calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads(calls[1]["function"]["arguments"]) == WEATHER_ARGS
    assert "<tool_call>" not in "".join(json.dumps(d) for d in deltas[:-2] if "content" in d)


def test_held_text_that_is_no_call_comes_out_as_content() -> None:
    plan = ChatPlan(prompt="", tool_format=ToolFormat.GENERIC, tool_names=frozenset(NAMES))
    deltas, has_calls = stream(plan, one_char_at_a_time("{not json at all"))
    assert not has_calls
    assert "".join(d.get("content", "") for d in deltas) == "{not json at all"


def test_a_whole_message_has_null_content_beside_its_calls() -> None:
    plan = ChatPlan(prompt="", tool_format=ToolFormat.LLAMA3, tool_names=frozenset(NAMES))
    message, has_calls = assistant_message(
        plan, '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    )
    assert has_calls and message["content"] is None
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"


# ---- any text at all ----------------------------------------------------------------------

texts = st.text(
    alphabet=st.sampled_from(list('<>/{}[]":, \nabtoolcal_gethrinkTOLCS=`')), max_size=80
)
call_texts = st.sampled_from(list(OUTPUTS.values())) | st.just(
    "<think>hmm</think>" + OUTPUTS[ToolFormat.HERMES]
)


@settings(max_examples=300, deadline=None)
@given(
    format=st.sampled_from(list(ToolFormat)),
    text=texts | call_texts | st.tuples(texts, call_texts, texts).map("".join),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=6),
    thinks=st.booleans(),
)
def test_any_output_streams_as_it_reads_whole(
    format: ToolFormat, text: str, cuts: list[int], thinks: bool
) -> None:
    """Never an error, whatever the model wrote; and however the text is cut into pieces,
    the deltas add up to the message read from the whole text."""
    plan = ChatPlan(
        prompt="",
        tool_format=format,
        tool_names=frozenset(NAMES),
        reasoning=ReasoningFormat.AUTO if thinks else None,
    )
    message, has_calls = assistant_message(plan, text)
    bounds = sorted({0, len(text), *(cut for cut in cuts if cut < len(text))})
    pieces = [text[start:end] for start, end in itertools.pairwise(bounds)]
    deltas, streamed_calls = stream(plan, pieces)
    assert streamed_calls == has_calls
    assert "".join(d.get("content", "") for d in deltas) == (message["content"] or "")
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message.get(
        "reasoning_content", ""
    )
    heads = [d["tool_calls"][0] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
    expected = [call["function"]["name"] for call in message.get("tool_calls", [])]
    assert [head["function"]["name"] for head in heads] == expected


async def test_a_stream_with_calls_keeps_every_tokens_logprobs() -> None:
    """Held text's log-probabilities go out with a later chunk, none lost, none twice."""
    plan = ChatPlan(prompt="", tool_format=ToolFormat.HERMES, tool_names=frozenset(NAMES))
    text = "Hi <tool_call>" + json.dumps(CALL) + "</tool_call>"
    items: list[StreamItem] = [
        (0, Piece(char, (TokenLogprob(position, char.encode(), -1.0),)))
        for position, char in enumerate(text)
    ]
    items.append((0, Finished(FinishReason.STOP, prompt_tokens=1, completion_tokens=len(text))))

    async def produce() -> AsyncIterator[StreamItem]:
        for item in items:
            yield item

    ids = ResponseIds(model="m", prefix="chatcmpl")
    shape = chat_stream(ids, with_logprobs=True, plan=plan)
    events = [event async for event in sse_events(produce(), shape, include_usage=False)]
    chunks = [json.loads(event[6:]) for event in events if event != SSE_DONE]
    tokens = [
        entry["token"]
        for chunk in chunks
        for entry in ((chunk["choices"][0]["logprobs"] or {}).get("content") or [])
    ]
    assert "".join(tokens) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
