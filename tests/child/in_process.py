"""Generation on a model's own logits in the test process (the ``tiny_llama`` fixture): for
tests of the samplers (``sampling.py``), without a child or HTTP between."""

from __future__ import annotations

import llama_cpp

from router.child.sampling import Sampler


def sampled_tokens(
    llama: llama_cpp.Llama, prompt: str, sampler: Sampler, *, max_tokens: int, until_end: bool
) -> list[int]:
    """The tokens ``sampler`` picks after ``prompt`` (its cache cleared first), each decoded in
    turn: ``max_tokens`` of them, or fewer when ``until_end`` and an end-of-generation token
    comes (not included)."""
    context = llama._ctx.ctx
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(context), True)
    tokens = llama.tokenize(prompt.encode(), add_bos=True, special=True)
    generated: list[int] = []
    while len(generated) < max_tokens:
        batch = (llama_cpp.llama_token * len(tokens))(*tokens)
        status = llama_cpp.llama_decode(context, llama_cpp.llama_batch_get_one(batch, len(tokens)))
        assert status == 0
        token = sampler.sample(context, -1)
        if until_end and llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
            break
        generated.append(token)
        tokens = [token]
    return generated
