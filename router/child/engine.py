"""The inference engine interface: a request in, an async stream of text out.

The HTTP side (``child/app.py``) knows only this module. ``llama_engine.py`` implements it
with llama-cpp-python and continuous batching (one context, one sequence per slot, one decode
loop: ``decode_loop.py``); any engine that keeps these promises can replace it:

* ``generate`` is an async context manager. Inside it, iterating the stream yields pieces of
  text (with their tokens' log-probabilities when asked) as the model produces them; when
  iteration ends, ``finished`` says why and what it cost. Leaving the block early (client
  gone, cancellation) stops the generation within one token.
* ``generate`` is only entered while the caller holds one of ``capacity`` admission slots
  (see ``admission.py``), so an engine never queues requests for long: at most until a
  generation that was just left has given its slot back.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from router.child.multimodal import ImageInput

# Why /v1/rerank refuses a model: one sentence, for the route and the engine.
RERANKER_NEEDED = (
    "this model is not a reranker: start a reranker GGUF (one whose pooling is rank, with a "
    "classifier head) with --reranking, or `reranking = true` in its config"
)


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens reached, or the context is full
    CANCELLED = "cancelled"  # the consumer left early; never sent to a client


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, with llama-server's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF; JSON schemas are converted before they get here
    grammar_field: str = "grammar"  # the request field it came from, for error messages


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: tokens in, text out until a stop condition."""

    prompt_tokens: Sequence[int]
    max_tokens: int | None = None  # None: until end-of-generation or a full context
    stop: Sequence[str] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    ignore_eos: bool = False  # keep generating past end-of-generation tokens (benchmarks)
    # None: no log-probabilities; k >= 0: each token's, with the k likeliest alternatives.
    logprobs: int | None = None
    cache_prompt: bool = True  # reuse a slot's cached tokens that this prompt starts with
    # False: the caller reads the text only at the end, so the engine may hand it over in one
    # piece then, rather than a piece per token.
    incremental: bool = True
    # The prompt's images, when it has some (``prompt_tokens`` then holds placeholders in
    # their positions): the engine evaluates them in place, and reuses no cached prefix.
    media: PromptMedia | None = None
    # How many generations of this prompt one request starts at once (its choices): the
    # engine evaluates their prompt once, and runs none of them apart from the others.
    choices: int = 1


class PromptMedia(Protocol):
    """What an engine needs of a prompt with images (``multimodal.MediaPrompt``)."""

    n_prefill: int  # how many of the prompt's first positions ``prefill`` evaluates

    def prefill(self, context: Any, seq_id: int, n_batch: int) -> None:
        """Evaluate those positions in sequence ``seq_id`` of the llama ``context``."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token and how likely the model found it (natural log)."""

    token: int
    piece: bytes  # the token's bytes: part of a character, for some tokens
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()  # the likeliest tokens, best first


@dataclass(frozen=True)
class Piece:
    """Text the model produced, and the tokens behind it when log-probabilities were asked."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The last item of a stream: why it ended and what it cost."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens found in the slot's cache, not evaluated again
    prompt_ms: float = 0.0  # from the start to the first token (prompt evaluation)
    predicted_ms: float = 0.0  # from the first token to the last
    stop_word: str | None = None  # the stop string that ended it (Anthropic's stop_sequence)


class TextStream:
    """The output of one generation, read with ``async for``; see the module docstring."""

    def __init__(self, pieces: trio.MemoryReceiveChannel[Piece | Finished | BaseException]) -> None:
        self._pieces = pieces
        self._finished: Finished | None = None

    @property
    def finished(self) -> Finished:
        """Why the stream ended; only once it was read to the end."""
        if self._finished is None:
            raise RuntimeError("the stream was not read to its end")
        return self._finished

    def __aiter__(self) -> AsyncIterator[Piece]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Piece]:
        while True:
            # What the decode loop has already handed over is taken without a schedule point
            # (the channel's ``receive`` yields on every item: a 1-token answer's piece and
            # end came together and cost two extra rounds of Trio's loop, ~20 µs); waiting
            # for more is one, and a cancelled reader stops at its next item.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                item = self._pieces.receive_nowait()
            except trio.WouldBlock:
                try:
                    item = await self._pieces.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            if isinstance(item, Finished):
                self._finished = item
                return
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass(frozen=True)
class ModelInfo:
    """What ``/props`` and ``/v1/models`` report about the loaded model."""

    model_path: str
    n_ctx: int  # the most tokens one request (one slot) may use: the context over the slots
    n_ctx_train: int
    n_vocab: int
    n_embd: int
    n_params: int
    size_bytes: int
    vocab_type: int
    chat_template: str
    chat_template_source: str  # "gguf", or the name of the built-in fallback used
    bos_token: str
    eos_token: str
    total_slots: int
    n_threads: int
    embeddings: bool
    # The most bytes of text one token can stand for, or None when the tokenizer may fold any
    # number of bytes into one token (it normalizes text, or a special token swallows the
    # whitespace around it). With it, a prompt of more than ``n_ctx * max_token_bytes`` bytes
    # is known not to fit before it is tokenized.
    max_token_bytes: int | None = None
    reasoning_format: str = "auto"  # --reasoning-format: where <think> thoughts go
    special_tokens: SpecialTokens = field(default_factory=lambda: SpecialTokens())
    n_batch: int = 2048  # the logical batch asked for (--batch-size): /infill's budget
    reranking: bool = False  # its embeddings context scores texts (pooling rank): /v1/rerank
    rerank_template: str | None = None  # the GGUF's "rerank" template, {query} {document}
    vision: bool = False  # a projector is loaded: chat messages may hold images


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens that /v1/rerank and /infill build prompts with (None: the model
    has none), and whether the tokenizer adds BOS, EOS and SEP around a text."""

    bos: int | None = None
    eos: int | None = None
    sep: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    fim_pre: int | None = None
    fim_suf: int | None = None
    fim_mid: int | None = None
    fim_rep: int | None = None
    fim_sep: int | None = None


