"""Sampler chains are kept for reuse (``sampling.ChainPool``): a chain that served one
request serves the next one of the same settings exactly as a new chain would (its
penalties forget what they saw, its seed is the new request's), and the pool stays bounded.

In-process, on the tiny model's own logits: each generation decodes a prompt, then its
tokens one at a time, through ``build_sampler``'s sampler.
"""

from __future__ import annotations

from dataclasses import replace

import llama_cpp

from router.child.engine import SamplingParams
from router.child.sampling import ChainPool, ChainSampler, build_sampler
from tests.child.in_process import sampled_tokens

# Penalties that keep a history of the tokens seen, and a random choice: what a chain that
# was not reset properly would get wrong.
PENALISED = SamplingParams(
    temperature=1.5, top_k=0, repeat_penalty=1.5, presence_penalty=1.0, repeat_last_n=64
)


def _generate(
    llama: llama_cpp.Llama,
    sampling: SamplingParams,
    pool: ChainPool | None,
    *,
    default_seed: int = 1,
    n: int = 32,
) -> list[int]:
    """``n`` tokens after the prompt "x", each sampled by one sampler built for the
    generation (from ``pool`` when given, and given back to it at the end)."""
    model = llama._model
    sampler = build_sampler(
        sampling, model=model, n_vocab=model.n_vocab(), default_seed=default_seed, pool=pool
    )
    try:
        return sampled_tokens(llama, "x", sampler, max_tokens=n, until_end=False)
    finally:
        sampler.close()


def test_a_kept_chain_samples_as_a_new_one(tiny_llama: llama_cpp.Llama) -> None:
    seeded = replace(PENALISED, seed=11)
    new = _generate(tiny_llama, seeded, pool=None)
    pool = ChainPool()
    assert _generate(tiny_llama, seeded, pool) == new  # built, then kept
    assert _generate(tiny_llama, seeded, pool) == new  # the kept one, reset
    assert _generate(tiny_llama, seeded, pool) == new
    other_seed = _generate(tiny_llama, replace(seeded, seed=12), pool)
    assert other_seed != new  # the seed is not kept with the chain
    model = tiny_llama._model
    again = build_sampler(seeded, model=model, n_vocab=model.n_vocab(), default_seed=1, pool=pool)
    assert isinstance(again, ChainSampler)
    # One link of each: the penalties, top-k, typical, top-p, min-p, temperature, dist.
    assert llama_cpp.llama_sampler_chain_n(again._chain.sampler) == 7
    again.close()


def test_unseeded_requests_draw_their_own_seeds(tiny_llama: llama_cpp.Llama) -> None:
    """Each request's seed is drawn (in Python, not by llama.cpp) when it has none, and
    a kept chain does not keep the seed it had."""
    pool = ChainPool()
    random = llama_cpp.LLAMA_DEFAULT_SEED  # the child's default: no --seed
    runs = {tuple(_generate(tiny_llama, PENALISED, pool, default_seed=random)) for _ in range(4)}
    assert len(runs) > 1


def test_the_pool_is_bounded_and_drops_the_oldest_settings_first(
    tiny_llama: llama_cpp.Llama,
) -> None:
    model = tiny_llama._model
    pool = ChainPool(capacity=2)

    def sampler(temperature: float) -> ChainSampler:
        built = build_sampler(
            SamplingParams(temperature=temperature),
            model=model,
            n_vocab=model.n_vocab(),
            default_seed=1,
            pool=pool,
        )
        assert isinstance(built, ChainSampler)
        return built

    first, second, third = sampler(0.5), sampler(0.6), sampler(0.7)
    chains = [first._chain, second._chain, third._chain]
    for each in (first, second, third):
        each.close()
    # Three given back to a pool of two: the chain of the first settings was freed.
    assert chains[0].sampler is None
    again = [sampler(0.5), sampler(0.7), sampler(0.6)]
    assert again[0]._chain is not chains[0]
    assert (again[1]._chain, again[2]._chain) == (chains[2], chains[1])
    for each in again:
        each.close()
    pool.close()  # what it keeps is freed with it
    assert all(each._chain.sampler is None for each in again)


def test_a_sampler_closed_twice_leaves_its_kept_chain_alone(tiny_llama: llama_cpp.Llama) -> None:
    model = tiny_llama._model
    pool = ChainPool()
    built = build_sampler(
        SamplingParams(), model=model, n_vocab=model.n_vocab(), default_seed=1, pool=pool
    )
    assert isinstance(built, ChainSampler)
    built.close()
    built.close()  # the chain is the pool's now: not freed, not given back twice
    kept = built._chain.sampler
    assert kept is not None
    assert llama_cpp.llama_sampler_chain_n(kept) == 6  # its dist link gone, once
    again = build_sampler(
        SamplingParams(), model=model, n_vocab=model.n_vocab(), default_seed=1, pool=pool
    )
    assert isinstance(again, ChainSampler) and again._chain is built._chain
    other = build_sampler(
        SamplingParams(), model=model, n_vocab=model.n_vocab(), default_seed=1, pool=pool
    )
    assert isinstance(other, ChainSampler) and other._chain is not built._chain  # kept once
    again.close()
    other.close()
    pool.close()
