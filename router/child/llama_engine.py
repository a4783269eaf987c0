"""The Engine, implemented with llama-cpp-python: one model, one context, continuous batching.

``--parallel N`` gives one llama context with N sequences (slots) that split ``--ctx-size``
between them, as llama-server's do; ``decode_loop.py`` decodes them all together on one
thread. This module owns the rest: loading, tokenizing, chat templates, the sampler each
generation gets (``sampling.py``), embeddings (``embedding_context.py``) and the facts
``/props`` reports. It reaches into a few private parts of llama-cpp-python (``_internals``,
the ``Llama`` object's model); the version is pinned in ``scripts/bootstrap.sh`` and the tests
in ``tests/child/`` exercise every part used.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any, cast

import llama_cpp
import numpy as np
import trio
from llama_cpp import _internals as internals

from router.child.chat_templates import ChatTemplate
from router.child.decode_loop import DecodeLoop
from router.child.embedding_context import EmbeddingContext, new_context
from router.child.engine import (
    RERANKER_NEEDED,
    Embeddings,
    EngineMetrics,
    GenerationRequest,
    ModelInfo,
    PromptMedia,
    SamplingParams,
    SlotState,
    SpecialTokens,
    TextStream,
)
from router.child.gguf_check import capture_llama_log, check_gguf, recent_llama_errors
from router.child.jobs import Item, Job
from router.child.multimodal import ImageInput, Projector, no_projector
from router.child.sampling import ChainPool, Sampler, build_sampler, end_of_generation_tokens
from router.child.slots import Slot
from router.errors import InvalidField, ModelLoadFailed, NotSupported
from router.model_options import EngineOptions, FlashAttention, Pooling

# ggml's type numbers (ggml.h) for llama-server's --cache-type-k/-v names (options_table).
_CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
                "iq4_nl": 20, "bf16": 30}  # fmt: skip
_FLASH_ATTN_TYPES = {
    FlashAttention.ON: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    FlashAttention.OFF: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    FlashAttention.AUTO: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
}
_POOLING_TYPES = {
    Pooling.MODEL: llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    Pooling.NONE: llama_cpp.LLAMA_POOLING_TYPE_NONE,
    Pooling.MEAN: llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    Pooling.CLS: llama_cpp.LLAMA_POOLING_TYPE_CLS,
    Pooling.LAST: llama_cpp.LLAMA_POOLING_TYPE_LAST,
    Pooling.RANK: llama_cpp.LLAMA_POOLING_TYPE_RANK,
}
# Texts embedded in one call on the decode thread, between two steps of the generations: a
# decode or so (a whole request could hold the generations for seconds).
EMBEDDING_TEXTS_A_CALL = 8


# Up to this many tokens, a tokenizer's buffer is a ctypes array (zeroed: cheap when small).
_SMALL_TOKEN_BUFFER = 4096


def _token_buffer(capacity: int) -> tuple[Any, Callable[[int], list[int]]]:
    """Room for ``capacity`` tokens as llama.cpp takes it, and how to read its first n.

    A small one is a ctypes array (numpy's ``empty`` and ``data_as`` cost three times as much
    for a short text); a large one is numpy's, left uninitialised, so that only the pages the
    tokens fill are ever touched.
    """
    if capacity <= _SMALL_TOKEN_BUFFER:
        small = (llama_cpp.llama_token * capacity)()
        return small, lambda n: small[:n]
    large = np.empty(capacity, dtype=np.intc)
    pointer = large.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token))
    return pointer, lambda n: cast(list[int], large[:n].tolist())


class LlamaCppEngine:
    """A loaded GGUF model; build it with :meth:`load`, run it inside :meth:`decoding`."""

    def __init__(self, options: EngineOptions) -> None:
        """Load the model (blocking: call through :meth:`load`).

        Raises ModelLoadFailed with one line that says why: missing file, not a GGUF, a
        truncated or corrupt GGUF, a model llama.cpp cannot build, or no memory for the context.
        """
        check_gguf(options.model_path)
        most_slots = llama_cpp.llama_max_parallel_sequences()
        if options.parallel > most_slots:
            raise ModelLoadFailed(
                f"--parallel {options.parallel} is more than llama.cpp's {most_slots} sequences "
                "per context",
                kind="bad_option",
            )
        capture_llama_log()
        recent_llama_errors()  # forget errors of earlier loads
        self._options = options
        n_ctx_asked = options.ctx_size
        try:
            self._llama = llama_cpp.Llama(
                model_path=str(options.model_path),
                n_ctx=max(1, n_ctx_asked // options.parallel) if n_ctx_asked else 0,
                n_batch=options.batch_size,
                n_ubatch=options.ubatch_size,
                n_threads=options.effective_threads,
                n_threads_batch=options.effective_threads_batch,
                n_gpu_layers=options.n_gpu_layers,
                use_mmap=options.use_mmap,
                use_mlock=options.use_mlock,
                embedding=options.embeddings,
                pooling_type=_POOLING_TYPES[options.pooling],
                seed=options.seed if options.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED,
                chat_format="chatml",  # we render templates ourselves; skips its guessing
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            reason = recent_llama_errors() or str(exc)
            raise ModelLoadFailed(
                f"llama.cpp could not load {options.model_path}: {reason}", kind="llama_error"
            ) from exc
        # The Llama object made a context of its own, with flash attention forced on or off;
        # we free it and make ours: one for generation, and one for embeddings if asked.
        self._llama._ctx.close()
        model = self._llama._model
        self._vocab = model.vocab
        self._embedding_context: EmbeddingContext | None = None
        self._embedding_lock = trio.Lock()
        self._context: internals.LlamaContext | None = None
        self._loop: DecodeLoop | None = None
        self._projector: Projector | None = None
        self._chains = ChainPool()  # the decode loop's (its turn's holder), as its samplers
        try:
            if options.mmproj is not None:
                self._projector = Projector(
                    options.mmproj,
                    model.model,
                    n_threads=options.effective_threads,
                    use_gpu=options.n_gpu_layers != 0,
                )
            self._chat_template = ChatTemplate.for_model(self._llama, options.chat_template)
            self._context = self._generation_context(options)
            n_ctx_seq = llama_cpp.llama_n_ctx_seq(self._context.ctx)
            if options.embeddings:
                params = self._context_params(options)
                params.n_ctx = n_ctx_seq
                self._embedding_context = EmbeddingContext.sharing_model_of(self._llama, params)
            self._end_of_generation_tokens = end_of_generation_tokens(model)
            self._loop = DecodeLoop(
                self._context,
                slots=[Slot(id=index, n_ctx=n_ctx_seq) for index in range(options.parallel)],
                n_batch=llama_cpp.llama_n_batch(self._context.ctx),
                n_vocab=model.n_vocab(),
                n_swa=llama_cpp.llama_model_n_swa(model.model),
                vocab=self._vocab,
                make_sampler=self._sampler,
                token_piece=partial(_token_piece, self._vocab),
                slot_prompt_similarity=options.slot_prompt_similarity,
            )
        except BaseException:
            self.close()  # the weights and the contexts made so far
            raise
        self.info = self._model_info(n_ctx_seq)

    def _context_params(self, options: EngineOptions) -> llama_cpp.llama_context_params:
        params = llama_cpp.llama_context_params.from_buffer_copy(self._llama.context_params)
        params.flash_attn_type = _FLASH_ATTN_TYPES[options.flash_attn]
        params.type_k = _CACHE_TYPES[options.cache_type_k]  # -ctk / -ctv
        params.type_v = _CACHE_TYPES[options.cache_type_v]
        return params

    def _generation_context(self, options: EngineOptions) -> internals.LlamaContext:
        """One context, one sequence per slot, each with its share of the KV cache."""
        params = self._context_params(options)
        params.n_ctx = options.ctx_size  # 0: the context the model was trained with
        params.n_seq_max = options.parallel
        params.kv_unified = False
        params.embeddings = False
        return new_context(self._llama._model, params)

    @classmethod
    async def load(cls, options: EngineOptions) -> LlamaCppEngine:
        """Load on a worker thread.

        Cancellation: waits for the load to finish (llama.cpp cannot stop midway), then frees
        the model and raises Cancelled.
        """
        engine = await trio.to_thread.run_sync(cls, options)
        return engine

    @contextlib.asynccontextmanager
    async def decoding(self) -> AsyncIterator[None]:
        """Run the decode loop's thread for the duration of the block.

        On the way out, generations still running end with an error and the thread is
        joined before this returns.
        """
        loop = self._running_loop()

        async def decode() -> None:
            await trio.to_thread.run_sync(
                loop.run, trio.lowlevel.current_trio_token(), thread_name="decode loop"
            )
            if not loop.stop_requested:  # a bug ended it: take the process down, be restarted
                raise RuntimeError("the decode loop ended by itself; see the log above")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(decode)
            try:
                yield
            finally:
                loop.stop()

    def _running_loop(self) -> DecodeLoop:
        assert self._loop is not None
        return self._loop

    @property
    def capacity(self) -> int:
        return len(self._running_loop().slots)

    def slot_states(self) -> list[SlotState]:
        return [
            SlotState(
                id=slot.id,
                n_ctx=slot.n_ctx,
                is_processing=slot.is_processing,
                n_prompt_tokens=slot.n_prompt_tokens,
                n_prompt_tokens_cache=slot.n_prompt_tokens_cache,
                n_prompt_tokens_processed=slot.n_prompt_tokens_processed,
                n_decoded=slot.n_decoded,
                n_cached=len(slot.cached),
            )
            for slot in self._running_loop().slots
        ]

    def metrics(self) -> EngineMetrics:
        return dataclasses.replace(self._running_loop().metrics)

    def check_sampling(self, sampling: SamplingParams) -> None:
        for token in sampling.logit_bias:
            if not 0 <= token < self.info.n_vocab:
                raise InvalidField(
                    "logit_bias",
                    f"has token id {token}, outside the vocabulary (0-{self.info.n_vocab - 1})",
                )
        if sampling.grammar is not None:
            try:
                grammar = sampling.grammar.encode("utf-8")
            except UnicodeEncodeError as exc:
                surrogate = ascii(exc.object[exc.start])
                raise InvalidField(
                    sampling.grammar_field,
                    f"is not text: it holds {surrogate}, half of a UTF-16 surrogate pair",
                ) from None
            recent_llama_errors()
            # llama.cpp returns NULL for a grammar it cannot parse, and llama-cpp-python would
            # add that NULL to the sampler chain and crash the process: try it here first.
            checked = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar, b"root")
            if not checked:
                reason = recent_llama_errors() or "it does not parse"
                raise InvalidField(
                    sampling.grammar_field, f"holds a grammar llama.cpp rejects: {reason}"
                )
            llama_cpp.llama_sampler_free(checked)

    # ---- text <-> tokens -----------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """See ``engine.py``. One pass of llama.cpp's tokenizer (llama-cpp-python's own
        ``tokenize`` makes two for texts longer than the trained context)."""
        data = text.encode("utf-8")
        # A token covers at least one byte, but for the BOS, EOS and space-prefix tokens.
        capacity = len(data) + 8
        while True:
            buffer, read = _token_buffer(capacity)
            n_tokens = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, capacity, add_special, parse_special
            )
            if n_tokens >= 0:
                return read(n_tokens)
            capacity = -n_tokens  # a tokenizer that expands text (normalization): exact size

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_piece(token) for token in tokens).decode(
            "utf-8", errors="replace"
        )

    def token_piece(self, token: int) -> bytes:
        if not 0 <= token < self.info.n_vocab:
            raise InvalidField("tokens", f"contains {token}, outside the vocabulary")
        return _token_piece(self._vocab, token)

    def format_chat(self, messages: list[dict[str, Any]], **template_args: Any) -> str:
        return self._chat_template.render(messages, **template_args)

    def media_prompt(
        self, text: str, images: Sequence[ImageInput], *, add_special: bool
    ) -> tuple[list[int], PromptMedia]:
        """See ``engine.py``."""
        if self._projector is None:
            raise no_projector(images[0])
        prompt = self._projector.prompt(text, images, add_special=add_special)
        return prompt.tokens, prompt

    # ---- generation ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextStream]:
        """See ``engine.py``. Raises Unavailable once the decode loop has stopped."""
        send, receive = trio.open_memory_channel[Item](math.inf)
        job = Job(request, send)
        self._running_loop().submit(job)
        try:
            yield TextStream(receive)
        finally:
            job.cancelled = True  # the loop frees the slot at its next step
            receive.close()

    def _sampler(self, request: GenerationRequest) -> Sampler:
        return build_sampler(
            request.sampling,
            model=self._llama._model,
            n_vocab=self.info.n_vocab,
            default_seed=self._llama._seed,
            banned_tokens=self._end_of_generation_tokens if request.ignore_eos else (),
            pool=self._chains,
        )

    # ---- embeddings ----------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> Embeddings:
        if self._embedding_context is None:
            raise NotSupported("this model serves no embeddings: start it with --embeddings")
        if self._embedding_context.is_ranking:
            raise NotSupported(
                "this model is started as a reranker (pooling rank): it scores documents at "
                "/v1/rerank and makes no embeddings; start it with another --pooling for those"
            )
        context = self._embedding_context
        vectors: list[list[float]] = []
        n_tokens = 0
        async with self._embedding_lock:
            # A few texts at a time, so that generations go on between (and a caller that
            # leaves stops it after the running group).
            at_once = min(context.texts_at_once, EMBEDDING_TEXTS_A_CALL)
            for start in range(0, len(texts), at_once):
                group = texts[start : start + at_once]
                embedded = await self._running_loop().run_between_steps(
                    partial(self._embed_blocking, context, group)
                )
                vectors += embedded.vectors
                n_tokens += embedded.prompt_tokens
        return Embeddings(vectors=vectors, prompt_tokens=n_tokens)

    async def rerank(self, prompts: list[list[int]]) -> list[float]:
        """See ``engine.py``."""
        context = self._embedding_context
        if context is None or not context.is_ranking:
            raise NotSupported(RERANKER_NEEDED)
        scores: list[float] = []
        async with self._embedding_lock:
            for group in context.rank_groups(prompts, "documents"):  # one decode each
                scores += await self._running_loop().run_between_steps(
                    partial(context.rank_group, group)
                )
        return scores

    def _embed_blocking(self, context: EmbeddingContext, texts: list[str]) -> Embeddings:
        context.forget_prompt()
        if context.context.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            # A model without pooling gives one vector per token, which we average. Those
            # come out wrong for all but the first text of a batch (llama-cpp-python 0.3.36),
            # so each text gets its own batch.
            raw, n_tokens = [], 0
            for text in texts:
                vectors, count = context.llama.embed([text], truncate=True, return_count=True)
                raw.append(np.asarray(vectors[0], dtype=np.float64).mean(axis=0))
                n_tokens += count
        else:
            raw, n_tokens = context.llama.embed(texts, truncate=True, return_count=True)
        normalized = []
        for item in raw:
            array = np.asarray(item, dtype=np.float64)
            norm = float(np.linalg.norm(array))
            normalized.append((array / norm if norm > 0 else array).tolist())
        return Embeddings(vectors=normalized, prompt_tokens=int(n_tokens))

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Free the contexts, then the model; the decode loop must have stopped."""
        if self._loop is not None:
            self._loop.close()
        self._chains.close()
        if self._embedding_context is not None:
            self._embedding_context.close()
        if self._context is not None:
            self._context.close()
        if self._projector is not None:
            self._projector.close()
        self._llama.close()

    # ---- facts ---------------------------------------------------------------------------

    def _model_info(self, n_ctx_seq: int) -> ModelInfo:
        model = self._llama._model
        return ModelInfo(
            model_path=str(self._options.model_path),
            n_ctx=n_ctx_seq,
            n_ctx_train=model.n_ctx_train(),
            n_vocab=model.n_vocab(),
            n_embd=model.n_embd(),
            n_params=model.n_params(),
            size_bytes=model.size(),
            vocab_type=model.vocab_type(),
            chat_template=self._chat_template.template,
            chat_template_source=self._chat_template.source,
            bos_token=self._chat_template.bos_token,
            eos_token=self._chat_template.eos_token,
            total_slots=self._options.parallel,
            n_threads=self._options.effective_threads,
            embeddings=self._options.embeddings,
            max_token_bytes=_max_token_bytes(self._vocab),
            reasoning_format=self._options.reasoning_format,
            special_tokens=_special_tokens(self._vocab),
            n_batch=self._options.batch_size,
            reranking=self._embedding_context is not None and self._embedding_context.is_ranking,
            rerank_template=_named_template(model, "rerank"),
            vision=self._projector is not None,
        )


