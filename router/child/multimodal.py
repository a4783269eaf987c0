"""Images in chat messages: read from data URLs, cut into chunks by a projector, prefilled.

A model folder with an ``mmproj*.gguf`` reaches the child as ``--mmproj PATH``; the engine
loads it as a :class:`Projector` (llama.cpp's mtmd). A chat request's ``image_url`` parts
become :data:`MEDIA_MARKER` in the message text (so the chat template puts each image where
it was) and an :class:`ImageInput` each. The projector splits the rendered prompt into text
and image chunks (:class:`MediaPrompt`); the decode loop's thread evaluates the images, and
the text before them, in the slot's sequence (``prefill``), and the text after them goes
through the shared batch as any prompt does. Such a prompt reuses no slot cache: its image
positions hold :data:`IMAGE_POSITION`, which matches no real token.

Only ``data:`` URLs are read: this server fetches nothing, so a remote URL is a 400 that says
so. Audio parts, and images for a model with no projector, are refused with a 400 that names
what is missing (a client must not retry it, as it would a 5xx), whichever API (chat,
Responses, Anthropic) carried them.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.child.gguf_check import capture_mtmd_log, recent_llama_errors
from router.errors import InvalidField, ModelLoadFailed, NotSupported, RouterError

# The content part types that carry media, in OpenAI's chat, Responses and Anthropic's APIs.
MEDIA_PART_TYPES = frozenset({"image_url", "input_image", "image", "input_audio", "audio"})

# Where a message's text holds an image: the projector is told to look for this string.
MEDIA_MARKER = "<__media__>"

# The placeholder token of each image embedding in a prompt's token list: no real token id.
IMAGE_POSITION = -1


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: its encoded bytes (PNG, JPEG...) and the field it came from."""

    where: str
    data: bytes


def is_media_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in MEDIA_PART_TYPES


def media_refused(where: str, part: dict[str, Any]) -> NotSupported:
    """The 400 for the media ``part`` found at ``where`` that chat does not read: audio, or
    an image in another API's shape."""
    kind = part.get("type")
    if "audio" not in str(kind):
        return NotSupported(
            f"'{where}' is an image of type {kind!r}; chat messages take an image as an "
            "'image_url' part holding a data: URL (data:image/png;base64,...)",
            param=where,
        )
    return NotSupported(
        f"'{where}' is audio (type {kind!r}), but llama-router's built-in child reads text "
        "and images only. Send text or image_url parts, or serve this model with llama-server "
        "(a conf.d `command`)",
        param=where,
    )


def no_projector(image: ImageInput) -> NotSupported:
    """The 400 for an image sent to a model that has no projector to read it."""
    return NotSupported(
        f"'{image.where}' is an image, but this model reads text only: it has no multimodal "
        "projector (mmproj) loaded. Put the model's mmproj*.gguf in its folder (the router "
        "passes it to the model as --mmproj), or send text parts only",
        param=image.where,
    )


def image_of_part(where: str, part: dict[str, Any]) -> ImageInput:
    """The image of the chat ``image_url`` part at ``where``.

    Raises InvalidField for a URL that is not a base64 ``data:`` URL of an image, and
    NotSupported for a remote URL: nothing here fetches one.
    """
    source = part.get("image_url")
    url = source.get("url") if isinstance(source, dict) else source
    field = f"{where}.image_url.url" if isinstance(source, dict) else f"{where}.image_url"
    if not isinstance(url, str) or not url:
        raise InvalidField(
            field, "is required: the image as a data: URL (data:image/png;base64,...)"
        )
    if not url.startswith("data:"):
        if url.startswith(("http://", "https://")):
            raise NotSupported(
                f"'{field}' is a remote URL; this server does not fetch images. Send the image "
                "inline as a data: URL (data:image/png;base64,...)",
                param=field,
            )
        raise InvalidField(field, "must be a data: URL of the image (data:image/png;base64,...)")
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma or not header.endswith(";base64"):
        raise InvalidField(field, "must be a base64 data: URL (data:image/png;base64,...)")
    mime = header[: -len(";base64")]
    if mime and not mime.startswith("image/"):
        raise InvalidField(field, f"is a data: URL of {mime!r}, not of an image")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField(field, "holds invalid base64 after 'base64,'") from None
    if not data:
        raise InvalidField(field, "holds an empty image")
    return ImageInput(where=field, data=data)


