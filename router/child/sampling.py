"""Sampler chains: a request's sampling settings as a llama.cpp sampler, in llama-server's order.

Each generation owns its chain (penalties and grammars keep state per sequence); the decode
loop applies it to that sequence's logits with ``llama_sampler_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llama_cpp import _internals as internals
from llama_cpp.llama_grammar import LlamaGrammar

from router.child.engine import SamplingParams


def build_sampler(
    params: SamplingParams,
    *,
    model: Any,
    n_vocab: int,
    default_seed: int,
    banned_tokens: Sequence[int] = (),
) -> internals.LlamaSampler:
    """A chain for ``params`` on ``model`` (an ``internals.LlamaModel``).

    ``banned_tokens`` never come out (the end-of-generation tokens, for ``ignore_eos``).
    The grammar must have been checked first (``LlamaCppEngine.check_sampling``): a grammar
    llama.cpp rejects here would crash the process.
    """
    sampler = internals.LlamaSampler()
    logit_bias = dict(params.logit_bias)
    logit_bias.update((token, -math.inf) for token in banned_tokens)
    if logit_bias:
        sampler.add_logit_bias(n_vocab, logit_bias)
    if params.grammar is not None:
        grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
        sampler.add_grammar(model, grammar)
    sampler.add_penalties(
        n_vocab=n_vocab,
        penalty_last_n=params.repeat_last_n,
        penalty_repeat=params.repeat_penalty,
        penalty_freq=params.frequency_penalty,
        penalty_present=params.presence_penalty,
    )
    if params.temperature <= 0.0:
        sampler.add_greedy()
        return sampler
    seed = params.seed if params.seed is not None and params.seed >= 0 else default_seed
    sampler.add_top_k(params.top_k)
    sampler.add_typical(params.typical_p, 1)
    sampler.add_top_p(params.top_p, 1)
    sampler.add_min_p(params.min_p, 1)
    sampler.add_temp(params.temperature)
    sampler.add_dist(seed)
    return sampler
