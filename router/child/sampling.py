"""Samplers: a request's sampling settings as something that picks the next token.

Each generation owns its sampler (penalties and grammars keep state per sequence); the decode
loop calls ``sample(context, index)`` on the logits of the sequence's row in the batch. Most
settings become a llama.cpp sampler chain in llama-server's order; plain greedy decoding (no
penalties, biases or grammar) is an argmax over the logits, which skips building llama.cpp's
array of every token's candidate data: 0.4 ms a token for a 262k-token vocabulary.

A grammar is never handed a token it does not allow: llama.cpp answers that by throwing a C++
exception through ctypes (or by ``GGML_ABORT`` for an end-of-generation token), which kills
the process and every other request in it. So with a grammar the chain chooses first and
the grammar checks that one token (:class:`GrammarSampler`, as llama.cpp's ``common_sampler``:
the grammar on the whole vocabulary costs ~40 ms a token, and only a rejected choice pays it),
and only a token the grammar allows is accepted; a request whose settings leave no token to
choose (``logit_bias`` banning all the grammar allows) ends with an
:class:`~router.errors.InvalidField`, and a grammar that is complete ends the
generation even under ``ignore_eos`` (the grammar wins).
"""

from __future__ import annotations

import ctypes
import math
import random
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from router.child.engine import SamplingParams
from router.errors import InvalidField

_LIKELIEST = 1024
"""How many of the likeliest tokens a greedy grammar sampler checks before the full pass."""

_seeds = random.Random()  # noqa: S311 - sampling, not secrets; seeded from os.urandom


class Sampler(Protocol):
    def sample(self, context: Any, index: int) -> int:
        """The next token, from the logits of row ``index`` of the last batch."""

    def close(self) -> None:
        """Free what the sampler holds in C."""