class Projector:
    """A loaded multimodal projector, tied to the text model it feeds.

    Tokenizing (:meth:`prompt`) may run on any thread, as llama-server's HTTP threads do;
    a :class:`MediaPrompt`'s prefill runs on the decode loop's thread.
    """

    def __init__(self, path: Path, text_model: Any, *, n_threads: int, use_gpu: bool) -> None:
        """Load ``path`` for ``text_model`` (a ``llama_model`` pointer); blocking.

        Raises ModelLoadFailed when llama.cpp cannot load it, when it does not fit the text
        model, or when it is not a vision projector the decode loop can feed.
        """
        from llama_cpp import mtmd_cpp as mtmd

        capture_mtmd_log()
        recent_llama_errors()  # forget errors of earlier loads
        self._mtmd = mtmd
        self._marker = MEDIA_MARKER.encode()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.media_marker = self._marker
        context = mtmd.mtmd_init_from_file(str(path).encode(), text_model, params)
        if not context:
            reason = " ".join(recent_llama_errors().split()) or "not an mmproj for this model"
            raise ModelLoadFailed(
                f"llama.cpp could not load the projector {path}: {reason}", kind="llama_error"
            )
        self._context: Any = context
        if not mtmd.mtmd_support_vision(context):
            self.close()
            raise ModelLoadFailed(f"the projector {path} reads no images", kind="bad_option")
        if mtmd.mtmd_decode_use_mrope(context):
            self.close()
            raise ModelLoadFailed(
                f"the projector {path} places images with M-RoPE (Qwen-VL), which "
                "llama-router's built-in child does not do yet; serve it with llama-server",
                kind="bad_option",
            )

    def prompt(self, text: str, images: Sequence[ImageInput], *, add_special: bool) -> MediaPrompt:
        """``text`` (holding one :data:`MEDIA_MARKER` per image) with ``images`` in their
        places, tokenized. Blocking. Raises InvalidField for an image that cannot be decoded
        or a prompt whose markers do not match its images."""
        mtmd = self._mtmd
        bitmaps: list[Any] = []
        chunks = mtmd.mtmd_input_chunks_init()
        prompt: MediaPrompt | None = None
        try:
            for image in images:
                buffer = (ctypes.c_uint8 * len(image.data)).from_buffer_copy(image.data)
                bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(
                    self._context, buffer, len(image.data), False
                )
                if not bitmap:
                    raise InvalidField(
                        image.where, "is not an image this server can decode (PNG, JPEG, GIF, BMP)"
                    )
                bitmaps.append(bitmap)
            encoded = text.encode("utf-8")
            text_input = mtmd.mtmd_input_text(
                text=encoded, text_len=len(encoded), add_special=add_special, parse_special=True
            )
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            status = mtmd.mtmd_tokenize(
                self._context, chunks, ctypes.byref(text_input), array, len(bitmaps)
            )
            if status != 0:
                raise InvalidField(
                    "messages",
                    f"could not be read with their {len(images)} image(s) (mtmd_tokenize "
                    f"returned {status}): is {MEDIA_MARKER!r} written in a text part?",
                )
            prompt = MediaPrompt(self._context, chunks)
            return prompt
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
            if prompt is None:
                mtmd.mtmd_input_chunks_free(chunks)

    def close(self) -> None:
        if self._context:
            self._mtmd.mtmd_free(self._context)
            self._context = None


class MediaPrompt:
    """A prompt's text and image chunks, in order.

    ``tokens`` spells the whole prompt, :data:`IMAGE_POSITION` in each image position (its
    length is the prompt's token count, images included, as llama-server counts it). Its first
    ``n_prefill`` positions (up to the end of the last image) are evaluated by :meth:`prefill`;
    the text after them goes through the decode loop's batch, whose last token gives the first
    logits. The chunks are freed when the last request holding this prompt is gone.
    """

    def __init__(self, context: Any, chunks: Any) -> None:
        from llama_cpp import mtmd_cpp as mtmd

        self._mtmd = mtmd
        self._context = context
        self._chunks = chunks
        weakref.finalize(self, mtmd.mtmd_input_chunks_free, chunks)
        tokens: list[int] = []
        self.n_prefill = 0
        self._n_prefill_chunks = 0
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t(0)
                pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                tokens.extend(pointer[: count.value] if pointer else [])
            else:
                tokens.extend([IMAGE_POSITION] * mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                self.n_prefill = len(tokens)
                self._n_prefill_chunks = index + 1
        self.tokens = tokens
        if self.n_prefill >= len(tokens):
            raise InvalidField(
                "messages", "end with an image: a prompt must end with text after its images"
            )

    def prefill(self, context: Any, seq_id: int, n_batch: int) -> None:
        """Evaluate the first ``n_prefill`` positions in sequence ``seq_id`` of ``context``
        (a ``llama_context`` pointer), from position 0. Blocking: the decode loop's thread.
        Raises RouterError if llama.cpp fails to encode or decode a chunk."""
        import llama_cpp

        mtmd = self._mtmd
        n_past = 0
        for index in range(self._n_prefill_chunks):
            chunk = mtmd.mtmd_input_chunks_get(self._chunks, index)
            new_n_past = llama_cpp.llama_pos(n_past)
            status = mtmd.mtmd_helper_eval_chunk_single(
                self._context,
                context,
                chunk,
                n_past,
                seq_id,
                n_batch,
                False,
                ctypes.byref(new_n_past),
            )
            if status != 0:
                raise RouterError(f"evaluating the prompt's images failed (mtmd status {status})")
            n_past = new_n_past.value