def _special_tokens(vocab: Any) -> SpecialTokens:
    def token(token_id: int) -> int | None:
        return None if token_id == llama_cpp.LLAMA_TOKEN_NULL else token_id

    return SpecialTokens(
        bos=token(llama_cpp.llama_vocab_bos(vocab)),
        eos=token(llama_cpp.llama_vocab_eos(vocab)),
        sep=token(llama_cpp.llama_vocab_sep(vocab)),
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        add_eos=bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        add_sep=bool(llama_cpp.llama_vocab_get_add_sep(vocab)),
        fim_pre=token(llama_cpp.llama_vocab_fim_pre(vocab)),
        fim_suf=token(llama_cpp.llama_vocab_fim_suf(vocab)),
        fim_mid=token(llama_cpp.llama_vocab_fim_mid(vocab)),
        fim_rep=token(llama_cpp.llama_vocab_fim_rep(vocab)),
        fim_sep=token(llama_cpp.llama_vocab_fim_sep(vocab)),
    )


def _named_template(model: internals.LlamaModel, name: str) -> str | None:
    """The GGUF's ``tokenizer.chat_template.NAME``, if it has one."""
    template = llama_cpp.llama_model_chat_template(model.model, name.encode())
    return template.decode("utf-8", errors="replace") if template else None


