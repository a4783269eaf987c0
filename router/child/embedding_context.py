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
from collections.abc import Sequence

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from router.errors import InvalidField, ModelLoadFailed


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

    @property
    def is_ranking(self) -> bool:
        """Whether it pools with ``rank``: a reranker's classifier head, one score a text."""
        return bool(self.context.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_RANK)

    @property
    def most_tokens_at_once(self) -> int:
        """The longest text one decode takes: a model without causal attention must see a
        text in one physical batch (llama.cpp aborts otherwise), a causal one in one batch;
        the texts of a batch share the context's cache."""
        ctx = self.context.ctx
        batch = (
            llama_cpp.llama_n_batch(ctx)
            if llama_cpp.llama_get_causal_attn(ctx)
            else llama_cpp.llama_n_ubatch(ctx)
        )
        return int(min(batch, llama_cpp.llama_n_ctx(ctx)))

    @property
    def texts_at_once(self) -> int:
        """The most texts one decode takes: one a sequence."""
        return int(llama_cpp.llama_n_seq_max(self.context.ctx))

    def rank_groups(
        self, prompts: Sequence[Sequence[int]], field: str
    ) -> list[list[Sequence[int]]]:
        """``prompts`` (``field[i]`` in errors) in groups of one decode each (``rank_group``):
        as many as fit one batch and the context's sequences.

        Raises InvalidField for a prompt longer than one decode takes.
        """
        most = self.most_tokens_at_once
        for index, prompt in enumerate(prompts):
            if len(prompt) > most:
                raise InvalidField(
                    f"{field}[{index}]",
                    f"makes a prompt of {len(prompt)} tokens with the query, more than the "
                    f"{most} this reranker scores at once: shorten it, or start the model "
                    "with a larger --ubatch-size (and --batch-size, --ctx-size)",
                )
        n_seq_max = self.texts_at_once
        groups: list[list[Sequence[int]]] = []
        group: list[Sequence[int]] = []
        for prompt in prompts:
            if group and (sum(map(len, group)) + len(prompt) > most or len(group) >= n_seq_max):
                groups.append(group)
                group = []
            group.append(prompt)
        if group:
            groups.append(group)
        return groups

    def rank_group(self, prompts: Sequence[Sequence[int]]) -> list[float]:
        """The score of each prompt of a group (``rank_groups``), in one decode: the first
        output of the classifier head, as llama-server's ``send_rerank``. Blocking."""
        batch = self.llama._batch
        self.context.kv_cache_clear()
        batch.reset()
        for seq_id, prompt in enumerate(prompts):
            batch.add_sequence(list(prompt), seq_id, True)  # pooling needs every output
        try:
            self.context.decode(batch)
        finally:
            batch.reset()
        ctx = self.context.ctx
        return [
            float(llama_cpp.llama_get_embeddings_seq(ctx, seq_id)[0])
            for seq_id in range(len(prompts))
        ]

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
