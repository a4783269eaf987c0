"""/infill on a real child with a tiny FIM model: llama.cpp's prompt (checked token for token
against a /v1/completions of the same tokens), its budgets, streaming; a model without FIM
tokens gets a 400 that names them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import ChildProcess, running_child, running_router
from tests.tiny_rerank_model import FIM_TOKENS, write_tiny_fim_llama

PREFIX = "def add(a, b):\n"
SUFFIX = "\n\nprint(add(1, 2))\n"
PROMPT = "    return "
EXTRA = [{"filename": "util.py", "text": "X = 1\n"}, {"text": "Y = 2\n"}]
BOS = 1
GREEDY = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_fim_llama(tmp_path_factory.mktemp("fim") / "coder.gguf")


@pytest.fixture(scope="module")
def snippet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FIM prefix, suffix and middle tokens, but no repository or file separator tokens."""
    return write_tiny_fim_llama(tmp_path_factory.mktemp("fim") / "plain.gguf", repo_level=False)


@pytest.fixture(scope="module")
def fim_child(fim_model: Path) -> Iterator[ChildProcess]:
    args = ("--ctx-size", "2048", "--batch-size", "512", "--alias", "coder")
    with running_child(fim_model, *args) as child:
        yield child


def fim_id(child: ChildProcess, name: str) -> int:
    tokens = tokenize(child, FIM_TOKENS[name], parse_special=True)
    assert len(tokens) == 1
    return tokens[0]


def tokenize(child: ChildProcess, text: str, *, parse_special: bool = False) -> list[int]:
    answer = httpx.post(
        f"{child.base_url}/tokenize",
        json={"content": text, "add_special": False, "parse_special": parse_special},
        timeout=30,
    )
    tokens: list[int] = answer.json()["tokens"]
    return tokens


