"""Slots: the per-request llama contexts that share one loaded model, and their prompt cache.

Each slot owns one llama context (its KV cache and batch) and the tokens that context holds,
so a request whose prompt starts like the slot's last one only evaluates the new tail. The
engine (``llama_engine.py``) hands slots out; a slot knows nothing of sampling or HTTP.

A slot is a ``Llama`` object built on the primary's model: this reaches into private parts of
llama-cpp-python (``_internals``, the object's context and batch), whose version is pinned in
``scripts/bootstrap.sh``; the tests in ``tests/child/`` exercise every part used.
"""

from __future__ import annotations

import contextlib
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from router.errors import ModelLoadFailed


class Slot:
    """One llama context (its KV cache and batch) on the shared model.

    It is a ``Llama`` object that shares the primary's model, tokenizer and settings but owns
    its own context, batch and token history, so llama-cpp-python's ``eval`` and ``embed``
    work on it unchanged.
    """

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self.llama = llama
        # Written by the worker thread, read by the loop: plain attribute stores are atomic.
        self.is_processing = False
        self.n_decoded = 0

    @classmethod
    def sharing_model_of(
        cls, primary: llama_cpp.Llama, params: llama_cpp.llama_context_params
    ) -> Slot:
        """A new context with ``params`` on ``primary``'s model.

        Raises ModelLoadFailed (``out_of_memory``) when llama.cpp cannot create the context.
        """
        llama = llama_cpp.Llama.__new__(llama_cpp.Llama)
        llama.__dict__.update(primary.__dict__)
        llama._stack = contextlib.ExitStack()
        llama.context_params = params
        try:
            llama._ctx = llama._stack.enter_context(
                contextlib.closing(
                    internals.LlamaContext(model=primary._model, params=params, verbose=False)
                )
            )
        except ValueError as exc:
            raise ModelLoadFailed(
                f"could not create a context of {params.n_ctx} tokens: not enough memory? "
                "Try a smaller --ctx-size or --parallel",
                kind="out_of_memory",
            ) from exc
        llama._batch = llama._stack.enter_context(
            contextlib.closing(
                internals.LlamaBatch(
                    n_tokens=primary.n_batch, embd=0, n_seq_max=params.n_ctx, verbose=False
                )
            )
        )
        llama._candidates = internals.LlamaTokenDataArray(n_vocab=primary._n_vocab)
        llama.input_ids = np.zeros((params.n_ctx,), dtype=np.intc)
        llama.scores = np.zeros((1, primary._n_vocab), dtype=np.single)  # logits stay in C
        llama._n_ctx = params.n_ctx
        llama.n_tokens = 0
        llama._requires_eval = True
        llama._sampler = None
        llama.cache = None
        return cls(llama)

    @property
    def context(self) -> internals.LlamaContext:
        return self.llama._ctx

    def load_prompt(self, prompt: list[int]) -> None:
        """Evaluate ``prompt``, reusing the longest prefix already in this slot's KV cache."""
        llama = self.llama
        reuse = common_prefix_length(llama.input_ids[: llama.n_tokens], prompt)
        reuse = min(reuse, len(prompt) - 1)  # the last prompt token must be decoded for logits
        if reuse > 0 and llama._ctx.kv_cache_seq_rm(-1, reuse, -1):
            llama.n_tokens = reuse
        else:
            llama.reset()
        llama.eval(prompt[llama.n_tokens :])

    def forget_prompt(self) -> None:
        """Drop the cached prompt, after an error left the KV cache in an unknown state."""
        self.llama.reset()

    def close(self) -> None:
        self.llama._stack.close()


def common_prefix_length(cached: np.ndarray[Any, Any], prompt: list[int]) -> int:
    """How many leading tokens of ``prompt`` the slot already holds in ``cached``."""
    n = min(len(cached), len(prompt))
    if n == 0:
        return 0
    mismatches = np.flatnonzero(cached[:n] != np.asarray(prompt[:n], dtype=np.intc))
    return int(mismatches[0]) if mismatches.size else n