class GreedySampler:
    """The likeliest token (the first of equals, as llama.cpp's greedy sampler)."""

    def __init__(self, n_vocab: int, banned_tokens: Sequence[int]) -> None:
        self._n_vocab = n_vocab
        self._banned = list(banned_tokens)

    def sample(self, context: Any, index: int) -> int:
        pointer = llama_cpp.llama_get_logits_ith(context, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = int(logits.argmax())
        if token in self._banned:
            masked = logits.copy()
            masked[self._banned] = -np.inf
            token = int(masked.argmax())
        return token

    def close(self) -> None:
        pass


class ChainSampler:
    """A llama.cpp chain without a grammar, sampled in one call.

    Nothing in such a chain can abort the process; but when ``logit_bias`` (with the banned
    end-of-generation tokens of ``ignore_eos``) bans every token, the chain still returns one
    of them: that is refused rather than generated.
    """

    def __init__(
        self,
        chain: internals.LlamaSampler,
        banned: frozenset[int],
        *,
        has_dist: bool,
        kept_in: tuple[ChainPool, Hashable] | None = None,
    ) -> None:
        self._chain = chain
        self._banned = banned
        self._has_dist = has_dist
        self._kept_in = kept_in
        self._is_closed = False

    def sample(self, context: Any, index: int) -> int:
        token = int(llama_cpp.llama_sampler_sample(self._chain.sampler, context, index))
        if token in self._banned:
            raise InvalidField("logit_bias", "bans every token: nothing is left to generate")
        return token

    def close(self) -> None:
        """Free the chain, or give it back to its pool; once (a kept chain is another's)."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._kept_in is None:
            self._chain.close()
            return
        pool, key = self._kept_in
        if self._has_dist:  # the request's own seed and random state: not kept
            chain = self._chain.sampler
            last = llama_cpp.llama_sampler_chain_remove(
                chain, llama_cpp.llama_sampler_chain_n(chain) - 1
            )
            llama_cpp.llama_sampler_free(last)
        pool.give_back(key, self._chain)


class ChainPool:
    """Chains that requests have finished with, by their settings, for the next requests.

    A chain of llama-server's defaults is eight ctypes calls to build and as many to free:
    ~30 µs of the decode thread's time, in a request that a small model answers in about a
    millisecond. A chain comes back without its last link, the ``dist`` that holds a seed and
    the random state (each request adds its own); ``llama_sampler_reset`` then makes it as
    good as new (the penalties forget the tokens they saw; the other links keep no state).
    Used by the decode loop alone, by whoever holds its turn (its thread, or ``submit``). At
    most ``capacity`` chains are kept, those of the settings least recently given back
    dropped first.
    """

    def __init__(self, capacity: int = 16) -> None:
        self._capacity = capacity
        self._kept: OrderedDict[Hashable, list[internals.LlamaSampler]] = OrderedDict()

    def take(self, key: Hashable) -> internals.LlamaSampler | None:
        """A kept chain of ``key``'s settings, reset; None when there is none."""
        kept = self._kept.get(key)
        if not kept:
            return None
        chain = kept.pop()
        if not kept:
            del self._kept[key]
        llama_cpp.llama_sampler_reset(chain.sampler)
        return chain

    def give_back(self, key: Hashable, chain: internals.LlamaSampler) -> None:
        self._kept.setdefault(key, []).append(chain)
        self._kept.move_to_end(key)
        while sum(len(chains) for chains in self._kept.values()) > self._capacity:
            oldest_key, oldest = next(iter(self._kept.items()))
            oldest.pop(0).close()
            if not oldest:
                del self._kept[oldest_key]

    def close(self) -> None:
        for chains in self._kept.values():
            for chain in chains:
                chain.close()
        self._kept.clear()


class GrammarSampler:
    """A llama.cpp chain and a grammar, sampled the way llama.cpp's ``common_sampler`` does.

    Applying a grammar to every candidate costs ~40 ms a token on a 262k-token vocabulary
    (each token's text is matched against the grammar), far more than the chain itself.
    So, as ``common_sampler_sample`` with ``grammar_first`` off, the chain first picks a token
    without the grammar, and only that token is checked against it (a one-token array);
    a model that writes what the grammar wants pays nothing more. Only a rejected choice
    costs the grammar on the whole vocabulary, then the chain again (``resampled`` counts
    these, ``full_passes`` the passes over the whole vocabulary). Plain greedy decoding looks
    among the 1024 likeliest tokens first, which is enough when an allowed one there beats
    every token left out. Greedy choices are the same either way; a sampled one comes, as in
    llama.cpp, from the chain's distribution when it fits the grammar, and otherwise from
    that distribution restricted to what the grammar allows.

    A grammar is never handed a token it does not allow, as ``llama_sampler_accept`` would
    kill the process (every candidate it allows was banned by ``logit_bias`` or
    ``ignore_eos``): the choice is checked again after the full pass. Nothing allowed left
    means the grammar is complete (it allows the end of generation, which ``ignore_eos`` or
    ``logit_bias`` banned: the grammar wins and the generation ends with ``stop``), or
    nothing can follow the text so far (InvalidField).

    ``grammar_first`` always applies the grammar to every candidate first (llama.cpp's flag
    of that name), for comparison.
    """

    def __init__(
        self,
        params: SamplingParams,
        *,
        model: Any,
        n_vocab: int,
        default_seed: int,
        banned_tokens: Sequence[int],
        grammar_first: bool = False,
    ) -> None:
        assert params.grammar is not None
        self._n_vocab = n_vocab
        self._params = params
        self._grammar_first = grammar_first
        self._banned = _banned(params, banned_tokens)
        self._banned_ids = np.fromiter(self._banned, dtype=np.intp, count=len(self._banned))
        self._end_tokens = end_of_generation_tokens(model)
        # The chain without its grammar is an argmax: the first choice skips the candidates.
        self._is_argmax = is_plain_greedy(replace(params, grammar=None))
        grammar = llama_cpp.llama_sampler_init_grammar(
            model.vocab, params.grammar.encode("utf-8"), b"root"
        )
        if not grammar:  # checked before (``check_sampling``); a NULL would crash the chain
            raise InvalidField(params.grammar_field, "holds a grammar llama.cpp rejects")
        self._grammar: Any = grammar
        self._chain = internals.LlamaSampler()
        _add_logit_bias(self._chain, params, n_vocab, banned_tokens)
        _add_rest(self._chain, params, n_vocab)
        _add_dist(self._chain, params, default_seed)
        self._candidates = internals.LlamaTokenDataArray(n_vocab=n_vocab)
        self._n_likeliest = min(_LIKELIEST, n_vocab // 4)
        self._likeliest = internals.LlamaTokenDataArray(n_vocab=self._n_likeliest)
        self._all_ids = np.arange(n_vocab, dtype=np.intc)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._one, llama_cpp.llama_token_data_p),
            size=1,
            selected=-1,
            sorted=False,
        )
        self.resampled = 0  # tokens whose first choice the grammar rejected
        self.full_passes = 0  # tokens that took the grammar over the whole vocabulary

    def sample(self, context: Any, index: int) -> int:
        pointer = llama_cpp.llama_get_logits_ith(context, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        if not self._grammar_first:
            token = self._first_choice(logits)
            if token is not None and self._grammar_allows(token):
                return self._accept(token)
            self.resampled += 1
            if self._is_argmax:
                token = self._likeliest_allowed(logits)
                if token is not None and self._grammar_allows(token):
                    return self._accept(token)
        self.full_passes += 1
        token = self._choice(logits, with_grammar=True)
        if token is not None and self._grammar_allows(token):
            return self._accept(token)
        for token in self._end_tokens:
            if self._grammar_allows(token):
                return token  # the grammar is complete: it wins over ignore_eos and biases
        raise self._nothing_left()

    def _first_choice(self, logits: np.ndarray[Any, Any]) -> int | None:
        """The chain's choice without the grammar (None: a banned token)."""
        if not self._is_argmax:
            return self._choice(logits, with_grammar=False)
        token = int(logits.argmax())
        if token in self._banned:
            masked = logits.copy()
            masked[self._banned_ids] = -np.inf
            token = int(masked.argmax())
        return None if token in self._banned else token

    def _likeliest_allowed(self, logits: np.ndarray[Any, Any]) -> int | None:
        """Greedy's choice within the grammar, looked for among the likeliest tokens only.

        Exact (the full pass would choose the same) when the likeliest allowed one there is
        strictly likelier than every token left out; None otherwise.
        """
        n_likeliest = self._n_likeliest
        if n_likeliest == 0:
            return None
        ids = np.argpartition(logits, self._n_vocab - n_likeliest)[-n_likeliest:]
        ids.sort()  # in id order, as greedy keeps the first of equals
        likeliest = logits[ids]
        floor = float(likeliest.min())  # no token left out is likelier
        candidates = self._likeliest
        data = candidates.candidates_data
        data.id[:] = ids
        data.logit[:] = likeliest
        data.p[:] = 0.0
        array = candidates.candidates
        array.size = n_likeliest
        array.sorted = False
        array.selected = -1
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        allowed = np.where(np.isin(ids, self._banned_ids), -np.inf, data.logit)
        best = int(allowed.argmax())
        return int(ids[best]) if allowed[best] > floor else None

    def _choice(self, logits: np.ndarray[Any, Any], *, with_grammar: bool) -> int | None:
        """The chain's choice among all tokens (None: none, or a banned one)."""
        candidates = self._candidates
        data = candidates.candidates_data
        data.id[:] = self._all_ids
        data.logit[:] = logits
        data.p[:] = 0.0
        array = candidates.candidates
        array.size = self._n_vocab
        array.sorted = False
        array.selected = -1
        if with_grammar:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self._chain.sampler, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            return None
        token = int(data.id[array.selected])
        return None if token in self._banned else token

    def _accept(self, token: int) -> int:
        """Advance the grammar and the chain's state (penalties) past ``token``."""
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain.sampler, token)
        return token

    def _grammar_allows(self, token: int) -> bool:
        """Whether the grammar, in its state now, lets ``token`` come next."""
        self._one[0] = llama_cpp.llama_token_data(token, 0.0, 0.0)
        self._one_array.size = 1
        self._one_array.selected = -1
        self._one_array.sorted = False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return bool(self._one[0].logit != -math.inf)

    def _nothing_left(self) -> InvalidField:
        field = self._params.grammar_field
        if any(bias == -math.inf for bias in self._params.logit_bias.values()):
            return InvalidField(
                "logit_bias",
                f"bans every token that '{field}' allows next: nothing can follow the text "
                "generated so far; ban fewer tokens",
            )
        return InvalidField(
            field,
            "allows no token of this model's vocabulary after the text generated so far "
            "(a character no token spells?)",
        )

    def close(self) -> None:
        self._chain.close()
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