@dataclass(frozen=True)
class SlotState:
    """One slot, as llama-server's ``/slots`` shows it."""

    id: int
    n_ctx: int  # the most tokens this slot's sequence may hold
    is_processing: bool
    n_prompt_tokens: int  # of the running (or last) generation
    n_prompt_tokens_cache: int  # of those, found in the cache
    n_prompt_tokens_processed: int  # of those, evaluated so far
    n_decoded: int  # tokens generated by the running (or last) generation
    n_cached: int  # tokens in this slot's KV cache, for the next prompt to reuse


@dataclass
class EngineMetrics:
    """Counters since the engine started, under llama-server's ``/metrics`` names."""

    prompt_tokens_total: int = 0  # prompt tokens evaluated (cached ones not counted)
    prompt_tokens_cached_total: int = 0  # prompt tokens found in a slot's cache
    prompt_seconds_total: float = 0.0
    tokens_predicted_total: int = 0
    tokens_predicted_seconds_total: float = 0.0
    n_decode_total: int = 0  # calls to llama_decode
    n_busy_slots_total: int = 0  # sum over those calls of the slots they served
    n_tokens_max: int = 0  # the largest prompt + generation seen in one slot


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class Engine(Protocol):
    """What the HTTP side needs from a loaded model."""

    info: ModelInfo

    @property
    def capacity(self) -> int:
        """How many generations may run at once."""

    def slot_states(self) -> list[SlotState]:
        """What each slot is doing now."""

    def metrics(self) -> EngineMetrics:
        """Counters since the engine started."""

    def check_sampling(self, sampling: SamplingParams) -> None:
        """Raise InvalidField if the model cannot use ``sampling`` (a bad grammar, a token
        id outside the vocabulary): found here, it is a 400, not a crash mid-generation."""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Text to token ids.

        Blocking, and slow on long texts (seconds for a megabyte of some texts), like the three
        methods below: the service calls them on a worker thread, never on the event loop.
        Safe to call from several threads at once, and while generations run.
        """

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Token ids to text."""

    def token_piece(self, token: int) -> bytes:
        """The bytes of one token, for ``/tokenize`` with ``with_pieces``."""

    def format_chat(self, messages: list[dict[str, Any]], **template_args: Any) -> str:
        """The prompt text for ``messages``, rendered with the model's chat template."""

    def media_prompt(
        self, text: str, images: Sequence[ImageInput], *, add_special: bool
    ) -> tuple[list[int], PromptMedia]:
        """The tokens of ``text``, whose ``multimodal.MEDIA_MARKER`` strings stand for
        ``images``, and the images to evaluate in their places. Blocking, as ``tokenize``.

        Raises NotSupported when the model has no projector (``info.vision`` is false), and
        InvalidField for an image it cannot decode.
        """

    def generate(self, request: GenerationRequest) -> AbstractAsyncContextManager[TextStream]:
        """Run one generation; see the module docstring for its promises."""

    async def embed(self, texts: list[str]) -> Embeddings:
        """One normalized vector per text.

        Cancellation: waits for the running batch to finish, then raises (at once if none
        has begun).
        """

    async def rerank(self, prompts: list[list[int]]) -> list[float]:
        """One relevance score per prompt (a query and a document, as ``rerank.py`` joins
        them), from a reranker's classifier head; only when ``info.reranking``.

        Raises InvalidField when a prompt is longer than the model scores at once.
        Cancellation: waits for the running batch to finish, then raises (at once if none
        has begun).
        """

    def close(self) -> None:
        """Free the model; no generation may be running."""
