"""``/v1/rerank`` (and ``/rerank``, ``/reranking``, ``/v1/reranking``): a reranker scores
documents for a query, as llama-server's ``post_rerank``.

The request is Jina's (``query``, ``documents``, ``top_n``, ``return_documents``) or TEI's
(``texts``, ``return_text``: the answer is then a bare list with ``score``). Each document
becomes one prompt, built as llama.cpp's ``format_prompt_rerank`` builds it: the GGUF's
``rerank`` template with ``{query}`` and ``{document}`` filled in, else
``BOS query EOS SEP document EOS`` (each special token where the tokenizer adds it). A model
that is not a reranker gets a 400 that says how to start one.
"""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from router.child.engine import RERANKER_NEEDED, ModelInfo
from router.child.service import ModelService
from router.edge.jsonbody import kind_of, parse_json_object
from router.edge.web import json_response, request_body
from router.errors import InvalidField, NotSupported

RERANK_PATHS = ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking")


def register_rerank(app: QuartTrio, service: ModelService, model_id: str) -> None:
    """Add the rerank routes to the child's ``app``."""

    async def rerank() -> Response:
        info = service.engine.info
        if not info.reranking:
            raise NotSupported(RERANKER_NEEDED)
        body = parse_json_object(await request_body())
        return json_response(await ranked(service, model_id, body))

    for path in RERANK_PATHS:
        app.add_url_rule(path, "rerank", rerank, methods=["POST"])


async def ranked(service: ModelService, model_id: str, body: dict[str, Any]) -> Any:
    """The answer to one rerank request: Jina's object, or TEI's list when it sent ``texts``.

    Raises RouterError for a bad request.
    """
    query = body.get("query")
    if not isinstance(query, str):
        raise InvalidField("query", "is required and must be a string")
    is_tei = body.get("documents") is None and "texts" in body
    field = "texts" if is_tei else "documents"
    documents = body.get(field)
    if (
        not isinstance(documents, list)
        or not documents
        or not all(isinstance(document, str) for document in documents)
    ):
        raise InvalidField(field, f"must be a non-empty list of strings, not {kind_of(documents)}")
    top_n = _top_n(body, len(documents))
    return_text = _flag(body, "return_text" if is_tei else "return_documents")
    prompts = await rerank_prompts(service, query, documents, field=field)
    scores = await service.rerank(prompts)
    order = sorted(range(len(documents)), key=lambda index: -scores[index])[:top_n]
    score_name = "score" if is_tei else "relevance_score"
    results: list[dict[str, Any]] = []
    for index in order:
        result: dict[str, Any] = {"index": index, score_name: scores[index]}
        if return_text:
            if is_tei:
                result["text"] = documents[index]
            else:
                result["document"] = {"text": documents[index]}
        results.append(result)
    if is_tei:
        return results
    n_tokens = sum(map(len, prompts))
    model = body.get("model")
    return {
        "model": model if isinstance(model, str) else model_id,
        "object": "list",
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        "results": results,
    }


async def rerank_prompts(
    service: ModelService, query: str, documents: list[str], *, field: str
) -> list[list[int]]:
    """The tokens that score each of ``documents`` (``field[i]``) for ``query``, as llama.cpp's
    ``format_prompt_rerank``: the model's rerank template if it has one (its special tokens
    parsed), else the texts between the special tokens the tokenizer adds."""
    info: ModelInfo = service.engine.info
    template = info.rerank_template
    special = info.special_tokens
    eos = special.eos if special.eos is not None else special.sep
    if template is None:
        query_tokens = await service.tokenize_prompt(
            query, field="query", add_special=False, parse_special=False
        )
        head = _present(special.add_bos, special.bos) + query_tokens
        head += _present(special.add_eos, eos) + _present(special.add_sep, special.sep)
    prompts = []
    for index, document in enumerate(documents):
        where = f"{field}[{index}]"
        if template is not None:
            prompt = template.replace("{query}", query).replace("{document}", document)
            tokens = await service.tokenize_prompt(prompt, field=where, add_special=False)
        else:
            tokens = await service.tokenize_prompt(
                document, field=where, add_special=False, parse_special=False
            )
            tokens = head + tokens + _present(special.add_eos, eos)
        if not tokens:
            raise InvalidField(where, "and the query are empty: there is nothing to score")
        prompts.append(tokens)
    return prompts


def _present(is_added: bool, token: int | None) -> list[int]:
    return [token] if is_added and token is not None else []


def _top_n(body: dict[str, Any], n_documents: int) -> int:
    top_n = body.get("top_n")
    if top_n is None:
        return n_documents
    if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0:
        raise InvalidField("top_n", f"must be a whole number of at least 0, not {top_n!r}")
    return top_n


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidField(name, f"must be true or false, not {kind_of(value)}")
    return value