def end_of_generation_tokens(model: Any) -> list[int]:
    """The tokens that end a generation on ``model`` (an ``internals.LlamaModel``)."""
    return [token for token in (model.token_eos(), model.token_eot()) if token >= 0]


def chooses_greedily(params: SamplingParams) -> bool:
    """Whether a chain for ``params`` ends with the likeliest token (llama-server: a
    temperature of 0 or less), not a random choice."""
    return params.temperature <= 0.0


def is_plain_greedy(params: SamplingParams) -> bool:
    """Whether ``params`` amount to taking the likeliest token, whatever came before."""
    return (
        chooses_greedily(params)
        and not params.logit_bias
        and params.grammar is None
        and params.repeat_penalty == 1.0
        and params.frequency_penalty == 0.0
        and params.presence_penalty == 0.0
    )


def build_sampler(
    params: SamplingParams,
    *,
    model: Any,
    n_vocab: int,
    default_seed: int,
    banned_tokens: Sequence[int] = (),
    pool: ChainPool | None = None,
) -> Sampler:
    """A sampler for ``params`` on ``model`` (an ``internals.LlamaModel``).

    ``banned_tokens`` never come out (the end-of-generation tokens, for ``ignore_eos``),
    unless a grammar is complete. The grammar should have been checked first
    (``LlamaCppEngine.check_sampling``) so that it is refused before the request starts;
    one llama.cpp rejects here raises InvalidField. A chain comes from ``pool`` when it
    holds one of these settings, and goes back to it when the sampler is closed.
    """
    if is_plain_greedy(params):
        return GreedySampler(n_vocab, banned_tokens)
    if params.grammar is not None:
        return GrammarSampler(
            params,
            model=model,
            n_vocab=n_vocab,
            default_seed=default_seed,
            banned_tokens=banned_tokens,
        )
    key = _chain_key(params, banned_tokens)
    chain = pool.take(key) if pool is not None else None
    if chain is None:
        chain = internals.LlamaSampler()
        _add_logit_bias(chain, params, n_vocab, banned_tokens)
        _add_rest(chain, params, n_vocab)
    has_dist = _add_dist(chain, params, default_seed)
    kept_in = (pool, key) if pool is not None else None
    return ChainSampler(chain, _banned(params, banned_tokens), has_dist=has_dist, kept_in=kept_in)