# Tokenizers that map each byte of the text to exactly one token's bytes; the others normalize
# text (WPM, UGM, PLaMo-2 drop or fold whitespace and accents) or are not real tokenizers.
_BYTE_PRESERVING_VOCABS = frozenset(
    {
        llama_cpp.LLAMA_VOCAB_TYPE_SPM,
        llama_cpp.LLAMA_VOCAB_TYPE_BPE,
        llama_cpp.LLAMA_VOCAB_TYPE_RWKV,
    }
)
_STRIPS_WHITESPACE = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
_LONGEST_CHARACTER_BYTES = 4


def _max_token_bytes(vocab: Any) -> int | None:
    """The most bytes of text one token can stand for; None when no such bound exists.

    That is the longest token text: what a special token matches in a prompt, and never
    shorter than what a plain token covers (SentencePiece writes a space as the three bytes of
    ``▁``, byte-level BPE a byte as one or two). A special token that strips the whitespace
    around it can swallow any number of spaces, so a vocabulary with one has no bound.
    Called once per load: about 0.3 s for a vocabulary of 262k tokens.
    """
    if llama_cpp.llama_vocab_type(vocab) not in _BYTE_PRESERVING_VOCABS:
        return None
    # The bare C functions: llama-cpp-python's wrappers double the time of this loop.
    get_attr, get_text = (
        llama_cpp.llama_cpp._lib.llama_vocab_get_attr,
        llama_cpp.llama_cpp._lib.llama_vocab_get_text,
    )
    longest = _LONGEST_CHARACTER_BYTES  # an unknown character may become one <unk> token
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        if get_attr(vocab, token) & _STRIPS_WHITESPACE:
            return None
        longest = max(longest, len(get_text(vocab, token) or b""))
    return longest


def _token_piece(vocab: Any, token: int) -> bytes:
    buffer = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, 64, 0, False)
    if n < 0:
        buffer = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, -n, 0, False)
    return buffer.raw[:n]
