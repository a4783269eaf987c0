"""A grammar checks the chain's choice before it costs a pass over the whole vocabulary
(llama.cpp's ``common_sampler``): the tokens are the ones the grammar-first pass would pick,
a rejected choice is sampled again within the grammar, and seeds still reproduce.

In-process, on the model's own logits: each generation decodes the prompt and then its own
tokens, one at a time, through ``GrammarSampler``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from router.child.engine import SamplingParams
from router.child.parsing import parse_completion
from router.child.sampling import GrammarSampler
from tests.child.in_process import sampled_tokens

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit", "days"],
}
GEMMA_PROMPT = (
    "<start_of_turn>user\nThe weather in Paris for 3 days, in celsius, as JSON with city, unit "
    "and days.<end_of_turn>\n<start_of_turn>model\n"
)


def _schema_sampling(**settings: Any) -> SamplingParams:
    sampling = parse_completion({"prompt": "x", "json_schema": SCHEMA}).settings.sampling
    return replace(sampling, **settings)


def _generate(
    llama: llama_cpp.Llama,
    prompt: str,
    sampling: SamplingParams,
    *,
    grammar_first: bool,
    max_tokens: int = 48,
) -> tuple[list[int], int, int]:
    """The tokens ``sampling`` generates after ``prompt``, how many were resampled, and how
    many of those took the grammar over the whole vocabulary."""
    model = llama._model
    sampler = GrammarSampler(
        sampling,
        model=model,
        n_vocab=model.n_vocab(),
        default_seed=1,
        banned_tokens=(),
        grammar_first=grammar_first,
    )
    try:
        generated = sampled_tokens(llama, prompt, sampler, max_tokens=max_tokens, until_end=True)
        return generated, sampler.resampled, sampler.full_passes
    finally:
        sampler.close()


def test_greedy_tokens_are_those_of_the_grammar_first_pass(tiny_llama: llama_cpp.Llama) -> None:
    """The tiny model's random weights often choose what the schema does not allow: the
    tokens go through all three paths (first choice, likeliest tokens, whole vocabulary);
    the text is the same as the grammar-first pass's."""
    sampling = _schema_sampling(temperature=0.0)
    fast, resampled, full_passes = _generate(tiny_llama, "x", sampling, grammar_first=False)
    full, _, _ = _generate(tiny_llama, "x", sampling, grammar_first=True)
    assert fast == full
    assert 0 < full_passes < resampled < len(fast)


def test_a_rejected_first_choice_is_sampled_again_within_the_grammar(
    tiny_llama: llama_cpp.Llama,
) -> None:
    """A bias makes "a" the chain's first choice every time; the grammar wants "bbbb"."""
    a, b = (token for token in tiny_llama.tokenize(b"ab", add_bos=False))
    for temperature in (0.0, 0.8):
        sampling = SamplingParams(
            temperature=temperature, grammar='root ::= "bbbb"', logit_bias={a: 100.0}
        )
        generated, resampled, _ = _generate(
            tiny_llama, "x", sampling, grammar_first=False, max_tokens=8
        )
        assert generated == [b] * 4
        assert resampled == 5  # the four "b", then the end of generation


def test_sampled_tokens_reproduce_with_a_seed(tiny_llama: llama_cpp.Llama) -> None:
    sampling = _schema_sampling(temperature=1.0, top_k=0, seed=5)
    first = _generate(tiny_llama, "x", sampling, grammar_first=False)
    assert _generate(tiny_llama, "x", sampling, grammar_first=False) == first
    other = _generate(tiny_llama, "x", replace(sampling, seed=6), grammar_first=False)
    assert other != first


@pytest.mark.gemma
def test_gemma_writes_most_of_a_schema_without_the_full_pass(gemma_model: Path) -> None:
    """Gemma's own choice fits the grammar for most tokens, and greedy finds the others among
    its likeliest: few tokens take the ~40 ms pass over its 262k-token vocabulary; and the
    text is the grammar-first pass's."""
    llama = llama_cpp.Llama(str(gemma_model), n_ctx=1024, n_threads=2, verbose=False)
    try:
        sampling = _schema_sampling(temperature=0.0)
        fast, resampled, full_passes = _generate(llama, GEMMA_PROMPT, sampling, grammar_first=False)
        full, _, _ = _generate(llama, GEMMA_PROMPT, sampling, grammar_first=True)
    finally:
        llama.close()
    assert fast == full
    assert resampled < len(fast) / 2
    assert full_passes < resampled