def _chain_key(params: SamplingParams, banned_tokens: Sequence[int]) -> Hashable:
    """What a chain without its ``dist`` is made of (``_add_logit_bias``, ``_add_rest``)."""
    return (
        tuple(sorted(params.logit_bias.items())),
        tuple(banned_tokens),
        params.repeat_last_n,
        params.repeat_penalty,
        params.frequency_penalty,
        params.presence_penalty,
        params.temperature,
        params.top_k,
        params.typical_p,
        params.top_p,
        params.min_p,
    )


def _banned(params: SamplingParams, banned_tokens: Sequence[int]) -> frozenset[int]:
    """The tokens that may never come out: ``banned_tokens`` and those biased by -inf."""
    biased = (token for token, bias in params.logit_bias.items() if bias == -math.inf)
    return frozenset([*banned_tokens, *biased])


def _add_logit_bias(
    chain: internals.LlamaSampler,
    params: SamplingParams,
    n_vocab: int,
    banned_tokens: Sequence[int],
) -> None:
    """The first link of llama-server's chain: the biases, and the banned tokens."""
    logit_bias = dict(params.logit_bias)
    logit_bias.update((token, -math.inf) for token in banned_tokens)
    if logit_bias:
        chain.add_logit_bias(n_vocab, logit_bias)


def _add_rest(chain: internals.LlamaSampler, params: SamplingParams, n_vocab: int) -> None:
    """The links after the grammar, in llama-server's order, up to the choice (greedy is
    one, and the last; ``_add_dist`` adds the other)."""
    chain.add_penalties(
        n_vocab=n_vocab,
        penalty_last_n=params.repeat_last_n,
        penalty_repeat=params.repeat_penalty,
        penalty_freq=params.frequency_penalty,
        penalty_present=params.presence_penalty,
    )
    if chooses_greedily(params):
        chain.add_greedy()
        return
    chain.add_top_k(params.top_k)
    chain.add_typical(params.typical_p, 1)
    chain.add_top_p(params.top_p, 1)
    chain.add_min_p(params.min_p, 1)
    chain.add_temp(params.temperature)


def _add_dist(chain: internals.LlamaSampler, params: SamplingParams, default_seed: int) -> bool:
    """The random choice, last link of a chain that is not greedy; whether it was added."""
    if chooses_greedily(params):
        return False
    seed = params.seed if params.seed is not None and params.seed >= 0 else default_seed
    if seed == llama_cpp.LLAMA_DEFAULT_SEED:
        # "Random": drawn here, as llama.cpp would draw it (a Mersenne Twister seeded once
        # from the system), because llama.cpp asks std::random_device for every new chain:
        # ~12 µs of system calls a request, as much as building the rest of the chain.
        seed = _seeds.getrandbits(32)
    chain.add_dist(seed)
    return True
