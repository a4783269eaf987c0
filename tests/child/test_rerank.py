"""/v1/rerank (and its spellings) on a real child with a tiny reranker GGUF, and through the
router (conf.d ``reranking = true``); a model that is not a reranker gets a 400."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import ChildProcess, running_child, running_router
from tests.tiny_rerank_model import (
    RERANK_TEMPLATE,
    write_tiny_bert_reranker,
    write_tiny_reranker,
)

DOCUMENTS = ["a cat sat", "the dog ran off", "a cat sat", "paris is a city", "x"]
QUERY = "where is the cat"
PATHS = ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking")


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rerankers")
    return write_tiny_reranker(folder / "reranker.gguf", rerank_template=RERANK_TEMPLATE)


@pytest.fixture(scope="module")
def untemplated_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rerankers")
    return write_tiny_reranker(folder / "plain.gguf", add_eos_sep=True)


@pytest.fixture(scope="module")
def ranking_child(reranker: Path) -> Iterator[ChildProcess]:
    """Without flash attention, whose half-precision sums make a score depend (in its third
    digit) on the other documents that share its batch."""
    args = ("--reranking", "--ctx-size", "512", "--flash-attn", "off", "--alias", "rr")
    with running_child(reranker, *args) as child:
        yield child


def rerank(child: ChildProcess, path: str = "/v1/rerank", **body: object) -> httpx.Response:
    return httpx.post(f"{child.base_url}{path}", json=body, timeout=30)


def test_documents_come_back_best_first_with_their_scores(ranking_child: ChildProcess) -> None:
    answer = rerank(ranking_child, query=QUERY, documents=DOCUMENTS)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list"
    assert body["model"] == "rr"
    results = body["results"]
    assert sorted(result["index"] for result in results) == list(range(len(DOCUMENTS)))
    scores = [result["relevance_score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < score < 1.0 for score in scores)  # a softmax over the head's two labels
    by_index = {result["index"]: result["relevance_score"] for result in results}
    assert by_index[0] == pytest.approx(by_index[2])  # the same document, the same score
    assert len(set(round(score, 6) for score in by_index.values())) == len(DOCUMENTS) - 1
    assert "document" not in results[0]
    # The GGUF's rerank template, filled in: one token a byte (no BOS: special tokens off).
    prompts = [RERANK_TEMPLATE.format(query=QUERY, document=doc) for doc in DOCUMENTS]
    n_tokens = sum(len(prompt.encode()) for prompt in prompts)
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


def test_every_spelling_scores_alike_and_one_batch_matches_one_at_a_time(
    ranking_child: ChildProcess,
) -> None:
    answers = [rerank(ranking_child, path, query=QUERY, documents=DOCUMENTS) for path in PATHS]
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    first = answers[0].json()["results"]
    for answer in answers[1:]:
        assert answer.json()["results"] == first
    alone = {
        index: rerank(ranking_child, query=QUERY, documents=[doc]).json()["results"][0]
        for index, doc in enumerate(DOCUMENTS)
    }
    for result in first:
        assert alone[result["index"]]["relevance_score"] == pytest.approx(
            result["relevance_score"], abs=1e-5
        )


def test_top_n_and_return_documents(ranking_child: ChildProcess) -> None:
    everything = rerank(ranking_child, query=QUERY, documents=DOCUMENTS).json()["results"]
    top = rerank(ranking_child, query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True)
    results = top.json()["results"]
    assert [result["index"] for result in results] == [r["index"] for r in everything[:2]]
    assert [result["document"] for result in results] == [
        {"text": DOCUMENTS[result["index"]]} for result in results
    ]
    many = rerank(ranking_child, query=QUERY, documents=DOCUMENTS, top_n=99).json()
    assert len(many["results"]) == len(DOCUMENTS)


def test_tei_requests_get_a_bare_list(ranking_child: ChildProcess) -> None:
    answer = rerank(ranking_child, query=QUERY, texts=DOCUMENTS, return_text=True, top_n=3)
    assert answer.status_code == 200, answer.text
    results = answer.json()
    assert isinstance(results, list) and len(results) == 3
    assert all(set(result) == {"index", "score", "text"} for result in results)
    assert [result["text"] for result in results] == [DOCUMENTS[r["index"]] for r in results]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": None}, "documents"),
        ({"query": QUERY, "documents": 123}, "documents"),
        ({"query": QUERY, "documents": [1, 2, 3]}, "documents"),
        ({"documents": DOCUMENTS}, "query"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": -1}, "top_n"),
        ({"query": QUERY, "documents": DOCUMENTS, "return_documents": "yes"}, "return_documents"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(
    ranking_child: ChildProcess, body: dict[str, object], field: str
) -> None:
    answer = httpx.post(f"{ranking_child.base_url}/v1/rerank", json=body, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field


def test_a_document_too_long_for_one_batch_is_a_400(reranker: Path) -> None:
    with running_child(reranker, "--reranking", "--ctx-size", "64", "--batch-size", "64") as child:
        answer = rerank(child, query=QUERY, documents=["short", "long " * 40])
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "documents[1]"
    assert "--ubatch-size" in answer.json()["error"]["message"]


def test_a_bert_reranker_scores_more_than_one_physical_batch_in_several_decodes(
    tmp_path: Path,
) -> None:
    """A non-causal model must see all the texts of a decode in one physical batch (llama.cpp
    aborts otherwise): 6 documents of 228 tokens in all, 64 at a time."""
    bert = write_tiny_bert_reranker(tmp_path / "bert.gguf")
    documents = [*DOCUMENTS, "y" * 30]
    args = ("--reranking", "--ubatch-size", "64", "--batch-size", "64", "--flash-attn", "off")
    with running_child(bert, *args) as child:
        together = rerank(child, query=QUERY, documents=documents)
        alone = [
            rerank(child, query=QUERY, documents=[doc]).json()["results"][0]["relevance_score"]
            for doc in documents
        ]
        too_long = rerank(child, query=QUERY, documents=["z" * 60])
        assert httpx.get(f"{child.base_url}/health").status_code == 200
    assert together.status_code == 200, together.text
    # BOS query EOS SEP document EOS: the tokenizer adds all three.
    n_tokens = sum(len(QUERY) + len(doc) + 4 for doc in documents)
    assert together.json()["usage"]["prompt_tokens"] == n_tokens > 64
    for result in together.json()["results"]:
        assert result["relevance_score"] == pytest.approx(alone[result["index"]], abs=1e-3)
    assert too_long.status_code == 400
    assert "80 tokens" in too_long.json()["error"]["message"]


def test_without_a_rerank_template_the_prompt_is_bos_query_eos_sep_document_eos(
    untemplated_reranker: Path,
) -> None:
    with running_child(untemplated_reranker, "--reranking", "--ctx-size", "512") as child:
        answer = rerank(child, query="q?", documents=["one", "three"])
    assert answer.status_code == 200, answer.text
    # BOS q? EOS SEP one EOS, BOS q? EOS SEP three EOS
    assert answer.json()["usage"]["prompt_tokens"] == (1 + 2 + 2 + 3 + 1) + (1 + 2 + 2 + 5 + 1)


def test_a_model_not_started_for_reranking_gets_a_400_that_says_how(
    tiny_model: Path, reranker: Path
) -> None:
    for model in (tiny_model, reranker):  # a reranker GGUF too, if not started as one
        with running_child(model, "--ctx-size", "256") as child:
            answer = rerank(child, query=QUERY, documents=DOCUMENTS)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["type"] == "not_supported_error"
        assert "not a reranker" in error["message"] and "--reranking" in error["message"]


def test_a_reranker_makes_no_embeddings(ranking_child: ChildProcess) -> None:
    client = openai.OpenAI(base_url=ranking_child.openai_base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="reranker"):
        client.embeddings.create(model="rr", input="alpha")


def test_the_router_forwards_rerank_to_a_model_configured_for_it(
    tmp_path: Path, reranker: Path
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "ranker.toml").write_text(
        textwrap.dedent(f"""\
            model = "{reranker}"
            [args]
            reranking = true
            ctx_size = 512
            """)
    )
    with running_router(tmp_path / "models", cwd=tmp_path) as router:
        answers = [
            httpx.post(
                f"{router.base_url}{path}",
                json={"model": "ranker", "query": QUERY, "documents": DOCUMENTS},
                timeout=60,
            )
            for path in ("/v1/rerank", "/v1/reranking", "/rerank", "/reranking")
        ]
    assert [answer.status_code for answer in answers] == [200] * 4, answers[0].text
    assert answers[0].json()["model"] == "ranker"
    assert answers[1].json()["results"] == answers[0].json()["results"]
