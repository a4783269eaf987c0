"""The Engine, implemented with llama-cpp-python: one shared model, one context per slot.

``--parallel N`` gives N llama contexts that share one copy of the weights (llama-cpp-python's
``Llama`` owns one model and one context; we build the extra contexts on its model). Each
generation runs on a worker thread and hands its text to the Trio loop with
``run_sync_soon`` (it never waits for the loop), and checks a cancellation flag between
tokens, so a client that leaves stops its generation within one token.

Chat templates live in ``chat_templates.py`` and the per-slot contexts in ``slots.py``; this
module owns the engine: loading, handing out slots, the token loop, sampling, embeddings.
It reaches into a few private parts of llama-cpp-python (``_internals``, the ``Llama``
object's model); the version is pinned in ``scripts/bootstrap.sh`` and the tests in
``tests/child/`` exercise every part used.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any

import llama_cpp
import numpy as np
import trio
from llama_cpp import _internals as internals
from llama_cpp.llama_grammar import LlamaGrammar

from router.child.chat_templates import ChatTemplate
from router.child.engine import (
    Embeddings,
    Finished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
    SlotState,
    TextStream,
)
from router.child.gguf_check import capture_llama_log, check_gguf, recent_llama_errors
from router.child.options import EngineOptions, FlashAttention, Pooling
from router.child.slots import Slot
from router.child.stops import StopScanner
from router.errors import InvalidField, ModelLoadFailed

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
}


class LlamaCppEngine:
    """A loaded GGUF model; build it with :meth:`load`."""

    def __init__(self, options: EngineOptions) -> None:
        """Load the model (blocking: call through :meth:`load`).

        Raises ModelLoadFailed with one line that says why: missing file, not a GGUF, a
        truncated or corrupt GGUF, a model llama.cpp cannot build, or no memory for the context.
        """
        check_gguf(options.model_path)
        capture_llama_log()
        recent_llama_errors()  # forget errors of earlier loads
        self._options = options
        try:
            self._llama = llama_cpp.Llama(
                model_path=str(options.model_path),
                n_ctx=options.ctx_size,
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
        # The Llama object made a context with flash attention forced on or off; our slots
        # get the setting asked for (auto included), so we free that one.
        self._llama._ctx.close()
        params = llama_cpp.llama_context_params.from_buffer_copy(self._llama.context_params)
        params.flash_attn_type = _FLASH_ATTN_TYPES[options.flash_attn]
        self._slots: list[Slot] = []
        try:
            self._chat_template = ChatTemplate.for_model(self._llama, options.chat_template)
            for _ in range(options.parallel):
                self._slots.append(Slot.sharing_model_of(self._llama, params))
        except BaseException:
            self.close()  # the weights and the slots made so far
            raise
        self._free_slots = list(self._slots)
        self._vocab = self._llama._model.vocab
        model = self._llama._model
        self._end_of_generation_tokens = [
            token for token in (model.token_eos(), model.token_eot()) if token >= 0
        ]
        self.info = self._model_info()

    @classmethod
    async def load(cls, options: EngineOptions) -> LlamaCppEngine:
        """Load on a worker thread.

        Cancellation: waits for the load to finish (llama.cpp cannot stop midway), then frees
        the model and raises Cancelled.
        """
        engine = await trio.to_thread.run_sync(cls, options)
        return engine

    @property
    def capacity(self) -> int:
        return len(self._slots)

    def slot_states(self) -> list[SlotState]:
        return [
            SlotState(id=index, is_processing=slot.is_processing, n_decoded=slot.n_decoded)
            for index, slot in enumerate(self._slots)
        ]

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
        # A token covers at least one byte, but for the BOS, EOS and space-prefix tokens; the
        # buffer is left uninitialised, so only the pages the tokens fill are ever touched.
        capacity = len(data) + 8
        while True:
            buffer = np.empty(capacity, dtype=np.intc)
            n_tokens = llama_cpp.llama_tokenize(
                self._vocab,
                data,
                len(data),
                buffer.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
                capacity,
                add_special,
                parse_special,
            )
            if n_tokens >= 0:
                tokens: list[int] = buffer[:n_tokens].tolist()
                return tokens
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

    # ---- generation ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextStream]:
        """See ``engine.py``. Cancellation: stops the worker within one token, then raises."""
        slot = self._free_slots.pop()
        send, receive = trio.open_memory_channel[str | Finished | BaseException](math.inf)
        is_cancelled = threading.Event()
        deliver = partial(_deliver_from_thread, trio.lowlevel.current_trio_token(), send)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        trio.to_thread.run_sync,
                        self._generate_blocking,
                        slot,
                        request,
                        deliver,
                        is_cancelled,
                    )
                )
                try:
                    yield TextStream(receive)
                finally:
                    is_cancelled.set()
        finally:
            receive.close()
            self._free_slots.append(slot)

    def _generate_blocking(
        self,
        slot: Slot,
        request: GenerationRequest,
        deliver: Callable[[str | Finished | BaseException | None], None],
        is_cancelled: threading.Event,
    ) -> None:
        """The per-token loop, on a worker thread; every outcome ends with ``deliver(None)``."""
        try:
            finished = self._run_generation(slot, request, deliver, is_cancelled)
            deliver(finished)
        except Exception as exc:
            slot.forget_prompt()
            deliver(exc)
        finally:
            deliver(None)

    def _run_generation(
        self,
        slot: Slot,
        request: GenerationRequest,
        deliver: Callable[[str], None],
        is_cancelled: threading.Event,
    ) -> Finished:
        prompt = list(request.prompt_tokens)
        n_ctx = self.info.n_ctx
        budget = n_ctx - len(prompt)
        if request.max_tokens is not None:
            budget = min(budget, request.max_tokens)
        sampler = self._sampler(request.sampling, ignore_eos=request.ignore_eos)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = StopScanner(request.stop)
        reason = FinishReason.LENGTH
        n_generated = 0
        hit_stop_string = False
        slot.is_processing, slot.n_decoded = True, 0
        try:
            if budget > 0:
                slot.load_prompt(prompt)
            while n_generated < budget:
                if is_cancelled.is_set():
                    reason = FinishReason.CANCELLED
                    break
                token = sampler.sample(slot.context, -1)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = FinishReason.STOP
                    break
                n_generated += 1
                slot.n_decoded = n_generated
                text, hit_stop_string = scanner.feed(
                    decoder.decode(_token_piece(self._vocab, token))
                )
                if text:
                    deliver(text)
                if hit_stop_string:
                    reason = FinishReason.STOP
                    break
                if n_generated < budget:
                    slot.llama.eval([token])
            if not hit_stop_string and reason is not FinishReason.CANCELLED:
                tail = scanner.flush() + decoder.decode(b"", final=True)
                if tail:
                    deliver(tail)
        finally:
            slot.is_processing = False
            sampler.close()
        return Finished(reason=reason, prompt_tokens=len(prompt), completion_tokens=n_generated)

    def _sampler(self, params: SamplingParams, *, ignore_eos: bool) -> internals.LlamaSampler:
        """A llama.cpp sampler chain in llama-server's order."""
        sampler = internals.LlamaSampler()
        n_vocab = self.info.n_vocab
        logit_bias = dict(params.logit_bias)
        if ignore_eos:
            logit_bias.update((token, -math.inf) for token in self._end_of_generation_tokens)
        if logit_bias:
            sampler.add_logit_bias(n_vocab, logit_bias)
        if params.grammar is not None:
            grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
            sampler.add_grammar(self._llama._model, grammar)
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
        seed = params.seed if params.seed is not None and params.seed >= 0 else self._llama._seed
        sampler.add_top_k(params.top_k)
        sampler.add_typical(params.typical_p, 1)
        sampler.add_top_p(params.top_p, 1)
        sampler.add_min_p(params.min_p, 1)
        sampler.add_temp(params.temperature)
        sampler.add_dist(seed)
        return sampler

    # ---- embeddings ----------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> Embeddings:
        slot = self._free_slots.pop()
        try:
            return await trio.to_thread.run_sync(self._embed_blocking, slot, texts)
        finally:
            self._free_slots.append(slot)

    def _embed_blocking(self, slot: Slot, texts: list[str]) -> Embeddings:
        slot.forget_prompt()
        if slot.context.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            # A model without pooling gives one vector per token, which we average. Those
            # come out wrong for all but the first text of a batch (llama-cpp-python 0.3.36),
            # so each text gets its own batch.
            raw, n_tokens = [], 0
            for text in texts:
                vectors, count = slot.llama.embed([text], truncate=True, return_count=True)
                raw.append(np.asarray(vectors[0], dtype=np.float64).mean(axis=0))
                n_tokens += count
        else:
            raw, n_tokens = slot.llama.embed(texts, truncate=True, return_count=True)
        normalized = []
        for item in raw:
            array = np.asarray(item, dtype=np.float64)
            norm = float(np.linalg.norm(array))
            normalized.append((array / norm if norm > 0 else array).tolist())
        return Embeddings(vectors=normalized, prompt_tokens=int(n_tokens))

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._llama.close()

    # ---- facts ---------------------------------------------------------------------------

    def _model_info(self) -> ModelInfo:
        model = self._llama._model
        return ModelInfo(
            model_path=str(self._options.model_path),
            n_ctx=self._slots[0].context.n_ctx(),
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
            total_slots=len(self._slots),
            n_threads=self._options.effective_threads,
            embeddings=self._options.embeddings,
            max_token_bytes=_max_token_bytes(self._vocab),
        )


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


def _deliver_from_thread(
    trio_token: trio.lowlevel.TrioToken,
    send: trio.MemorySendChannel[str | Finished | BaseException],
    item: str | Finished | BaseException | None,
) -> None:
    """Queue ``item`` for the loop without waiting for it; ``None`` closes the stream."""

    def on_loop() -> None:
        try:
            if item is None:
                send.close()
            else:
                send.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader left; the cancellation flag stops the worker

    trio_token.run_sync_soon(on_loop)
