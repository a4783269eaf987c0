"""The context that computes embeddings, beside the generation context.

Embeddings need a context made for them (pooling, outputs for every token, one sequence per
text of a batch), which generation does not want; a model started with ``--embeddings`` gets
one of these too. It is a ``Llama`` object built on the primary's model, so llama-cpp-python's
``embed`` works on it unchanged: this reaches into private parts of llama-cpp-python
(``_internals``, the object's context and batch), whose version is pinned in
``scripts/bootstrap.sh``; the tests in ``tests/child/`` exercise every part used.
"""

from __future__ import annotations

import contextlib

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from router.errors import ModelLoadFailed


class EmbeddingContext:
    """A llama context (its KV cache and batch) on the shared model, for ``embed``."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self.llama = llama

    @classmethod
    def sharing_model_of(
        cls, primary: llama_cpp.Llama, params: llama_cpp.llama_context_params
    ) -> EmbeddingContext:
        """A new context with ``params`` on ``primary``'s model.

        Raises ModelLoadFailed (``out_of_memory``) when llama.cpp cannot create the context.
        """
        llama = llama_cpp.Llama.__new__(llama_cpp.Llama)
        llama.__dict__.update(primary.__dict__)
        llama._stack = contextlib.ExitStack()
        llama.context_params = params
        llama._ctx = llama._stack.enter_context(
            contextlib.closing(new_context(primary._model, params))
        )
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

    def forget_prompt(self) -> None:
        """Drop what the last batch left in the KV cache."""
        self.llama.reset()

    def close(self) -> None:
        self.llama._stack.close()


def new_context(
    model: internals.LlamaModel, params: llama_cpp.llama_context_params
) -> internals.LlamaContext:
    """A llama context with ``params`` on ``model``.

    Raises ModelLoadFailed (``out_of_memory``) when llama.cpp cannot create it.
    """
    try:
        return internals.LlamaContext(model=model, params=params, verbose=False)
    except ValueError as exc:
        raise ModelLoadFailed(
            f"could not create a context of {params.n_ctx} tokens: not enough memory? "
            "Try a smaller --ctx-size or --parallel",
            kind="out_of_memory",
        ) from exc