def greedy_completion(child: ChildProcess, tokens: list[int]) -> str:
    answer = httpx.post(
        f"{child.base_url}/v1/completions", json={"prompt": tokens, **GREEDY}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    text: str = answer.json()["choices"][0]["text"]
    return text


def infill(child: ChildProcess, **body: object) -> httpx.Response:
    return httpx.post(f"{child.base_url}/infill", json=body, timeout=30)


def test_the_prompt_is_llama_cpps_repo_level_pattern(fim_child: ChildProcess) -> None:
    answer = infill(
        fim_child,
        input_prefix=PREFIX,
        input_suffix=SUFFIX,
        prompt=PROMPT,
        input_extra=EXTRA,
        **GREEDY,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rep, sep = fim_id(fim_child, "fim_rep"), fim_id(fim_child, "fim_sep")
    expected = [rep, *tokenize(fim_child, "myproject\n")]
    for filename, text in (("util.py", "X = 1\n"), ("tmp", "Y = 2\n")):
        expected += [sep, *tokenize(fim_child, filename + "\n"), *tokenize(fim_child, text)]
    expected += [sep, *tokenize(fim_child, "filename\n"), BOS]
    expected += [fim_id(fim_child, "fim_pre"), *tokenize(fim_child, PREFIX + PROMPT)]
    expected += [fim_id(fim_child, "fim_suf"), *tokenize(fim_child, SUFFIX)]
    expected += [fim_id(fim_child, "fim_mid")]
    assert body["tokens_evaluated"] == len(expected)
    assert body["content"] == greedy_completion(fim_child, expected)
    assert body["stop"] is True
    assert body["stop_type"] == "limit"
    assert body["tokens_predicted"] == 8
    assert body["model"] == "coder"
    assert body["timings"]["predicted_n"] == 8


def test_without_file_separators_extra_files_follow_snippet_lines(snippet_model: Path) -> None:
    with running_child(snippet_model, "--ctx-size", "2048", "--batch-size", "512") as child:
        answer = infill(
            child, input_prefix=PREFIX, input_suffix=SUFFIX, input_extra=EXTRA, **GREEDY
        )
        assert answer.status_code == 200, answer.text
        expected = []
        for text in ("X = 1\n", "Y = 2\n"):
            expected += tokenize(child, "\n\n--- snippet ---\n\n") + tokenize(child, text)
        expected += [BOS, fim_id(child, "fim_pre"), *tokenize(child, PREFIX)]
        expected += [fim_id(child, "fim_suf"), *tokenize(child, SUFFIX), fim_id(child, "fim_mid")]
        assert answer.json()["tokens_evaluated"] == len(expected)
        assert answer.json()["content"] == greedy_completion(child, expected)


def test_prefix_and_suffix_are_cut_to_one_batch_and_extra_files_to_the_context(
    fim_model: Path,
) -> None:
    # --batch-size 64: 48 prefix tokens (its end), 16 - 2 - 3 = 11 suffix tokens (its start);
    # --ctx-size 256: 256 - 64 - 2 * 8 = 176 tokens of extra files (their end).
    with running_child(fim_model, "--ctx-size", "256", "--batch-size", "64") as child:
        prefix, suffix, prompt = "p" * 100 + "END", "START" + "s" * 100, "abc"
        extra = [{"filename": "big.txt", "text": "e" * 400}]
        answer = infill(
            child,
            input_prefix=prefix,
            input_suffix=suffix,
            prompt=prompt,
            input_extra=extra,
            **GREEDY,
        )
        assert answer.status_code == 200, answer.text
        extra_tokens = [fim_id(child, "fim_rep"), *tokenize(child, "myproject\n")]
        extra_tokens += [fim_id(child, "fim_sep"), *tokenize(child, "big.txt\n")]
        extra_tokens += tokenize(child, "e" * 400)
        extra_tokens += [fim_id(child, "fim_sep"), *tokenize(child, "filename\n")]
        expected = [*extra_tokens[-176:], BOS, fim_id(child, "fim_pre")]
        expected += tokenize(child, prefix)[-48:] + tokenize(child, prompt)
        expected += [fim_id(child, "fim_suf"), *tokenize(child, suffix)[:11]]
        expected += [fim_id(child, "fim_mid")]
        assert answer.json()["tokens_evaluated"] == len(expected)
        assert answer.json()["content"] == greedy_completion(child, expected)


def test_a_stream_is_llama_servers_native_sse(fim_child: ChildProcess) -> None:
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": PROMPT, **GREEDY}
    whole = infill(fim_child, **body).json()
    with httpx.stream(
        "POST", f"{fim_child.base_url}/infill", json={**body, "stream": True}, timeout=30
    ) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in answer.iter_lines() if line]
    assert all(line.startswith("data: {") for line in lines)  # no [DONE] on native routes
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert all(event["stop"] is False for event in events[:-1])
    assert "".join(event["content"] for event in events) == whole["content"]
    last = events[-1]
    assert last["stop"] is True and last["content"] == ""
    assert last["tokens_predicted"] == 8 and last["stop_type"] == "limit"
    assert last["tokens_evaluated"] == whole["tokens_evaluated"]


def test_a_stop_word_is_reported(fim_child: ChildProcess) -> None:
    probe = infill(fim_child, input_prefix=PREFIX, input_suffix=SUFFIX, **GREEDY).json()
    stop = probe["content"][2:4]
    assert stop  # the greedy text is 8 tokens long
    answer = infill(fim_child, input_prefix=PREFIX, input_suffix=SUFFIX, stop=[stop], **GREEDY)
    assert answer.json()["stop_type"] == "word"
    assert answer.json()["stopping_word"] == stop
    assert answer.json()["content"] == probe["content"][: probe["content"].index(stop)]


def test_token_ids_may_stand_in_the_prefix(fim_child: ChildProcess) -> None:
    mixed = [PREFIX[:4], *tokenize(fim_child, PREFIX[4:])]
    by_text = infill(fim_child, input_prefix=PREFIX, input_suffix=SUFFIX, **GREEDY).json()
    by_mix = infill(fim_child, input_prefix=mixed, input_suffix=SUFFIX, **GREEDY).json()
    assert by_mix["content"] == by_text["content"]
    assert by_mix["tokens_evaluated"] == by_text["tokens_evaluated"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_extra": [{}]}, "input_extra[0].text"),
        ({"input_extra": [{"filename": "ok"}]}, "input_extra[0].text"),
        ({"input_extra": [{"filename": 123}]}, "input_extra[0].text"),
        ({"input_extra": [{"filename": 123, "text": "abc"}]}, "input_extra[0].filename"),
        ({"input_extra": [{"filename": 123, "text": 456}]}, "input_extra[0].text"),
        ({"input_extra": {"text": "abc"}}, "input_extra"),
        ({"prompt": 5}, "prompt"),
        ({"input_prefix": None}, "input_prefix"),
        ({"input_suffix": [1.5]}, "input_suffix"),
        ({"input_prefix": [99999]}, "input_prefix"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(
    fim_child: ChildProcess, change: dict[str, object], field: str
) -> None:
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": PROMPT, **change}
    answer = infill(fim_child, **body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field


def test_a_missing_part_is_a_400(fim_child: ChildProcess) -> None:
    for missing in ("input_prefix", "input_suffix"):
        body = {"input_prefix": PREFIX, "input_suffix": SUFFIX}
        del body[missing]
        answer = infill(fim_child, **body)
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == missing


def test_a_model_without_fim_tokens_gets_a_400_naming_them(tiny_model: Path) -> None:
    with running_child(tiny_model, "--ctx-size", "256") as child:
        answer = infill(child, input_prefix=PREFIX, input_suffix=SUFFIX)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "not_supported_error"
    for key in ("fim_pre_token_id", "fim_suf_token_id", "fim_mid_token_id"):
        assert key in error["message"]


def test_the_router_forwards_infill(tmp_path: Path, fim_model: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "coder.gguf").symlink_to(fim_model)
    body = {"model": "coder", "input_prefix": PREFIX, "input_suffix": SUFFIX, **GREEDY}
    with running_router(models) as router:
        answer = httpx.post(f"{router.base_url}/infill", json=body, timeout=60)
        with httpx.stream(
            "POST", f"{router.base_url}/infill", json={**body, "stream": True}, timeout=60
        ) as stream:
            events = [json.loads(line[6:]) for line in stream.iter_lines() if line]
    assert answer.status_code == 200, answer.text
    assert answer.json()["tokens_predicted"] == 8
    assert "".join(event["content"] for event in events) == answer.json()["content"]
